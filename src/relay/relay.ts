import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { splitHostPort } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { Kind, PROTOCOL_VERSION, welcome, type Hello, type Message } from '../wire/messages.js';
import { Authenticator, peerCertificate, type AuthOptions } from './auth.js';
import { CallerLink } from './caller-link.js';
import { NodeDirectory } from './directory.js';
import { AddressTable, checkLimits, frameLimit, LIMIT_DEFAULTS, LoginFailures, type Limits } from './limits.js';
import { createListener, refuseUpgrade, type TlsOptions } from './listener.js';
import { NodeLink } from './node-link.js';

export const RELAY_VERSION = 'tunnel-relay/0.1.0';

export interface RelayOptions extends Partial<Limits>, TlsOptions, Omit<AuthOptions, 'nodeCertificates'> {
  /** `[host]:port` to listen on; empty host means every interface (default `:9090`). */
  listen?: string;
  log?: Logger;
  /** Drop a peer silent this long, ms (default 30 000). */
  heartbeatTimeout?: number;
  /** Deadline of a call whose caller gives none, ms (default 30 000). */
  defaultTimeout?: number;
  /** Longest deadline a caller may ask for, ms (default 300 000). */
  maxTimeout?: number;
}

const DEFAULTS = {
  listen: ':9090',
  heartbeatTimeout: 30_000,
  defaultTimeout: 30_000,
  maxTimeout: 300_000,
  ...LIMIT_DEFAULTS,
};

const NODE_NAME = /^[A-Za-z0-9][\w.-]{0,127}$/;

export interface NodeInfo {
  name: string;
  labels: Record<string, string>;
  services: Record<string, string[]>;
  address: string;
  connectedAt: string;
  inFlight: number;
  served: number;
  draining: boolean;
}

/**
 * The relay: one port where nodes attach and callers call. It routes each call to a node, keeps the
 * mapping between caller ids and tunnel ids, enforces deadlines, and never runs user code.
 * Events: `listening`, `node` (joined), `node-left`.
 */
export class Relay extends EventEmitter {
  readonly directory = new NodeDirectory();
  /** Who may register nodes and call; `auth.reload()` rereads the tokens file. */
  readonly auth: Authenticator;
  private readonly opts: typeof DEFAULTS & RelayOptions;
  private readonly log: Logger;
  private readonly http: Server;
  private readonly secure: boolean;
  private readonly addresses: AddressTable;
  /** Sockets past the per-address limit, refused at their upgrade request. */
  private readonly overLimit = new WeakSet<object>();
  /** When each socket connected: the handshake and the hello share one deadline. */
  private readonly connectedAt = new WeakMap<object, number>();
  /** Sockets that sent a request or an upgrade: from there HTTP timeouts or the WebSocket's hello timer take over. */
  private readonly engaged = new WeakSet<object>();
  private readonly pruneTimer: NodeJS.Timeout;
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
    checkLimits(pickLimits(this.opts));
    this.log = options.log ?? silentLogger;
    this.auth = new Authenticator({ ...this.opts, nodeCertificates: this.opts.tlsCa !== undefined }, this.log);
    this.addresses = new AddressTable(this.opts);
    const listener = createListener(this.opts, this.opts.helloTimeout, (req, res) => this.onHttp(req, res));
    this.http = listener.server;
    this.secure = listener.secure;
    this.wss = new WebSocketServer({ noServer: true, maxPayload: frameLimit(this.opts.maxMessage), perMessageDeflate: false });
    this.http.on(listener.socketEvent, (socket: Socket) => this.onSocket(socket));
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.onUpgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => socket.destroy());
    this.pruneTimer = setInterval(() => this.addresses.prune(), Math.min(this.opts.loginFailureWindow, 60_000));
    this.pruneTimer.unref();
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
    this.auth.watch();
    this.log.info({ ...address, tls: this.secure, auth: this.auth.describe() }, 'relay listening');
    this.emit('listening', address);
    return address;
  }

  get address(): { host: string; port: number; url: string } | undefined {
    const a = this.http.address() as AddressInfo | null;
    if (!a) return undefined;
    const host = a.address === '::' || a.address === '0.0.0.0' ? 'localhost' : a.address;
    const h = host.includes(':') ? `[${host}]` : host;
    return { host: a.address, port: a.port, url: `${this.secure ? 'wss' : 'ws'}://${h}:${a.port}/` };
  }

  /** What every attached node serves (the presence list). */
  nodes(): NodeInfo[] {
    return [...this.directory.all()].map((n) => ({
      name: n.name,
      labels: n.labels,
      services: Object.fromEntries([...n.services.keys()].map((s) => [s, n.methods(s)])),
      address: n.address,
      connectedAt: n.connectedAt.toISOString(),
      inFlight: n.inFlight,
      served: n.served,
      draining: n.draining,
    }));
  }

  get callerCount(): number {
    return this.callers.size;
  }

  /** Closes every connection and the listening socket. */
  async close(): Promise<void> {
    clearInterval(this.pruneTimer);
    this.auth.close();
    for (const ws of this.wss.clients) ws.close(CloseCode.GOING_AWAY, 'relay is shutting down');
    for (const ws of this.wss.clients) setTimeout(() => ws.terminate(), 1_000).unref();
    this.wss.close();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }

  private onHttp(req: IncomingMessage, res: ServerResponse): void {
    this.engaged.add(req.socket);
    if (this.overLimit.has(req.socket)) {
      res.writeHead(429, { 'content-type': 'text/plain' }).end(`too many connections from ${ipOf(req.socket)}\n`);
      return;
    }
    if (req.url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' });
    res.end('This is a tunnel relay. Connect with tunnel-node or tunnel-call (WebSocket).\n');
  }

  /** Every socket counts against its address and must reach an accepted hello in time. */
  private onSocket(socket: Socket): void {
    const ip = ipOf(socket);
    this.connectedAt.set(socket, Date.now());
    if (!this.addresses.open(ip)) {
      this.overLimit.add(socket);
      if (this.addresses.connections(ip) === this.opts.maxConnectionsPerAddress + 1) {
        this.log.warn({ ip, limit: this.opts.maxConnectionsPerAddress }, 'too many connections from one address; refusing the extra ones');
      }
    }
    socket.once('close', () => this.addresses.close(ip));
    const timer = setTimeout(() => {
      if (!this.engaged.has(socket)) socket.destroy();
    }, this.opts.helloTimeout);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  }

  /** Refuses what can be refused before the WebSocket exists: extra connections, wrong tokens and certificates. */
  private onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    this.engaged.add(socket);
    const peer = `${ipOf(socket)}:${socket.remotePort ?? 0}`;
    if (this.overLimit.has(socket)) {
      refuseUpgrade(socket, 429, `too many connections from ${ipOf(socket)} (limit ${this.opts.maxConnectionsPerAddress})`);
      return;
    }
    const reason = this.auth.checkUpgrade(bearerToken(req), peerCertificate(socket));
    if (reason !== undefined) {
      this.log.warn({ peer, reason }, 'refused connection at upgrade');
      refuseUpgrade(socket, 401, reason);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req));
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const address = `${ipOf(req.socket)}:${req.socket.remotePort ?? 0}`;
    const log = this.log.child({ peer: address });
    const helloTimeout = Math.max(0, (this.connectedAt.get(req.socket) ?? Date.now()) + this.opts.helloTimeout - Date.now());
    let settled = false;
    const conn: Connection = new Connection(
      ws,
      {
        message: (m) => {
          settled = true;
          clearTimeout(timer);
          this.onHello(conn, m, address, req, log);
        },
        close: () => {
          settled = true;
          clearTimeout(timer);
        },
      },
      { log, heartbeatTimeout: this.opts.heartbeatTimeout, maxFrame: frameLimit(this.opts.maxMessage) },
    );
    const timer = setTimeout(() => {
      if (settled) return;
      log.info({ helloTimeoutMs: this.opts.helloTimeout }, 'closing connection that sent no hello');
      conn.close(CloseCode.HELLO_TIMEOUT, `no hello within ${this.opts.helloTimeout} ms of connecting`);
    }, helloTimeout);
  }

  private onHello(conn: Connection, m: Message, address: string, req: IncomingMessage, log: Logger): void {
    if (m.kind !== Kind.HELLO) {
      conn.close(CloseCode.PROTOCOL_ERROR, 'the first message must be a hello [4, {version, role}]');
      return;
    }
    const h = m.hello;
    if (h.version !== PROTOCOL_VERSION) {
      conn.close(CloseCode.VERSION, `protocol version ${h.version} is not supported; this relay speaks ${PROTOCOL_VERSION}`);
      return;
    }
    const token = h.token ?? bearerToken(req);
    if (h.role === 'node') {
      const verdict = this.auth.node(h.name ?? '', token, peerCertificate(req.socket));
      if (!verdict.ok) return this.refuse(conn, log, 'node', verdict.reason, h.name);
      this.attachNode(conn, h, address, log);
    } else {
      const verdict = this.auth.caller(token);
      if (!verdict.ok) return this.refuse(conn, log, 'caller', verdict.reason);
      this.attachCaller(conn, verdict.identity, address, ipOf(req.socket), log);
    }
  }

  private refuse(conn: Connection, log: Logger, role: string, reason: string, name?: string): void {
    log.warn({ role, node: name, reason }, 'refused hello');
    conn.close(CloseCode.UNAUTHORIZED, reason);
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
    const link = new NodeLink(name, conn, services, h.labels ?? {}, address, log);
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        const failed = link.onClose();
        const current = this.directory.remove(link);
        log.info({ node: name, code, reason, failedCalls: failed }, current ? 'node disconnected' : 'replaced node connection closed');
        if (current) this.emit('node-left', name);
      },
    });
    const old = this.directory.add(link);
    if (old) {
      old.draining = true;
      log.warn({ node: name, previous: old.address }, 'node name reconnected; replacing the previous connection');
      old.conn.close(CloseCode.REPLACED, `replaced by a new connection for node ${name}`);
    }
    conn.send(welcome({ version: PROTOCOL_VERSION, relay: RELAY_VERSION, name, maxMessage: this.opts.maxMessage }));
    log.info({ node: name, services: Object.keys(services), labels: link.labels }, 'node connected');
    this.emit('node', name);
  }

  private attachCaller(conn: Connection, identity: string | null, address: string, ip: string, log: Logger): void {
    const session = `${this.sessionPrefix}-${(++this.sessionCounter).toString(36)}`;
    const logins = new LoginFailures(this.addresses, ip, this.opts);
    const link = new CallerLink(session, conn, address, identity, this.directory, this.opts, log, logins);
    this.callers.add(link);
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        this.callers.delete(link);
        link.onClose();
        log.debug({ session, code, reason }, 'caller disconnected');
      },
    });
    conn.send(welcome({ version: PROTOCOL_VERSION, relay: RELAY_VERSION, session, maxMessage: this.opts.maxMessage }));
    log.debug({ session, identity }, 'caller connected');
  }
}

function ipOf(socket: { remoteAddress?: string | undefined }): string {
  const remote = socket.remoteAddress ?? 'unknown';
  return remote.startsWith('::ffff:') ? remote.slice(7) : remote;
}

function bearerToken(req: IncomingMessage): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m ? m[1] : undefined;
}

function pickLimits(o: Limits): Limits {
  const out = {} as Limits;
  for (const key of Object.keys(LIMIT_DEFAULTS) as (keyof Limits)[]) out[key] = o[key];
  return out;
}
