/**
 * `npm run bench`: starts real relay, node and load processes on 127.0.0.1 and prints a table of
 * calls/s, p50/p99 latency, and the relay's peak RSS and CPU per scenario (in `core` also the relay's
 * and the node's CPU µs per call in the measured window). Each figure is the median of `--runs` runs;
 * ratios are taken within one run. Results also go to bench/results/<date>.json.
 *
 *   npm run bench                 full run
 *   npm run bench -- --quick      one short run per scenario, for development
 *   npm run bench -- --only core,large      (scenarios: core, mrpc, callers, large, hol, fleet)
 *
 * The comparisons that need other software start it themselves on 127.0.0.1 and skip their rows with
 * a note when it is missing: Go (golang-go, golang-github-ugorji-go-codec-dev), nats-server, and
 * sshd with ssh (openssh-server, openssh-client); see bench/servers.ts.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { killAll, startNode, startRelay } from '../test/helpers/processes.js';
import { procStats } from './proc.js';
import { startNatsServer, startSshForward } from './servers.js';
import { clusterScenario } from './cluster.js';

const LOAD = fileURLToPath(new URL('./load.js', import.meta.url));

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const onlyArg = argv.find((a) => a.startsWith('--only'))?.split('=')[1] ?? (argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : undefined);
const only = onlyArg ? new Set(onlyArg.split(',')) : undefined;
const runs = quick ? 1 : 3;
const seconds = quick ? 1 : 3;

export interface Row {
  scenario: string;
  rate: number;
  unit: string;
  p50: number;
  p99: number;
  relayRssMB?: number;
  relayCpu?: number;
  note?: string;
  /** For a ratio or value row: the target it must meet, checked in the summary. */
  target?: Target;
}

/** `ratio ≥ value` (`min`) or `≤ value` (`max`); for the p99 target, the row's p99 in ms below `value`. */
interface Target {
  kind: 'min' | 'max' | 'p99';
  value: number;
}

interface LoadResult {
  calls: number;
  errors: number;
  firstError: string;
  elapsed: number;
  rate: number;
  p50: number;
  p99: number;
  /** With `cpuPids`: CPU seconds each of those processes used in the measured window. */
  windowCpu?: number[];
}

/** Runs the load generator as a separate process and returns its report. */
/** What bench/load.ts takes (see its LoadArgs). */
interface LoadSpec {
  relay: string;
  callers: number;
  window: number;
  seconds: number;
  method: string;
  args: unknown[];
  warmup?: number;
  raw?: boolean;
  nats?: boolean;
  payloadBytes?: number;
  count?: number;
  /** Processes whose CPU time bench/load.ts reads at the edges of its measured window (after the warmup). */
  cpuPids?: number[];
}

export function runLoad(spec: LoadSpec): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LOAD, JSON.stringify({ warmup: 0.5, ...spec })], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), (spec.seconds + 30) * 1000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`the load generator could not be started: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      try {
        const r = JSON.parse(out.trim().split('\n').pop()!) as LoadResult;
        if (r.errors > 0) process.stderr.write(`  (${r.errors} errors, first: ${r.firstError})\n`);
        resolve(r);
      } catch {
        reject(new Error(`load generator (${spec.method || 'raw'} on ${spec.relay}) exited ${code ?? signal} without a report: ${out}`));
      }
    });
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const ECHO_SERVICES = fileURLToPath(new URL('./echo-services.js', import.meta.url));
const WS_ECHO = fileURLToPath(new URL('./ws-echo.js', import.meta.url));
const WS_PROXY = fileURLToPath(new URL('./ws-proxy.js', import.meta.url));
const FLEET = fileURLToPath(new URL('./fleet.js', import.meta.url));
const NATS_RESPONDER = fileURLToPath(new URL('./nats-responder.js', import.meta.url));
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface Sample extends LoadResult {
  cpu?: number;
  rss?: number;
}

/** Runs a load while sampling the relay's CPU share and peak RSS. */
async function measured(relayPid: number | undefined, spec: LoadSpec): Promise<Sample> {
  const before = relayPid ? procStats(relayPid) : undefined;
  const t0 = performance.now();
  const res = await runLoad(spec);
  if (!relayPid || !before) return res;
  const after = procStats(relayPid);
  return { ...res, cpu: (after.cpu - before.cpu) / ((performance.now() - t0) / 1000), rss: after.peakRssMB };
}

function row(scenario: string, samples: Sample[], unit = 'calls/s', scale = 1, note?: string): Row {
  const r: Row = {
    scenario,
    rate: median(samples.map((x) => x.rate * scale)),
    unit,
    p50: median(samples.map((x) => x.p50)),
    p99: median(samples.map((x) => x.p99)),
  };
  if (samples[0]?.rss !== undefined) r.relayRssMB = median(samples.map((x) => x.rss!));
  if (samples[0]?.cpu !== undefined) r.relayCpu = median(samples.map((x) => x.cpu!));
  if (note) r.note = note;
  return r;
}

function ratioRow(scenario: string, ratios: number[], note: string, target?: Target): Row {
  const r: Row = { scenario, rate: median(ratios), unit: '×', p50: NaN, p99: NaN, note };
  if (target) r.target = target;
  return r;
}

/** A row of one figure per run (not a ratio), e.g. CPU µs per call; its median is checked against `target`. */
function valueRow(scenario: string, values: number[], unit: string, note: string, target?: Target): Row {
  const r: Row = { scenario, rate: median(values), unit, p50: NaN, p99: NaN, note };
  if (target) r.target = target;
  return r;
}

/** CPU µs per completed call of each `cpuPids` process in a load's measured window. */
const cpuPerCall = (res: LoadResult): number[] => (res.windowCpu ?? []).map((seconds) => (res.calls > 0 ? (seconds * 1e6) / res.calls : NaN));

const atLeast = (value: number): Target => ({ kind: 'min', value });
const atMost = (value: number): Target => ({ kind: 'max', value });
const targetText = (t: Target) => (t.kind === 'min' ? `target ≥ ${t.value}` : t.kind === 'max' ? `target ≤ ${t.value}` : `target p99 < ${t.value} ms`);

/** Builds the Go net/rpc server and load generator; undefined (with the reason) when Go is missing. */
function buildGo(): { server: string; load: string } | string {
  const out = `${ROOT}bench/results/go`;
  mkdirSync(out, { recursive: true });
  const env = { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode', GOFLAGS: '' };
  for (const name of ['server', 'load']) {
    const r = spawnSync('go', ['build', '-o', `${out}/${name}`, `./bench/go/${name}`], { cwd: ROOT, env, encoding: 'utf8' });
    if (r.error || r.status !== 0) {
      return `Go scenario skipped: ${r.error?.message ?? r.stderr.trim()} (apt-get install golang-go golang-github-ugorji-go-codec-dev)`;
    }
  }
  return { server: `${out}/server`, load: `${out}/load` };
}

/** Starts a program that prints its address or port on its first stdout line. */
async function startPrinting(file: string, args: string[]): Promise<{ child: ChildProcess; first: string }> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  let buf = '';
  const first = await new Promise<string>((resolve, reject) => {
    const name = [file, ...args.slice(0, 1)].join(' ');
    const timer = setTimeout(() => reject(new Error(`${name} printed nothing within 20 s`)), 20_000);
    // A program that cannot start, or dies before its line, says so now rather than at the timeout.
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${name} could not be started: ${err.message}`));
    });
    child.once('exit', (code, signal) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before printing its first line`));
    });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) {
        clearTimeout(timer);
        resolve(buf.split('\n')[0]!.trim());
      }
    });
  });
  return { child, first };
}

const children = new Set<ChildProcess>();
async function stopAll(): Promise<void> {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  await killAll();
}

function runGoLoad(load: string, addr: string, window: number): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const r = spawn(load, ['-addr', addr, '-window', String(window), '-seconds', String(seconds)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    r.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    r.once('error', (err) => reject(new Error(`the Go load generator could not be started: ${err.message}`)));
    r.on('exit', () => {
      try {
        resolve(JSON.parse(out.trim()) as LoadResult);
      } catch {
        reject(new Error(`Go load generator gave no report: ${out}`));
      }
    });
  });
}

/**
 * Relayed vs direct vs Go net/rpc vs NATS request/reply, one caller, per window size; ratios taken
 * within each run. The NATS row (1 and 256 in flight) is the alternative for RPC to agents that dial
 * out: nats.js requests through nats-server to a nats.js responder, MessagePack in both directions.
 */
async function core(): Promise<Row[]> {
  const go = buildGo();
  const rows: Row[] = [];
  for (const window of [1, 16, 256]) {
    const withNats = window !== 16;
    const relayed: Sample[] = [];
    const direct: Sample[] = [];
    const goDirect: LoadResult[] = [];
    const nats: LoadResult[] = [];
    const vsDirect: number[] = [];
    const vsGo: number[] = [];
    const vsNats: number[] = [];
    const latency: number[] = [];
    // Issue 22: relay and node CPU per relayed call, at 1 and 256 in flight.
    const withCpu = window !== 16;
    const relayUs: number[] = [];
    const nodeUs: number[] = [];
    let natsSkipped: string | undefined;
    for (let r = 0; r < runs; r++) {
      const relay = await startRelay(['--log-level', 'info']);
      const node = await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info', '--direct-listen', '127.0.0.1:0']);
      const directPort = (await node.waitForMsg('direct listener ready')).port as number;
      const cpuPids = withCpu ? [relay.proc.child.pid!, node.child.pid!] : undefined;
      const a = await measured(relay.proc.child.pid, { relay: relay.addr, callers: 1, window, seconds, method: 'Arith.Multiply', args: [2, 3], cpuPids });
      if (withCpu) {
        const [relayCpu, nodeCpu] = cpuPerCall(a);
        relayUs.push(relayCpu!);
        nodeUs.push(nodeCpu!);
      }
      const b = await measured(undefined, { relay: `127.0.0.1:${directPort}`, callers: 1, window, seconds, method: 'Arith.Multiply', args: [2, 3] });
      relayed.push(a);
      direct.push(b);
      vsDirect.push(a.rate / b.rate);
      latency.push(a.p50 / b.p50);
      if (typeof go !== 'string') {
        const server = await startPrinting(go.server, []);
        const c = await runGoLoad(go.load, server.first, window);
        goDirect.push(c);
        vsGo.push(a.rate / c.rate);
      }
      if (withNats) {
        const server = await startNatsServer();
        if (typeof server === 'string') natsSkipped = server;
        else {
          try {
            await startPrinting(process.execPath, [NATS_RESPONDER, server.addr]);
            const d = await runLoad({ relay: server.addr, nats: true, callers: 1, window, seconds, method: 'Arith.Multiply', args: [2, 3] });
            nats.push(d);
            vsNats.push(a.rate / d.rate);
          } finally {
            server.stop();
          }
        }
      }
      await stopAll();
    }
    rows.push(row(`relayed, 1 caller × ${window} in flight`, relayed));
    rows.push(row(`direct (no relay), ${window} in flight`, direct));
    rows.push(ratioRow(`  relayed ÷ direct throughput, ${window} in flight`, vsDirect, 'target ≥ 0.5'));
    if (window === 1) rows.push(ratioRow('  relayed ÷ direct median latency, 1 in flight', latency, '', atMost(2)));
    if (withCpu) {
      const how = 'utime+stime ÷ calls, measured window';
      rows.push(valueRow(`  relay CPU per relayed call, ${window} in flight`, relayUs, 'µs', how, atMost(window === 1 ? 50 : 5)));
      rows.push(valueRow(`  node CPU per relayed call, ${window} in flight`, nodeUs, 'µs', how));
    }
    if (typeof go === 'string') rows.push(skipped(`Go net/rpc direct, ${window} in flight`, go));
    else {
      rows.push(
        row(
          `Go net/rpc + msgpack direct, ${window} in flight`,
          goDirect.map((x) => ({ ...x })),
        ),
      );
      rows.push(ratioRow(`  relayed ÷ Go direct, ${window} in flight`, vsGo, window === 256 ? 'target ≥ 4' : ''));
    }
    if (!withNats) continue;
    if (natsSkipped !== undefined) rows.push(skipped(`NATS request/reply, ${window} in flight`, natsSkipped));
    else {
      rows.push(row(`NATS request/reply (nats.js ↔ nats-server), ${window} in flight`, nats));
      rows.push(ratioRow(`  relayed ÷ NATS, ${window} in flight`, vsNats, '', atLeast(window === 1 ? 1.2 : 3)));
    }
  }
  return rows;
}

const skipped = (scenario: string, note: string): Row => ({ scenario, rate: NaN, unit: '', p50: NaN, p99: NaN, note });

/**
 * The MessagePack-RPC path against `ssh -R`, the other way to reach a Go net/rpc server behind NAT:
 * the same Go client (one connection) calls the same Go server directly, through the relay's
 * `--msgpack-rpc-listen` port and `tunnel-node --forward`, and through an sshd remote forward.
 */
async function msgpackRpc(): Promise<Row[]> {
  const go = buildGo();
  if (typeof go === 'string') return [skipped('msgpack-rpc path vs ssh -R', go)];
  const windows = [1, 64];
  const samples = windows.map(() => ({
    direct: [] as LoadResult[],
    relayed: [] as LoadResult[],
    ssh: [] as LoadResult[],
    vsSsh: [] as number[],
    vsDirect: [] as number[],
  }));
  let sshSkipped: string | undefined;
  for (let r = 0; r < runs; r++) {
    const server = await startPrinting(go.server, []);
    const relay = await startRelay(['--log-level', 'info', '--msgpack-rpc-listen', '127.0.0.1:0']);
    const rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info', '--forward', `Arith=${server.first}`]);
    const ssh = await startSshForward(server.first);
    if (typeof ssh === 'string') sshSkipped = ssh;
    try {
      for (const [i, window] of windows.entries()) {
        const s = samples[i]!;
        const direct = await runGoLoad(go.load, server.first, window);
        const relayed = await runGoLoad(go.load, `127.0.0.1:${rpcPort}`, window);
        s.direct.push(direct);
        s.relayed.push(relayed);
        s.vsDirect.push(relayed.rate / direct.rate);
        if (typeof ssh !== 'string') {
          const viaSsh = await runGoLoad(go.load, ssh.addr, window);
          s.ssh.push(viaSsh);
          s.vsSsh.push(relayed.rate / viaSsh.rate);
        }
      }
    } finally {
      if (typeof ssh !== 'string') ssh.stop();
      await stopAll();
    }
  }
  const rows: Row[] = [];
  for (const [i, window] of windows.entries()) {
    const s = samples[i]!;
    rows.push(row(`Go client → Go server direct, ${window} in flight`, s.direct));
    rows.push(row(`Go client → relay msgpack-rpc → node --forward → Go server, ${window} in flight`, s.relayed));
    rows.push(ratioRow(`  msgpack-rpc path ÷ direct, ${window} in flight`, s.vsDirect, ''));
    if (sshSkipped !== undefined) rows.push(skipped(`Go client → ssh -R → Go server, ${window} in flight`, sshSkipped));
    else {
      rows.push(row(`Go client → ssh -R → Go server, ${window} in flight`, s.ssh));
      rows.push(ratioRow(`  msgpack-rpc path ÷ ssh -R, ${window} in flight`, s.vsSsh, '', atLeast(window === 1 ? 0.8 : 1)));
    }
  }
  return rows;
}

/** 16 callers sharing one node. */
async function manyCallers(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const window of [1, 16, 256]) {
    const samples: Sample[] = [];
    for (let r = 0; r < runs; r++) {
      const relay = await startRelay(['--log-level', 'info']);
      await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info']);
      samples.push(await measured(relay.proc.child.pid, { relay: relay.addr, callers: 16, window, seconds, method: 'Arith.Multiply', args: [2, 3] }));
      await stopAll();
    }
    rows.push(row(`relayed, 16 callers × ${window} in flight`, samples));
  }
  return rows;
}

/**
 * 1 MiB and 16 MiB echoes through the relay, next to a bare ws echo of the same size and the same
 * echo through a do-nothing ws proxy (bench/ws-proxy.ts): the floor for any relayed path here.
 */
async function large(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const mib of [1, 16]) {
    // The relay's default limit (--max-message 16MiB) counts the encoded params, 6 bytes more than the payload.
    const bytes = mib * 1024 * 1024 - 64;
    const relayed: Sample[] = [];
    const raw: Sample[] = [];
    const proxied: Sample[] = [];
    const ratios: number[] = [];
    const proxyRatios: number[] = [];
    for (let r = 0; r < runs; r++) {
      const relay = await startRelay(['--log-level', 'info']);
      await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info', '--services', ECHO_SERVICES]);
      const a = await measured(relay.proc.child.pid, {
        relay: relay.addr,
        callers: 1,
        window: 1,
        seconds,
        method: 'Bench.Echo',
        args: [],
        payloadBytes: bytes,
      });
      const echo = await startPrinting(process.execPath, [WS_ECHO]);
      const b = await measured(undefined, { relay: echo.first, raw: true, callers: 1, window: 1, seconds, method: '', args: [], payloadBytes: bytes });
      const proxy = await startPrinting(process.execPath, [WS_PROXY, echo.first]);
      const c = await measured(undefined, { relay: proxy.first, raw: true, callers: 1, window: 1, seconds, method: '', args: [], payloadBytes: bytes });
      relayed.push(a);
      raw.push(b);
      proxied.push(c);
      ratios.push(a.rate / b.rate);
      proxyRatios.push(c.rate / b.rate);
      await stopAll();
    }
    rows.push(row(`echo ${mib} MiB through the relay`, relayed, 'MiB/s', mib));
    rows.push(row(`echo ${mib} MiB, bare ws`, raw, 'MiB/s', mib));
    rows.push(row(`echo ${mib} MiB, bare ws through a do-nothing ws proxy`, proxied, 'MiB/s', mib));
    rows.push(ratioRow(`  relayed ÷ bare ws, ${mib} MiB`, ratios, '', mib === 16 ? atLeast(0.5) : undefined));
    rows.push(ratioRow(`  do-nothing proxy ÷ bare ws, ${mib} MiB`, proxyRatios, 'the floor for one more process and two more hops'));
  }
  return rows;
}

/** p99 of small calls on a node that is also echoing 16 MiB payloads. */
async function headOfLine(): Promise<Row[]> {
  const samples: Sample[] = [];
  for (let r = 0; r < runs; r++) {
    const relay = await startRelay(['--log-level', 'info']);
    await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info', '--services', ECHO_SERVICES]);
    const big = runLoad({
      relay: relay.addr,
      callers: 1,
      window: 2,
      seconds: seconds + 1,
      method: 'Bench.Echo',
      args: [],
      payloadBytes: 16 * 1024 * 1024 - 64,
      warmup: 0,
    });
    samples.push(await measured(relay.proc.child.pid, { relay: relay.addr, callers: 1, window: 1, seconds, method: 'Bench.Echo', args: [1], warmup: 0.5 }));
    await big;
    await stopAll();
  }
  return [{ ...row('small calls while 16 MiB echoes run', samples), target: { kind: 'p99', value: 50 } }];
}

/** 2,000 idle nodes on one relay (RSS per node), then 200 callers × 50 calls. */
async function fleet(): Promise<Row[]> {
  const count = quick ? 500 : 2000;
  const perNode: number[] = [];
  const bursts: Sample[] = [];
  for (let r = 0; r < runs; r++) {
    // Every idle node comes from 127.0.0.1 here, unlike a real fleet: lift the per-address limit.
    const relay = await startRelay(['--log-level', 'info', '--max-connections-per-address', String(count + 500)]);
    await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info']);
    const pid = relay.proc.child.pid!;
    const before = procStats(pid).rssMB;
    const fleetProc = await startPrinting(process.execPath, [FLEET, relay.addr, String(count)]);
    void fleetProc;
    const after = procStats(pid).rssMB;
    perNode.push(((after - before) * 1024) / count);
    bursts.push(await measured(pid, { relay: relay.addr, callers: 200, window: 1, seconds, method: 'Arith.Multiply', args: [2, 3], count: 50 }));
    await stopAll();
  }
  return [
    { scenario: `${count} idle nodes: relay RSS per node`, rate: median(perNode), unit: 'KiB', p50: NaN, p99: NaN, note: 'target ≤ 40 KB' },
    row('200 callers × 50 calls (fleet connected)', bursts),
  ];
}

function printTable(rows: Row[]): void {
  const header = ['scenario', 'rate', 'p50 ms', 'p99 ms', 'relay peak RSS MB', 'relay CPU', 'note'];
  const lines = rows.map((r) => [
    r.scenario,
    !Number.isFinite(r.rate)
      ? ''
      : r.unit === '×'
        ? `${r.rate.toFixed(2)}×`
        : Math.abs(r.rate) < 10
          ? `${r.rate.toFixed(2)} ${r.unit}`
          : `${Math.round(r.rate).toLocaleString('en-US')} ${r.unit}`,
    Number.isFinite(r.p50) ? r.p50.toFixed(2) : '',
    Number.isFinite(r.p99) ? r.p99.toFixed(2) : '',
    r.relayRssMB === undefined ? '' : r.relayRssMB.toFixed(1),
    r.relayCpu === undefined ? '' : `${Math.round(r.relayCpu * 100)}%`,
    [r.note, r.target && targetText(r.target)].filter(Boolean).join('; '),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(fmt(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const l of lines) console.log(fmt(l));
}

/** Relays in a cluster over NATS (bench/cluster.ts), compared with NATS's own request/reply of the core run. */
function cluster(): Promise<Row[]> {
  const nats = (window: number) => rows.find((r) => r.scenario === `NATS request/reply (nats.js ↔ nats-server), ${window} in flight`)?.rate;
  return clusterScenario(
    { runs, seconds, quick, echoServices: ECHO_SERVICES, fleetScript: FLEET, measured, row, ratioRow, startPrinting, stopAll },
    { w1: nats(1), w256: nats(256) },
  ) as Promise<Row[]>;
}

const scenarios: Array<[string, () => Promise<Row[]>]> = [
  ['core', core],
  ['mrpc', msgpackRpc],
  ['callers', manyCallers],
  ['large', large],
  ['hol', headOfLine],
  ['fleet', fleet],
  ['cluster', cluster],
];

/** The targets, each with what this run measured: met or not. */
function printTargets(rows: Row[]): void {
  const checked = rows.filter((r) => r.target);
  if (checked.length === 0) return;
  console.log('\nTargets (medians of this run):');
  for (const r of checked) {
    const t = r.target!;
    const measured = t.kind === 'p99' ? r.p99 : r.rate;
    const met = t.kind === 'min' ? measured >= t.value : t.kind === 'max' ? measured <= t.value : measured < t.value;
    const shown = t.kind === 'p99' ? `p99 ${measured.toFixed(1)} ms` : r.unit === '×' ? `${measured.toFixed(2)}×` : `${measured.toFixed(2)} ${r.unit}`;
    console.log(`  ${met ? 'met    ' : 'NOT MET'}  ${r.scenario.trim()}: ${shown} (${targetText(t)})`);
  }
}

const rows: Row[] = [];
/** The scenario running now, named by every failure. */
let current = 'start-up';

/**
 * Any failure ends the run with one clear line naming the scenario, after stopping every process it
 * started: a child's 'error', a socket error, a rejection nobody awaited included. Left to Node, some
 * of these end the run with little more than its version line.
 */
async function fail(err: unknown, how: string): Promise<never> {
  const detail = err instanceof Error ? (err.stack ?? `${err.name}: ${err.message}`) : inspect(err);
  process.stderr.write(`\nbench: scenario ${current} failed (${how}): ${detail}\n`);
  await stopAll().catch(() => undefined);
  process.exit(1);
}
process.on('uncaughtException', (err) => void fail(err, 'uncaught exception'));
process.on('unhandledRejection', (err) => void fail(err, 'unhandled rejection'));
process.on('SIGINT', () => void stopAll().then(() => process.exit(130)));
for (const [name, run] of scenarios) {
  if (only && !only.has(name)) continue;
  current = name;
  process.stderr.write(`running ${name}…\n`);
  try {
    rows.push(...(await run()));
  } catch (err) {
    await fail(err, 'error');
  }
}
current = 'summary';
await stopAll();
console.log(
  `\n${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}, median of ${runs} run(s) of ${seconds} s\n`,
);
printTable(rows);
printTargets(rows);
const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), cores: cpus().length, node: process.version, runs, seconds, rows }, null, 2));
console.log(`\nwritten to ${file}`);
