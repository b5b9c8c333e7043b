import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ErrorCode } from '../errors.js';

/** What the relay reports at scrape time; read only when /metrics is asked for. */
export interface RelayGauges {
  callsInFlight(): number;
  nodesConnected(): number;
  callerConnections(): { websocket: number; http: number };
  /** Bytes read from and written to every TCP connection on the relay port, closed ones included. */
  bytes(): { received: number; sent: number };
  draining(): boolean;
  /** The cluster's state; given only when the relay is in one (the cluster gauges exist only then). */
  cluster?(): { connected: boolean; peers: number; unreachable: number } | undefined;
}

/** The label used once a label has seen its limit of distinct values. */
export const OTHER = '(other)';
/** The service and method label of a request refused before the relay knew it named a real method. */
export const UNKNOWN = '(unknown)';

/**
 * Admits at most `limit` distinct values, then answers {@link OTHER}: a label fed by peers (node
 * names, custom error codes, methods of a forwarding node) cannot grow the series count without bound.
 */
export class LabelCap {
  private readonly seen = new Set<string>();

  constructor(private readonly limit: number) {}

  get(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.limit) return OTHER;
    this.seen.add(value);
    return value;
  }
}

/** Longest label value, characters: longer names (callers choose method names) are cut, marked with "~". */
export const MAX_LABEL_LENGTH = 64;

function shortLabel(value: string): string {
  return value.length <= MAX_LABEL_LENGTH ? value : `${value.slice(0, MAX_LABEL_LENGTH - 1)}~`;
}

const KNOWN_CODES = new Set<string>(['OK', ...Object.values(ErrorCode)]);

/** Distinct (method, code) series of the calls counter; /metrics stays small whatever callers send. */
const MAX_SERIES = 2_000;

/** (method name as sent, code) pairs whose series is remembered between flushes. */
const MAX_SLOTS = 4_096;

/** Where the calls of one (method, code) are counted; `count` holds this flush's calls until it ends. */
interface CallSlot {
  readonly name: string;
  readonly series: { inc(n?: number): void };
  timing: { observe(seconds: number): void } | undefined;
  count: number;
}

/** Seconds: from a local echo (well under a millisecond) to the longest deadline a caller may set. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/**
 * The relay's Prometheus metrics, in a registry of its own (not prom-client's global one) so that
 * several relays in one process keep separate counts. Labels are bounded: service, method and error
 * code (each capped), node names only on the reconnect counter (capped); never caller addresses or ids.
 */
export class RelayMetrics {
  readonly registry = new Registry();
  private readonly calls: Counter<'service' | 'method' | 'code'>;
  private readonly latency: Histogram<'service' | 'method'>;
  private readonly reconnects: Counter<'node'>;
  private readonly rejected: Counter<'reason'>;
  private readonly slowConsumers: Counter<'transport'>;
  private readonly authFailures: Counter<'door'>;
  private readonly authRefusals: Counter<'door'>;
  private readonly clusterRejects: Counter<'reason'>;
  private readonly routedLocal: { inc(): void };
  private readonly routedRemote: { inc(): void };
  private readonly lag: Histogram;
  /** Method names come from callers (any name reaches a forwarded service): few keep their own label. */
  private readonly methods = new LabelCap(200);
  /** Methods with a latency histogram of their own (20 lines each); the rest share "(other)". */
  private readonly timedMethods = new LabelCap(50);
  private readonly codes = new LabelCap(50);
  private readonly nodeNames = new LabelCap(200);
  /** Bound children by "method\0code", so a call costs two map look-ups, not label hashing. */
  private readonly series = new Map<string, { inc(n?: number): void }>();
  private readonly timings = new Map<string, { observe(seconds: number): void }>();
  /**
   * What each (method, code) a caller sent counts into, resolved once: by raw method name, then
   * code, for known and unknown methods apart. Bounded: callers choose method names, so past
   * {@link MAX_SLOTS} it is cleared and filled again (the label caps decide the same way again).
   */
  private readonly slots = [new Map<string, Map<string, CallSlot>>(), new Map<string, Map<string, CallSlot>>()] as const;
  private slotCount = 0;
  /** Slots counted into since the last flush. */
  private readonly touched: CallSlot[] = [];

  constructor(gauges: RelayGauges) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.calls = new Counter({
      name: 'tunnel_relay_calls_total',
      help: 'Calls the relay answered, by service, method and outcome code (OK or an error code)',
      labelNames: ['service', 'method', 'code'],
      registers,
    });
    this.latency = new Histogram({
      name: 'tunnel_relay_call_duration_seconds',
      help: 'Time from routing a call to a node until its answer, expiry, cancellation or loss',
      labelNames: ['service', 'method'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.reconnects = new Counter({
      name: 'tunnel_relay_node_reconnects_total',
      help: 'Node connections under a name this relay had seen before (names beyond 200 count as "(other)")',
      labelNames: ['node'],
      registers,
    });
    this.rejected = new Counter({
      name: 'tunnel_relay_rejected_connections_total',
      help: 'Connections the relay refused or closed before they could call or serve, by reason',
      labelNames: ['reason'],
      registers,
    });
    const routes = new Counter({
      name: 'tunnel_relay_routed_calls_total',
      help: 'Calls answered, by the route that carried them: local (a node attached here) or remote (through another relay of the cluster)',
      labelNames: ['route'],
      registers,
    });
    this.routedLocal = routes.labels('local');
    this.routedRemote = routes.labels('remote');
    this.lag = new Histogram({
      name: 'tunnel_relay_presence_lag_seconds',
      help: 'Time from a node joining another relay of the cluster to this relay hearing of it',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    // Only a relay in a cluster has these: an unlabelled gauge would otherwise read 0 ("NATS down").
    const cluster = gauges.cluster?.bind(gauges);
    if (cluster) {
      new Gauge({
        name: 'tunnel_relay_cluster_connected',
        help: '1 while this relay is connected to the cluster (NATS), 0 while not (degraded: local nodes only); absent without a cluster',
        registers,
        collect() {
          const c = cluster();
          if (c) this.set(c.connected ? 1 : 0);
        },
      });
      new Gauge({
        name: 'tunnel_relay_cluster_peers',
        help: 'Other relays of the cluster this relay hears from',
        registers,
        collect() {
          const c = cluster();
          if (c) this.set(c.peers);
        },
      });
      new Gauge({
        name: 'tunnel_relay_cluster_unreachable_peers',
        help: 'Relays of the cluster that stopped answering without a goodbye (the cluster is split while above 0); absent without a cluster',
        registers,
        collect() {
          const c = cluster();
          if (c) this.set(c.unreachable);
        },
      });
    }
    this.clusterRejects = new Counter({
      name: 'tunnel_relay_cluster_rejected_messages_total',
      help: 'Messages from NATS refused: not sealed with the cluster key (forged), replayed, stale (clock) or malformed',
      labelNames: ['reason'],
      registers,
    });
    this.authFailures = new Counter({
      name: 'tunnel_relay_auth_failures_total',
      help: 'Wrong credentials presented (node and caller tokens, Relay.Auth, dashboard and admin tokens), by door',
      labelNames: ['door'],
      registers,
    });
    this.authRefusals = new Counter({
      name: 'tunnel_relay_auth_backoff_refusals_total',
      help: 'Credentials refused unchecked because their address was backed off after too many wrong ones (--max-auth-failures-per-address), by door',
      labelNames: ['door'],
      registers,
    });
    this.slowConsumers = new Counter({
      name: 'tunnel_relay_slow_consumers_total',
      help: 'Peers cut because more bytes waited for them than --max-backlog allows (they did not read), by transport',
      labelNames: ['transport'],
      registers,
    });
    new Gauge({
      name: 'tunnel_relay_calls_in_flight',
      help: 'Calls routed to a node and not yet answered',
      registers,
      collect() {
        this.set(gauges.callsInFlight());
      },
    });
    new Gauge({
      name: 'tunnel_relay_nodes_connected',
      help: 'Nodes attached to this relay',
      registers,
      collect() {
        this.set(gauges.nodesConnected());
      },
    });
    new Gauge({
      name: 'tunnel_relay_caller_connections',
      help: 'Callers connected: WebSocket sessions, and HTTP gateway requests being answered',
      labelNames: ['transport'],
      registers,
      collect() {
        const c = gauges.callerConnections();
        this.set({ transport: 'websocket' }, c.websocket);
        this.set({ transport: 'http' }, c.http);
      },
    });
    new Gauge({
      name: 'tunnel_relay_draining',
      help: '1 while the relay drains before shutting down, else 0',
      registers,
      collect() {
        this.set(gauges.draining() ? 1 : 0);
      },
    });
    // Counters fed at scrape time: the sockets keep the running totals, we report what they added.
    const reported = { received: 0, sent: 0 };
    for (const direction of ['received', 'sent'] as const) {
      new Counter({
        name: `tunnel_relay_${direction}_bytes_total`,
        help: `Bytes ${direction} on the relay port (WebSocket frames and HTTP, all connections)`,
        registers,
        collect() {
          const now = gauges.bytes()[direction];
          if (now > reported[direction]) this.inc(now - reported[direction]);
          reported[direction] = now;
        },
      });
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format. */
  render(): Promise<string> {
    this.recordPending();
    return this.registry.metrics();
  }

  /**
   * Counts a finished call. `method` is `Service.Method`; `known` is false for requests refused
   * before the relay could tell that the method exists anywhere (their names are whatever the caller
   * sent). The update is deferred to the next event-loop check phase: prom-client
   * hashes labels on every observation, which on the relay's one-call-at-a-time path was a tenth of
   * its latency; deferred, it runs after the answer has been written.
   */
  callEnded(method: string, code: string, seconds: number | undefined, known: boolean): void {
    this.pendingCalls.push(method, code, seconds, known);
    if (this.pendingCalls.length === 4) setImmediate(this.recordPending);
  }

  private readonly pendingCalls: unknown[] = [];

  /** One `inc(n)` per series per flush: prom-client hashes the labels on every update. */
  private readonly recordPending = (): void => {
    const p = this.pendingCalls;
    for (let i = 0; i < p.length; i += 4) {
      const slot = this.slot(p[i] as string, p[i + 1] as string, p[i + 3] as boolean);
      if (slot.count++ === 0) this.touched.push(slot);
      const seconds = p[i + 2] as number | undefined;
      if (seconds !== undefined) (slot.timing ??= this.timingOf(slot.name)).observe(seconds);
    }
    p.length = 0;
    for (const slot of this.touched) {
      slot.series.inc(slot.count);
      slot.count = 0;
    }
    this.touched.length = 0;
  };

  private slot(method: string, code: string, known: boolean): CallSlot {
    const byMethod = this.slots[known ? 0 : 1];
    let byCode = byMethod.get(method);
    const found = byCode?.get(code);
    if (found) return found;
    if (this.slotCount >= MAX_SLOTS) {
      // Only slots with nothing counted may go; the ones of this flush are still in `touched`.
      for (const m of this.slots) m.clear();
      this.slotCount = 0;
      byCode = undefined;
    }
    if (!byCode) byMethod.set(method, (byCode = new Map()));
    const name = known ? this.methods.get(method) : UNKNOWN;
    const outcome = KNOWN_CODES.has(code) ? code : this.codes.get(code);
    const slot: CallSlot = { name, series: this.seriesOf(name, outcome), timing: undefined, count: 0 };
    byCode.set(code, slot);
    this.slotCount++;
    return slot;
  }

  private seriesOf(name: string, outcome: string): { inc(n?: number): void } {
    let key = `${name}\0${outcome}`;
    let series = this.series.get(key);
    if (!series) {
      // Methods times codes is bounded too: past it, new pairs share one series.
      if (this.series.size >= MAX_SERIES) key = `${OTHER}\0${OTHER}`;
      series = this.series.get(key) ?? this.calls.labels(...split(key === `${OTHER}\0${OTHER}` ? OTHER : name), key === `${OTHER}\0${OTHER}` ? OTHER : outcome);
      this.series.set(key, series);
    }
    return series;
  }

  private timingOf(name: string): { observe(seconds: number): void } {
    const timed = name === OTHER ? OTHER : this.timedMethods.get(name);
    let timing = this.timings.get(timed);
    if (!timing) {
      timing = this.latency.labels(...split(timed));
      this.timings.set(timed, timing);
    }
    return timing;
  }

  nodeReconnected(name: string): void {
    this.reconnects.inc({ node: shortLabel(this.nodeNames.get(name)) });
  }

  connectionRejected(reason: string): void {
    this.rejected.inc({ reason });
  }

  /** A call ended that went through a local route (this relay's node link) or a remote one (another relay). */
  routed(local: boolean): void {
    (local ? this.routedLocal : this.routedRemote).inc();
  }

  /** A presence event from another relay arrived `seconds` after it happened (negative: ignored). */
  presenceLag(seconds: number): void {
    if (seconds >= 0) this.lag.observe(seconds);
  }

  /** A message from NATS was refused. */
  clusterRejected(reason: string): void {
    this.clusterRejects.inc({ reason });
  }

  /** A wrong credential was presented at `door`. */
  authFailed(door: string): void {
    this.authFailures.inc({ door });
  }

  /** A credential was refused unchecked at `door`: its address is backed off. */
  authRefused(door: string): void {
    this.authRefusals.inc({ door });
  }

  /** A peer was cut as a slow consumer; `transport` is `websocket`, `msgpack-rpc` or `http`. */
  slowConsumer(transport: 'websocket' | 'msgpack-rpc' | 'http'): void {
    this.slowConsumers.inc({ transport });
  }
}

function split(method: string): [string, string] {
  if (method === UNKNOWN || method === OTHER) return [method, method];
  const dot = method.lastIndexOf('.');
  return [shortLabel(method.slice(0, dot)), shortLabel(method.slice(dot + 1))];
}
