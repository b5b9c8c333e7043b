import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { nodeInfo } from '../presence.js';
import type { NodeRoute } from '../contracts.js';
import type { AuditRecord } from '../events.js';
import type { NodeInfo } from '../../wire/presence.js';
import { BacklogGuard, type SlowCause } from '../../wire/backlog-guard.js';
import type { CallerConnection, DashboardHost } from './host.js';
import type { TrafficSeries, TrafficStats } from './traffic.js';

/** A node as the dashboard shows it: presence's view plus its state, whether it is attached here, and its reconnects. */
export interface DashboardNode extends NodeInfo {
  /** `drained`: an operator drained it on this relay (until undrained); `draining`: it is going away, or was drained on its relay. */
  state: 'online' | 'draining' | 'drained' | 'leaving';
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
  /** Node names drained on this relay (the first 20), connected or not, and how many in all. */
  drained: { names: string[]; total: number };
  /** Actions are enabled (the relay has an admin token). */
  actions: boolean;
}

/** Settings of a {@link DashboardFeed}. */
export interface FeedOptions {
  version: string;
  actions: boolean;
  /** Dashboard streams open at once (default 8). */
  maxStreams?: number;
  /** More streams, only for requests that carry the admin token, so that operators are never locked out (default 2). */
  adminStreams?: number;
  /** Bytes sent to one stream and not acknowledged by its reader before it is cut as a slow consumer (default 1 MiB). */
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
/** Drained node names listed in the relay's state. */
const DRAINED_SHOWN = 20;
/** Frames a stream may leave unacknowledged; past it the reader is not reading, whatever the bytes. */
const MAX_UNACKED_FRAMES = 4_096;

/** A frame written to a stream and not acknowledged yet. */
interface Sent {
  seq: number;
  /** Bytes written to the stream up to and including this frame. */
  upTo: number;
  at: number;
}

interface Client {
  readonly res: ServerResponse;
  readonly address: string;
  /** Random, sent in the snapshot: the reader names its stream with it when it acknowledges. */
  readonly id: string;
  /** Counted in the admin-token holders' streams, not in the public ones. */
  readonly admin: boolean;
  /** Frames written so far. */
  seq: number;
  /** Bytes written so far, and of those the ones the reader acknowledged. */
  written: number;
  acked: number;
  /** Frames written and not acknowledged, oldest first. */
  unacked: Sent[];
  /** The slow-consumer rule over what the reader has not acknowledged. */
  readonly guard: BacklogGuard;
}

interface ListDelta<T> {
  upsert: T[];
  remove: string[];
}

/**
 * The dashboard's live feed: server-sent events, a `snapshot` first, then `delta`s (nodes and callers
 * that changed or went, new events, the last seconds of traffic, the relay's state). Every stream gets
 * the same deltas, computed once. Each frame has an `id:`, and the reader acknowledges what it read
 * ({@link ack}); a stream whose reader does not is cut like any slow consumer. Bounded: at most
 * `maxStreams` streams, plus `adminStreams` for holders of the admin token.
 */
export class DashboardFeed {
  private readonly clients = new Set<Client>();
  private readonly byId = new Map<string, Client>();
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
      adminStreams: 2,
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

  /** How long a reader may leave what it was sent unacknowledged, ms: the relay's slow-consumer timeout. */
  get ackTimeout(): number {
    return this.host.limits.slowConsumerTimeout;
  }

  /**
   * Takes a `GET /dashboard/events` request: answers 503 when `maxStreams` are open (`admin`: when
   * the admin-token holders' `adminStreams` are open too), else starts the stream with a snapshot.
   */
  open(res: ServerResponse, address: string, admin = false): void {
    const admins = [...this.clients].filter((c) => c.admin).length;
    const publicFull = this.clients.size - admins >= this.o.maxStreams;
    // An admin-token holder takes a public stream while one is free, else one of its own.
    const inAdminSlot = admin && publicFull;
    if (admin ? inAdminSlot && admins >= this.o.adminStreams : publicFull) {
      const message = admin
        ? `this relay serves at most ${this.o.maxStreams} dashboard streams at once, and ${this.o.adminStreams} more for the admin token; close another dashboard`
        : `this relay serves at most ${this.o.maxStreams} dashboard streams at once; close another dashboard, or open it with the admin token (${this.o.adminStreams} more streams are kept for it)`;
      const body = `${JSON.stringify({ error: { code: 'OVERLOADED', message } })}\n`;
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
    const client: Client = {
      res,
      address,
      id: randomBytes(12).toString('base64url'),
      admin: inAdminSlot,
      seq: 0,
      written: 0,
      acked: 0,
      unacked: [],
      // Its timer wakes when an unacknowledged frame reaches the timeout, so that the cut is on time.
      guard: new BacklogGuard({ maxBacklog: this.o.maxBacklog, timeout: this.ackTimeout, maxFrames: MAX_UNACKED_FRAMES, recheck: () => this.check(client) }),
    };
    this.clients.add(client);
    this.byId.set(client.id, client);
    res.once('close', () => this.drop(client));
    const snapshot = { ...this.snapshot(), stream: { id: client.id, ackEvery: ackEvery(this.ackTimeout) } };
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

  /**
   * `POST /dashboard/events/ack?stream=ID&seq=N`: the reader of stream ID has read its frames up to
   * N (the `id:` of the last one). False for a stream that is not open.
   */
  ack(id: string, seq: number): boolean {
    const client = this.byId.get(id);
    if (!client || !Number.isSafeInteger(seq)) return false;
    let i = 0;
    while (i < client.unacked.length && client.unacked[i]!.seq <= seq) i++;
    if (i > 0) {
      client.acked = client.unacked[i - 1]!.upTo;
      client.unacked.splice(0, i);
    }
    this.check(client);
    return true;
  }

  private drop(client: Client): void {
    if (!this.clients.delete(client)) return;
    client.guard.stop();
    this.byId.delete(client.id);
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

  /** Sends what changed since the last delta; with `tick`, also the traffic of the seconds since. */
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
    }
    // The relay's figures (nodes, callers) travel with every change of the lists they count, so that
    // the page never shows a table and a count that disagree.
    if (tick || delta.nodes || delta.callers) {
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
    const drained = route.local && this.host.drainMarks.has(route.name);
    const state = drained ? 'drained' : info.draining ? 'draining' : 'online';
    return { ...info, state, local: route.local, reconnects: this.reconnects.get(route.name) ?? 0 };
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
      drained: { names: this.host.drainMarks.list(DRAINED_SHOWN), total: this.host.drainMarks.size },
      actions: this.o.actions,
    };
  }

  /**
   * Writes one frame to a stream. Its bytes wait for the reader until it acknowledges them: the
   * kernel's socket buffers take megabytes, more than the feed sends in an hour, so what the socket
   * still queues (writableLength) cannot tell a paused reader from an idle one.
   */
  private send(client: Client, data: string): void {
    const { res } = client;
    if (res.destroyed) return;
    const text = `id: ${++client.seq}\n${data}`;
    res.write(text);
    client.written += Buffer.byteLength(text);
    client.unacked.push({ seq: client.seq, upTo: client.written, at: Date.now() });
    this.check(client);
  }

  /**
   * The relay's slow-consumer rule (wire/backlog-guard.ts), over what the reader has not
   * acknowledged: over twice `maxBacklog` at once, or over it for the slow-consumer timeout, is cut;
   * and so is a reader that has left a frame unacknowledged for that timeout (a paused reader whose
   * backlog grows slowly), or too many frames.
   */
  private check(client: Client): void {
    if (!this.clients.has(client)) return;
    const backlog = client.written - client.acked;
    const cause = client.guard.check(backlog, 0, { oldestAt: client.unacked[0]?.at, frames: client.unacked.length });
    if (cause) this.cut(client, backlog, this.why(cause));
  }

  private why(cause: SlowCause): string {
    const max = this.o.maxBacklog;
    const timeout = this.ackTimeout;
    switch (cause.kind) {
      case 'twice':
        return `${cause.backlog} bytes waited to be read (limit ${max})`;
      case 'overdue':
        return `more than ${max} bytes waited to be read for ${timeout} ms`;
      case 'unacknowledged':
        return `the reader acknowledged nothing for ${cause.ms} ms (limit ${timeout}; ${cause.backlog} bytes waiting)`;
      case 'frames':
        return `${cause.frames} frames waited to be read`;
    }
  }

  private cut(client: Client, backlog: number, why: string): void {
    this.drop(client);
    const reason = `slow consumer: ${why} on this dashboard stream; read your events and acknowledge them`;
    this.host.log.warn(
      { peer: client.address, door: 'dashboard', backlogBytes: backlog, limit: this.o.maxBacklog, reason },
      'slow consumer: closing connection',
    );
    this.host.metrics.slowConsumer('http');
    this.host.events.audit({ kind: 'slow-consumer', door: 'dashboard', address: client.address, reason });
    client.res.destroy();
  }
}

/** How often a reader acknowledges (at most): a few times within the timeout, and at least every 2 s. */
function ackEvery(timeout: number): number {
  return Math.max(50, Math.min(2_000, Math.floor(timeout / 4)));
}

/** One server-sent event without its `id:` (each stream numbers its own): the JSON has no line breaks, so one `data:` line. */
function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
