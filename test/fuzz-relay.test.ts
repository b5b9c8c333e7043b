import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../src/client/client.js';
import { encode } from '../src/wire/codec.js';
import { hostileMessage } from './helpers/hostile.js';
import { killAll, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

const MESSAGES = 10_000;
const WORKERS = 4;

const PROBE = fileURLToPath(new URL('./fixtures/memory-probe.mjs', import.meta.url));

/** The relay's memory after a full garbage collection (see fixtures/memory-probe.mjs). */
async function memory(relay: RunningRelay): Promise<{ heapUsed: number; rss: number }> {
  const from = relay.proc.logs.length;
  relay.proc.kill('SIGUSR2');
  const line = await relay.proc.waitForMsg('memory', 10_000, from);
  return { heapUsed: line.heapUsed as number, rss: line.rss as number };
}

const mib = (n: number) => (n / 2 ** 20).toFixed(1);

/** Sends a ping after the message: its pong (or the close) proves the relay has handled the message. */
async function handled(ws: WebSocket): Promise<void> {
  if (ws.readyState !== WebSocket.OPEN) return;
  const signal = AbortSignal.timeout(5_000);
  const pong = once(ws, 'pong', { signal });
  const closed = once(ws, 'close', { signal });
  pong.catch(() => undefined);
  closed.catch(() => undefined);
  ws.ping();
  await Promise.race([pong, closed]);
}

async function open(url: string, sayHello: boolean): Promise<WebSocket> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  ws.on('error', () => undefined);
  await once(ws, 'open', { signal: AbortSignal.timeout(5_000) });
  if (sayHello) ws.send(encode([4, { version: 1, role: 'caller' }]));
  return ws;
}

/** One worker: a connection at a time, each message then a ping; a new connection when the relay closes one. */
async function fuzz(url: string, messages: Uint8Array[], seed: number): Promise<number> {
  let ws: WebSocket | undefined;
  let connections = 0;
  for (let i = 0; i < messages.length; i++) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      ws?.terminate();
      // One connection in five sends garbage as its very first message, where the hello belongs.
      ws = await open(url, (seed + connections) % 5 !== 0);
      connections++;
    }
    ws.send(messages[i]!);
    await handled(ws);
  }
  ws?.terminate();
  return connections;
}

describe('a running relay fed hostile messages', () => {
  afterAll(killAll);

  it(`handles ${MESSAGES} random and mutated messages: no crash, others unaffected, memory back to its level`, async () => {
    const relay = await startRelay([], 0, { NODE_OPTIONS: `--expose-gc --import ${PROBE}` });
    const node = await startNode(relay.addr, ['--services', 'test/fixtures/security-services.js', '--name', 'office-1']);
    const url = `ws://${relay.addr}/`;
    const victim = await connect(relay.addr);

    const warmup = fc.sample(hostileMessage, { numRuns: 500, seed: 1 });
    await fuzz(url, warmup, 0);
    const before = await memory(relay);

    const all = fc.sample(hostileMessage, { numRuns: MESSAGES, seed: 42 });
    const share = Math.ceil(MESSAGES / WORKERS);
    let echoes = 0;
    let done = false;
    const checking = (async () => {
      // The honest caller keeps calling while the fuzzers run (bounded: at most 2 000 calls).
      for (let i = 0; i < 2_000 && !done; i++) {
        expect(await victim.call('Sec.Echo', i)).toBe(i);
        echoes++;
      }
    })();
    const connections = await Promise.all(Array.from({ length: WORKERS }, (_, w) => fuzz(url, all.slice(w * share, (w + 1) * share), w)));
    done = true;
    await checking;
    const after = await memory(relay);

    expect(relay.proc.child.exitCode).toBeNull();
    expect(node.logs.some((l) => l.msg === 'disconnected from relay')).toBe(false);
    expect(relay.proc.logs.some((l) => l.msg === 'message handler failed')).toBe(false);
    expect(echoes).toBeGreaterThan(0);
    expect(await victim.call('Sec.Echo', 'still here')).toBe('still here');
    console.log(
      `fuzz: ${MESSAGES} messages over ${connections.reduce((a, b) => a + b, 0)} connections, ${echoes} honest calls meanwhile; ` +
        `relay heap after GC ${mib(before.heapUsed)} -> ${mib(after.heapUsed)} MiB, RSS ${mib(before.rss)} -> ${mib(after.rss)} MiB`,
    );
    // Memory returns to its level: what is left after a full collection does not grow with the messages.
    expect(after.heapUsed - before.heapUsed).toBeLessThan(4 * 2 ** 20);
    expect(after.rss - before.rss).toBeLessThan(64 * 2 ** 20);
    await victim.close();
    // The work is bounded by count (10 000 messages, nearly one connection each, every step bounded by
    // 5 s); this is only a safety net, sized for a busy 2-core machine where it takes over a minute.
  }, 240_000);
});
