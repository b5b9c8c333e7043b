import { EventEmitter, once } from 'node:events';
import { hostname } from 'node:os';
import { ErrorCode, TunnelError } from '../errors.js';
import { decodeParams, join, piecesLength, resultPieces, type Pieces } from '../rpc/body.js';
import type { CallContext } from '../rpc/context.js';
import { invoke, ServiceRegistry } from '../rpc/registry.js';
import type { Session } from '../rpc/session.js';
import { relayUrl } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { dial, loadClientTls, type ClientTlsOptions, type LoadedTls, type Refusal } from '../wire/dial.js';
import { DEFAULT_MAX_FRAME, goaway, hello, Kind, PROTOCOL_VERSION, response, responseStream, welcome, type Message, type ServiceDescription } from '../wire/messages.js';
import { Reassembly, STREAM_THRESHOLD } from '../wire/streams.js';
import { Backoff } from './backoff.js';
import type { ForwardedService } from './forward.js';
import { SessionTable } from './sessions.js';
import { Cancellation } from '../rpc/cancellation.js';
import { DeadlineWheel, type Expiring } from '../rpc/deadlines.js';

export interface NodeOptions extends ClientTlsOptions {
  /** Relay address: `host:port`, `:port`, `ws://…` or `wss://…`. */
  relay: string;
  /** Name the node registers under (default: the host name). */
  name?: string;
  labels?: Record<string, string>;
  /** Node token, when the relay asks for one. */
  token?: string;
  /** What the node serves. */
  services: ServiceRegistry;
  /** Services passed on to existing local MessagePack-RPC servers (`--forward`). */
  forward?: ForwardedService[];
  log?: Logger;
  /** Drop the relay when it is silent this long, ms (default 30 000; 0 disables). */
  heartbeatTimeout?: number;
  /** First reconnect ceiling, ms (default 500). */
  reconnectBase?: number;
  /** Largest reconnect ceiling, ms (default 30 000). */
  reconnectCap?: number;
  /** A connection up this long resets the backoff, ms (default 10 000). */
  reconnectReset?: number;
  /** On stop, how long running handlers may take to finish, ms (default 10 000). */
  drainTimeout?: number;
  /** Handler timeout when the relay sends none, ms (default 30 000). */
  defaultTimeout?: number;
  /** Largest message accepted, bytes (default 16 MiB + 64 KiB of envelope). */
  maxMessage?: number;
}

const DEFAULTS = {
  heartbeatTimeout: 30_000,
  reconnectBase: 500,
  reconnectCap: 30_000,
  reconnectReset: 10_000,
  drainTimeout: 10_000,
  defaultTimeout: 30_000,
  maxMessage: DEFAULT_MAX_FRAME,
};

class RunningCall extends Cancellation implements Expiring {
  deadlineSlot = 0;

  constructor(
    /** Key in the running table: the request id, offset per direct connection (see keyOf). */
    readonly key: number,
    readonly id: number,
    readonly method: string,
    readonly conn: Connection,
    readonly session: Session,
    readonly timeout: number,
  ) {
    super();
  }
}

/** The handler's view of a running call; `signal` is made on first use (see Cancellation). */
class HandlerContext implements CallContext {
  constructor(
    private readonly call: RunningCall,
    readonly caller: CallContext['caller'],
    readonly node: string,
    readonly deadline: number,
    readonly log: Logger,
  ) {}

  get session(): Session {
    return this.call.session;
  }

  get method(): string {
    return this.call.method;
  }

  get signal(): AbortSignal {
    return this.call.signal;
  }
}

/**
 * The node: dials out to the relay, announces its services, runs the calls the relay forwards, and
 * reconnects forever with jittered exponential backoff. Events: `connected`, `disconnected`, `stopped`.
 */
export class TunnelNode extends EventEmitter {
  readonly name: string;
  readonly url: string;
  private readonly opts: typeof DEFAULTS & NodeOptions;
  private readonly log: Logger;
  private readonly backoff: Backoff;
  private readonly tls: LoadedTls;
  /** What the relay said it accepts (welcome); results over it are answered TOO_LARGE instead of sent. */
  private relayMaxMessage = Infinity;
  private readonly sessions = new SessionTable();
  private readonly directSessions = new SessionTable();
  private readonly running = new Map<number, RunningCall>();
  /** Requests whose params are still arriving in chunks, by running-table key. */
  private readonly uploads: Reassembly<{ head: Extract<Message, { kind: 0 }>; conn: Connection; sessions: SessionTable }>;
  private readonly deadlines = new DeadlineWheel<RunningCall>((call) =>
    call.abort(new TunnelError(ErrorCode.TIMEOUT, `${call.method} passed its deadline of ${call.timeout} ms`)),
  );
  /** Direct caller connections (see direct.ts) get their own id space in `running`. */
  private readonly directIndex = new WeakMap<Connection, number>();
  private directCount = 0;
  private readonly forwarded = new Map<string, ForwardedService>();
  private conn: Connection | undefined;
  private welcomed = false;
  /** The connection whose relay sent GOAWAY: left once its running calls are done. */
  private relayGoingAway: Connection | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private healthyTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private started = false;

  constructor(options: NodeOptions) {
    super();
    this.opts = { ...DEFAULTS, ...options };
    this.name = options.name ?? hostname();
    this.url = relayUrl(options.relay);
    this.log = (options.log ?? silentLogger).child({ node: this.name });
    this.backoff = new Backoff(this.opts.reconnectBase, this.opts.reconnectCap);
    this.uploads = new Reassembly(this.opts.maxMessage);
    this.tls = loadClientTls(this.opts, this.log);
    for (const f of options.forward ?? []) {
      if (options.services.has(f.name) || this.forwarded.has(f.name)) throw new TypeError(`service ${f.name} is forwarded and also served otherwise; pick one`);
      this.forwarded.set(f.name, f);
    }
    if (options.services.size === 0 && this.forwarded.size === 0) throw new TypeError('a node needs at least one service to serve');
  }

  /** True while the relay has accepted us. */
  get connected(): boolean {
    return this.welcomed && this.conn?.isOpen === true;
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.running.size;
  }

  /** Starts dialling; returns at once. Use {@link waitConnected} to wait for the relay. */
  start(): this {
    if (this.started) return this;
    this.started = true;
    this.dial();
    return this;
  }

  /** Resolves when the node is (or next becomes) connected; rejects after `timeout` ms. */
  async waitConnected(timeout = 10_000): Promise<void> {
    if (this.connected) return;
    await once(this, 'connected', { signal: AbortSignal.timeout(timeout) });
  }

  /**
   * Drains and stops: tells the relay to send no new calls, lets running handlers finish for up to
   * `drainTimeout`, aborts the rest, and closes. Does not reconnect afterwards.
   */
  async stop(drainTimeout = this.opts.drainTimeout): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.healthyTimer);
    const conn = this.conn;
    if (conn?.isOpen) {
      conn.send(goaway('node is shutting down'));
      if (this.running.size > 0) {
        this.log.info({ running: this.running.size, drainTimeoutMs: drainTimeout }, 'draining: waiting for running calls');
        await this.waitIdle(drainTimeout);
      }
    }
    for (const call of this.running.values()) {
      call.abort(new TunnelError(ErrorCode.CANCELLED, 'node is shutting down'));
    }
    this.sessions.clear('node is shutting down');
    for (const f of this.forwarded.values()) f.close();
    if (conn?.isOpen) {
      const closed = once(this, 'disconnected', { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
      conn.close(CloseCode.GOING_AWAY, 'node is shutting down');
      await closed;
    } else if (conn) {
      conn.terminate();
    }
    this.log.info('node stopped');
    this.emit('stopped');
  }

  private async waitIdle(timeout: number): Promise<void> {
    const deadline = Date.now() + timeout;
    while (this.running.size > 0 && Date.now() < deadline) {
      await once(this, 'idle', { signal: AbortSignal.timeout(deadline - Date.now()) }).catch(() => undefined);
    }
  }

  private dial(): void {
    this.reconnectTimer = undefined;
    if (this.stopping) return;
    const headers: Record<string, string> = {};
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let refused: Refusal | undefined;
    const ws = dial(this.url, {
      maxMessage: this.opts.maxMessage,
      handshakeTimeout: 10_000,
      headers,
      tls: this.tls,
      onRefused: (r) => {
        refused = r;
      },
    });
    let lastError = '';
    ws.on('error', (err) => {
      lastError = err.message;
    });
    const conn: Connection = new Connection(
      ws,
      {
        message: (m) => this.onMessage(conn, m),
        close: (code, reason) => {
          if (refused) {
            // An HTTP 401/403 at the upgrade is the same refusal as a 4003 close after the hello.
            const denied = refused.status === 401 || refused.status === 403;
            this.onClose(conn, denied ? CloseCode.UNAUTHORIZED : code, `HTTP ${refused.status}: ${refused.reason}`);
          } else {
            this.onClose(conn, code, reason || lastError);
          }
        },
      },
      { log: this.log, heartbeatTimeout: this.opts.heartbeatTimeout, maxFrame: this.opts.maxMessage },
    );
    this.conn = conn;
    this.welcomed = false;
    ws.on('open', () => {
      const h: Parameters<typeof hello>[0] = {
        version: PROTOCOL_VERSION,
        role: 'node',
        name: this.name,
        services: this.describe(),
        labels: this.opts.labels ?? {},
      };
      if (this.opts.token) h.token = this.opts.token;
      conn.send(hello(h));
    });
  }

  /** Registered services with their methods, forwarded ones with `*`. */
  private describe(): ServiceDescription {
    const out = this.opts.services.describe();
    for (const f of this.forwarded.values()) out[f.name] = f.methods;
    return out;
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    if (conn !== this.conn) return;
    const wasConnected = this.welcomed;
    this.conn = undefined;
    this.welcomed = false;
    clearTimeout(this.healthyTimer);
    // The relay has already failed these calls with NODE_LOST; nobody waits for their answers.
    this.dropCalls(conn, new TunnelError(ErrorCode.NODE_LOST, 'connection to the relay was lost'));
    this.sessions.clear('connection to the relay was lost');
    if (wasConnected) this.log.warn({ code, reason }, 'disconnected from relay');
    else if (!this.stopping) this.log.warn({ relay: this.url, code, reason }, 'could not connect to relay');
    if (code === CloseCode.UNAUTHORIZED) {
      this.log.error({ reason }, 'relay refused our credentials; retrying at the longest backoff');
      this.backoff.exhaust();
    }
    this.emit('disconnected', code, reason);
    this.emit('idle');
    this.scheduleReconnect();
  }

  /** One timer at a time: a second close or error while a reconnect is pending does nothing. */
  private scheduleReconnect(): void {
    if (this.stopping || this.reconnectTimer) return;
    const { delay, ceiling, attempt } = this.backoff.next();
    this.log.info({ attempt, delayMs: delay, ceilingMs: ceiling }, 'reconnecting');
    this.reconnectTimer = setTimeout(() => this.dial(), delay);
  }

  private onMessage(conn: Connection, m: Message): void {
    switch (m.kind) {
      case Kind.WELCOME:
        this.welcomed = true;
        this.relayMaxMessage = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : Infinity;
        this.log.info({ relay: this.url, services: Object.keys(this.describe()) }, 'connected to relay');
        clearTimeout(this.healthyTimer);
        this.healthyTimer = setTimeout(() => this.backoff.reset(), this.opts.reconnectReset);
        this.healthyTimer.unref();
        this.emit('connected');
        return;
      case Kind.REQUEST:
        this.receiveRequest(conn, m, this.sessions);
        return;
      case Kind.CHUNK:
        this.receiveChunk(conn, m);
        return;
      case Kind.CANCEL: {
        this.uploads.drop(this.keyOf(conn, m.id));
        const call = this.running.get(this.keyOf(conn, m.id));
        if (call) {
          this.log.debug({ method: call.method, session: call.session.id }, 'call cancelled');
          call.abort(new TunnelError(ErrorCode.CANCELLED, 'the caller cancelled the call'));
        }
        return;
      }
      case Kind.SESSION_CLOSED: {
        let aborted = 0;
        for (const call of this.running.values()) if (call.session.id === m.session) aborted++;
        this.uploads.dropWhere((u) => u.head.meta.session === m.session);
        if (this.sessions.close(m.session)) this.log.info({ session: m.session, abortedCalls: aborted }, 'session closed');
        return;
      }
      case Kind.GOAWAY:
        this.log.warn({ reason: m.reason, running: this.running.size }, 'relay is going away');
        this.relayGoingAway = conn;
        this.leaveIfRelayGoingAway();
        return;
      default:
        this.log.debug({ kind: m.kind }, 'ignoring message not meant for a node');
    }
  }

  /** Relay connection ids are used as they are; direct connection k uses ids k·2³² + id. */
  private keyOf(conn: Connection, id: number): number {
    return (this.directIndex.get(conn) ?? 0) * 0x1_0000_0000 + id;
  }

  /**
   * Serves one caller connected straight to this node, without a relay (see direct.ts): the caller
   * speaks the caller protocol and is one session, exactly as it would be through a relay.
   * @internal
   */
  acceptDirect(conn: Connection, address: string): void {
    this.directIndex.set(conn, ++this.directCount);
    const session = `direct-${this.directCount}`;
    conn.setHandlers({
      message: (m) => {
        switch (m.kind) {
          case Kind.HELLO:
            conn.send(welcome({ version: PROTOCOL_VERSION, relay: `tunnel-node/${this.name}`, session }));
            return;
          case Kind.REQUEST: {
            const timeout = typeof m.meta.timeout === 'number' ? m.meta.timeout : this.opts.defaultTimeout;
            this.receiveRequest(conn, { ...m, meta: { session, address, identity: null, timeout } }, this.directSessions);
            return;
          }
          case Kind.CANCEL:
          case Kind.CHUNK:
            this.onMessage(conn, m);
            return;
          default:
            this.log.debug({ kind: m.kind }, 'ignoring message from direct caller');
        }
      },
      close: () => {
        this.dropCalls(conn, new TunnelError(ErrorCode.CANCELLED, 'caller disconnected'));
        this.directSessions.close(session);
      },
    });
  }

  /** A request whose params arrive in chunks waits in `uploads` until the last one. */
  private receiveRequest(conn: Connection, m: Extract<Message, { kind: 0 }>, sessions: SessionTable): void {
    if (m.stream === 0) return this.onRequest(conn, m, sessions);
    try {
      this.uploads.start(this.keyOf(conn, m.id), m.stream, { head: m, conn, sessions });
    } catch (err) {
      conn.send(response(m.id, TunnelError.from(err).toWire(), null));
    }
  }

  private receiveChunk(conn: Connection, m: Extract<Message, { kind: 8 }>): void {
    let whole;
    try {
      whole = this.uploads.add(this.keyOf(conn, m.id), m.bytes, m.final);
    } catch (err) {
      conn.send(response(m.id, TunnelError.from(err).toWire(), null));
      return;
    }
    if (whole) this.onRequest(conn, { ...whole.owner.head, params: whole.body, stream: 0 }, whole.owner.sessions);
  }

  /** Aborts and forgets every call that came in on `conn`. */
  private dropCalls(conn: Connection, reason: TunnelError): void {
    this.uploads.dropWhere((u) => u.conn === conn);
    for (const call of this.running.values()) {
      if (call.conn !== conn) continue;
      this.deadlines.remove(call);
      call.abort(reason);
      this.running.delete(call.key);
    }
  }

  /**
   * The relay sent GOAWAY: it routes us no new calls and waits for the running ones. Once they are
   * answered, close and reconnect with backoff, reaching another relay behind the same address or
   * this one after its restart.
   */
  private leaveIfRelayGoingAway(): void {
    const conn = this.relayGoingAway;
    if (!conn || conn !== this.conn || this.running.size > 0 || this.stopping) return;
    this.relayGoingAway = undefined;
    // Let the answers queued in this turn leave first: close() flushes the write queue.
    conn.close(CloseCode.GOING_AWAY, 'relay is going away; reconnecting');
  }

  private onRequest(conn: Connection, m: Extract<Message, { kind: 0 }>, sessions = this.sessions): void {
    const { id, method, meta } = m;
    const dot = method.lastIndexOf('.');
    // Both kinds of service end in encoded bytes: a forwarded one passes the params and result through.
    let run: (ctx: CallContext) => Promise<Uint8Array | Pieces>;
    try {
      if (dot <= 0) throw new TunnelError(ErrorCode.BAD_REQUEST, `method "${method}" must be Service.Method`);
      const forwarded = this.forwarded.get(method.slice(0, dot));
      if (forwarded) {
        run = (ctx) => forwarded.call(method, m.params, ctx);
      } else {
        const entry = this.opts.services.lookup(method.slice(0, dot), method.slice(dot + 1));
        const args = decodeParams(m.params);
        run = async (ctx) => encodeReturned(method, await invoke(entry, args, ctx));
      }
    } catch (err) {
      conn.send(response(id, TunnelError.from(err).toWire(), null));
      return;
    }
    const key = this.keyOf(conn, id);
    if (this.running.has(key)) {
      conn.send(response(id, new TunnelError(ErrorCode.BAD_REQUEST, `request id ${id} is already running`).toWire(), null));
      return;
    }
    const sessionId = typeof meta.session === 'string' ? meta.session : `anonymous-${id}`;
    const timeout = typeof meta.timeout === 'number' && meta.timeout > 0 ? meta.timeout : this.opts.defaultTimeout;
    const session = sessions.get(sessionId);
    const call = new RunningCall(key, id, method, conn, session, timeout);
    this.running.set(key, call);
    this.deadlines.add(call, timeout);
    session.track(call);
    const caller = {
      address: typeof meta.address === 'string' ? meta.address : 'unknown',
      identity: typeof meta.identity === 'string' ? meta.identity : null,
    };
    const ctx = new HandlerContext(call, caller, this.name, Date.now() + timeout, this.log);
    run(ctx).then(
      (result) => this.finish(call, undefined, result),
      (err) => this.finish(call, err, undefined),
    );
  }

  private finish(call: RunningCall, err: unknown, result: Uint8Array | Pieces | undefined): void {
    this.deadlines.remove(call);
    call.session.untrack(call);
    if (this.running.get(call.key) === call) this.running.delete(call.key);
    if (this.running.size === 0) this.emit('idle');
    this.answer(call, err, result);
    this.leaveIfRelayGoingAway();
  }

  private answer(call: RunningCall, err: unknown, result: Uint8Array | Pieces | undefined): void {
    // Cancelled, timed out, or the connection is gone: nobody is waiting for this answer.
    if (call.aborted || !call.conn.isOpen) return;
    if (err !== undefined) {
      const error = TunnelError.from(err);
      if (error.code === ErrorCode.APP_ERROR && !(err instanceof TunnelError)) {
        this.log.debug({ method: call.method, err: error.message }, 'handler threw');
      }
      call.conn.send(response(call.id, error.toWire(), null));
      return;
    }
    const pieces = Array.isArray(result) ? result : [result!];
    const length = piecesLength(pieces);
    if (length > this.relayMaxMessage) {
      this.log.warn({ method: call.method, bytes: length, limit: this.relayMaxMessage }, 'result too large for the relay');
      call.conn.send(response(call.id, new TunnelError(ErrorCode.TOO_LARGE, `the result of ${call.method} is ${length} bytes; the relay passes at most ${this.relayMaxMessage}`).toWire(), null));
      return;
    }
    if (length > STREAM_THRESHOLD) call.conn.sendStream(responseStream(call.id, length), call.id, pieces);
    else call.conn.send(response(call.id, null, join(pieces)));
  }
}

function encodeReturned(method: string, value: unknown): Pieces {
  try {
    return resultPieces(value);
  } catch (e) {
    throw new TunnelError(ErrorCode.APP_ERROR, `${method} returned a value that cannot be encoded: ${(e as Error).message}`);
  }
}
