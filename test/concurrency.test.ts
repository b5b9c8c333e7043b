import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { encode } from '../src/wire/codec.js';
import { connect } from '../src/index.js';
import { killAll, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

describe('many callers on one tunnel', () => {
  let relay: RunningRelay;
  beforeAll(async () => {
    relay = await startRelay();
    await startNode(relay.addr, ['--name', 'office-1']);
  });
  afterAll(killAll);

  it('10 callers x 1,000 concurrent calls: every reply is correct and reaches the caller that asked', async () => {
    const clients = await Promise.all(Array.from({ length: 10 }, () => connect(relay.addr)));
    const results = await Promise.all(
      clients.map((client, c) => Promise.all(Array.from({ length: 1_000 }, (_, i) => client.call<number>('Arith.Multiply', i, c + 1000)))),
    );
    for (let c = 0; c < 10; c++) {
      expect(results[c]).toHaveLength(1_000);
      results[c]!.forEach((value, i) => expect(value).toBe(i * (c + 1000)));
    }
    await Promise.all(clients.map((client) => client.close()));
  });

  it('keeps answering other callers while a rogue client sends 1,000 garbage or wrongly shaped messages', async () => {
    const good = await connect(relay.addr);
    const garbage: Array<Buffer | string> = [];
    const shapes: unknown[] = [
      [9, 1],
      [0],
      [0, -1, 'A.B', Buffer.alloc(0)],
      [0, 1, 42, Buffer.alloc(0)],
      [0, 2, 'A.B', [1, 2]],
      [1, 1, 'x', null],
      [3, 'x'],
      { kind: 0 },
      'hello',
      [4, { version: 99, role: 'caller' }],
      [4, { version: 1, role: 'admin' }],
      [0, 3, 'Arith.Multiply', encode('not an array')],
      [0, 4, 'Arith.Multiply', Buffer.from([0xc1])],
      [0, 5, 'NoDot', encode([])],
    ];
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let i = 0; i < 1_000; i++) {
      const kind = i % 4;
      if (kind === 0) garbage.push(Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 64) }, () => Math.floor(rand() * 256))));
      else if (kind === 1) garbage.push(encode(shapes[i % shapes.length]));
      else if (kind === 2) garbage.push('{"text": "frames are not accepted"}');
      else garbage.push(Buffer.concat([encode([4, { version: 1, role: 'caller' }]), encode(shapes[(i >> 2) % shapes.length])]));
    }
    let sent = 0;
    let connections = 0;
    const closeCodes = new Map<number, number>();
    const deadline = Date.now() + 30_000;
    const rogue = (async () => {
      while (sent < garbage.length && Date.now() < deadline) {
        connections++;
        const ws = new WebSocket(`ws://${relay.addr}/`);
        await new Promise<void>((resolve) => {
          ws.on('open', () => {
            // Several messages per connection until the relay closes it.
            for (let k = 0; k < 5 && sent < garbage.length; k++) {
              const m = garbage[sent++]!;
              ws.send(m, { binary: typeof m !== 'string' });
            }
            setTimeout(() => ws.close(), 50);
          });
          ws.on('close', (code) => {
            closeCodes.set(code, (closeCodes.get(code) ?? 0) + 1);
            resolve();
          });
          ws.on('error', () => resolve());
        });
      }
    })();
    const answers: number[] = [];
    const calls = (async () => {
      for (let i = 0; i < 200 && Date.now() < deadline; i++) answers.push(await good.call<number>('Arith.Multiply', i, 3));
    })();
    await Promise.all([rogue, calls]);
    expect(sent).toBe(1_000);
    expect(answers).toEqual(Array.from({ length: 200 }, (_, i) => i * 3));
    // Rogue connections were closed with protocol reasons, not by a crash.
    expect([...closeCodes.keys()].some((c) => [1002, 1003, 1007, 4004].includes(c))).toBe(true);
    expect(relay.proc.child.exitCode).toBeNull();
    expect(await good.call('Server.Ping')).toBe('pong');
    await good.close();
    expect(connections).toBeGreaterThan(1);
  });
});
