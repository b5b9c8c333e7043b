import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { splitHostPort } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { Kind, PROTOCOL_VERSION, welcome, type Hello, type Message } from '../wire/messages.js';
import { RELAY_SERVICE, type NodeInfo } from '../wire/presence.js';
import { CallerLink } from './caller-link.js';
import { NodeDirectory } from './directory.js';
import { NodeLink } from './node-link.js';
import { Presence } from './presence.js';
import { SELECTORS, selectorNamed, type SelectorName } from './selectors.js';

export type { NodeInfo } from '../wire/presence.js';

export const RELAY_VERSION = 'tunnel-relay/0.1.0';

export interface RelayOptions {
  /** `[host]:port` to listen on; empty host means every interface (default `:9090`). */
  listen?: string;
  log?: Logger;
  /** Drop a peer silent this long, ms (default 30 000). */
  heartbeatTimeout?: number;
  /** Time a new connection has to send its hello, ms (default 5 000). */
  helloTimeout?: number;
  /** Deadline of a call whose caller gives none, ms (default 30 000). */
  defaultTimeout?: number;
  /** Longest deadline a caller may ask for, ms (default 300 000). */
  maxTimeout?: number;
  /** Largest message, bytes (default 16 MiB + 64 KiB of envelope). */
  maxMessage?: number;
  /** How a call that names no node picks one (default `round-robin`); callers may override per call. */
  selector?: SelectorName;
}

const DEFAULTS = {
  listen: ':9090',
  heartbeatTimeout: 30_000,
  helloTimeout: 5_000,
  defaultTimeout: 30_000,
  maxTimeout: 300_000,
  maxMessage: 16 * 1024 * 1024 + 64 * 1024,
  selector: 'round-robin' as SelectorName,
};

const NODE_NAME = /^[A-Za-z0-9][\w.-]{0,127}$/;

/**
 * The relay: one port where nodes attach and callers call. It routes each call to a node, keeps the
 * mapping between caller ids and tunnel ids, enforces deadlines, and never runs user code.
 * Events: `listening`, `node` (joined), `node-left`.
 */
export class Relay extends EventEmitter {
  readonly directory = new NodeDirectory();
  private readonly presence: Presence;
  private readonly opts: typeof DEFAULTS & RelayOptions;
  private readonly log: Logger;
  private readonly http: Server;
  private readonly wss: WebSocketServer;
  private readonly callers = new Set<CallerLink>();
  private readonly sessionPrefix = randomBytes(4).toString('hex');
  private sessionCounter = 0;

  constructor(options: RelayOptions = {}) {
    super();
    this.opts = { ...DEFAULTS, ...options };
    if (this.opts.defaultTimeout > this.opts.maxTimeout) {
      throw new RangeError(`defaultTimeout (${this.opts.defaultTimeout}) must not exceed maxTimeout (${this.opts.maxTimeout})`);
    }
    if (!SELECTORS.includes(this.opts.selector)) {
      throw new RangeError(`selector must be one of ${SELECTORS.join(', ')}; got ${JSON.stringify(this.opts.selector)}`);
    }
    this.directory.selector = selectorNamed(this.opts.selector);
    this.log = options.log ?? silentLogger;
    this.presence = new Presence(this.directory, this.log);
    this.http = createServer((req, res) => this.onHttp(req, res));
    this.wss = new WebSocketServer({ noServer: true, maxPayload: this.opts.maxMessage, perMessageDeflate: false });
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      socket.on('error', () => socket.destroy());
      this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req));
    });
    this.http.on('clientError', (_err, socket) => socket.destroy());
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<{ host: string; port: number; url: string }> {
    const { host, port } = splitHostPort(this.opts.listen, '');
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host === '' ? undefined : host, () => {
        this.http.off('error', reject);
        resolve();
      });
    });
    const address = this.address!;
    this.log.info(address, 'relay listening');
    this.emit('listening', address);
    return address;
  }

  get address(): { host: string; port: number; url: string } | undefined {
    const a = this.http.address() as AddressInfo | null;
    if (!a) return undefined;
    const host = a.address === '::' || a.address === '0.0.0.0' ? 'localhost' : a.address;
    const h = host.includes(':') ? `[${host}]` : host;
    return { host: a.address, port: a.port, url: `ws://${h}:${a.port}/` };
  }

  /** What every attached node serves (the presence list). */
  nodes(): NodeInfo[] {
    return this.presence.list();
  }

  get callerCount(): number {
    return this.callers.size;
  }

  /** Closes every connection and the listening socket. */
  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.close(CloseCode.GOING_AWAY, 'relay is shutting down');
    for (const ws of this.wss.clients) setTimeout(() => ws.terminate(), 1_000).unref();
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  private onHttp(req: IncomingMessage, res: ServerResponse): void {
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' });
    res.end('This is a tunnel relay. Connect with tunnel-node or tunnel-call (WebSocket).\n');
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const remote = req.socket.remoteAddress ?? 'unknown';
    const address = `${remote.startsWith('::ffff:') ? remote.slice(7) : remote}:${req.socket.remotePort ?? 0}`;
    const log = this.log.child({ peer: address });
    let settled = false;
    const conn: Connection = new Connection(
      ws,
      {
        message: (m) => {
          settled = true;
          clearTimeout(timer);
          this.onHello(conn, m, address, log);
        },
        close: () => {
          settled = true;
          clearTimeout(timer);
        },
      },
      { log, heartbeatTimeout: this.opts.heartbeatTimeout },
    );
    const timer = setTimeout(() => {
      if (settled) return;
      log.info({ helloTimeoutMs: this.opts.helloTimeout }, 'closing connection that sent no hello');
      conn.close(CloseCode.HELLO_TIMEOUT, `no hello within ${this.opts.helloTimeout} ms`);
    }, this.opts.helloTimeout);
  }

  private onHello(conn: Connection, m: Message, address: string, log: Logger): void {
    if (m.kind !== Kind.HELLO) {
      conn.close(CloseCode.PROTOCOL_ERROR, 'the first message must be a hello [4, {version, role}]');
      return;
    }
    const h = m.hello;
    if (h.version !== PROTOCOL_VERSION) {
      conn.close(CloseCode.VERSION, `protocol version ${h.version} is not supported; this relay speaks ${PROTOCOL_VERSION}`);
      return;
    }
    if (h.role === 'node') this.attachNode(conn, h, address, log);
    else this.attachCaller(conn, h, address, log);
  }

  private attachNode(conn: Connection, h: Hello, address: string, log: Logger): void {
    const name = h.name ?? '';
    if (!NODE_NAME.test(name)) {
      conn.close(CloseCode.POLICY, 'node name must be 1-128 characters: letters, digits, _ . - (starting with a letter or digit)');
      return;
    }
    const services = h.services ?? {};
    if (Object.keys(services).length === 0) {
      conn.close(CloseCode.POLICY, 'a node must announce at least one service');
      return;
    }
    if (Object.hasOwn(services, RELAY_SERVICE)) {
      conn.close(CloseCode.POLICY, `service name ${RELAY_SERVICE} is reserved for the relay's own presence service; rename it`);
      return;
    }
    const link = new NodeLink(name, conn, services, h.labels ?? {}, address, log);
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        const failed = link.onClose();
        const current = this.directory.remove(link);
        log.info({ node: name, code, reason, failedCalls: failed }, current ? 'node disconnected' : 'replaced node connection closed');
        if (!current) return;
        this.presence.announce('leave', link);
        this.emit('node-left', name);
      },
    });
    const old = this.directory.add(link);
    if (old) {
      old.draining = true;
      log.warn({ node: name, previous: old.address }, 'node name reconnected; replacing the previous connection');
      old.conn.close(CloseCode.REPLACED, `replaced by a new connection for node ${name}`);
      this.presence.announce('leave', old);
    }
    conn.send(welcome({ version: PROTOCOL_VERSION, relay: RELAY_VERSION, name }));
    log.info({ node: name, services: Object.keys(services), labels: link.labels }, 'node connected');
    this.presence.announce('join', link);
    this.emit('node', name);
  }

  private attachCaller(conn: Connection, _h: Hello, address: string, log: Logger): void {
    const session = `${this.sessionPrefix}-${(++this.sessionCounter).toString(36)}`;
    const link = new CallerLink(session, conn, address, null, this.directory, this.opts, log, this.presence);
    this.callers.add(link);
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        this.callers.delete(link);
        link.onClose();
        log.debug({ session, code, reason }, 'caller disconnected');
      },
    });
    conn.send(welcome({ version: PROTOCOL_VERSION, relay: RELAY_VERSION, session }));
    log.debug({ session }, 'caller connected');
  }
}
