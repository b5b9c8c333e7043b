import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TlsOptions } from 'node:tls';
import { listenOn, peerAddress, peerIp } from '../../util/address.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import { RefusalLog } from '../limits.js';
import { resolveMsgpackRpcPortOptions, type MsgpackRpcPortSettings } from '../options.js';
import type { MsgpackRpcHost } from './hub.js';
import { RpcConnection, type CallerAuthenticator } from './msgpack-rpc-connection.js';

export { AUTH_METHOD, type CallerAuthenticator } from './msgpack-rpc-connection.js';

export interface MsgpackRpcPortOptions {
  /** `[host]:port` to listen on; empty host means every interface (default `:9091`). */
  listen?: string;
  log?: Logger;
  /** Largest request, bytes (default 16 MiB + 64 KiB, as the relay's WebSocket). */
  maxMessage?: number;
  /** Serve TLS with these options (certificate and key) instead of plain TCP. */
  tls?: TlsOptions;
  /**
   * Your own check of `Relay.Auth` tokens; see {@link CallerAuthenticator}. Without it the port asks
   * the relay's authenticator at each use, so that it follows reloads of the tokens file: a
   * connection calls without a token only while the relay requires none.
   */
  authenticate?: CallerAuthenticator;
  /** TCP keep-alive probe delay, ms (default 30 000), so that dead callers do not hold sessions forever. */
  keepAlive?: number;
  /**
   * A connection with no call in flight that has sent nothing for this long is closed, ms
   * (default 300 000).
   */
  idleTimeout?: number;
  /**
   * A connection that sends nothing at all this long after connecting (TLS: after its handshake,
   * which has the same bound) is closed, ms (default: the relay's `helloTimeout`).
   */
  firstRequestTimeout?: number;
  /** Answer bytes queued for one connection above which it is no longer read (default: the relay's `maxBacklog`). */
  maxBacklog?: number;
  /** How long a connection's backlog may stay above `maxBacklog` before it is cut, ms (default: the relay's `slowConsumerTimeout`). */
  slowConsumerTimeout?: number;
}

type Settings = MsgpackRpcPortSettings & MsgpackRpcPortOptions;

/**
 * The relay's MessagePack-RPC port: plain TCP (or TLS) speaking the MessagePack-RPC spec exactly, so
 * that existing clients (Go's net/rpc with ugorji's MsgpackSpecRpc codec, msgpack-rpc libraries) can
 * call nodes without knowing about the tunnel. Each TCP connection is one caller session, routed
 * exactly as a WebSocket caller, under the same bounds: connections count against the relay's
 * per-address and total limits, an answer backlog above `maxBacklog` stops reading and then cuts a
 * slow consumer, idle connections are closed. Errors become strings `"CODE: message"` because Go's
 * codec decodes the error field into a string. See docs/PROTOCOL.md.
 */
export class MsgpackRpcPort {
  private readonly opts: Settings;
  private readonly log: Logger;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly refusals: RefusalLog;

  constructor(
    private readonly relay: MsgpackRpcHost,
    options: MsgpackRpcPortOptions = {},
  ) {
    // A bad number or address fails here, at start, not at listen().
    this.opts = resolveMsgpackRpcPortOptions(options, relay.limits);
    this.log = (options.log ?? silentLogger).child({ door: 'msgpack-rpc' });
    this.refusals = new RefusalLog(this.log, 'too many msgpack-rpc connections; closing the extra ones');
    if (options.tls) {
      // The handshake gets the same bound as the first request that follows it.
      this.server = createTlsServer({ handshakeTimeout: this.opts.firstRequestTimeout, ...options.tls }, (socket) => this.accept(socket));
      // A TLS handshake that fails (or times out) is the client's problem: log it, drop the socket, carry on.
      // With a listener here Node leaves the socket open, so closing it is ours to do.
      this.server.on('tlsClientError', (err: Error, socket: Socket) => {
        this.log.debug({ err: err.message }, 'TLS handshake failed');
        socket.destroy();
      });
    } else {
      this.server = createTcpServer();
    }
    // Counted from the TCP connect, before the TLS handshake, so that a flood of handshakes is bounded too.
    this.server.on('connection', (socket: Socket) => this.admit(socket, options.tls === undefined));
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<{ host: string; port: number }> {
    await listenOn(this.server, this.opts.listen);
    const a = this.server.address() as AddressInfo;
    const address = { host: a.address, port: a.port };
    const auth = this.opts.authenticate ? 'custom' : 'relay';
    this.log.info(
      { ...address, tls: this.opts.tls !== undefined, auth, idleTimeoutMs: this.opts.idleTimeout, maxBacklog: this.opts.maxBacklog },
      'msgpack-rpc port listening',
    );
    return address;
  }

  /** Closes the listening socket and every caller connection. */
  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Every TCP connection counts against the relay's connection limits, with the WebSocket port's. */
  private admit(socket: Socket, plain: boolean): void {
    const ip = peerIp(socket);
    const admission = this.relay.gate.admitSocket(ip);
    if ('refused' in admission) {
      this.relay.doorEvents.refused('too_many_connections');
      this.refusals.refused({ ip, reason: admission.refused });
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      admission.release();
    });
    if (plain) this.accept(socket);
  }

  private accept(socket: Socket): void {
    const address = peerAddress(socket);
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, this.opts.keepAlive);
    const conn = new RpcConnection(socket, address, this.relay, this.opts, this.log.child({ peer: address }));
    const release = this.relay.memory.add({ held: () => conn.held, shed: (reason) => conn.shed(reason), who: { door: 'msgpack-rpc', address } });
    socket.on('close', () => {
      release();
      this.sockets.delete(socket);
      conn.onClose();
    });
  }
}
