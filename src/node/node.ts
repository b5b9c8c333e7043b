import { EventEmitter, once } from 'node:events';
import type { LookupFunction } from 'node:net';
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { ErrorCode, TunnelError } from '../errors.js';
import type { ServiceRegistry } from '../rpc/registry.js';
import { relayUrl } from '../util/address.js';
import { nodeNameProblem } from '../wire/bounds.js';
import { silentLogger, type Logger } from '../util/logger.js';
import type { Connection } from '../wire/connection.js';
import { loadClientTls, type ClientTlsOptions } from '../wire/dial.js';
import { ENVELOPE_ALLOWANCE, Kind, PROTOCOL_VERSION, response, welcome, type Hello, type Message, type ServiceDescription } from '../wire/messages.js';
import { RELAY_SERVICE, RelayMethod, type NodeInfo } from '../wire/presence.js';
import { encodeResult } from '../rpc/body.js';
import { resolveNodeOptions, type NodeSettings } from './options.js';
import { Dispatcher, type DispatchHost, type RunningCall } from './dispatcher.js';
import type { ForwardedService } from './forward.js';
import { SessionTable } from './sessions.js';
import { RelayTunnel, type TunnelHost } from './tunnel.js';
import { LearnedRelays } from './relay-rotation.js';
import type { TunnelState } from './tunnel-state.js';
import { DeadlineWheel } from '../rpc/deadlines.js';

export type { TunnelState } from './tunnel-state.js';

export interface NodeOptions extends ClientTlsOptions {
  /**
   * Relay address: `host:port`, `:port`, `ws://…` or `wss://…`. Several (the relays of one cluster):
   * the node holds a tunnel to each at once, under one name and one instance (dual-homed).
   */
  relay: string | string[];
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
  /**
   * Bytes of answers waiting to be written to one relay (default 32 MiB). Above it the node holds
   * further answers unencoded until the socket drains, and answers new requests OVERLOADED.
   */
  maxBacklog?: number;
  /** Handlers running at once on one tunnel (default 4 096); more requests are answered OVERLOADED. */
  maxInFlight?: number;
  /**
   * Move to another relay of the cluster when the relay stays unreachable (default true): the relays
   * of a cluster list the others in their welcome, and a tunnel whose relay failed 3 rounds of dials
   * in a row, or 10 s since it was last connected, dials the next of its configured relay and those,
   * in turn. A `wss://` relay is never left for a `ws://` one; a dual-homed node's tunnel moves only
   * to a relay none of its other tunnels holds. `false` keeps every tunnel on its configured relay.
   */
  followCluster?: boolean;
  /**
   * Resolves a relay's host name, with the shape of Node's net `lookup` option (`dns.lookup` by
   * default). The node asks for every address (`all: true`) and tries each in turn before backing
   * off; TLS server name and `Host` stay the name. For tests and custom resolvers.
   */
  lookup?: LookupFunction;
}

/**
 * Checks a node's relay addresses (`what` names the flag or option in messages) and returns their
 * URLs: at least one, each relay once.
 */
export function relayUrls(relays: string | readonly string[], what: string): string[] {
  const texts = typeof relays === 'string' ? [relays] : [...relays];
  if (texts.length === 0) throw new TypeError(`${what}: give at least one relay address`);
  const seen = new Map<string, string>();
  for (const text of texts) {
    const url = relayUrl(text, what);
    const first = seen.get(url);
    if (first !== undefined) {
      const same = first === text ? `"${text}" is given twice` : `"${first}" and "${text}" are the same relay (${url})`;
      throw new TypeError(`${what} ${same}; give each relay once`);
    }
    seen.set(url, text);
  }
  return [...seen.keys()];
}

/**
 * The node: holds a tunnel to each of its relays (see tunnel.ts), announces its services on each,
 * runs the calls they forward, and serves direct callers. Each tunnel reconnects by itself, forever,
 * with jittered exponential backoff. Sessions belong to the node process: losing one tunnel aborts
 * only the calls that came through it, and sessions end only when no tunnel is connected.
 *
 * Events: `connected` (url) when a relay welcomes a tunnel, `disconnected` (code, reason, url) when a
 * tunnel closes or a dial fails, `stopped`; `url` is the relay dialled (the configured one, or the
 * relay of the cluster the tunnel moved to, see {@link NodeOptions.followCluster}).
 */
export class TunnelNode extends EventEmitter {
  readonly name: string;
  /** The first relay's URL. */
  readonly url: string;
  /** Every relay's URL, in the order given. */
  readonly urls: readonly string[];
  /** Random id of this node process, sent in every hello on every tunnel: relays tell our reconnects (and our other tunnels) from another process's claim. */
  readonly instance = randomUUID();
  private readonly opts: NodeSettings & NodeOptions;
  private readonly startedAt = new Date();
  private readonly log: Logger;
  /** Shared by every tunnel (a session id is unique across the relays of a cluster). */
  private readonly sessions = new SessionTable();
  private readonly directSessions = new SessionTable();
  private readonly relayTunnels: RelayTunnel[];
  /** The relays of the cluster the welcomes listed (`followCluster`). */
  private readonly learned: LearnedRelays;
  /** Each direct caller's calls. */
  private readonly direct = new Set<Dispatcher>();
  private readonly host: DispatchHost;
  private readonly deadlines = new DeadlineWheel<RunningCall>((call) => call.dispatcher.expire(call));
  private readonly forwarded = new Map<string, ForwardedService>();
  private readonly streamTimer: NodeJS.Timeout;
  private directCount = 0;
  private stopping = false;
  private started = false;

  constructor(options: NodeOptions) {
    super();
    this.opts = resolveNodeOptions(options);
    this.name = options.name ?? hostname();
    const nameProblem = nodeNameProblem(this.name);
    if (nameProblem !== undefined) throw new TypeError(`TunnelNode option name: ${nameProblem}`);
    this.urls = relayUrls(options.relay, 'TunnelNode option relay');
    this.url = this.urls[0]!;
    this.log = (options.log ?? silentLogger).child({ node: this.name });
    const tls = loadClientTls(this.opts, this.log);
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
      maxBacklog: this.opts.maxBacklog,
      maxInFlight: this.opts.maxInFlight,
      callFinished: () => {
        if (this.inFlight === 0) this.emit('idle');
      },
      served: 0,
    };
    this.learned = new LearnedRelays(this.log, this.opts.followCluster);
    const tunnelHost: TunnelHost = {
      dispatch: this.host,
      sessions: this.sessions,
      hello: () => this.hello(),
      welcomed: (t, w) => {
        const learned = this.learned.welcome(t.rotation, w);
        this.emit('connected', t.current);
        return learned;
      },
      candidates: (t) =>
        this.learned.candidates(
          t.rotation,
          this.relayTunnels.map((o) => o.rotation),
        ),
      lost: (t, code, reason) => this.onTunnelLost(t, code, reason),
      sessionClosed: (session) => this.closeSession(session),
    };
    const tunnelOptions = {
      token: this.opts.token,
      tls,
      maxMessage: this.opts.maxMessage,
      heartbeatTimeout: this.opts.heartbeatTimeout,
      reconnectBase: this.opts.reconnectBase,
      reconnectCap: this.opts.reconnectCap,
      reconnectReset: this.opts.reconnectReset,
      lookup: this.opts.lookup,
    };
    this.relayTunnels = this.urls.map((url) => new RelayTunnel(url, tunnelHost, tunnelOptions));
    this.streamTimer = setInterval(
      () => {
        for (const d of this.dispatchers()) d.expireIdleUploads(this.opts.streamIdleTimeout);
      },
      Math.max(100, Math.min(this.opts.streamIdleTimeout / 2, 5_000)),
    );
    this.streamTimer.unref();
  }

  /** True while at least one relay has accepted us. */
  get connected(): boolean {
    return this.relayTunnels.some((t) => t.connected);
  }

  /** Each tunnel: its relay, whether it is connected, since when, and its running handlers. */
  get tunnels(): TunnelState[] {
    return this.relayTunnels.map((t) => t.state);
  }

  /** Handlers running now, on every tunnel and for direct callers. */
  get inFlight(): number {
    let n = 0;
    for (const d of this.dispatchers()) n += d.size;
    return n;
  }

  /** Starts dialling every relay; returns at once. Use {@link waitConnected} to wait for the first. */
  start(): this {
    if (this.started) return this;
    this.started = true;
    for (const t of this.relayTunnels) t.start();
    return this;
  }

  /** Resolves when the node is (or next becomes) connected to at least one relay; rejects after `timeout` ms. */
  async waitConnected(timeout = 10_000): Promise<void> {
    if (this.connected) return;
    await once(this, 'connected', { signal: AbortSignal.timeout(timeout) });
  }

  /**
   * Drains and stops: tells every relay to send no new calls, lets running handlers (of every tunnel
   * and of direct callers) finish for up to `drainTimeout`, aborts the rest, and closes every tunnel.
   * Does not reconnect afterwards.
   */
  async stop(drainTimeout = this.opts.drainTimeout): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.streamTimer);
    for (const t of this.relayTunnels) t.goaway('node is shutting down');
    if (this.inFlight > 0) {
      this.log.info({ running: this.inFlight, drainTimeoutMs: drainTimeout }, 'draining: waiting for running calls');
      await this.waitIdle(drainTimeout);
    }
    for (const d of this.dispatchers()) d.drop(new TunnelError(ErrorCode.CANCELLED, 'node is shutting down'));
    this.sessions.clear('node is shutting down');
    for (const f of this.forwarded.values()) f.close();
    await Promise.all(this.relayTunnels.map((t) => t.close('node is shutting down')));
    this.log.info('node stopped');
    this.emit('stopped');
  }

  private *dispatchers(): Generator<Dispatcher> {
    for (const t of this.relayTunnels) if (t.dispatcher) yield t.dispatcher;
    yield* this.direct;
  }

  private async waitIdle(timeout: number): Promise<void> {
    const deadline = Date.now() + timeout;
    while (this.inFlight > 0 && Date.now() < deadline) {
      await once(this, 'idle', { signal: AbortSignal.timeout(deadline - Date.now()) }).catch(() => undefined);
    }
  }

  /** The hello of every tunnel: one name and one instance, so that the relays see one node process. */
  private hello(): Hello {
    const h: Hello = {
      version: PROTOCOL_VERSION,
      role: 'node',
      name: this.name,
      instance: this.instance,
      services: this.describe(),
      labels: this.opts.labels ?? {},
    };
    if (this.opts.token) h.token = this.opts.token;
    return h;
  }

  /** Registered services with their methods, forwarded ones with `*`. */
  private describe(): ServiceDescription {
    const out = this.opts.services.describe();
    for (const f of this.forwarded.values()) out[f.name] = f.methods;
    return out;
  }

  /**
   * One tunnel closed; its own calls are already aborted. Sessions stay while another tunnel is
   * connected: the callers may still reach us through it. With none left, they end as on a
   * single-relay node, and callers log in again after the reconnect.
   */
  private onTunnelLost(tunnel: RelayTunnel, code: number, reason: string): void {
    if (!this.connected && !this.stopping) {
      const cleared = this.sessions.clear('connection to the relay was lost');
      if (cleared > 0) this.log.info({ sessions: cleared }, 'no relay connected: sessions cleared');
    }
    this.emit('disconnected', code, reason, tunnel.current);
    this.emit('idle');
  }

  /** A relay said the caller disconnected: its handlers end on every tunnel, and its state with them. */
  private closeSession(session: string): void {
    let aborted = 0;
    for (const t of this.relayTunnels) aborted += t.dispatcher?.forgetSession(session) ?? 0;
    if (this.sessions.close(session)) this.log.debug({ session, abortedCalls: aborted }, 'session closed');
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
    this.direct.add(d);
    let welcomed = false;
    conn.setHandlers({
      message: (m) => {
        switch (m.kind) {
          case Kind.HELLO:
            // As at a relay, only the first hello counts: a second one is ignored.
            if (welcomed) return;
            welcomed = true;
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
        this.direct.delete(d);
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
      services: sortedServices(this.describe()),
      address: local,
      connectedAt: this.startedAt.toISOString(),
      inFlight: this.inFlight,
      served: this.host.served,
      draining: this.stopping,
      relays: [],
    };
    conn.send(response(m.id, null, encodeResult(matches ? [self] : [])));
  }
}

/** Services and their methods in sorted order, as a relay's presence shows them. */
function sortedServices(services: ServiceDescription): ServiceDescription {
  const out: ServiceDescription = {};
  for (const name of Object.keys(services).sort()) out[name] = [...services[name]!].sort();
  return out;
}
