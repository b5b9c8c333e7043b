/**
 * `npm run bench`: starts real relay, node and load processes on 127.0.0.1 and prints a table of
 * calls/s, p50/p99 latency, and the relay's peak RSS and CPU per scenario. Each figure is the median
 * of `--runs` runs; ratios are taken within one run. Results also go to bench/results/<date>.json.
 *
 *   npm run bench                 full run
 *   npm run bench -- --quick      one short run per scenario, for development
 *   npm run bench -- --only relayed,direct
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { killAll, startNode, startRelay, type Proc } from '../test/helpers/processes.js';

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
}

interface LoadResult {
  calls: number;
  errors: number;
  firstError: string;
  elapsed: number;
  rate: number;
  p50: number;
  p99: number;
}

/** Runs the load generator as a separate process and returns its report. */
export function runLoad(spec: { relay: string; callers: number; window: number; seconds: number; method: string; args: unknown[]; warmup?: number }): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LOAD, JSON.stringify({ warmup: 0.5, ...spec })], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), (spec.seconds + 30) * 1000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      try {
        const r = JSON.parse(out.trim().split('\n').pop()!) as LoadResult;
        if (r.errors > 0) process.stderr.write(`  (${r.errors} errors, first: ${r.firstError})\n`);
        resolve(r);
      } catch {
        reject(new Error(`load generator exited ${code} without a report: ${out}`));
      }
    });
  });
}

/** CPU seconds (user + system) and peak RSS of a process, from /proc. */
export function procStats(pid: number): { cpu: number; peakRssMB: number; rssMB: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { cpu: ticks / 100, peakRssMB: kb('VmHWM') / 1024, rssMB: kb('VmRSS') / 1024 };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Relayed Arith.Multiply: caller → relay → node → back. */
async function relayed(callers: number, window: number): Promise<Row> {
  const results: Array<LoadResult & { cpu: number; rss: number }> = [];
  for (let r = 0; r < runs; r++) {
    const relay = await startRelay(['--log-level', 'info']);
    await startNode(relay.addr, ['--name', 'bench-1', '--log-level', 'info']);
    const before = procStats(relay.proc.child.pid!);
    const t0 = performance.now();
    const res = await runLoad({ relay: relay.addr, callers, window, seconds, method: 'Arith.Multiply', args: [2, 3] });
    const wall = (performance.now() - t0) / 1000;
    const after = procStats(relay.proc.child.pid!);
    results.push({ ...res, cpu: (after.cpu - before.cpu) / wall, rss: after.peakRssMB });
    await killAll();
  }
  return {
    scenario: `relayed ${callers} caller${callers > 1 ? 's' : ''} × ${window} in flight`,
    rate: median(results.map((r) => r.rate)),
    unit: 'calls/s',
    p50: median(results.map((r) => r.p50)),
    p99: median(results.map((r) => r.p99)),
    relayRssMB: median(results.map((r) => r.rss)),
    relayCpu: median(results.map((r) => r.cpu)),
  };
}

function printTable(rows: Row[]): void {
  const header = ['scenario', 'rate', 'p50 ms', 'p99 ms', 'relay peak RSS MB', 'relay CPU', 'note'];
  const lines = rows.map((r) => [
    r.scenario,
    `${Math.round(r.rate).toLocaleString('en-US')} ${r.unit}`,
    r.p50.toFixed(2),
    r.p99.toFixed(2),
    r.relayRssMB === undefined ? '' : r.relayRssMB.toFixed(1),
    r.relayCpu === undefined ? '' : `${Math.round(r.relayCpu * 100)}%`,
    r.note ?? '',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(fmt(header));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const l of lines) console.log(fmt(l));
}

const scenarios: Array<[string, () => Promise<Row[]>]> = [
  [
    'relayed',
    async () => {
      const rows: Row[] = [];
      for (const callers of [1, 16]) for (const window of [1, 16, 256]) rows.push(await relayed(callers, window));
      return rows;
    },
  ],
];

const rows: Row[] = [];
process.on('SIGINT', () => void killAll().then(() => process.exit(130)));
for (const [name, run] of scenarios) {
  if (only && !only.has(name)) continue;
  process.stderr.write(`running ${name}…\n`);
  rows.push(...(await run()));
}
await killAll();
console.log(`\n${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}, median of ${runs} run(s) of ${seconds} s\n`);
printTable(rows);
const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), cores: cpus().length, node: process.version, runs, seconds, rows }, null, 2));
console.log(`\nwritten to ${file}`);
