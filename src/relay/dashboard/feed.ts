import type { ServerResponse } from 'node:http';
import { nodeInfo } from '../presence.js';
import type { NodeRoute } from '../contracts.js';
import type { AuditRecord } from '../events.js';
import type { NodeInfo } from '../../wire/presence.js';
import type { CallerConnection, DashboardHost } from './host.js';
import type { TrafficSeries, TrafficStats } from './traffic.js';

/** A node as the dashboard shows it: presence's view plus its state, whether it is attached here, and its reconnects. */
export interface DashboardNode extends NodeInfo {
  state: 'online' | 'draining' | 'leaving';
  /** Its tunnel ends on this relay: the actions apply to it here. */
  local: boolean;
  /** Times its name connected again (a reconnect or a replacement) since this relay started. */
  reconnects: number;
}

/** The relay itself, sent with the snapshot and once a second. */
export interface RelayStatus {
  name: string;
  version: string;
  /** ms since the epoch, on the relay's clock. */
  now: number;
  uptimeSeconds: number;
  draining: boolean;
  inFlight: number;
  nodes: { local: number; total: number };
  callers: Record<CallerConnection['transport'], number>;
  memory: { rss: number; heapUsed: number; heapTotal: number };
  /** Absent without a cluster. */
  cluster: { state: 'connected' | 'degraded' | 'split'; peers: string[]; unreachable: string[] } | null;
  dashboards: number;
  /** Actions are enabled (the relay has an admin token). */
  actions: boolean;
}

/** Settings of a {@link DashboardFeed}. */
export interface FeedOptions {
  version: string;
  actions: boolean;
  /** Dashboard streams open at once (default 8). */
  maxStreams?: number;
  /** Bytes waiting for one stream before it is cut as a slow consumer (default 1 MiB). */
  maxBacklog?: number;
  /** Nodes listed (by name); the feed says how many there are in all (default 1 000). */
  maxNodes?: number;
  /** Caller connections listed (oldest first) (default 200). */
  maxCallers?: number;
  /** How long a node that left is shown leaving before it is removed, ms (default 5 000). */
  leavingMs?: number;
  /** Period of the deltas with traffic and relay state, ms (default 1 000). */
  tickMs?: number;
}

/** Names remembered to count reconnects; more are not counted. */
const SEEN_LIMIT = 10_000;
/** After an event (a join, a refusal), the delta that carries it leaves within this many ms. */
const EVENT_DELAY = 100;

interface Client {
  readonly res: ServerResponse;
  readonly address: string;
  /** Since when its socket has had more queued than it takes without waiting (writableNeedDrain), ms. */
  backedUp: number | undefined;
}

interface ListDelta<T> {
  upsert: T[];
  remove: string[];
}

/**
 * The dashboard's live feed: server-sent events, a `snapshot` first, then `delta`s (nodes and callers
 * that changed or went, new events, the last seconds of traffic, the relay's state). Every stream gets
 * the same deltas, computed once. Bounded: at most `maxStreams` streams, and a stream whose reader
 * does not keep up is cut like any slow consumer.
 */
export class DashboardFeed {
  private readonly clients = new Set<Client>();
  private readonly o: Required<FeedOptions>;
  /** What the streams were last told of each listed node and caller, as JSON. */
  private readonly sentNodes = new Map<string, string>();
  private readonly sentCallers = new Map<string, string>();
  /** Nodes that left, shown leaving until the time given. */
  private readonly leaving = new Map<string, { node: DashboardNode; until: number }>();
  private readonly reconnects = new Map<string, number>();
  private pendingEvents: AuditRecord[] = [];
  private nodesTotal = 0;
  private callersTotal = 0;
  private callerCounts: RelayStatus['callers'] = { websocket: 0, 'msgpack-rpc': 0, http: 0 };
  private trafficEnd = 0;
  private ticker: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private readonly startedAt = Date.now();
  private readonly onAudit = (r: AuditRecord): void => this.audited(r);

  constructor(
    private readonly host: DashboardHost,
    private readonly traffic: TrafficStats,
    options: FeedOptions,
  ) {
    this.o = {
      maxStreams: 8,
      maxBacklog: 1024 * 1024,
      maxNodes: 1_000,
      maxCallers: 200,
      leavingMs: 5_000,
      tickMs: 1_000,
      ...definedOnly(options),
      version: options.version,
      actions: options.actions,
    };
    host.events.on('audit', this.onAudit);
  }

  get streams(): number {
    return this.clients.size;
  }

  /**
   * Takes a `GET /dashboard/events` request: answers 503 when `maxStreams` are open, else starts the
   * stream with a snapshot.
   */
  open(res: ServerResponse, address: string): void {
    if (this.clients.size >= this.o.maxStreams) {
      const body = `${JSON.stringify({ error: { code: 'OVERLOADED', message: `this relay serves at most ${this.o.maxStreams} dashboard streams at once; close another dashboard` } })}\n`;
      res.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'retry-after': '10' }).end(body);
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
      'x-content-type-options': 'nosniff',
    });
    res.socket?.setNoDelay(true);
    if (this.clients.size === 0) this.start();
    // The others are brought up to date first, so that the snapshot and the next delta agree.
    else this.flush(false);
    const client: Client = { res, address, backedUp: undefined };
    this.clients.add(client);
    res.once('close', () => this.drop(client));
    const snapshot = this.snapshot();
    if (this.trafficEnd === 0) this.trafficEnd = snapshot.traffic.end;
    this.send(client, frame('snapshot', snapshot));
  }

  /** Ends every stream and stops listening to the relay. */
  close(): void {
    this.host.events.off('audit', this.onAudit);
    for (const c of [...this.clients]) {
      this.drop(c);
      c.res.end();
    }
  }

  private start(): void {
    this.sentNodes.clear();
    this.sentCallers.clear();
    this.leaving.clear();
    this.pendingEvents = [];
    this.collectNodes(Date.now());
    this.collectCallers();
    this.trafficEnd = 0;
    this.ticker = setInterval(() => this.flush(true), this.o.tickMs);
    this.ticker.unref();
  }

  private drop(client: Client): void {
    if (!this.clients.delete(client)) return;
    if (this.clients.size > 0) return;
    clearInterval(this.ticker);
    clearTimeout(this.soon);
    this.ticker = this.soon = undefined;
    this.pendingEvents = [];
  }

  private audited(r: AuditRecord): void {
    if (r.kind === 'node-join' && r.node !== undefined) {
      const before = this.reconnects.get(r.node);
      if (before !== undefined) this.reconnects.set(r.node, before + 1);
      else if (this.reconnects.size < SEEN_LIMIT) this.reconnects.set(r.node, 0);
    }
    if (this.clients.size === 0) return;
    this.pendingEvents.push(r);
    if (this.pendingEvents.length > this.host.events.capacity) this.pendingEvents.shift();
    if (!this.soon) {
      this.soon = setTimeout(() => this.flush(false), EVENT_DELAY);
      this.soon.unref();
    }
  }

  private snapshot(): { traffic: TrafficSeries } & Record<string, unknown> {
    return {
      relay: this.status(),
      nodes: [...this.sentNodes.values()].map((j) => JSON.parse(j) as DashboardNode),
      nodesTotal: this.nodesTotal,
      callers: [...this.sentCallers.values()].map((j) => JSON.parse(j) as CallerConnection),
      callersTotal: this.callersTotal,
      traffic: this.traffic.series(),
      events: this.host.events.recent(),
      limits: { maxNodes: this.o.maxNodes, maxCallers: this.o.maxCallers, leavingMs: this.o.leavingMs, window: this.traffic.window },
    };
  }

  /** Sends what changed since the last delta; with `tick`, also the traffic of the seconds since and the relay's state. */
  private flush(tick: boolean): void {
    clearTimeout(this.soon);
    this.soon = undefined;
    if (this.clients.size === 0) return;
    const delta: Record<string, unknown> = {};
    const nodes = this.collectNodes(Date.now());
    if (nodes.upsert.length > 0 || nodes.remove.length > 0) delta.nodes = nodes;
    const callers = this.collectCallers();
    if (callers.upsert.length > 0 || callers.remove.length > 0) delta.callers = callers;
    if (this.pendingEvents.length > 0) {
      delta.events = this.pendingEvents;
      this.pendingEvents = [];
    }
    if (tick) {
      const traffic: TrafficSeries = this.traffic.series(this.trafficEnd);
      this.trafficEnd = traffic.end;
      delta.traffic = traffic;
      delta.relay = this.status();
      delta.nodesTotal = this.nodesTotal;
      delta.callersTotal = this.callersTotal;
    }
    if (Object.keys(delta).length === 0) return;
    const text = frame('delta', delta);
    for (const c of [...this.clients]) this.send(c, text);
  }

  /** The listed nodes now against what the streams were told: new or changed ones, and leaving ones whose time is up. */
  private collectNodes(now: number): ListDelta<DashboardNode> {
    const all = [...this.host.directory.all()];
    this.nodesTotal = all.length;
    const shown = all.length <= this.o.maxNodes ? all : all.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).slice(0, this.o.maxNodes);
    const current = new Map<string, DashboardNode>();
    for (const route of shown) current.set(route.name, this.describe(route));
    const delta: ListDelta<DashboardNode> = { upsert: [], remove: [] };
    for (const [name, node] of current) {
      this.leaving.delete(name);
      const json = JSON.stringify(node);
      if (this.sentNodes.get(name) === json) continue;
      this.sentNodes.set(name, json);
      delta.upsert.push(node);
    }
    for (const [name, json] of this.sentNodes) {
      if (current.has(name)) continue;
      const gone = this.leaving.get(name);
      if (!gone) {
        const node: DashboardNode = { ...(JSON.parse(json) as DashboardNode), state: 'leaving', inFlight: 0 };
        this.leaving.set(name, { node, until: now + this.o.leavingMs });
        this.sentNodes.set(name, JSON.stringify(node));
        delta.upsert.push(node);
      } else if (gone.until <= now) {
        this.leaving.delete(name);
        this.sentNodes.delete(name);
        delta.remove.push(name);
      }
    }
    return delta;
  }

  private describe(route: NodeRoute): DashboardNode {
    const info = nodeInfo(route);
    return { ...info, state: info.draining ? 'draining' : 'online', local: route.local, reconnects: this.reconnects.get(route.name) ?? 0 };
  }

  private collectCallers(): ListDelta<CallerConnection> {
    const all = this.host.callerConnections();
    this.callersTotal = all.length;
    this.callerCounts = { websocket: 0, 'msgpack-rpc': 0, http: 0 };
    for (const c of all) this.callerCounts[c.transport]++;
    const shown = all.length <= this.o.maxCallers ? all : all.sort((a, b) => a.since - b.since).slice(0, this.o.maxCallers);
    const delta: ListDelta<CallerConnection> = { upsert: [], remove: [] };
    const current = new Set<string>();
    for (const c of shown) {
      current.add(c.session);
      const json = JSON.stringify(c);
      if (this.sentCallers.get(c.session) === json) continue;
      this.sentCallers.set(c.session, json);
      delta.upsert.push(c);
    }
    for (const session of this.sentCallers.keys()) {
      if (current.has(session)) continue;
      this.sentCallers.delete(session);
      delta.remove.push(session);
    }
    return delta;
  }

  private status(): RelayStatus {
    const memory = process.memoryUsage();
    const cluster = this.host.cluster;
    return {
      name: this.host.relayName,
      version: this.o.version,
      now: Date.now(),
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1_000),
      draining: this.host.draining,
      inFlight: this.host.inFlight,
      nodes: { local: this.host.registry.size, total: this.host.directory.size },
      callers: { ...this.callerCounts },
      memory: { rss: memory.rss, heapUsed: memory.heapUsed, heapTotal: memory.heapTotal },
      cluster: cluster ? { state: cluster.state, peers: cluster.peerNames, unreachable: cluster.unreachable } : null,
      dashboards: this.clients.size,
      actions: this.o.actions,
    };
  }

  /** Writes to one stream; one that keeps more queued than it reads is cut (slow consumer). */
  private send(client: Client, text: string): void {
    const { res } = client;
    if (res.destroyed) return;
    res.write(text);
    if (!res.writableNeedDrain) {
      client.backedUp = undefined;
      return;
    }
    const now = Date.now();
    client.backedUp ??= now;
    const backlog = res.writableLength;
    if (backlog > this.o.maxBacklog || now - client.backedUp > this.host.limits.slowConsumerTimeout) this.cut(client, backlog);
  }

  private cut(client: Client, backlog: number): void {
    this.drop(client);
    const reason = `slow consumer: ${backlog} bytes waited to be written to this dashboard stream (limit ${this.o.maxBacklog}); read your events`;
    this.host.log.warn({ peer: client.address, door: 'dashboard', backlogBytes: backlog, limit: this.o.maxBacklog }, 'slow consumer: closing connection');
    this.host.metrics.slowConsumer('http');
    this.host.events.audit({ kind: 'slow-consumer', door: 'dashboard', address: client.address, reason });
    client.res.destroy();
  }
}

/** One server-sent event: the JSON has no line breaks, so one `data:` line. */
function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
