import { EventEmitter } from 'node:events';
import { ErrorCode, TunnelError } from '../errors.js';
import { decodeResult, encodeParams } from '../rpc/body.js';
import { PendingTable } from '../rpc/pending.js';
import { DeadlineWheel, type Expiring } from '../rpc/deadlines.js';
import { relayUrl } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { Connection } from '../wire/connection.js';
import { dial } from '../wire/dial.js';
import { cancel, hello, Kind, PROTOCOL_VERSION, request, type Message } from '../wire/messages.js';
import { isCallOptions, type CallOptions } from './options.js';

export interface ClientOptions {
  /** Default milliseconds a call may take (default 30 000). */
  timeout?: number;
  /** Milliseconds to reach the relay and be welcomed (default 10 000). */
  connectTimeout?: number;
  /** Caller token, when the relay asks for one. */
  token?: string;
  /** Largest message accepted, bytes (default 16 MiB + 64 KiB of envelope). */
  maxMessage?: number;
  /** Drop the relay if it is silent this long, ms (default 30 000; 0 disables). */
  heartbeatTimeout?: number;
  log?: Logger;
}

const DEFAULTS = {
  timeout: 30_000,
  connectTimeout: 10_000,
  maxMessage: 16 * 1024 * 1024 + 64 * 1024,
  heartbeatTimeout: 30_000,
};

interface PendingCall extends Expiring {
  id: number;
  method: string;
  resolve(value: unknown): void;
  reject(err: TunnelError): void;
  abort?: { signal: AbortSignal; listener: () => void };
}

/**
 * A caller's connection to the relay. It is one session: a Login made through it lasts until it closes.
 * Any number of calls may be in flight; answers are matched to calls by id, in any order.
 * Events: `close` (code, reason), `goaway` (reason): the relay is draining; calls in flight still
 * finish, new calls fail at once with GOING_AWAY, so connect again (to another relay) to go on.
 */
export class Client extends EventEmitter {
  /** Session id the relay gave this connection. */
  readonly session: string;
  private readonly conn: Connection;
  private readonly pending = new PendingTable<PendingCall>();
  private readonly deadlines = new DeadlineWheel<PendingCall>((call) => this.expire(call.id));
  private readonly defaultTimeout: number;
  private closeError: TunnelError | undefined;
  private goingAway: TunnelError | undefined;

  /** @internal use {@link connect} */
  constructor(conn: Connection, session: string, defaultTimeout: number) {
    super();
    this.conn = conn;
    this.session = session;
    this.defaultTimeout = defaultTimeout;
    conn.setHandlers({ message: (m) => this.onMessage(m), close: (code, reason) => this.onClose(code, reason) });
  }

  get closed(): boolean {
    return this.closeError !== undefined;
  }

  /** True once the relay said it is going away: new calls on this client fail with GOING_AWAY. */
  get draining(): boolean {
    return this.goingAway !== undefined;
  }

  /** Calls in flight. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Calls `Service.Method` with `args`. A last argument that is a plain object holding only option
   * names (`timeout`, `node`, `signal`) is taken as {@link CallOptions}.
   */
  call<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    const last = args[args.length - 1];
    if (isCallOptions(last)) return this.request<T>(method, args.slice(0, -1), last);
    return this.request<T>(method, args);
  }

  /** Calls `Service.Method` with an explicit argument list and options. */
  request<T = unknown>(method: string, args: readonly unknown[] = [], options: CallOptions = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closeError) return reject(this.closeError);
      if (this.goingAway) return reject(this.goingAway);
      if (options.signal?.aborted) return reject(new TunnelError(ErrorCode.CANCELLED, `${method} was cancelled before it was sent`));
      const timeout = options.timeout ?? this.defaultTimeout;
      if (!(timeout > 0)) return reject(new TypeError(`timeout must be a positive number of milliseconds, got ${timeout}`));
      let params: Buffer;
      try {
        params = encodeParams(args);
      } catch (err) {
        return reject(new TunnelError(ErrorCode.BAD_REQUEST, `arguments of ${method} cannot be encoded: ${(err as Error).message}`));
      }
      const call: PendingCall = { id: 0, method, resolve: resolve as (v: unknown) => void, reject, deadlineSlot: 0 };
      const id = this.pending.add(call);
      call.id = id;
      this.deadlines.add(call, timeout);
      if (options.signal) {
        const listener = () => this.cancel(id);
        options.signal.addEventListener('abort', listener, { once: true });
        call.abort = { signal: options.signal, listener };
      }
      const meta: { timeout: number; node?: string } = { timeout };
      if (options.node !== undefined) meta.node = options.node;
      this.conn.send(request(id, method, params, meta));
    });
  }

  /** Closes the connection; calls in flight fail with CONNECTION_CLOSED. */
  close(): Promise<void> {
    if (this.closeError) return Promise.resolve();
    return new Promise((resolve) => {
      this.once('close', () => resolve());
      this.conn.close(1000, 'client closed');
    });
  }

  private settle(id: number): PendingCall | undefined {
    const call = this.pending.take(id);
    if (!call) return undefined;
    this.deadlines.remove(call);
    if (call.abort) call.abort.signal.removeEventListener('abort', call.abort.listener);
    return call;
  }

  private expire(id: number): void {
    const call = this.settle(id);
    if (!call) return;
    this.conn.send(cancel(id));
    call.reject(new TunnelError(ErrorCode.TIMEOUT, `${call.method} got no answer in time`));
  }

  private cancel(id: number): void {
    const call = this.settle(id);
    if (!call) return;
    this.conn.send(cancel(id));
    call.reject(new TunnelError(ErrorCode.CANCELLED, `${call.method} was cancelled`));
  }

  private onMessage(m: Message): void {
    if (m.kind === Kind.GOAWAY) {
      this.goingAway = new TunnelError(ErrorCode.GOING_AWAY, `the relay is going away (${m.reason}); connect again to make new calls`);
      this.emit('goaway', m.reason);
      return;
    }
    if (m.kind !== Kind.RESPONSE) return;
    const call = this.settle(m.id);
    if (!call) return;
    if (m.error) {
      call.reject(TunnelError.fromWire(m.error));
      return;
    }
    try {
      call.resolve(decodeResult(m.result));
    } catch (err) {
      call.reject(err as TunnelError);
    }
  }

  private onClose(code: number, reason: string): void {
    this.closeError = new TunnelError(
      ErrorCode.CONNECTION_CLOSED,
      `connection to the relay closed (${code}${reason ? `: ${reason}` : ''})`,
    );
    this.deadlines.clear();
    for (const call of this.pending.drain()) call.reject(this.closeError);
    this.emit('close', code, reason);
  }
}

/**
 * Connects to a relay as a caller. `relay` is `host:port`, `:port` or a `ws://` / `wss://` URL.
 * Resolves once the relay has welcomed the connection.
 */
export function connect(relay: string, options: ClientOptions = {}): Promise<Client> {
  const opts = { ...DEFAULTS, ...options };
  const log = opts.log ?? silentLogger;
  const url = relayUrl(relay);
  return new Promise<Client>((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    const ws = dial(url, { maxMessage: opts.maxMessage, handshakeTimeout: opts.connectTimeout, headers });
    let lastError = '';
    const fail = (err: TunnelError) => {
      clearTimeout(timer);
      conn.terminate();
      reject(err);
    };
    const timer = setTimeout(
      () => fail(new TunnelError(ErrorCode.CONNECTION_CLOSED, `relay ${url} did not welcome us within ${opts.connectTimeout} ms`)),
      opts.connectTimeout,
    );
    ws.on('error', (err) => {
      lastError = err.message;
    });
    const conn = new Connection(
      ws,
      {
        message(m) {
          if (m.kind !== Kind.WELCOME) return;
          clearTimeout(timer);
          resolve(new Client(conn, String(m.welcome.session ?? ''), opts.timeout));
        },
        close(code, reason) {
          clearTimeout(timer);
          const why = reason || lastError || `closed with code ${code}`;
          reject(new TunnelError(code === 4003 ? ErrorCode.UNAUTHORIZED : ErrorCode.CONNECTION_CLOSED, `cannot connect to relay ${url}: ${why}`));
        },
      },
      { log, heartbeatTimeout: opts.heartbeatTimeout },
    );
    ws.on('open', () => {
      const h: Parameters<typeof hello>[0] = { version: PROTOCOL_VERSION, role: 'caller' };
      if (opts.token) h.token = opts.token;
      conn.send(hello(h));
    });
  });
}
