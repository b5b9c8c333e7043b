import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { once } from 'node:events';
import { connect } from '../src/index.js';
import { decodeAll, encode } from '../src/wire/codec.js';
import { killAll, startNode, startRelay, type Proc } from './helpers/processes.js';
import { RawPeer } from './helpers/raw.js';

/** `tunnel-node --direct-listen` speaks the whole caller protocol (issue 10, item 5). */

const SLOW = 'test/fixtures/slow-services.js';
type Msg = unknown[];

describe('direct connections to a node', () => {
  let node: Proc;
  let direct: string;
  beforeAll(async () => {
    const relay = await startRelay();
    node = await startNode(relay.addr, ['--name', 'solo-1', '--services', SLOW, '--direct-listen', '127.0.0.1:0']);
    direct = `127.0.0.1:${(await node.waitForMsg('direct listener ready')).port as number}`;
  });
  afterAll(killAll);

  async function caller(): Promise<{ peer: RawPeer; welcome: Record<string, unknown> }> {
    const peer = new RawPeer(`ws://${direct}/`);
    await peer.open();
    peer.send([4, { version: 2, role: 'caller' }]);
    await peer.until(() => peer.received.some((m) => (m as Msg)[0] === 5), 5_000, 'welcome');
    return { peer, welcome: (peer.received.find((m) => (m as Msg)[0] === 5) as Msg)[1] as Record<string, unknown> };
  }

  it('announces its message limit in the welcome, as a relay does', async () => {
    const { peer, welcome } = await caller();
    expect(welcome).toMatchObject({ version: 2, relay: 'tunnel-node/solo-1', maxMessage: 16 * 1024 * 1024 });
    expect(welcome.session).toMatch(/^direct-\d+$/);
    peer.close();
  });

  it('answers a cancel with CANCELLED and aborts the handler', async () => {
    const { peer } = await caller();
    peer.send([0, 1, 'Slow.Sleep', encode([60_000]), { timeout: 60_000 }]);
    await node.waitForMsg('test handler started');
    peer.send([3, 1]);
    const r = await peer.response(1);
    expect((r[2] as { code: string }).code).toBe('CANCELLED');
    await node.waitForLog((l) => l.msg === 'test handler aborted' && l.reason === 'CANCELLED', 5_000, 'the handler aborted');
    peer.close();
  });

  it('answers a passed deadline with TIMEOUT', async () => {
    const { peer } = await caller();
    const t0 = Date.now();
    peer.send([0, 1, 'Slow.Sleep', encode([60_000]), { timeout: 300 }]);
    const r = await peer.response(1, 5_000);
    expect((r[2] as { code: string }).code).toBe('TIMEOUT');
    // The deadline, not the 60 s sleep: far below the one, whatever the machine's load.
    expect(Date.now() - t0).toBeLessThan(30_000);
    // The library sees the node's answer, not only its own timer.
    const client = await connect(direct);
    await expect(client.call('Slow.Sleep', 60_000, { timeout: 300 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    await client.close();
    peer.close();
  });

  it('refuses a browser page (any Origin) with 403', async () => {
    const ws = new WebSocket(`ws://${direct}/`, { headers: { origin: 'https://evil.example' } });
    ws.on('error', () => undefined);
    const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number; headers: Record<string, string>; resume(): void }];
    expect(res.statusCode).toBe(403);
    expect(res.headers['x-tunnel-reason']).toMatch(/origin/i);
    res.resume();
  });
});

describe('a version 1 peer', () => {
  afterAll(killAll);

  it('still streams through the relay, acknowledged per connection', async () => {
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'echo-1', '--services', SLOW]);
    const peer = new RawPeer(`ws://${relay.addr}/`);
    await peer.open();
    peer.send([4, { version: 1, role: 'caller' }]);
    await peer.until(() => peer.received.some((m) => (m as Msg)[0] === 5), 5_000, 'welcome');
    expect(((peer.received.find((m) => (m as Msg)[0] === 5) as Msg)[1] as { version: number }).version).toBe(1);
    // 600 KiB streamed up, in three chunks, then echoed back in chunks the caller acknowledges the v1 way.
    const params = encode([Buffer.alloc(600 * 1024, 5)]);
    peer.send([0, 1, 'Slow.Echo', null, { stream: params.length }]);
    for (let at = 0; at < params.length; at += 256 * 1024) {
      peer.send([8, 1, at + 256 * 1024 >= params.length, params.subarray(at, at + 256 * 1024)]);
    }
    let got = 0;
    peer.ws.on('message', (data: Buffer) => {
      for (const m of decodeAll(data) as Msg[]) {
        if (m[0] === 8) {
          got += (m[3] as Uint8Array).length;
          peer.send([10, (m[3] as Uint8Array).length]);
        }
      }
    });
    await peer.until(() => peer.received.some((m) => (m as Msg)[0] === 8 && (m as Msg)[2] === true), 10_000, 'the last chunk of the result');
    expect(got).toBeGreaterThan(600 * 1024);
    // The relay acknowledged our chunks with the version 1 form.
    const acks = peer.received.filter((m) => (m as Msg)[0] === 10) as Msg[];
    expect(acks.length).toBeGreaterThan(0);
    expect(acks.every((a) => a.length === 2)).toBe(true);
    expect(peer.closed).toBeUndefined();
    peer.close();
  });
});
