import { EventEmitter, once } from 'node:events';
import { hostname } from 'node:os';
import { ErrorCode, TunnelError } from '../errors.js';
import { decodeParams, encodeResult } from '../rpc/body.js';
import type { CallContext } from '../rpc/context.js';
import { invoke, ServiceRegistry } from '../rpc/registry.js';
import type { Session } from '../rpc/session.js';
import { relayUrl } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { dial, loadClientTls, type ClientTlsOptions, type LoadedTls, type Refusal } from '../wire/dial.js';
import { goaway, hello, Kind, PROTOCOL_VERSION, response, type Message } from '../wire/messages.js';
import { Backoff } from './backoff.js';
import { SessionTable } from './sessions.js';

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
  maxMessage: 16 * 1024 * 1024 + 64 * 1024,
};

interface RunningCall {
  id: number;
  method: string;
  conn: Connection;
  session: Session;
  controller: AbortController;
  timer: NodeJS.Timeout;
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
  private readonly running = new Map<number, RunningCall>();
  private conn: Connection | undefined;
  private welcomed = false;
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
    this.tls = loadClientTls(this.opts, this.log);
    if (options.services.size === 0) throw new TypeError('a node needs at least one service to serve');
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
      call.controller.abort(new TunnelError(ErrorCode.CANCELLED, 'node is shutting down'));
    }
    this.sessions.clear('node is shutting down');
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
        services: this.opts.services.describe(),
        labels: this.opts.labels ?? {},
      };
      if (this.opts.token) h.token = this.opts.token;
      conn.send(hello(h));
    });
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    if (conn !== this.conn) return;
    const wasConnected = this.welcomed;
    this.conn = undefined;
    this.welcomed = false;
    clearTimeout(this.healthyTimer);
    // The relay has already failed these calls with NODE_LOST; nobody waits for their answers.
    for (const call of this.running.values()) {
      clearTimeout(call.timer);
      call.controller.abort(new TunnelError(ErrorCode.NODE_LOST, 'connection to the relay was lost'));
    }
    this.running.clear();
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
        this.log.info({ relay: this.url, services: Object.keys(this.opts.services.describe()) }, 'connected to relay');
        clearTimeout(this.healthyTimer);
        this.healthyTimer = setTimeout(() => this.backoff.reset(), this.opts.reconnectReset);
        this.healthyTimer.unref();
        this.emit('connected');
        return;
      case Kind.REQUEST:
        this.onRequest(conn, m);
        return;
      case Kind.CANCEL: {
        const call = this.running.get(m.id);
        if (call) {
          this.log.debug({ method: call.method, session: call.session.id }, 'call cancelled');
          call.controller.abort(new TunnelError(ErrorCode.CANCELLED, 'the caller cancelled the call'));
        }
        return;
      }
      case Kind.SESSION_CLOSED: {
        let aborted = 0;
        for (const call of this.running.values()) if (call.session.id === m.session) aborted++;
        if (this.sessions.close(m.session)) this.log.info({ session: m.session, abortedCalls: aborted }, 'session closed');
        return;
      }
      case Kind.GOAWAY:
        this.log.warn({ reason: m.reason }, 'relay is going away');
        return;
      default:
        this.log.debug({ kind: m.kind }, 'ignoring message not meant for a node');
    }
  }

  private onRequest(conn: Connection, m: Extract<Message, { kind: 0 }>): void {
    const { id, method, meta } = m;
    const dot = method.lastIndexOf('.');
    let entry;
    let args: unknown[];
    try {
      if (dot <= 0) throw new TunnelError(ErrorCode.BAD_REQUEST, `method "${method}" must be Service.Method`);
      entry = this.opts.services.lookup(method.slice(0, dot), method.slice(dot + 1));
      args = decodeParams(m.params);
    } catch (err) {
      conn.send(response(id, TunnelError.from(err).toWire(), null));
      return;
    }
    if (this.running.has(id)) {
      conn.send(response(id, new TunnelError(ErrorCode.BAD_REQUEST, `request id ${id} is already running`).toWire(), null));
      return;
    }
    const sessionId = typeof meta.session === 'string' ? meta.session : `anonymous-${id}`;
    const timeout = typeof meta.timeout === 'number' && meta.timeout > 0 ? meta.timeout : this.opts.defaultTimeout;
    const session = this.sessions.get(sessionId);
    const controller = new AbortController();
    const call: RunningCall = {
      id,
      method,
      conn,
      session,
      controller,
      timer: setTimeout(() => controller.abort(new TunnelError(ErrorCode.TIMEOUT, `${method} passed its deadline of ${timeout} ms`)), timeout),
    };
    this.running.set(id, call);
    session.track(controller);
    const ctx: CallContext = {
      session,
      caller: {
        address: typeof meta.address === 'string' ? meta.address : 'unknown',
        identity: typeof meta.identity === 'string' ? meta.identity : null,
      },
      node: this.name,
      method,
      signal: controller.signal,
      deadline: Date.now() + timeout,
      log: this.log,
    };
    invoke(entry, args, ctx).then(
      (result) => this.finish(call, undefined, result),
      (err) => this.finish(call, err, undefined),
    );
  }

  private finish(call: RunningCall, err: unknown, result: unknown): void {
    clearTimeout(call.timer);
    call.session.untrack(call.controller);
    if (this.running.get(call.id) === call) this.running.delete(call.id);
    if (this.running.size === 0) this.emit('idle');
    // Cancelled, timed out, or the connection is gone: nobody is waiting for this answer.
    if (call.controller.signal.aborted || call.conn !== this.conn) return;
    if (err !== undefined) {
      const error = TunnelError.from(err);
      if (error.code === ErrorCode.APP_ERROR && !(err instanceof TunnelError)) {
        this.log.debug({ method: call.method, err: error.message }, 'handler threw');
      }
      call.conn.send(response(call.id, error.toWire(), null));
      return;
    }
    let bytes: Buffer;
    try {
      bytes = encodeResult(result);
    } catch (e) {
      call.conn.send(response(call.id, new TunnelError(ErrorCode.APP_ERROR, `${call.method} returned a value that cannot be encoded: ${(e as Error).message}`).toWire(), null));
      return;
    }
    if (bytes.length > this.relayMaxMessage) {
      this.log.warn({ method: call.method, bytes: bytes.length, limit: this.relayMaxMessage }, 'result too large for the relay');
      call.conn.send(response(call.id, new TunnelError(ErrorCode.TOO_LARGE, `the result of ${call.method} is ${bytes.length} bytes; the relay passes at most ${this.relayMaxMessage}`).toWire(), null));
      return;
    }
    call.conn.send(response(call.id, null, bytes));
  }
}
