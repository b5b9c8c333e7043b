import { createServer as createTcpServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TlsOptions } from 'node:tls';
import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import { encodeParams } from '../rpc/body.js';
import { listenOn, peerAddress, splitHostPort } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { decode, encode } from '../wire/codec.js';
import { MessagePackFramer } from '../wire/framer.js';
import { DEFAULT_MAX_FRAME, Kind, MAX_ID } from '../wire/messages.js';
import type { CallerLink } from './caller-link.js';
import type { Relay } from './relay.js';

/**
 * Checks a token given with `Relay.Auth(token)` and returns the caller's identity, or null to refuse.
 * Without one, the port needs no authentication and `Relay.Auth` accepts any token.
 */
export type CallerAuthenticator = (token: string, address: string) => string | null;

export interface MsgpackRpcPortOptions {
  /** `[host]:port` to listen on; empty host means every interface (default `:9091`). */
  listen?: string;
  log?: Logger;
  /** Largest request, bytes (default 16 MiB + 64 KiB, as the relay's WebSocket). */
  maxMessage?: number;
  /** Serve TLS with these options (certificate and key) instead of plain TCP. */
  tls?: TlsOptions;
  /** Relay-level caller authentication; see {@link CallerAuthenticator}. */
  authenticate?: CallerAuthenticator;
  /** TCP keep-alive probe delay, ms (default 30 000), so that dead callers do not hold sessions forever. */
  keepAlive?: number;
}

const DEFAULTS = {
  listen: ':9091',
  maxMessage: DEFAULT_MAX_FRAME,
  keepAlive: 30_000,
};

/** The method a caller uses to present a relay-level token on this port. */
export const AUTH_METHOD = 'Relay.Auth';

/** Stop reading a caller's requests while this many answer bytes wait to be written to it. */
const HIGH_WATER = 1024 * 1024;

/**
 * The relay's MessagePack-RPC port: plain TCP (or TLS) speaking the MessagePack-RPC spec exactly, so
 * that existing clients (Go's net/rpc with ugorji's MsgpackSpecRpc codec, msgpack-rpc libraries) can
 * call nodes without knowing about the tunnel. Each TCP connection is one caller session, routed
 * exactly as a WebSocket caller. Errors become strings `"CODE: message"` because Go's codec decodes
 * the error field into a string. See docs/PROTOCOL.md.
 */
export class MsgpackRpcPort {
  private readonly opts: typeof DEFAULTS & MsgpackRpcPortOptions;
  private readonly log: Logger;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly relay: Relay,
    options: MsgpackRpcPortOptions = {},
  ) {
    this.opts = { ...DEFAULTS, ...options };
    this.log = (options.log ?? silentLogger).child({ port: 'msgpack-rpc' });
    // A bad address fails here, at start, not at listen().
    splitHostPort(this.opts.listen, '');
    const onSocket = (socket: Socket) => this.accept(socket);
    this.server = options.tls ? createTlsServer(options.tls, onSocket) : createTcpServer(onSocket);
    // A TLS handshake that fails (or times out) is the client's problem: log it, drop the socket, carry on.
    // With a listener here Node leaves the socket open, so closing it is ours to do.
    this.server.on('tlsClientError', (err: Error, socket: Socket) => {
      this.log.debug({ err: err.message }, 'TLS handshake failed');
      socket.destroy();
    });
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<{ host: string; port: number }> {
    await listenOn(this.server, this.opts.listen);
    const a = this.server.address() as AddressInfo;
    const address = { host: a.address, port: a.port };
    this.log.info({ ...address, tls: this.opts.tls !== undefined, auth: this.opts.authenticate !== undefined }, 'msgpack-rpc port listening');
    return address;
  }

  /** Closes the listening socket and every caller connection. */
  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    const address = peerAddress(socket);
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, this.opts.keepAlive);
    const conn = new RpcConnection(socket, address, this.relay, this.opts, this.log.child({ peer: address }));
    socket.on('close', () => {
      this.sockets.delete(socket);
      conn.onClose();
    });
  }
}

interface Pending {
  /** The caller's msgid, echoed in the answer; undefined for a notification, which gets none. */
  msgid: number | undefined;
}

/** One caller connection on the port: decodes requests, feeds its caller session, writes answers. */
class RpcConnection {
  private readonly framer: MessagePackFramer;
  private link: CallerLink | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private queue: Buffer[] = [];
  private flushScheduled = false;
  private closed = false;

  constructor(
    private readonly socket: Socket,
    private readonly address: string,
    private readonly relay: Relay,
    private readonly opts: typeof DEFAULTS & MsgpackRpcPortOptions,
    private readonly log: Logger,
  ) {
    this.framer = new MessagePackFramer(opts.maxMessage);
    if (!opts.authenticate) this.link = this.open(null);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'msgpack-rpc socket error'));
    socket.on('drain', () => socket.resume());
    this.log.debug({ session: this.link?.session }, 'msgpack-rpc caller connected');
  }

  private open(identity: string | null): CallerLink {
    return this.relay.openCallerSession(
      {
        respond: (id, error, result) => this.respond(id, error, result),
        // Too many failed Logins: MessagePack-RPC has no close reason, so the reply already sent says it.
        close: (_code, reason) => this.end(reason),
      },
      this.address,
      identity,
      this.log,
    );
  }

  onClose(): void {
    this.closed = true;
    this.pending.clear();
    this.queue = [];
    if (this.link) this.relay.closeCallerSession(this.link);
    this.log.debug({ session: this.link?.session }, 'msgpack-rpc caller disconnected');
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    let frames: Buffer[];
    try {
      frames = this.framer.push(chunk);
    } catch (err) {
      return this.fail(TunnelError.from(err).message); // nothing past a bad header can be read
    }
    for (const frame of frames) {
      if (this.closed) return;
      let value: unknown;
      try {
        value = decode(frame);
      } catch (err) {
        return this.fail(`invalid MessagePack: ${(err as Error).message}`);
      }
      this.onValue(value);
    }
  }

  private onValue(v: unknown): void {
    if (!Array.isArray(v) || v.length === 0) {
      return this.fail('each message must be a request [0, msgid, method, params] or a notification [2, method, params]');
    }
    switch (v[0]) {
      case Kind.REQUEST: {
        const msgid = v[1];
        if (!isMsgid(msgid)) return this.fail(`request msgid must be an integer 0..${MAX_ID}`);
        if (v.length !== 4) return this.replyError(msgid, ErrorCode.BAD_REQUEST, `a request is [0, msgid, method, params]; this one has ${v.length} elements`);
        this.onCall(msgid, v[2], v[3]);
        return;
      }
      case Kind.NOTIFY:
        if (v.length !== 3) return this.fail(`a notification is [2, method, params]; this one has ${v.length} elements`);
        this.onCall(undefined, v[1], v[2]);
        return;
      case Kind.RESPONSE:
        return this.fail('this port serves requests and sends no requests of its own, so it takes no responses [1, ...]; send [0, msgid, method, params]');
      default:
        return this.fail(`unknown message type ${JSON.stringify(v[0]) ?? typeof v[0]}; want 0 (request) or 2 (notification)`);
    }
  }

  /** A request (with a msgid) or a notification (without): answered here, or routed to a node. */
  private onCall(msgid: number | undefined, method: unknown, params: unknown): void {
    if (typeof method !== 'string' || method === '') return this.replyError(msgid, ErrorCode.BAD_REQUEST, 'method must be a non-empty string');
    if (!Array.isArray(params)) return this.replyError(msgid, ErrorCode.BAD_REQUEST, 'params must be an array');
    if (method === AUTH_METHOD) return this.auth(msgid, params);
    if (!this.link) {
      return this.replyError(msgid, ErrorCode.UNAUTHORIZED, `this relay requires a caller token: call ${AUTH_METHOD}(token) first on this connection`);
    }
    // `node/Service.Method` names the node, as --node does for tunnel-call.
    const slash = method.indexOf('/');
    const meta: Record<string, unknown> = {};
    if (slash >= 0) meta.node = method.slice(0, slash);
    const name = slash >= 0 ? method.slice(slash + 1) : method;
    const id = this.allocate();
    this.pending.set(id, { msgid });
    this.link.onMessage({ kind: Kind.REQUEST, id, method: name, params: encodeParams(params), meta, stream: 0 });
  }

  private auth(msgid: number | undefined, params: unknown[]): void {
    const authenticate = this.opts.authenticate;
    if (!authenticate) return this.replyValue(msgid, true); // nothing to check: any token is accepted
    if (this.link) return this.replyError(msgid, ErrorCode.BAD_REQUEST, 'this connection is already authenticated');
    const token = params[0];
    const identity = typeof token === 'string' && params.length === 1 ? authenticate(token, this.address) : null;
    if (identity === null) {
      this.log.info('msgpack-rpc caller token refused');
      return this.replyError(msgid, ErrorCode.UNAUTHORIZED, `${AUTH_METHOD} takes one string, a caller token the relay accepts; this one was refused`);
    }
    this.link = this.open(identity);
    this.replyValue(msgid, true);
  }

  /** A connection-local id for the caller session; msgids may repeat or be any size, these may not. */
  private allocate(): number {
    do this.nextId = this.nextId >= MAX_ID ? 1 : this.nextId + 1;
    while (this.pending.has(this.nextId));
    return this.nextId;
  }

  private respond(id: number, error: WireError | null, result: Uint8Array | null): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.msgid === undefined) {
      if (error) this.log.debug({ code: error.code, err: error.message }, 'notification failed');
      return;
    }
    if (error) return this.replyError(p.msgid, error.code, error.message);
    if (result === null) return this.replyValue(p.msgid, null);
    try {
      decode(result); // a node's bytes go into the caller's stream as they are, so they must be one valid value
    } catch (err) {
      return this.replyError(p.msgid, ErrorCode.PROTOCOL_ERROR, `the node answered with a result that is not valid MessagePack: ${(err as Error).message}`);
    }
    this.write(Buffer.concat([RESPONSE_HEAD, encode(p.msgid), NIL, result]));
  }

  private replyValue(msgid: number | undefined, value: unknown): void {
    if (msgid !== undefined) this.write(encode([Kind.RESPONSE, msgid, null, value]));
  }

  /** Go's codec decodes the error into a string, so every error is one: "CODE: message". */
  private replyError(msgid: number | undefined, code: string, message: string): void {
    if (msgid === undefined) {
      this.log.debug({ code, err: message }, 'notification refused');
      return;
    }
    this.write(encode([Kind.RESPONSE, msgid, `${code}: ${message}`, null]));
  }

  /** Answers leaving in the same event-loop turn go out in one write. */
  private write(bytes: Buffer): void {
    if (this.closed) return;
    this.queue.push(bytes);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.closed || this.queue.length === 0) return;
    const data = this.queue.length === 1 ? this.queue[0]! : Buffer.concat(this.queue);
    this.queue = [];
    // A caller that sends requests but reads no answers stops being read until it catches up.
    if (!this.socket.write(data) && this.socket.writableLength > HIGH_WATER) this.socket.pause();
  };

  /** The stream cannot be read any further: say why in the log, send what is queued, close. */
  private fail(reason: string): void {
    if (this.closed) return;
    this.log.warn({ session: this.link?.session, reason }, 'closing msgpack-rpc connection after bad input');
    this.end(reason);
  }

  /** Sends what is queued, then closes. */
  private end(reason: string): void {
    if (this.closed) return;
    this.log.debug({ session: this.link?.session, reason }, 'closing msgpack-rpc connection');
    this.flush();
    this.closed = true;
    this.socket.end();
    // A peer that keeps its side open must not hold the socket.
    setTimeout(() => this.socket.destroy(), 2_000).unref();
  }
}

const RESPONSE_HEAD = Buffer.from([0x94, Kind.RESPONSE]);
const NIL = Buffer.from([0xc0]);

function isMsgid(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_ID;
}
