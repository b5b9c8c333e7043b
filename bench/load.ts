/**
 * Load generator, run as its own process by bench.ts so that the caller's CPU is not the bench's.
 * Keeps `window` calls in flight on each of `callers` connections for `seconds` (or `count` calls per
 * lane), then prints one JSON line: calls completed, errors, latency percentiles (ms), and with
 * `cpuPids` the CPU seconds those processes used in the measured window.
 */
import { once } from 'node:events';
import { connect as natsConnect } from '@nats-io/transport-node';
import { WebSocket } from 'ws';
import { connect } from '../src/client/client.js';
import { decode, encode } from '../src/wire/codec.js';
import { tuneGarbageCollection } from '../src/util/gc.js';
import { cpuSeconds } from './proc.js';

interface LoadArgs {
  relay: string;
  /** With `raw`, `relay` is the port of a bare ws echo server and the payload is sent as is. */
  raw?: boolean;
  /** With `nats`, `relay` is a nats-server's address and calls are NATS requests to bench/nats-responder.ts. */
  nats?: boolean;
  /** Replaces `args` with one Buffer argument of this many bytes. */
  payloadBytes?: number;
  /** Each lane makes this many calls and stops, instead of running for `seconds`. */
  count?: number;
  /**
   * With `count`: lanes start no new call after this many seconds, nor after SIGTERM; the calls in
   * flight finish and are counted, so the report always holds each lane's first call.
   */
  maxSeconds?: number;
  /**
   * Processes (the relay, the node) whose CPU time is read when the measured window opens and when it
   * closes, after the warmup: the report's `windowCpu` holds each one's CPU seconds in that window, in order.
   * Not with `count`, which has no window.
   */
  cpuPids?: number[];
  /** Writes the JSON line `{"msg":"first call done"}` to stderr when the first call completes. */
  progress?: boolean;
  callers: number;
  window: number;
  seconds: number;
  method: string;
  args: unknown[];
  warmup: number;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;
// As the README advises for processes that move large payloads (the CLIs do the same).
if (spec.payloadBytes) tuneGarbageCollection();
if (spec.payloadBytes) spec.args = [Buffer.alloc(spec.payloadBytes, 7)];

interface Caller {
  request(method: string, args: unknown[]): Promise<unknown>;
  close(): Promise<void>;
}

/** A bare ws client with the same shape as Client, one message in flight at a time per lane. */
async function rawCaller(port: string): Promise<Caller> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { maxPayload: 64 * 1024 * 1024, perMessageDeflate: false });
  await once(ws, 'open');
  const waiting: Array<{ resolve(): void; reject(err: Error): void }> = [];
  ws.on('message', () => waiting.shift()?.resolve());
  // The server going away fails what waits (counted as errors), instead of crashing or hanging here.
  let gone: Error | undefined;
  const fail = (err: Error) => {
    gone ??= err;
    for (const w of waiting.splice(0)) w.reject(gone);
  };
  ws.on('error', fail);
  ws.on('close', () => fail(new Error('the echo server closed the connection')));
  return {
    request: (_m, args) =>
      new Promise<void>((resolve, reject) => {
        if (gone) return reject(gone);
        waiting.push({ resolve, reject });
        ws.send(args[0] as Buffer);
      }),
    close: async () => ws.close(),
  };
}

/** A NATS connection with the same shape: a request carries MessagePack `[method, params]`, the reply the result. */
async function natsCaller(server: string): Promise<Caller> {
  const nc = await natsConnect({ servers: server });
  return {
    request: async (method, args) => decode((await nc.request('bench.rpc', encode([method, args]), { timeout: 60_000 })).data),
    close: () => nc.close(),
  };
}

const clients: Caller[] = await Promise.all(
  Array.from({ length: spec.callers }, () =>
    spec.raw ? rawCaller(spec.relay) : spec.nats ? natsCaller(spec.relay) : connect(spec.relay, { timeout: 60_000 }),
  ),
);
const latencies: number[] = [];
let calls = 0;
let errors = 0;
let firstError = '';
let measuring = false;
let stop = false;

async function lane(client: Caller): Promise<void> {
  for (let n = 0; !stop && (spec.count === undefined || n < spec.count); n++) {
    const t0 = performance.now();
    try {
      await client.request(spec.method, spec.args);
      if (measuring) {
        calls++;
        latencies.push(performance.now() - t0);
        if (calls === 1 && spec.progress) process.stderr.write(`${JSON.stringify({ msg: 'first call done' })}\n`);
      }
    } catch (err) {
      errors++;
      firstError ||= String(err);
      if (errors > 1000) stop = true;
    }
  }
}

let elapsed: number;
let windowCpu: number[] | undefined;
if (spec.count !== undefined) {
  measuring = true;
  const start = performance.now();
  process.once('SIGTERM', () => (stop = true));
  const bound = spec.maxSeconds === undefined ? undefined : setTimeout(() => (stop = true), spec.maxSeconds * 1000);
  await Promise.all(clients.flatMap((c) => Array.from({ length: spec.window }, () => lane(c))));
  clearTimeout(bound);
  elapsed = (performance.now() - start) / 1000;
} else {
  const lanes = clients.flatMap((c) => Array.from({ length: spec.window }, () => lane(c)));
  await new Promise((r) => setTimeout(r, spec.warmup * 1000));
  const cpuBefore = spec.cpuPids?.map(cpuSeconds);
  measuring = true;
  const start = performance.now();
  await new Promise((r) => setTimeout(r, spec.seconds * 1000));
  measuring = false;
  elapsed = (performance.now() - start) / 1000;
  windowCpu = spec.cpuPids?.map((pid, i) => cpuSeconds(pid) - cpuBefore![i]!);
  stop = true;
  await Promise.all(lanes);
}
latencies.sort((a, b) => a - b);
const pct = (p: number) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]! : NaN);
process.stdout.write(`${JSON.stringify({ calls, errors, firstError, elapsed, rate: calls / elapsed, p50: pct(0.5), p99: pct(0.99), windowCpu })}\n`);
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
