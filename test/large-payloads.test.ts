import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../src/index.js';
import { fileURLToPath } from 'node:url';
import { killAll, Proc, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

const LOAD = fileURLToPath(new URL('../dist/bench/load.js', import.meta.url));

const SLOW = 'test/fixtures/slow-services.js';

describe('large payloads', () => {
  let relay: RunningRelay;
  let directAddr: string;
  beforeAll(async () => {
    relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'big-1', '--services', SLOW, '--direct-listen', '127.0.0.1:0']);
    directAddr = `127.0.0.1:${(await node.waitForMsg('direct listener ready')).port as number}`;
  });
  afterAll(killAll);

  const pattern = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 8)) & 0xff;
    return b;
  };

  it('echoes 1 MiB and 16 MiB byte for byte through the relay and directly', async () => {
    for (const addr of [relay.addr, directAddr]) {
      const client = await connect(addr);
      for (const size of [1024 * 1024, 16 * 1024 * 1024 - 64]) {
        const sent = pattern(size);
        const got = (await client.call('Slow.Echo', sent, { timeout: 30_000 })) as Buffer;
        expect(Buffer.isBuffer(got)).toBe(true);
        expect(got.length).toBe(size);
        expect(got.equals(sent)).toBe(true);
      }
      await client.close();
    }
  });

  it('keeps small calls moving while another caller echoes 16 MiB payloads through the same node', async () => {
    // The big echoes come from another process, as they would from another caller's machine.
    const spec = { relay: relay.addr, callers: 1, window: 2, seconds: 3, warmup: 0, method: 'Slow.Echo', args: [], payloadBytes: 16 * 1024 * 1024 - 64 };
    const loader = new Proc(LOAD, [JSON.stringify(spec)]);
    const client = await connect(relay.addr);
    const latencies: number[] = [];
    const started = Date.now();
    while (loader.child.exitCode === null && Date.now() - started < 20_000 && latencies.length < 5_000) {
      const t0 = performance.now();
      expect(await client.call('Slow.Echo', latencies.length)).toBe(latencies.length);
      latencies.push(performance.now() - t0);
    }
    await loader.exited;
    const report = JSON.parse(loader.stdout.trim().split('\n').pop()!) as { calls: number; errors: number };
    expect(report.errors).toBe(0);
    expect(report.calls).toBeGreaterThan(0);
    latencies.sort((a, b) => a - b);
    const p99 = latencies[Math.floor(latencies.length * 0.99)]!;
    // The benchmark reports the real figure; here only that small calls are not stuck behind whole echoes.
    expect(latencies.length).toBeGreaterThan(30);
    expect(p99).toBeLessThan(250);
    await client.close();
  });

  it('passes a streamed result whole to an HTTP gateway caller', async () => {
    const size = 2 * 1024 * 1024;
    const res = await fetch(`http://${relay.addr}/call/Slow.Echo`, { method: 'POST', body: JSON.stringify(['x'.repeat(size)]) });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { result: string };
    expect(body.result.length).toBe(size);
  });
});
