import { once } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { connect } from '../src/index.js';
import { encodeParams } from '../src/rpc/body.js';
import { decodeAll, encode } from '../src/wire/codec.js';
import { killAll, startNode, startRelay } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

describe('a caller that does not read its answers', () => {
  afterAll(killAll);

  it('stops being read by the relay instead of filling its memory, and other callers go on', async () => {
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'kv-1']);
    const writer = await connect(relay.addr);
    expect(await writer.call('KV.Set', 'big', 'x'.repeat(200 * 1024))).toBe(true);

    // A raw caller: says hello, then stops reading its socket and asks for 800 × 200 KiB.
    const ws = new WebSocket(`ws://${relay.addr}/`);
    await once(ws, 'open');
    ws.send(encode([4, { version: 1, role: 'caller' }]));
    await new Promise<void>((resolve) => ws.once('message', (d: Buffer) => (decodeAll(d) as unknown[][])[0]![0] === 5 && resolve()));
    ws.pause();
    const params = encodeParams(['big']);
    // 20 requests every 25 ms, 800 in all: a caller that keeps asking. The timer paces the load; it
    // synchronises nothing.
    for (let id = 1; id <= 800; id++) {
      ws.send(encode([0, id, 'KV.Get', params, { timeout: 60_000 }]));
      if (id % 20 === 0) await new Promise((r) => setTimeout(r, 25));
    }

    await relay.proc.waitForMsg('peer is not reading its messages; not reading from it until it does', 20_000);
    // Once every call the relay read is answered (none in flight: it reads no more), count them. How
    // many it read before it stopped depends on how fast the node answered meanwhile; that it then
    // reads nothing more does not.
    const metrics = async () => (await fetch(`http://${relay.addr}/metrics`)).text();
    const answered = async () => Number(/^tunnel_relay_calls_total\{service="KV",method="Get",code="OK"\} (\d+)/m.exec(await metrics())?.[1] ?? 0);
    await waitUntil(async () => /^tunnel_relay_calls_in_flight 0$/m.test(await metrics()), 20_000, 'no call in flight');
    const before = await answered();
    expect(before).toBeGreaterThan(0);

    // 200 more requests: none is read while the caller reads nothing.
    for (let id = 801; id <= 1000; id++) ws.send(encode([0, id, 'KV.Get', params, { timeout: 60_000 }]));
    // Another caller is served as usual meanwhile (and its answer shows the relay went on working).
    expect(await writer.call('Arith.Multiply', 6, 7)).toBe(42);
    await waitUntil(async () => /^tunnel_relay_calls_in_flight 0$/m.test(await metrics()), 20_000, 'no call in flight');
    expect(await answered()).toBe(before);
    ws.terminate();
    await writer.close();
  });
});
