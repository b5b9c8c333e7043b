import { EventEmitter, once } from 'node:events';
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { ErrorCode, TunnelError } from '../errors.js';
import type { ServiceRegistry } from '../rpc/registry.js';
import { relayUrl } from '../util/address.js';
import { nodeNameProblem } from '../wire/bounds.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { dial, loadClientTls, type ClientTlsOptions, type LoadedTls, type Refusal } from '../wire/dial.js';
import { ENVELOPE_ALLOWANCE, goaway, hello, Kind, PROTOCOL_VERSION, response, welcome, type Message, type ServiceDescription } from '../wire/messages.js';
import { RELAY_SERVICE, RelayMethod, type NodeInfo } from '../wire/presence.js';
import { encodeResult } from '../rpc/body.js';
import { Backoff } from './backoff.js';
import { resolveNodeOptions, type NodeSettings } from './options.js';
import { Dispatcher, type DispatchHost, type RunningCall } from './dispatcher.js';
import type { ForwardedService } from './forward.js';
import { SessionTable } from './sessions.js';
import { DeadlineWheel } from '../rpc/deadlines.js';

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
  /** Bytes of incomplete streamed params one caller session may hold on this node (default 32 MiB). */
  maxReassembly?: number;
  /** Streamed params that receive no chunk for this long are dropped, ms (default 30 000). */
  streamIdleTimeout?: number;
}

/**
 * The node: dials out to the relay, announces its services, runs the calls the relay forwards, and
 * reconnects forever with jittered exponential backoff. Events: `connected`, `disconnected`, `stopped`.
 */
export class TunnelNode extends EventEmitter {
  readonly name: string;
  readonly url: string;
  /** Random id of this node process, sent in every hello: the relay tells our reconnects from another process's claim. */
  readonly instance = randomUUID();
  private readonly opts: NodeSettings & NodeOptions;
  private readonly log: Logger;
  private readonly backoff: Backoff;
  private readonly tls: LoadedTls;
  private readonly sessions = new SessionTable();
  private readonly directSessions = new SessionTable();
  /** Every connection's calls: the tunnel to the relay, and direct callers. */
  private readonly dispatchers = new Set<Dispatcher>();
  private readonly host: DispatchHost;
  private readonly deadlines = new DeadlineWheel<RunningCall>((call) => call.dispatcher.expire(call));
  private readonly forwarded = new Map<string, ForwardedService>();
  private readonly streamTimer: NodeJS.Timeout;
  private directCount = 0;
  private conn: Connection | undefined;
  private link: Dispatcher | undefined;
  private welcomed = false;
  /** The connection whose relay sent GOAWAY: left once its running calls are done. */
  private relayGoingAway: Connection | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private healthyTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private started = false;
  private readonly startedAt = new Date();

  constructor(options: NodeOptions) {
    super();
    this.opts = resolveNodeOptions(options);
    this.name = options.name ?? hostname();
    const nameProblem = nodeNameProblem(this.name);
    if (nameProblem !== undefined) throw new TypeError(`TunnelNode option name: ${nameProblem}`);
    this.url = relayUrl(options.relay, 'TunnelNode option relay');
    this.log = (options.log ?? silentLogger).child({ node: this.name });
    this.backoff = new Backoff(this.opts.reconnectBase, this.opts.reconnectCap);
    this.tls = loadClientTls(this.opts, this.log);
    for (const f of options.forward ?? []) {
      if (options.services.has(f.name) || this.forwarded.has(f.name)) throw new TypeError(`service ${f.name} is forwarded and also served otherwise; pick one`);
      this.forwarded.set(f.name, f);
    }
    if (options.services.size === 0 && this.forwarded.size === 0) throw new TypeError('a node needs at least one service to serve');
    this.host = {
      name: this.name,
      log: this.log,
      services: options.services,
      forwarded: this.forwarded,
      deadlines: this.deadlines,
      defaultTimeout: this.opts.defaultTimeout,
      maxMessage: this.opts.maxMessage - ENVELOPE_ALLOWANCE,
      maxReassembly: this.opts.maxReassembly,
      callFinished: () => {
        if (this.inFlight === 0) this.emit('idle');
        this.leaveIfRelayGoingAway();
      },
      served: 0,
    };
    this.streamTimer = setInterval(() => {
      for (const d of this.dispatchers) d.expireIdleUploads(this.opts.streamIdleTimeout);
    }, Math.max(100, Math.min(this.opts.streamIdleTimeout / 2, 5_000)));
    this.streamTimer.unref();
  }

  /** True while the relay has accepted us. */
  get connected(): boolean {
    return this.welcomed && this.conn?.isOpen === true;
  }

  /** Handlers running now. */
  get inFlight(): number {
    let n = 0;
    for (const d of this.dispatchers) n += d.size;
    return n;
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
    clearInterval(this.streamTimer);
    const conn = this.conn;
    if (conn?.isOpen) {
      conn.send(goaway('node is shutting down'));
      if (this.inFlight > 0) {
        this.log.info({ running: this.inFlight, drainTimeoutMs: drainTimeout }, 'draining: waiting for running calls');
        await this.waitIdle(drainTimeout);
      }
    }
    for (const d of this.dispatchers) d.drop(new TunnelError(ErrorCode.CANCELLED, 'node is shutting down'));
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
    while (this.inFlight > 0 && Date.now() < deadline) {
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
    const link = new Dispatcher(this.host, conn, this.sessions, false);
    this.dispatchers.add(link);
    this.conn = conn;
    this.link = link;
    this.welcomed = false;
    ws.on('open', () => {
      const h: Parameters<typeof hello>[0] = {
        version: PROTOCOL_VERSION,
        role: 'node',
        name: this.name,
        instance: this.instance,
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
    const link = this.link!;
    this.conn = undefined;
    this.link = undefined;
    this.welcomed = false;
    clearTimeout(this.healthyTimer);
    // The relay has already failed these calls with NODE_LOST; nobody waits for their answers.
    this.dispatchers.delete(link);
    link.drop(new TunnelError(ErrorCode.NODE_LOST, 'connection to the relay was lost'));
    this.sessions.clear('connection to the relay was lost');
    if (wasConnected) this.log.warn({ code, reason }, 'disconnected from relay');
    else if (!this.stopping) this.log.warn({ relay: this.url, code, reason }, 'could not connect to relay');
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.NAME_CONFLICT) {
      const why = code === CloseCode.UNAUTHORIZED ? 'relay refused our credentials' : 'relay refused our name';
      this.log.error({ reason }, `${why}; retrying at the longest backoff`);
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
        if (typeof m.welcome.version === 'number') conn.peerVersion = m.welcome.version;
        if (this.link) this.link.peerMaxMessage = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : Infinity;
        this.log.info({ relay: this.url, services: Object.keys(this.describe()) }, 'connected to relay');
        clearTimeout(this.healthyTimer);
        this.healthyTimer = setTimeout(() => this.backoff.reset(), this.opts.reconnectReset);
        this.healthyTimer.unref();
        this.emit('connected');
        return;
      case Kind.GOAWAY:
        this.log.warn({ reason: m.reason, running: this.inFlight }, 'relay is going away');
        this.relayGoingAway = conn;
        this.leaveIfRelayGoingAway();
        return;
      default:
        if (conn === this.conn) this.link?.onMessage(m);
    }
  }

  /**
   * Serves one caller connected straight to this node, without a relay (see direct.ts): the caller
   * speaks the caller protocol and is one session, exactly as it would be through a relay; the node
   * answers its cancels and deadlines itself, since no relay does.
   * @internal
   */
  acceptDirect(conn: Connection, address: string, local = ''): void {
    const session = `direct-${++this.directCount}`;
    const maxBody = this.opts.maxMessage - ENVELOPE_ALLOWANCE;
    const d = new Dispatcher(this.host, conn, this.directSessions, true, (meta) => ({
      session,
      address,
      identity: null,
      timeout: typeof meta.timeout === 'number' && meta.timeout > 0 ? meta.timeout : this.opts.defaultTimeout,
      broadcast: meta.broadcast === true,
    }));
    d.peerMaxMessage = maxBody;
    this.dispatchers.add(d);
    conn.setHandlers({
      message: (m) => {
        switch (m.kind) {
          case Kind.HELLO:
            conn.peerVersion = Math.min(m.hello.version, PROTOCOL_VERSION);
            conn.send(welcome({ version: conn.peerVersion, relay: `tunnel-node/${this.name}`, session, maxMessage: maxBody }));
            return;
          case Kind.REQUEST:
            if (m.method.startsWith(`${RELAY_SERVICE}.`)) return this.answerAsRelay(conn, m, local);
            d.onMessage(m);
            return;
          case Kind.CANCEL:
          case Kind.CHUNK:
            d.onMessage(m);
            return;
          default:
            this.log.debug({ kind: m.kind }, 'ignoring message from direct caller');
        }
      },
      close: () => {
        this.dispatchers.delete(d);
        d.drop(new TunnelError(ErrorCode.CANCELLED, 'caller disconnected'));
        this.directSessions.close(session);
      },
    });
  }

  /**
   * A direct caller asking for the relay's own service: `Relay.List` is answered with this node
   * alone (its address as the caller reached it), so that `tunnel-call --list` works against a direct
   * port; there is no presence to watch.
   */
  private answerAsRelay(conn: Connection, m: Extract<Message, { kind: typeof Kind.REQUEST }>, local: string): void {
    if (m.method !== RelayMethod.LIST) {
      const message = `${m.method}: this is node ${this.name}'s direct port (tunnel-node --direct-listen), not a relay; of the Relay service it answers only ${RelayMethod.LIST}`;
      conn.send(response(m.id, new TunnelError(ErrorCode.BAD_REQUEST, message).toWire(), null));
      return;
    }
    const labels = this.opts.labels ?? {};
    const where = m.meta.where;
    const matches = where === null || typeof where !== 'object' || Object.entries(where).every(([k, v]) => labels[k] === v);
    const self: NodeInfo = {
      name: this.name,
      labels,
      services: this.describe(),
      address: local,
      connectedAt: this.startedAt.toISOString(),
      inFlight: this.inFlight,
      served: this.host.served,
      draining: this.stopping,
    };
    conn.send(response(m.id, null, encodeResult(matches ? [self] : [])));
  }

  /**
   * The relay sent GOAWAY: it routes us no new calls and waits for the running ones. Once they are
   * answered, close and reconnect with backoff, reaching another relay behind the same address or
   * this one after its restart.
   */
  private leaveIfRelayGoingAway(): void {
    const conn = this.relayGoingAway;
    if (!conn || conn !== this.conn || (this.link?.size ?? 0) > 0 || this.stopping) return;
    this.relayGoingAway = undefined;
    // Let the answers queued in this turn leave first: close() flushes the write queue.
    conn.close(CloseCode.GOING_AWAY, 'relay is going away; reconnecting');
  }
}
