import { EventEmitter } from 'node:events';
import { ErrorCode, isTunnelError, TunnelError, type WireError } from '../errors.js';
import { decodeParams, decodeResult, join, paramsPieces, piecesLength, type Pieces } from '../rpc/body.js';
import { PendingTable } from '../rpc/pending.js';
import { DeadlineWheel, type Expiring } from '../rpc/deadlines.js';
import { relayUrl } from '../util/address.js';
import { Backoff } from '../util/backoff.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { Connection } from '../wire/connection.js';
import { CloseCode } from '../wire/close-codes.js';
import { loadClientTls, RelayDial, type ClientTlsOptions } from '../wire/dial.js';
import { cancel, hello, Kind, PROTOCOL_VERSION, request, type Message } from '../wire/messages.js';
import { Reassembly, STREAM_THRESHOLD } from '../wire/streams.js';
import { PRESENCE_NOTIFICATION, RelayMethod, type NodeInfo, type PresenceEvent, type WireBroadcastEntry } from '../wire/presence.js';
import { isCallOptions, resolveClientOptions, type BroadcastOptions, type BroadcastResult, type CallOptions, type ClientSettings } from './options.js';
import { serviceStub, type ServiceStub, type UntypedService } from './stub.js';

export interface ClientOptions extends ClientTlsOptions {
  /** Default milliseconds a call may take (default 30 000). */
  timeout?: number;
  /** Milliseconds to reach the relay and be welcomed (default 10 000, or `timeout` when that is shorter). */
  connectTimeout?: number;
  /** Caller token, when the relay asks for one. */
  token?: string;
  /** Largest message accepted, bytes (default 16 MiB + 64 KiB of envelope). */
  maxMessage?: number;
  /** Drop the relay if it is silent this long, ms (default 30 000; 0 disables). */
  heartbeatTimeout?: number;
  log?: Logger;
}

/** Backoff between retries of a NODE_LOST call (util/backoff.ts, full jitter). */
const RETRY_BASE = 100;
const RETRY_CAP = 2_000;
/** Extra wait for a broadcast's answer, so the relay's per-node TIMEOUT entries arrive before ours fires. */
const BROADCAST_GRACE = 2_000;

export type { BroadcastResult } from './options.js';

/** A running presence watch; {@link Client.watchPresence}. */
export interface PresenceWatch {
  /** The nodes online when the watch started. */
  nodes: NodeInfo[];
  /** Stops delivering events to this watch's listener. */
  stop(): Promise<void>;
}

interface PendingCall extends Expiring {
  id: number;
  method: string;
  /** The call's deadline, ms after it was sent: named when it passes. */
  timeout: number;
  resolve(value: unknown): void;
  reject(err: TunnelError): void;
  abort?: { signal: AbortSignal; listener: () => void };
}

/**
 * A caller's connection to the relay. It is one session: a Login made through it lasts until it closes.
 * Any number of calls may be in flight; answers are matched to calls by id, in any order.
 * Events: `close` (code, reason); `goaway` (reason): the relay is draining, calls in flight still
 * finish, new calls fail at once with GOING_AWAY, so connect again (to another relay) to go on;
 * `presence` ({@link PresenceEvent}, while watching); `retry` (`{method, attempt, delay, error}`
 * before a NODE_LOST call is sent again).
 */
export class Client extends EventEmitter {
  /** Session id the relay gave this connection. */
  readonly session: string;
  /**
   * What welcomed this connection: `tunnel-relay/<version>`, or `tunnel-node/<name>` for a node's
   * direct port (`tunnel-node --direct-listen`), where every call is served by that node.
   */
  readonly server: string;
  private readonly conn: Connection;
  private readonly pending = new PendingTable<PendingCall>();
  private readonly deadlines = new DeadlineWheel<PendingCall>((call) => this.expire(call.id));
  private readonly downloads: Reassembly<PendingCall>;
  private readonly defaultTimeout: number;
  private readonly maxMessage: number;
  private closeError: TunnelError | undefined;
  private goingAway: TunnelError | undefined;

  /** @internal use {@link connect} */
  constructor(conn: Connection, session: string, defaultTimeout: number, maxMessage: number, server = '') {
    super();
    this.conn = conn;
    this.session = session;
    this.server = server;
    this.defaultTimeout = defaultTimeout;
    this.maxMessage = maxMessage;
    this.downloads = new Reassembly<PendingCall>(maxMessage);
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
   * names (`timeout`, `node`, `where`, `selector`, `affinity`, `retry`, `signal`) is taken as {@link CallOptions}.
   *
   * Resolves with whatever the node answered. `T` (default `unknown`) is an unchecked cast: nothing
   * compares the answer with it. For types derived from the service itself, and checked arguments,
   * use {@link Client.service}.
   */
  call<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    const last = args[args.length - 1];
    if (isCallOptions(last)) return this.request<T>(method, args.slice(0, -1), last);
    return this.request<T>(method, args);
  }

  /** Calls `Service.Method` with an explicit argument list and options; `T` is unchecked, as for {@link Client.call}. */
  async request<T = unknown>(method: string, args: readonly unknown[] = [], options: CallOptions = {}): Promise<T> {
    const timeout = options.timeout ?? this.defaultTimeout;
    const retry = options.retry ?? 0;
    if (!Number.isInteger(retry) || retry < 0) throw new TypeError(`retry must be a whole number of retries, got ${retry}`);
    const params = this.encode(method, args);
    const meta: Record<string, unknown> = { timeout };
    if (options.node !== undefined) meta.node = options.node;
    if (options.where !== undefined) meta.where = options.where;
    if (options.selector !== undefined) meta.selector = options.selector;
    if (options.affinity === false) meta.affinity = false;
    if (retry === 0) return this.send<T>(method, params, meta, timeout, options.signal);
    const deadline = Date.now() + timeout;
    const backoff = new Backoff(RETRY_BASE, RETRY_CAP);
    for (;;) {
      try {
        return await this.send<T>(method, params, meta, meta.timeout as number, options.signal, timeout);
      } catch (err) {
        if (!isTunnelError(err, ErrorCode.NODE_LOST)) throw err;
        const { delay, attempt } = backoff.next();
        if (attempt > retry || Date.now() + delay >= deadline) throw err;
        this.emit('retry', { method, attempt, delay, error: err });
        await pause(delay, method, options.signal);
        // Each attempt gets what is left of the caller's deadline, not a fresh one.
        meta.timeout = Math.max(1, deadline - Date.now());
      }
    }
  }

  /**
   * Calls `Service.Method` on every node that serves it (and matches `options.where`), in parallel
   * through the relay, and resolves with one outcome per node, sorted by node name. It rejects only
   * when no node matches or the connection fails; a node's failure is an entry with `ok: false`.
   */
  async broadcast<R = unknown>(method: string, args: readonly unknown[] = [], options: BroadcastOptions = {}): Promise<BroadcastResult<R>[]> {
    const timeout = options.timeout ?? this.defaultTimeout;
    const meta: Record<string, unknown> = { timeout, broadcast: true };
    if (options.where !== undefined) meta.where = options.where;
    const entries = await this.send<WireBroadcastEntry[]>(method, this.encode(method, args), meta, timeout + BROADCAST_GRACE, options.signal);
    if (!Array.isArray(entries)) throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `the relay answered broadcast ${method} with something other than a list`);
    return entries.map((e): BroadcastResult<R> => {
      const node = String(e?.node);
      const ms = typeof e?.ms === 'number' ? e.ms : 0;
      if (e?.error) return { node, ok: false, error: TunnelError.fromWire(e.error), ms };
      try {
        return { node, ok: true, result: decodeResult(e?.result ?? null) as R, ms };
      } catch (err) {
        return { node, ok: false, error: TunnelError.from(err), ms };
      }
    });
  }

  /**
   * A typed stub of service `name` on this connection, its methods taken from the service object's
   * type: `client.service<typeof Arith>('Arith').Multiply(2, 3)` resolves to a number, and wrong
   * arguments or unknown methods do not compile. `.with(options)` sets call options, `.broadcast`
   * calls every node. Without a type argument any method may be called and results are `unknown`.
   */
  service<T extends object = UntypedService>(name: string): ServiceStub<T> {
    return serviceStub<T>(this, name);
  }

  /** The nodes attached to the relay (presence list), optionally only those carrying `where` labels. */
  nodes(options: { where?: Record<string, string>; timeout?: number } = {}): Promise<NodeInfo[]> {
    const timeout = options.timeout ?? this.defaultTimeout;
    const meta: Record<string, unknown> = { timeout };
    if (options.where !== undefined) meta.where = options.where;
    return this.send<NodeInfo[]>(RelayMethod.LIST, this.encode(RelayMethod.LIST, []), meta, timeout);
  }

  /**
   * Calls `listener` for every node that joins or leaves the relay (a node dropped for missing
   * heartbeats leaves too), until `stop()`. Resolves once the relay has subscribed this connection,
   * with the nodes online at that moment: no event falls between the list and the first notification.
   */
  async watchPresence(listener: (event: PresenceEvent) => void, options: { where?: Record<string, string> } = {}): Promise<PresenceWatch> {
    const where = options.where;
    const matches = (n: NodeInfo) => where === undefined || Object.entries(where).every(([k, v]) => n.labels?.[k] === v);
    const filtered = (e: PresenceEvent) => {
      if (matches(e.node)) listener(e);
    };
    this.on('presence', filtered);
    let nodes: NodeInfo[];
    try {
      // One relay subscription per connection; each watch filters its own labels here.
      nodes = await this.send<NodeInfo[]>(RelayMethod.WATCH, this.encode(RelayMethod.WATCH, []), { timeout: this.defaultTimeout }, this.defaultTimeout);
    } catch (err) {
      this.off('presence', filtered);
      throw err;
    }
    return {
      nodes: nodes.filter(matches),
      stop: async () => {
        this.off('presence', filtered);
        if (this.listenerCount('presence') > 0 || this.closed) return;
        await this.send(RelayMethod.UNWATCH, this.encode(RelayMethod.UNWATCH, []), { timeout: this.defaultTimeout }, this.defaultTimeout);
      },
    };
  }

  private encode(method: string, args: readonly unknown[]): Pieces {
    try {
      return paramsPieces(args);
    } catch (err) {
      throw new TunnelError(ErrorCode.BAD_REQUEST, `arguments of ${method} cannot be encoded: ${(err as Error).message}`);
    }
  }

  /**
   * Sends one request and waits up to `timeout` ms for its answer. `deadline` is the one a TIMEOUT
   * names: the caller's, of which a retry gets only what is left.
   */
  private send<T>(method: string, params: Pieces, meta: object, timeout: number, signal?: AbortSignal, deadline = timeout): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closeError) return reject(this.closeError);
      if (this.goingAway) return reject(this.goingAway);
      if (signal?.aborted) return reject(new TunnelError(ErrorCode.CANCELLED, `${method} was cancelled before it was sent`));
      if (!(timeout > 0)) return reject(new TypeError(`timeout must be a positive number of milliseconds, got ${timeout}`));
      const call: PendingCall = { id: 0, method, timeout: deadline, resolve: resolve as (v: unknown) => void, reject, deadlineSlot: 0 };
      const id = this.pending.add(call);
      call.id = id;
      this.deadlines.add(call, timeout);
      if (signal) {
        const listener = () => this.cancel(id);
        signal.addEventListener('abort', listener, { once: true });
        call.abort = { signal, listener };
      }
      const length = piecesLength(params);
      if (length > this.maxMessage) {
        this.settle(id);
        return reject(new TunnelError(ErrorCode.TOO_LARGE, `arguments of ${method} are ${length} bytes; the relay accepts at most ${this.maxMessage}`));
      }
      if (length > STREAM_THRESHOLD) {
        this.conn.sendStream(request(id, method, null, { ...meta, stream: length }), id, params);
      } else {
        this.conn.send(request(id, method, join(params), meta));
      }
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
    this.downloads.drop(id);
    // Params still streaming for an answered call are not needed any more.
    this.conn.dropStream(id);
    if (call.abort) call.abort.signal.removeEventListener('abort', call.abort.listener);
    return call;
  }

  private expire(id: number): void {
    const call = this.settle(id);
    if (!call) return;
    this.conn.send(cancel(id));
    call.reject(new TunnelError(ErrorCode.TIMEOUT, `${call.method} got no answer within ${call.timeout} ms`));
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
    if (m.kind === Kind.NOTIFY) {
      if (m.method === PRESENCE_NOTIFICATION) this.onPresence(m.params);
      return;
    }
    if (m.kind === Kind.RESPONSE_STREAM) {
      const call = this.pending.get(m.id);
      if (!call) return;
      try {
        this.downloads.start(m.id, m.length, call);
      } catch (err) {
        this.settle(m.id);
        call.reject(err as TunnelError);
      }
      return;
    }
    if (m.kind === Kind.CHUNK) {
      let whole;
      try {
        whole = this.downloads.add(m.id, m.bytes, m.final);
      } catch (err) {
        this.settle(m.id)?.reject(err as TunnelError);
        return;
      }
      if (whole && this.settle(m.id)) this.deliver(whole.owner, null, whole.body);
      return;
    }
    if (m.kind !== Kind.RESPONSE) return;
    const call = this.settle(m.id);
    if (call) this.deliver(call, m.error, m.result);
  }

  private deliver(call: PendingCall, error: WireError | null, result: Uint8Array | null): void {
    if (error) {
      call.reject(TunnelError.fromWire(error));
      return;
    }
    try {
      call.resolve(decodeResult(result));
    } catch (err) {
      call.reject(err as TunnelError);
    }
  }

  private onPresence(params: Uint8Array): void {
    let events: unknown[];
    try {
      events = decodeParams(params);
    } catch {
      return; // a relay speaking another dialect; the watch just sees nothing
    }
    for (const e of events) {
      const event = e as PresenceEvent;
      if (event && (event.event === 'join' || event.event === 'leave' || event.event === 'update') && typeof event.node?.name === 'string')
        this.emit('presence', event);
    }
  }

  private onClose(code: number, reason: string): void {
    this.closeError = new TunnelError(ErrorCode.CONNECTION_CLOSED, `connection to the relay closed (${code}${reason ? `: ${reason}` : ''})`);
    this.deadlines.clear();
    for (const call of this.pending.drain()) call.reject(this.closeError);
    this.emit('close', code, reason);
  }
}

/** Waits `ms` unless `signal` aborts first, which rejects with CANCELLED. */
function pause(ms: number, method: string, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const cancelled = () => {
      clearTimeout(timer);
      reject(new TunnelError(ErrorCode.CANCELLED, `${method} was cancelled while waiting to retry`));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', cancelled);
      resolve();
    }, ms);
    if (signal?.aborted) cancelled();
    else signal?.addEventListener('abort', cancelled, { once: true });
  });
}

/**
 * Connects to a relay as a caller. `relay` is `host:port`, `[v6]:port`, `:port` or a bare port
 * (both on localhost), or a `ws://` / `wss://` URL. Resolves once the relay has welcomed the
 * connection; a malformed address rejects at once, naming it.
 */
export function connect(relay: string, options: ClientOptions = {}): Promise<Client> {
  let opts: ClientOptions & ClientSettings;
  let url: string;
  try {
    opts = resolveClientOptions(options);
    url = relayUrl(relay, 'connect() relay');
  } catch (err) {
    return Promise.reject(err as Error);
  }
  const log = opts.log ?? silentLogger;
  return new Promise<Client>((resolve, reject) => {
    let tls;
    try {
      tls = loadClientTls(opts, log);
    } catch (err) {
      reject(new TunnelError(ErrorCode.BAD_REQUEST, (err as Error).message));
      return;
    }
    const started = performance.now();
    const dial = new RelayDial(url, {
      maxMessage: opts.maxMessage,
      // The connect deadline gives the reason; ws's own timer only frees the socket if that one did not.
      handshakeTimeout: opts.connectTimeout + 1_000,
      token: opts.token,
      tls,
      connectTimeout: opts.connectTimeout,
      onTimeout: (why) => {
        conn.terminate();
        reject(new TunnelError(ErrorCode.TIMEOUT, `cannot connect to relay ${url}: ${why}`));
      },
    });
    const conn = new Connection(
      dial.ws,
      {
        message(m) {
          if (m.kind !== Kind.WELCOME) return;
          dial.welcomed();
          if (typeof m.welcome.version === 'number') conn.peerVersion = m.welcome.version;
          const limit = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : opts.maxMessage;
          const client = new Client(conn, String(m.welcome.session ?? ''), opts.timeout, limit, String(m.welcome.relay ?? ''));
          log.debug({ url, server: client.server, session: client.session, maxMessage: limit, ms: Math.round(performance.now() - started) }, 'connected');
          resolve(client);
        },
        close(code, reason) {
          const end = dial.ended(code, reason);
          const fail = (hint: string | undefined) =>
            reject(
              new TunnelError(
                end.code === CloseCode.UNAUTHORIZED ? ErrorCode.UNAUTHORIZED : ErrorCode.CONNECTION_CLOSED,
                `cannot connect to relay ${url}: ${end.reason || `closed with code ${code}`}${hint ? `; ${hint}` : ''}`,
              ),
            );
          if (end.mayBeTls) void dial.probeTls(opts.connectTimeout).then(fail);
          else fail(undefined);
        },
      },
      { log, heartbeatTimeout: opts.heartbeatTimeout, maxFrame: opts.maxMessage },
    );
    dial.ws.on('open', () => {
      const h: Parameters<typeof hello>[0] = { version: PROTOCOL_VERSION, role: 'caller' };
      if (opts.token) h.token = opts.token;
      conn.send(hello(h));
    });
  });
}
