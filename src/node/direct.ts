import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { isLoopbackHost, listenAddress, listenOn, peerAddress, urlHost } from '../util/address.js';
import { BrowserPolicy } from '../util/browser-policy.js';
import type { Logger } from '../util/logger.js';
import { Connection } from '../wire/connection.js';
import type { TunnelNode } from './node.js';
import { resolveDirectOptions } from './options.js';

export interface DirectListenerOptions {
  /** Largest message accepted, bytes (default 16 MiB + 64 KiB of envelope). */
  maxMessage?: number;
  /** Drop a caller silent this long, ms (default 30 000; 0 disables). */
  heartbeatTimeout?: number;
}

/**
 * Lets callers on the node's own network reach it without the relay (`tunnel-node --direct-listen`).
 * Callers use the same client and protocol as with a relay; each connection is one session. The
 * benchmark uses it to show what the relay hop costs.
 */
export class DirectListener {
  private readonly http: Server;
  private readonly wss: WebSocketServer;

  constructor(
    private readonly node: TunnelNode,
    private readonly log: Logger,
    options: DirectListenerOptions = {},
  ) {
    const opts = resolveDirectOptions(options);
    this.http = createServer((_req, res) => res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket only\n'));
    // No browser page may reach a node's direct port (it usually listens on loopback): any Origin is
    // refused, and on loopback only loopback Host names are accepted (DNS rebinding).
    const browsers = new BrowserPolicy({});
    this.wss = new WebSocketServer({
      server: this.http,
      maxPayload: opts.maxMessage,
      perMessageDeflate: false,
      verifyClient: (info, done) => {
        const local = (info.req.socket.localAddress ?? '').replace(/^::ffff:/, '');
        const refusal = browsers.check(info.req.headers, isLoopbackHost(local));
        if (!refusal) return done(true);
        this.log.warn({ peer: peerAddress(info.req.socket), door: 'direct', reason: refusal.reason }, 'refused request');
        done(false, 403, refusal.reason, { 'X-Tunnel-Reason': refusal.reason.replace(/[^\x20-\x7e]/g, '?') });
      },
    });
    // ws passes the HTTP server's errors on; listen() already rejects with them (EADDRINUSE), so an
    // unheard copy here must not crash the node.
    this.wss.on('error', () => undefined);
    this.wss.on('connection', (ws, req) => {
      const address = peerAddress(req.socket);
      // A direct caller is charged like a relay's caller: it may not make the node hold more than
      // 8 MiB of answers it does not read.
      const conn = new Connection(
        ws,
        { message: () => undefined, close: () => undefined },
        {
          log: this.log,
          heartbeatTimeout: opts.heartbeatTimeout,
          maxBacklog: 8 * 1024 * 1024,
          maxFirstMessage: 64 * 1024,
        },
      );
      conn.pauseWhenBacklogged = true;
      this.node.acceptDirect(conn, address, `${urlHost((req.socket.localAddress ?? '').replace(/^::ffff:/, ''))}:${req.socket.localPort}`);
    });
  }

  /** Listens on `host:port`, `[v6]:port`, `:port` or `PORT` (every interface); port 0 picks a free one. */
  async listen(address: string): Promise<{ host: string; port: number; url: string }> {
    await listenOn(this.http, listenAddress(address, 'DirectListener.listen address'));
    const a = this.http.address() as AddressInfo;
    const result = { host: a.address, port: a.port, url: `ws://${urlHost(a.address)}:${a.port}/` };
    this.log.info(result, 'direct listener ready');
    return result;
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.close(1001, 'node is shutting down');
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }
}
