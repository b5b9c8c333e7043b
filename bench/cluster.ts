/**
 * The cluster scenario of `npm run bench` (issue 13): cross-relay against same-relay calls, a 16 MiB
 * echo across relays, presence convergence for 1,000 nodes joining three relays, the failover of
 * a dual-homed node, and convergence after a NATS restart (issue 18). Everything runs as real processes on 127.0.0.1 with a real nats-server.
 */
import { connect } from '../src/client/client.js';
import type { PresenceEvent } from '../src/wire/presence.js';
import { clusterArgs, NatsServer, stopAllNats } from '../test/helpers/nats.js';
import { startNode, startRelay, type RunningRelay } from '../test/helpers/processes.js';

/** What the cluster scenario needs from bench.ts. */
export interface Harness {
  runs: number;
  seconds: number;
  quick: boolean;
  echoServices: string;
  fleetScript: string;
  measured(
    relayPid: number | undefined,
    spec: { relay: string; callers: number; window: number; seconds: number; method: string; args: unknown[]; payloadBytes?: number },
  ): Promise<{ rate: number; p50: number; p99: number; errors: number }>;
  row(scenario: string, samples: Array<{ rate: number; p50: number; p99: number }>, unit?: string, scale?: number, note?: string): BenchRow;
  ratioRow(scenario: string, ratios: number[], note: string, target?: BenchTarget): BenchRow;
  startPrinting(file: string, args: string[]): Promise<{ first: string }>;
  stopAll(): Promise<void>;
}

export interface BenchTarget {
  kind: 'min' | 'max' | 'p99';
  value: number;
}

export interface BenchRow {
  scenario: string;
  rate: number;
  unit: string;
  p50: number;
  p99: number;
  note?: string;
  target?: BenchTarget;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function clusterRelay(nats: string, name: string, extra: string[] = []): Promise<RunningRelay> {
  const relay = await startRelay(['--log-level', 'info', ...clusterArgs(nats), '--relay-name', name, ...extra]);
  await relay.proc.waitForMsg('connected to the cluster', 10_000);
  return relay;
}

async function hears(relay: RunningRelay, ...names: string[]): Promise<void> {
  for (const name of names) await relay.proc.waitForLog((l) => l.msg === 'relay joined the cluster' && l.relay === name, 10_000, `relay ${name}`);
}

/** Cross-relay and same-relay calls, alternating in each run; `natsRate256` is NATS's own request/reply rate, when measured. */
export async function clusterScenario(h: Harness, natsRate: { w1?: number | undefined; w256?: number | undefined } = {}): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const window of [1, 256]) {
    const same: Array<{ rate: number; p50: number; p99: number }> = [];
    const cross: Array<{ rate: number; p50: number; p99: number }> = [];
    const ratios: number[] = [];
    const p50Delta: number[] = [];
    for (let r = 0; r < h.runs; r++) {
      const nats = await NatsServer.start();
      const [a, b] = await Promise.all([clusterRelay(nats.url, 'a-1'), clusterRelay(nats.url, 'b-1')]);
      await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
      await startNode(b.addr, ['--name', 'bench-1', '--log-level', 'info']);
      const probe = await connect(a.addr);
      for (let i = 0; i < 100 && !(await probe.nodes()).some((n) => n.name === 'bench-1'); i++) await new Promise((res) => setTimeout(res, 20));
      await probe.close();
      const spec = { callers: 1, window, seconds: h.seconds, method: 'Arith.Multiply', args: [2, 3] };
      const s = await h.measured(b.proc.child.pid, { relay: b.addr, ...spec });
      const c = await h.measured(a.proc.child.pid, { relay: a.addr, ...spec });
      same.push(s);
      cross.push(c);
      ratios.push(c.rate / s.rate);
      p50Delta.push(c.p50 - s.p50);
      await h.stopAll();
      await stopAllNats();
    }
    rows.push(h.row(`same relay, ${window} in flight`, same));
    rows.push(h.row(`cross-relay (over NATS), ${window} in flight`, cross));
    rows.push(h.ratioRow(`  cross-relay ÷ same relay, ${window} in flight`, ratios, '', window === 256 ? { kind: 'min', value: 0.5 } : undefined));
    if (window === 1) {
      rows.push({
        scenario: '  cross-relay p50 − same-relay p50, 1 in flight',
        rate: median(p50Delta),
        unit: 'ms',
        p50: NaN,
        p99: NaN,
        target: { kind: 'max', value: 0.3 },
      });
    }
    const nats = window === 1 ? natsRate.w1 : natsRate.w256;
    if (nats !== undefined)
      rows.push(
        h.ratioRow(`  cross-relay ÷ NATS request/reply (core run), ${window} in flight`, [median(cross.map((x) => x.rate)) / nats], '', {
          kind: 'min',
          value: 1,
        }),
      );
  }
  rows.push(...(await crossEcho(h)));
  rows.push(await convergence(h));
  rows.push(...(await failover(h)));
  rows.push(await natsRestart(h));
  return rows;
}

/** 16 MiB echoed to a node on another relay. */
async function crossEcho(h: Harness): Promise<BenchRow[]> {
  const same: Array<{ rate: number; p50: number; p99: number }> = [];
  const cross: Array<{ rate: number; p50: number; p99: number }> = [];
  const bytes = 16 * 1024 * 1024 - 64;
  for (let r = 0; r < h.runs; r++) {
    const nats = await NatsServer.start();
    const [a, b] = await Promise.all([clusterRelay(nats.url, 'a-1'), clusterRelay(nats.url, 'b-1')]);
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    await startNode(b.addr, ['--name', 'bench-1', '--log-level', 'info', '--services', h.echoServices]);
    const spec = { callers: 1, window: 1, seconds: h.seconds, method: 'Bench.Echo', args: [], payloadBytes: bytes };
    same.push(await h.measured(b.proc.child.pid, { relay: b.addr, ...spec }));
    cross.push(await h.measured(a.proc.child.pid, { relay: a.addr, ...spec }));
    await h.stopAll();
    await stopAllNats();
  }
  return [h.row('echo 16 MiB, same relay', same, 'MiB/s', 16), h.row('echo 16 MiB, cross-relay', cross, 'MiB/s', 16)];
}

/** 1,000 nodes (333 + 333 + 334) joining three relays at once: until every relay lists all of them. */
async function convergence(h: Harness): Promise<BenchRow> {
  const count = h.quick ? 300 : 1_000;
  const times: number[] = [];
  for (let r = 0; r < h.runs; r++) {
    const nats = await NatsServer.start();
    const limit = ['--max-connections-per-address', String(count + 500)];
    const relays = await Promise.all(['a-1', 'b-1', 'c-1'].map((n) => clusterRelay(nats.url, n, limit)));
    await Promise.all(relays.map((rl, i) => hears(rl, ...['a-1', 'b-1', 'c-1'].filter((_, j) => j !== i))));
    const watchers = await Promise.all(relays.map((rl) => connect(rl.addr)));
    const seen = relays.map(() => new Set<string>());
    let done = 0;
    let finished = 0;
    const all = new Promise<void>((resolve) => {
      watchers.forEach((w, i) => {
        void w.watchPresence((e: PresenceEvent) => {
          if (e.event !== 'join' || seen[i]!.has(e.node.name)) return;
          seen[i]!.add(e.node.name);
          if (seen[i]!.size === count && ++done === relays.length) {
            finished = performance.now();
            resolve();
          }
        });
      });
    });
    const t0 = performance.now();
    const per = Math.floor(count / 3);
    const fleets = Promise.all(
      relays.map((rl, i) => h.startPrinting(process.execPath, [h.fleetScript, rl.addr, String(i === 2 ? count - 2 * per : per), `r${i}-`])),
    );
    // A fleet that fails while the joins are awaited is reported by the await below, not left unhandled meanwhile.
    fleets.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([all, new Promise((res) => (timer = setTimeout(res, 120_000)))]);
    clearTimeout(timer);
    await fleets;
    times.push(finished > 0 ? (finished - t0) / 1000 : NaN);
    for (const w of watchers) await w.close();
    await h.stopAll();
    await stopAllNats();
  }
  return {
    scenario: `presence: ${count} nodes join 3 relays, until every relay lists all`,
    rate: median(times),
    unit: 's',
    p50: NaN,
    p99: NaN,
    note: 'from the first connect',
  };
}

/** A dual-homed node loses one of its relays (SIGKILL): time to the next answered call, and to the dead relay leaving the list. */
async function failover(h: Harness): Promise<BenchRow[]> {
  const answered: number[] = [];
  const gone: number[] = [];
  for (let r = 0; r < h.runs; r++) {
    const nats = await NatsServer.start();
    const [a, b, c] = await Promise.all([clusterRelay(nats.url, 'a-1'), clusterRelay(nats.url, 'b-1'), clusterRelay(nats.url, 'c-1')]);
    await Promise.all([hears(c, 'a-1', 'b-1')]);
    await startNode(`${a.addr},${b.addr}`, ['--name', 'twin-1', '--log-level', 'info']);
    const caller = await connect(c.addr);
    for (let i = 0; i < 200; i++) {
      const n = (await caller.nodes()).find((x) => x.name === 'twin-1');
      if (n && n.relays.length === 2) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    const t0 = performance.now();
    a.proc.kill('SIGKILL');
    let first = NaN;
    for (let i = 0; i < 2_000 && Number.isNaN(first); i++) {
      try {
        await caller.call('Arith.Multiply', 2, 3, { timeout: 5_000 });
        first = performance.now() - t0;
      } catch {
        /* a call in flight on the dead tunnel: try the next */
      }
    }
    answered.push(first);
    await c.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'a-1', 10_000, 'a-1 gone');
    gone.push(performance.now() - t0);
    await caller.close();
    await h.stopAll();
    await stopAllNats();
  }
  return [
    {
      scenario: 'failover: dual-homed node, one relay SIGKILLed → next answered call',
      rate: median(answered),
      unit: 'ms',
      p50: NaN,
      p99: NaN,
      target: { kind: 'max', value: 1000 },
    },
    { scenario: 'failover: dead relay leaves every list', rate: median(gone), unit: 'ms', p50: NaN, p99: NaN, note: 'bound 4500 ms' },
  ];
}

/**
 * NATS down longer than the 3 s expiry (each relay has dropped the other's nodes), then back on the
 * same port: from the server listening again until a cross-relay call succeeds and both relays list
 * each other's node (issue 18: converged within 2 s of NATS being back).
 */
export async function natsRestart(h: Pick<Harness, 'runs' | 'stopAll'>): Promise<BenchRow> {
  const times: number[] = [];
  for (let r = 0; r < h.runs; r++) {
    const nats = await NatsServer.start();
    const [a, b] = await Promise.all([clusterRelay(nats.url, 'a-1'), clusterRelay(nats.url, 'b-1')]);
    await Promise.all([hears(a, 'b-1'), hears(b, 'a-1')]);
    await Promise.all([startNode(a.addr, ['--name', 'near-1', '--log-level', 'info']), startNode(b.addr, ['--name', 'far-1', '--log-level', 'info'])]);
    const [ca, cb] = await Promise.all([connect(a.addr), connect(b.addr)]);
    const listed = async () => {
      const [na, nb] = await Promise.all([ca.nodes(), cb.nodes()]);
      return na.some((n) => n.name === 'far-1') && nb.some((n) => n.name === 'near-1');
    };
    const converged = async () => {
      try {
        return (await ca.call('Arith.Multiply', 2, 3, { node: 'far-1', timeout: 1_000 })) === 6 && (await listed());
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 500 && !(await converged()); i++) await new Promise((res) => setTimeout(res, 20));
    const [fromA, fromB] = [a.proc.logs.length, b.proc.logs.length];
    await nats.stop();
    // The outage lasts until each relay has given the other up: longer than the expiry.
    await Promise.all([
      a.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'b-1', 10_000, 'a-1 gave b-1 up', fromA),
      b.proc.waitForLog((l) => l.msg === 'relay left the cluster' && l.relay === 'a-1', 10_000, 'b-1 gave a-1 up', fromB),
    ]);
    await nats.restart();
    const t0 = performance.now();
    let took = NaN;
    while (Number.isNaN(took) && performance.now() - t0 < 30_000) {
      if (await converged()) took = performance.now() - t0;
      else await new Promise((res) => setTimeout(res, 10));
    }
    times.push(took);
    await Promise.all([ca.close(), cb.close()]);
    await h.stopAll();
    await stopAllNats();
  }
  return {
    scenario: 'NATS restart after an outage > 3 s expiry → cross-relay call and both lists again',
    rate: median(times),
    unit: 'ms',
    p50: NaN,
    p99: NaN,
    note: 'from NATS listening again',
    target: { kind: 'max', value: 2000 },
  };
}
