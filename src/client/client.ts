import { EventEmitter } from 'node:events';
import { ErrorCode, TunnelError } from '../errors.js';
import { decodeResult, encodeParams } from '../rpc/body.js';
import { PendingTable } from '../rpc/pending.js';
import { relayUrl } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { Connection } from '../wire/connection.js';
import { dial, loadClientTls, type ClientTlsOptions, type Refusal } from '../wire/dial.js';
import { cancel, hello, Kind, PROTOCOL_VERSION, request, type Message } from '../wire/messages.js';
import { isCallOptions, type CallOptions } from './options.js';

export interface ClientOptions extends ClientTlsOptions {
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

interface PendingCall {
  method: string;
  resolve(value: unknown): void;
  reject(err: TunnelError): void;
  timer: NodeJS.Timeout;
  abort?: { signal: AbortSignal; listener: () => void };
}

/**
 * A caller's connection to the relay. It is one session: a Login made through it lasts until it closes.
 * Any number of calls may be in flight; answers are matched to calls by id, in any order.
 */
export class Client extends EventEmitter {
  /** Session id the relay gave this connection. */
  readonly session: string;
  private readonly conn: Connection;
  private readonly pending = new PendingTable<PendingCall>();
  private readonly defaultTimeout: number;
  private readonly maxMessage: number;
  private closeError: TunnelError | undefined;

  /** @internal use {@link connect} */
  constructor(conn: Connection, session: string, defaultTimeout: number, maxMessage = Infinity) {
    super();
    this.conn = conn;
    this.session = session;
    this.defaultTimeout = defaultTimeout;
    this.maxMessage = maxMessage;
    conn.setHandlers({ message: (m) => this.onMessage(m), close: (code, reason) => this.onClose(code, reason) });
  }

  get closed(): boolean {
    return this.closeError !== undefined;
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
      if (options.signal?.aborted) return reject(new TunnelError(ErrorCode.CANCELLED, `${method} was cancelled before it was sent`));
      const timeout = options.timeout ?? this.defaultTimeout;
      if (!(timeout > 0)) return reject(new TypeError(`timeout must be a positive number of milliseconds, got ${timeout}`));
      let params: Buffer;
      try {
        params = encodeParams(args);
      } catch (err) {
        return reject(new TunnelError(ErrorCode.BAD_REQUEST, `arguments of ${method} cannot be encoded: ${(err as Error).message}`));
      }
      if (params.length > this.maxMessage) {
        return reject(new TunnelError(ErrorCode.TOO_LARGE, `arguments of ${method} are ${params.length} bytes; the relay accepts at most ${this.maxMessage}`));
      }
      const call: PendingCall = { method, resolve: resolve as (v: unknown) => void, reject, timer: undefined as unknown as NodeJS.Timeout };
      const id = this.pending.add(call);
      call.timer = setTimeout(() => this.expire(id), timeout);
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
    clearTimeout(call.timer);
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
    for (const call of this.pending.drain()) {
      clearTimeout(call.timer);
      call.reject(this.closeError);
    }
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
    let tls;
    try {
      tls = loadClientTls(opts, log);
    } catch (err) {
      reject(new TunnelError(ErrorCode.BAD_REQUEST, (err as Error).message));
      return;
    }
    let refused: Refusal | undefined;
    const ws = dial(url, {
      maxMessage: opts.maxMessage,
      handshakeTimeout: opts.connectTimeout,
      headers,
      tls,
      onRefused: (r) => {
        refused = r;
      },
    });
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
          const limit = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : Infinity;
          resolve(new Client(conn, String(m.welcome.session ?? ''), opts.timeout, limit));
        },
        close(code, reason) {
          clearTimeout(timer);
          if (refused) {
            const denied = refused.status === 401 || refused.status === 403;
            const why = `HTTP ${refused.status}: ${refused.reason}`;
            reject(new TunnelError(denied ? ErrorCode.UNAUTHORIZED : ErrorCode.CONNECTION_CLOSED, `cannot connect to relay ${url}: ${why}`));
            return;
          }
          const why = reason || lastError || `closed with code ${code}`;
          reject(new TunnelError(code === 4003 ? ErrorCode.UNAUTHORIZED : ErrorCode.CONNECTION_CLOSED, `cannot connect to relay ${url}: ${why}`));
        },
      },
      { log, heartbeatTimeout: opts.heartbeatTimeout, maxFrame: opts.maxMessage },
    );
    ws.on('open', () => {
      const h: Parameters<typeof hello>[0] = { version: PROTOCOL_VERSION, role: 'caller' };
      if (opts.token) h.token = opts.token;
      conn.send(hello(h));
    });
  });
}
