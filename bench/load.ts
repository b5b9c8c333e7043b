/**
 * Load generator, run as its own process by bench.ts so that the caller's CPU is not the bench's.
 * Keeps `window` calls in flight on each of `callers` connections for `seconds`, then prints one JSON
 * line: calls completed, errors, and latency percentiles (ms).
 */
import { connect } from '../src/client/client.js';

interface LoadArgs {
  relay: string;
  callers: number;
  window: number;
  seconds: number;
  method: string;
  args: unknown[];
  warmup: number;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;

const clients = await Promise.all(Array.from({ length: spec.callers }, () => connect(spec.relay, { timeout: 60_000 })));
const latencies: number[] = [];
let calls = 0;
let errors = 0;
let firstError = '';
let measuring = false;
let stop = false;

async function lane(client: (typeof clients)[number]): Promise<void> {
  while (!stop) {
    const t0 = performance.now();
    try {
      await client.request(spec.method, spec.args);
      if (measuring) {
        calls++;
        latencies.push(performance.now() - t0);
      }
    } catch (err) {
      errors++;
      firstError ||= String(err);
      if (errors > 1000) stop = true;
    }
  }
}

const lanes = clients.flatMap((c) => Array.from({ length: spec.window }, () => lane(c)));
await new Promise((r) => setTimeout(r, spec.warmup * 1000));
measuring = true;
const start = performance.now();
await new Promise((r) => setTimeout(r, spec.seconds * 1000));
measuring = false;
const elapsed = (performance.now() - start) / 1000;
stop = true;
await Promise.all(lanes);
latencies.sort((a, b) => a - b);
const pct = (p: number) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]! : NaN);
process.stdout.write(
  `${JSON.stringify({ calls, errors, firstError, elapsed, rate: calls / elapsed, p50: pct(0.5), p99: pct(0.99) })}\n`,
);
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
