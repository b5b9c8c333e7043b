import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/index.js';
import type { PresenceEvent } from '../src/wire/presence.js';
import { http } from './helpers/http.js';
import { clusterArgs, clusterConfig, freePort, NatsServer, stopAllNats } from './helpers/nats.js';
import { BIN, killAll, Proc, startRelay, type LogLine } from './helpers/processes.js';
import { stopAllProxies, TcpProxy } from './helpers/tcp-proxy.js';

/**
 * The chaos matrix of issue 18: two relays (a-1, b-1) over real nats-servers, with credentials and the
 * cluster key; a node on each relay (near-1 on a-1, far-1 on b-1) and a dual-homed one (twin-1, on
 * both); a caller on a-1 calling all three throughout a fault. Each scenario measures the time to
 * converge after the fault ends, the calls lost, duplicated executions and nodes wrongly removed.
 * Every wait is bounded and on a condition; the only fixed waits are the faults themselves.
 */

const COUNT = 'test/fixtures/count-services.js';
/**
 * Convergence bound after the fault ends. Issue 18 asks for 2 s, and the matrix printed here and
 * `npm run bench` (the convergence row) report the time against that target; measured on a quiet
 * machine, or beside one CPU hog, it is 25–530 ms. The assertion allows twice the target, so that a starved machine (the suite
 * beside a CPU hog: 2.18 s once) does not fail it, while a relay that heals only at a timeout (the
 * 3 s peer expiry plus a heartbeat, a 30 s deadline) still does.
 */
const TARGET = 2_000;
const BOUND = 2 * TARGET;
/**
 * nats-server 2.9.10 (Debian) re-solicits a dropped explicit route after a compiled-in 1 s
 * (DEFAULT_ROUTE_RECONNECT, then DEFAULT_ROUTE_CONNECT between dials) plus up to 100 ms of jitter;
 * `cluster { connect_retries }` only counts retries of implicit routes and no setting shortens the
 * interval. A partition's repair is measured from the route being back too, against {@link BOUND}.
 */
const NATS_ROUTE_RECONNECT = 1_100;
/**
 * Longer than the 3 s peer expiry (plus its 0.5 s check): a call stuck on a relay that went quiet
 * fails NODE_LOST when the relay is given up, never TIMEOUT.
 */
const CALL_TIMEOUT = 10_000;
/** Nodes reconnect fast, so that a restarted relay's convergence is about the relays, not a node's 30 s backoff cap. */
// Nodes stay on the relays they were given (--no-follow-cluster): the matrix is about the relays
// healing; a node moving to another relay of the cluster is test/cluster-discovery.test.ts's.
const NODE_FLAGS = ['--reconnect-base', '100ms', '--reconnect-cap', '500ms', '--no-follow-cluster', '--log-level', 'debug'];
const NODES = { 'near-1': ['a-1'], 'far-1': ['b-1'], 'twin-1': ['a-1', 'b-1'] } as const;
type NodeName = keyof typeof NODES;
const NODE_NAMES = Object.keys(NODES) as NodeName[];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---- the rig: NATS, two relays, three nodes, a caller, two presence watchers ----

interface RelayHandle {
  name: string;
  port: number;
  admin: number;
  servers: string[];
  /** Every process that ran under this name (a restart adds one); the last one is current. */
  procs: Proc[];
}
const current = (r: RelayHandle) => r.procs[r.procs.length - 1]!;

async function startClusterRelay(name: string, servers: string[], port: number, admin: number): Promise<Proc> {
  const relay = await startRelay([...clusterArgs(servers), '--relay-name', name, '--admin-listen', `127.0.0.1:${admin}`], port);
  await relay.proc.waitForMsg('connected to the cluster', 10_000);
  return relay.proc;
}

async function relayHandle(name: string, servers: string[]): Promise<RelayHandle> {
  const [port, admin] = await Promise.all([freePort(), freePort()]);
  return { name, port, admin, servers, procs: [await startClusterRelay(name, servers, port, admin)] };
}

type Topology = 'single' | 'trio' | 'proxied';

interface Rig {
  nats: NatsServer[];
  proxies: TcpProxy[];
  a: RelayHandle;
  b: RelayHandle;
  nodes: Record<NodeName, Proc>;
  caller: Client;
  watchers: Watcher[];
}

/** The NATS servers of a topology, and the servers each relay is given. */
async function startNats(topology: Topology): Promise<{ nats: NatsServer[]; proxies: TcpProxy[]; forA: string[]; forB: string[] }> {
  if (topology === 'single') {
    const nats = await NatsServer.start();
    return { nats: [nats], proxies: [], forA: [nats.url], forB: [nats.url] };
  }
  if (topology === 'trio') {
    const ports = await Promise.all([freePort(), freePort(), freePort()]);
    const routes = await Promise.all([freePort(), freePort(), freePort()]);
    const nats = await Promise.all(
      [0, 1, 2].map((i) =>
        NatsServer.start({ port: ports[i]!, cluster: { name: 'chaos-trio', routePort: routes[i]!, routes: routes.filter((_, j) => j !== i) } }),
      ),
    );
    await Promise.all(nats.map((s) => s.waitFor(/Route connection created[\s\S]*Route connection created/, 10_000)));
    const all = nats.map((s) => s.url);
    return { nats, proxies: [], forA: all, forB: [...all].reverse() };
  }
  // Two servers whose only route goes through proxies the test cuts: server 2 solicits server 1 at
  // proxy 1, each advertises its proxy, so no route can bypass them.
  const [route1, route2] = await Promise.all([freePort(), freePort()]);
  const [proxy1, proxy2] = await Promise.all([TcpProxy.start(route1), TcpProxy.start(route2)]);
  const s1 = await NatsServer.start({ config: clusterConfig({ name: 'chaos-pair', listen: route1, advertise: proxy1.port, routes: [] }) });
  const s2 = await NatsServer.start({ config: clusterConfig({ name: 'chaos-pair', listen: route2, advertise: proxy2.port, routes: [proxy1.port] }) });
  await Promise.all([s1.waitFor(/Route connection created/, 10_000), s2.waitFor(/Route connection created/, 10_000)]);
  return { nats: [s1, s2], proxies: [proxy1, proxy2], forA: [s1.url], forB: [s2.url] };
}

async function startRig(topology: Topology): Promise<Rig> {
  const { nats, proxies, forA, forB } = await startNats(topology);
  const [a, b] = await Promise.all([relayHandle('a-1', forA), relayHandle('b-1', forB)]);
  const addr = (r: RelayHandle) => `127.0.0.1:${r.port}`;
  const node = async (name: NodeName) => {
    const relays = NODES[name].map((r) => (r === 'a-1' ? a : b));
    const proc = new Proc(BIN.node, [...relays.flatMap((r) => ['--relay', addr(r)]), '--name', name, '--services', COUNT, ...NODE_FLAGS]);
    await proc.waitForLog(() => proc.logs.filter((l) => l.msg === 'connected to relay').length >= relays.length, 10_000, `${name} connected`);
    return proc;
  };
  const [near, far, twin] = await Promise.all(NODE_NAMES.map(node));
  const rig: Rig = { nats, proxies, a, b, nodes: { 'near-1': near!, 'far-1': far!, 'twin-1': twin! }, caller: await connect(addr(a)), watchers: [] };
  await untilListed(rig, Date.now(), 15_000);
  for (const r of [a, b]) {
    const w = new Watcher(
      r.name,
      () => addr(r),
      () => current(r).child.pid,
    );
    await w.start();
    rig.watchers.push(w);
  }
  return rig;
}

async function stopRig(rig: Rig | undefined): Promise<void> {
  for (const w of rig?.watchers ?? []) await w.stop();
  await rig?.caller.close().catch(() => undefined);
}

// ---- convergence ----

interface Readiness {
  cluster?: { state: string; relays: string[]; unreachable: string[] };
}

/** What a relay's /readyz and /nodes say, or why it did not answer (a frozen relay does not). */
async function relayView(r: RelayHandle): Promise<{ ok: boolean; state: string }> {
  try {
    const [ready, nodes] = await Promise.all([http(`http://127.0.0.1:${r.admin}/readyz`, {}, 500), http(`http://127.0.0.1:${r.admin}/nodes`, {}, 500)]);
    const cluster = (ready.json as Readiness | undefined)?.cluster;
    const list = (nodes.json as Array<{ name: string; relays: string[] }> | undefined) ?? [];
    const listed = Object.fromEntries(list.map((n) => [n.name, n.relays.join('+')]));
    const ok = cluster?.state === 'connected' && NODE_NAMES.every((n) => listed[n] === NODES[n].join('+'));
    return { ok, state: `${r.name}: ${cluster?.state ?? ready.status} ${JSON.stringify(listed)}` };
  } catch (err) {
    return { ok: false, state: `${r.name}: ${(err as Error).message}` };
  }
}

/** Polls both relays until /readyz says `connected` and /nodes lists every node with its relays; the time it first held. */
async function untilListed(rig: Rig, from: number, timeout: number): Promise<number> {
  let last = '';
  while (Date.now() - from < timeout) {
    const views = await Promise.all([relayView(rig.a), relayView(rig.b)]);
    if (views.every((v) => v.ok)) return Date.now();
    last = views.map((v) => v.state).join('; ');
    await sleep(50);
  }
  throw new Error(`the relays did not list every node, connected, within ${timeout} ms: ${last}`);
}

/** Sends a cross-relay call (a-1 → far-1) every 25 ms, at most 20 in flight, until one started at or after `from` succeeds; the time it did. */
function untilCrossCall(client: Client, from: number, timeout: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const errors: Record<string, number> = {};
    let inFlight = 0;
    let done = false;
    const finish = (f: () => void) => {
      done = true;
      clearInterval(timer);
      f();
    };
    const tick = () => {
      if (done) return;
      if (Date.now() - from > timeout) return finish(() => reject(new Error(`no call a-1 → far-1 succeeded within ${timeout} ms: ${JSON.stringify(errors)}`)));
      if (inFlight >= 20) return;
      inFlight++;
      client.call('Arith.Multiply', 2, 3, { node: 'far-1', timeout: 1_000 }).then(
        (v) => {
          inFlight--;
          if (!done && v === 6) finish(() => resolve(Date.now()));
        },
        (err: { code?: string }) => {
          inFlight--;
          errors[err.code ?? 'error'] = (errors[err.code ?? 'error'] ?? 0) + 1;
        },
      );
    };
    const timer = setInterval(tick, 25);
    tick();
  });
}

// ---- the load: Count.Hit calls from a-1 to every node, a few in flight, bounded ----

interface Outcome {
  id: string;
  node: NodeName;
  start: number;
  end: number;
  ok: boolean;
  code?: string;
}

class Load {
  readonly outcomes: Outcome[] = [];
  started = 0;
  private stopped = false;
  private readonly workers: Promise<void>[] = [];

  constructor(
    private readonly client: Client,
    private readonly prefix: string,
    private readonly limits = { workers: 4, calls: 20_000, ms: 120_000 },
  ) {}

  start(): void {
    const t0 = Date.now();
    for (let w = 0; w < this.limits.workers; w++) this.workers.push(this.run(t0));
  }

  private async run(t0: number): Promise<void> {
    while (!this.stopped && this.started < this.limits.calls && Date.now() - t0 < this.limits.ms) {
      const i = this.started++;
      const node = NODE_NAMES[i % NODE_NAMES.length]!;
      const id = `${this.prefix}-${i}`;
      const start = Date.now();
      try {
        // 20 ms in the handler: calls are in flight when the fault hits.
        await this.client.call('Count.Hit', id, 20, { node, timeout: CALL_TIMEOUT });
        this.outcomes.push({ id, node, start, end: Date.now(), ok: true });
      } catch (err) {
        this.outcomes.push({ id, node, start, end: Date.now(), ok: false, code: (err as { code?: string }).code ?? String(err) });
      }
      await sleep(20); // pacing: a steady trickle of calls, not a flood
    }
  }

  /** Successful calls to `node` that started at or after `since`. */
  okSince(node: NodeName, since: number): number {
    return this.outcomes.filter((o) => o.ok && o.node === node && o.start >= since).length;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.workers);
  }
}

// ---- presence: who removed which node's route, as each relay's watchers saw it ----

interface Removal {
  observer: string;
  node: string;
  /** The relay whose route to the node went. */
  relay: string;
  at: number;
  how: string;
}

/** Watches one relay's presence; reconnects if the relay closes the watch (a restart), comparing the lists across the gap. */
class Watcher {
  readonly removals: Removal[] = [];
  private known = new Map<string, string[]>();
  private client: Client | undefined;
  private pid: number | undefined;
  private stopped = false;

  constructor(
    readonly observer: string,
    private readonly addr: () => string,
    private readonly pidNow: () => number | undefined,
  ) {}

  async start(): Promise<void> {
    await this.open();
  }

  private async open(): Promise<void> {
    const pid = this.pidNow();
    const client = await connect(this.addr(), { heartbeatTimeout: 0, timeout: 5_000, connectTimeout: 2_000 });
    const watch = await client.watchPresence((e) => this.onEvent(e));
    const now = new Map(watch.nodes.map((n) => [n.name, n.relays]));
    // Across a gap in the same process, what is missing now was removed meanwhile; a new process starts afresh.
    if (this.pid !== undefined && pid === this.pid) this.diff(now, 'while the watch reconnected');
    this.known = now;
    this.pid = pid;
    this.client = client;
    client.once('close', () => void this.reopen());
  }

  private async reopen(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.open();
        return;
      } catch {
        await sleep(200); // the relay restarts: try again, until the test stops the watcher
      }
    }
  }

  /** Every node known before and missing from `now` (or with fewer relays) lost a route. */
  private diff(now: Map<string, string[]>, how: string): void {
    for (const node of this.known.keys()) this.lost(node, now.get(node) ?? [], how);
  }

  private lost(node: string, after: readonly string[], how: string): void {
    for (const relay of this.known.get(node) ?? [])
      if (!after.includes(relay)) this.removals.push({ observer: this.observer, node, relay, at: Date.now(), how });
  }

  private onEvent(e: PresenceEvent): void {
    const after = e.event === 'leave' ? [] : e.node.relays;
    this.lost(e.node.name, after, e.event);
    if (e.event === 'leave') this.known.delete(e.node.name);
    else this.known.set(e.node.name, after);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.client?.close().catch(() => undefined);
  }
}

// ---- scenarios ----

interface FaultResult {
  /** When the fault began and ended (NATS listening again, SIGCONT sent, routes restored, the relay listening again). */
  start: number;
  end: number;
  /** When the path the fault cut was back at NATS's level (a route reconnected), if later than `end`. */
  natsBack?: number;
}

interface Scenario {
  name: string;
  topology: Topology;
  /** Relays whose own process the fault hits: their routes may go, on every relay. */
  faulted: string[];
  /**
   * The fault keeps a-1 and b-1 from hearing each other longer than the 3 s expiry while both are
   * fine (a long NATS outage, a partition): each may then drop the other's routes. Otherwise a relay
   * that was fine keeps every route of the other fine relay.
   */
  separated: boolean;
  fault(rig: Rig): Promise<FaultResult>;
  /** The convergence bound from the end of the fault, and why it is looser than {@link BOUND}, if it is. */
  bound?: { ms: number; why: string };
  /** What else the relays must have said about this fault. */
  check?(rig: Rig): void;
}

/** Whether `observer` removing `relay`'s route to a node was wrong in `s`: the relay holding the route was fine and still reachable. */
function wrongRemoval(s: Scenario, separated: boolean, observer: string, relay: string): boolean {
  if (s.faulted.includes(relay)) return false;
  if (observer === relay) return true; // a relay's own node, attached and fine
  return !separated;
}

/**
 * The longest time a relay was without NATS, from its own log ('lost the cluster' to 'connected to
 * the cluster'). A "1 s" NATS restart is longer on a busy machine (the server takes its time to stop
 * and start, the clients to reconnect): once a relay was away for longer than the 3 s expiry less a
 * heartbeat interval, its peer may rightly have given up its routes, as after a long outage.
 */
function longestAway(rig: Rig): number {
  let longest = 0;
  for (const r of [rig.a, rig.b]) {
    for (const p of r.procs) {
      let lostAt: number | undefined;
      for (const l of p.logs) {
        if (String(l.msg).startsWith('lost the cluster')) lostAt = l.time as number;
        else if (l.msg === 'connected to the cluster' && lostAt !== undefined) {
          longest = Math.max(longest, (l.time as number) - lostAt);
          lostAt = undefined;
        }
      }
    }
  }
  return longest;
}
/** Away this long, a relay may have been given up by the others (3 s expiry, 1 s between heartbeats). */
const GIVEN_UP_AFTER = 3_000 - 1_000;

function natsOutage(seconds: number): Scenario {
  return {
    name: `NATS restart after ${seconds} s (same port)`,
    topology: 'single',
    faulted: [],
    // Within the 3 s expiry nothing may be dropped; a longer outage drops the other relay's nodes (degraded).
    separated: seconds * 1_000 > 3_000,
    async fault(rig) {
      const start = Date.now();
      const old = rig.nats[0]!;
      await old.stop();
      await sleep(seconds * 1_000); // the outage itself
      rig.nats[0] = await old.restart();
      return { start, end: Date.now() };
    },
  };
}

function sigstop(seconds: number): Scenario {
  return {
    name: `relay b-1 SIGSTOPped ${seconds} s, then SIGCONT`,
    topology: 'single',
    faulted: ['b-1'],
    separated: false,
    async fault(rig) {
      const start = Date.now();
      current(rig.b).kill('SIGSTOP');
      await sleep(seconds * 1_000); // the freeze itself
      current(rig.b).kill('SIGCONT');
      return { start, end: Date.now() };
    },
    check(rig) {
      // b-1 knew it was the one frozen: it asked a-1 for its list again instead of dropping a-1.
      expect(current(rig.b).logs.some((l) => l.msg === 'this relay was frozen; asking every relay for its list again instead of dropping them')).toBe(true);
    },
  };
}

const natsServerKilled: Scenario = {
  name: 'one server of a three-server NATS cluster killed, restarted',
  topology: 'trio',
  faulted: [],
  separated: false,
  async fault(rig) {
    const b = current(rig.b);
    const last = [...b.logs].reverse().find((l) => l.msg === 'connected to the cluster');
    const used = rig.nats.findIndex((s) => String(last?.server).endsWith(`:${s.port}`));
    expect(used, `b-1's server: ${String(last?.server)}`).toBeGreaterThanOrEqual(0);
    const from = b.logs.length;
    const start = Date.now();
    await rig.nats[used]!.stop();
    // b-1 moves to another server of the cluster; the dead one stays dead a moment longer, then comes back.
    await b.waitForMsg('connected to the cluster', 10_000, from);
    await sleep(1_000);
    rig.nats[used] = await rig.nats[used]!.restart();
    return { start, end: Date.now() };
  },
};

const sigkill: Scenario = {
  name: 'relay b-1 SIGKILLed, restarted (same name, same port)',
  topology: 'single',
  faulted: ['b-1'],
  separated: false,
  async fault(rig) {
    const start = Date.now();
    const old = current(rig.b);
    old.kill('SIGKILL');
    await old.exited;
    const proc = new Proc(BIN.relay, [
      '--listen',
      `127.0.0.1:${rig.b.port}`,
      '--log-level',
      'debug',
      ...clusterArgs(rig.b.servers),
      '--relay-name',
      'b-1',
      '--admin-listen',
      `127.0.0.1:${rig.b.admin}`,
    ]);
    rig.b.procs.push(proc);
    await proc.waitForMsg('relay listening', 10_000);
    return { start, end: Date.now() };
  },
};

const partition: Scenario = {
  name: 'partition between two NATS servers (routes cut), repaired',
  topology: 'proxied',
  faulted: [],
  separated: true,
  bound: {
    ms: BOUND + NATS_ROUTE_RECONNECT,
    why: "nats-server 2.9.10 re-dials a route after a fixed 1 s (+100 ms jitter), not configurable; from the route's return the bound is 2 s",
  },
  async fault(rig) {
    const a = current(rig.a);
    const b = current(rig.b);
    const [fromA, fromB] = [a.logs.length, b.logs.length];
    const start = Date.now();
    for (const p of rig.proxies) p.cut();
    // Held until each side has given the other up (3 s expiry): a real split, both sides serving alone.
    await Promise.all([
      a.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'b-1', 8_000, 'a-1 gave b-1 up', fromA),
      b.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'a-1', 8_000, 'b-1 gave a-1 up', fromB),
    ]);
    const s2 = rig.nats[1]!;
    const seen = s2.stderr.length;
    for (const p of rig.proxies) p.restore();
    const end = Date.now();
    // When the route is back: nats-server logs it as it is created.
    const deadline = end + 10_000;
    while (!/Route connection created/.test(s2.stderr.slice(seen))) {
      if (Date.now() > deadline) throw new Error(`the route did not come back: ${s2.stderr.slice(seen)}`);
      await sleep(10);
    }
    return { start, end, natsBack: Date.now() };
  },
};

// ---- running a scenario ----

interface Result {
  converge: { call: number; lists: number };
  ok: number;
  failed: Record<string, number>;
  duplicates: number;
  wrong: { presence: Removal[]; logs: string[] };
}

const matrix: string[] = [];

async function runScenario(s: Scenario): Promise<Result> {
  let rig: Rig | undefined;
  try {
    rig = await startRig(s.topology);
    const load = new Load(rig.caller, s.name.replace(/\W+/g, '-'));
    load.start();
    // The load reaches every node before the fault.
    const before = Date.now();
    while (NODE_NAMES.some((n) => load.okSince(n, before) < 3)) {
      if (Date.now() - before > 10_000) throw new Error(`the load did not reach every node: ${JSON.stringify(load.outcomes.slice(-10))}`);
      await sleep(20);
    }
    const fault = await s.fault(rig);
    const [callAt, listedAt] = await Promise.all([untilCrossCall(rig.caller, fault.end, 30_000), untilListed(rig, fault.end, 30_000)]);
    const converged = Math.max(callAt, listedAt);
    // The load goes on across relays after convergence, then stops.
    while (load.okSince('far-1', converged) < 10) {
      if (Date.now() - converged > 10_000) throw new Error(`calls to far-1 did not resume: ${JSON.stringify(load.outcomes.slice(-10))}`);
      await sleep(20);
    }
    await load.stop();

    // Every call got exactly one outcome.
    expect(load.outcomes.length).toBe(load.started);
    expect(new Set(load.outcomes.map((o) => o.id)).size).toBe(load.started);
    // Executions per id, from each node process (a dual-homed node is one process, one table).
    const seen = {} as Record<NodeName, Record<string, number>>;
    for (const n of NODE_NAMES) seen[n] = (await rig.caller.call('Count.Seen', { node: n, timeout: 5_000 })) as Record<string, number>;
    const target = new Map(load.outcomes.map((o) => [o.id, o]));
    let duplicates = 0;
    const problems: string[] = [];
    for (const n of NODE_NAMES) {
      for (const [id, times] of Object.entries(seen[n])) {
        if (times > 1) duplicates++;
        if (target.get(id)?.node !== n) problems.push(`${id} ran on ${n}, was sent to ${target.get(id)?.node}`);
      }
    }
    const failed: Record<string, number> = {};
    for (const o of load.outcomes) {
      const times = seen[o.node][o.id] ?? 0;
      if (o.ok && times !== 1) problems.push(`${o.id} (${o.node}) succeeded but ran ${times} times`);
      if (o.ok) continue;
      failed[o.code!] = (failed[o.code!] ?? 0) + 1;
      // TIMEOUT only for a call whose deadline passed during the fault; none is expected (CALL_TIMEOUT > expiry).
      const allowed = o.code === 'NODE_LOST' || o.code === 'NO_NODE' || (o.code === 'TIMEOUT' && o.start + CALL_TIMEOUT <= fault.end);
      if (!allowed) problems.push(`${o.id} (${o.node}) failed ${o.code}`);
      // A failure is the fault's: the call overlapped the fault or the convergence after it.
      if (o.end < fault.start || o.start > converged)
        problems.push(`${o.id} (${o.node}) failed ${o.code} outside the fault (${o.start - fault.start} ms after it began)`);
      // near-1 is a-1's own node and twin-1 has a tunnel to a-1: a-1's calls to them never cross NATS.
      if (o.node !== 'far-1' && !s.faulted.includes('a-1')) problems.push(`${o.id} to ${o.node}, attached to the caller's relay, failed ${o.code}`);
    }

    // Nodes wrongly removed: what the watchers saw, and what the relays logged.
    const removals = rig.watchers.flatMap((w) => w.removals);
    const away = longestAway(rig);
    const separated = s.separated || away > GIVEN_UP_AFTER;
    const presence = removals.filter((r) => wrongRemoval(s, separated, r.observer, r.relay));
    const logs: string[] = [];
    for (const r of [rig.a, rig.b]) {
      for (const p of r.procs) {
        for (const l of p.logs) {
          if (l.msg === 'relay left the cluster' && wrongRemoval(s, separated, r.name, String(l.relay)) && Number(l.nodes) > 0)
            logs.push(`${r.name}: ${line(l)}`);
          if (l.msg === 'node disconnected' && wrongRemoval(s, separated, r.name, r.name)) logs.push(`${r.name}: ${line(l)}`);
        }
      }
    }
    for (const [name, p] of Object.entries(rig.nodes)) {
      for (const l of p.logs) {
        if (l.msg !== 'disconnected from relay') continue;
        const relay = String(l.relay).includes(`:${rig.a.port}`) ? 'a-1' : 'b-1';
        if (wrongRemoval(s, separated, relay, relay)) logs.push(`${name}: ${line(l)}`);
      }
    }

    const result: Result = {
      converge: { call: callAt - fault.end, lists: listedAt - fault.end },
      ok: load.outcomes.filter((o) => o.ok).length,
      failed,
      duplicates,
      wrong: { presence, logs },
    };
    const codes = Object.entries(failed)
      .map(([c, n]) => `${c}:${n}`)
      .join(',');
    const natsNote =
      (fault.natsBack !== undefined ? `, route back +${fault.natsBack - fault.end}` : '') +
      (away > GIVEN_UP_AFTER && !s.separated ? `, a relay away ${away} ms` : '');
    const over = Math.max(result.converge.call, result.converge.lists) > (s.bound?.ms ?? BOUND) - BOUND + TARGET ? ' (over the 2 s target)' : '';
    matrix.push(
      `[chaos] ${s.name} | ${Math.max(result.converge.call, result.converge.lists)}${over} (call ${result.converge.call}, lists ${result.converge.lists}${natsNote}) | ` +
        `${result.ok}/${load.outcomes.length - result.ok}(${codes}) | ${duplicates} | ${presence.length + logs.length} (rightly removed: ${removals.length - presence.length})`,
    );

    const bound = s.bound?.ms ?? BOUND;
    expect(problems, problems.slice(0, 10).join('\n')).toEqual([]);
    expect(duplicates).toBe(0);
    expect(presence, JSON.stringify(presence.slice(0, 10))).toEqual([]);
    expect(logs, logs.slice(0, 10).join('\n')).toEqual([]);
    expect(result.converge.call, `${s.name}: a-1 → far-1 again, ms after the fault ended`).toBeLessThanOrEqual(bound);
    expect(result.converge.lists, `${s.name}: both relays connected and listing every node, ms after the fault ended`).toBeLessThanOrEqual(bound);
    s.check?.(rig);
    if (fault.natsBack !== undefined) expect(converged - fault.natsBack, `${s.name}: ms after NATS's route was back`).toBeLessThanOrEqual(BOUND);
    return result;
  } finally {
    await stopRig(rig);
  }
}

function line(l: LogLine): string {
  const { level: _l, time: _t, pid: _p, hostname: _h, ...rest } = l;
  return JSON.stringify(rest);
}

describe('the chaos matrix (issue 18): faults heal, no call runs twice, no fine node is dropped', () => {
  afterEach(async () => {
    await killAll();
    await stopAllNats();
    await stopAllProxies();
  });
  afterAll(() => {
    console.log(['[chaos] scenario | converge ms | calls ok/failed(codes) | duplicates | wrongly removed', ...matrix].join('\n'));
  });

  it('NATS restart after 1 s', () => runScenario(natsOutage(1)), 60_000);
  it('NATS restart after 6 s', () => runScenario(natsOutage(6)), 60_000);
  it.runIf(process.env.CI)('NATS restart after 30 s', () => runScenario(natsOutage(30)), 120_000);
  it('one server of a three-server NATS cluster killed and restarted', () => runScenario(natsServerKilled), 60_000);

  it('relay b-1 SIGSTOPped 5 s, then SIGCONT', () => runScenario(sigstop(5)), 60_000);
  it.runIf(process.env.CI)('relay b-1 SIGSTOPped 30 s', () => runScenario(sigstop(30)), 120_000);
  it('relay b-1 SIGKILLed and restarted under the same name and port', () => runScenario(sigkill), 60_000);
  it('a partition between two NATS servers, and its repair', () => runScenario(partition), 60_000);
});
