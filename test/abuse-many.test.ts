import { connect as tcpConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, TunnelNode, ServiceRegistry, type Client } from '../src/index.js';
import { registerExamples } from '../src/services/index.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { MiB, peakRss, resetPeak } from './helpers/memory.js';
import { killAll, startNode, startRelay } from './helpers/processes.js';
import { RawPeer } from './helpers/raw.js';
import { waitUntil } from './helpers/wait.js';

/**
 * Bounded under many abusers at once (issue 19, A, B, D): each connection's bound keeps one abuser
 * small; the relay's memory budget keeps many of them together under `--max-memory`, and a node's
 * own backlog bound keeps it from encoding every answer of a burst at once. Peak memory is the
 * kernel's high-water mark of the process under test, from just before the abuse.
 */

const ABUSE = 'test/fixtures/abuse-services.js';
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

afterEach(killAll);

/** A raw TCP client of the MessagePack-RPC port that does not read (its socket is paused). */
async function stalledRpc(port: number, requests: Buffer): Promise<Socket> {
  const socket = tcpConnect({ port, host: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => undefined);
  socket.pause();
  socket.write(requests);
  return socket;
}

/** Waits until `socket` is closed by the other side; a paused socket is resumed so that it sees the end. */
async function closedByRelay(socket: Socket, timeout: number): Promise<void> {
  if (socket.destroyed || socket.readableEnded) return;
  socket.resume();
  socket.on('data', () => undefined);
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the relay did not close the abuser')), timeout);
    socket.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/** Calls the relay has routed and not seen answered, from its /metrics. */
async function inFlight(addr: string): Promise<number> {
  return Number(/^tunnel_relay_calls_in_flight (\d+)/m.exec(await (await fetch(`http://${addr}/metrics`)).text())?.[1]);
}

async function rawCaller(addr: string): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${addr}/`);
  await peer.open();
  peer.send([4, { version: 2, role: 'caller' }]);
  await peer.until(() => peer.received.some((m) => (m as unknown[])[0] === 5), 5_000, 'welcome');
  return peer;
}

/** An honest MessagePack-RPC call, as Go's net/rpc would make it: the answer, or the error string. */
async function rpcCall(port: number, method: string, params: unknown[]): Promise<unknown[]> {
  const socket = tcpConnect({ port, host: '127.0.0.1' });
  const framer = new MessagePackFramer(64 * MiB);
  try {
    return await new Promise<unknown[]>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no answer within 10 s')), 10_000);
      socket.on('data', (d: Buffer) => {
        for (const f of framer.push(d)) {
          clearTimeout(t);
          resolve(decode(f) as unknown[]);
        }
      });
      socket.on('error', reject);
      socket.write(encode([0, 1, method, params]));
    });
  } finally {
    socket.destroy();
  }
}

describe('many abusers at once', () => {
  it('keeps 16 MessagePack-RPC callers that stop reading, with results reassembled for them, within the memory budget', async () => {
    // No deadline the abuse can outlast: every chunk is interleaved over the 768 results, so on a busy
    // machine none would complete within the default 30 s (nor move within the stream idle timeout),
    // every call would end TIMEOUT, and no caller's backlog would grow to a cut.
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--max-memory', '96MiB', '--default-timeout', '5m', '--stream-idle-timeout', '5m']);
    const port = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    await startNode(relay.addr, ['--name', 'blob-1', '--services', ABUSE]);
    // Warm up: the relay has passed results of the same size to a caller that reads.
    for (let i = 0; i < 8; i++) expect(((await rpcCall(port, 'Abuse.Blob', [MiB]))[3] as Uint8Array).length).toBe(MiB);
    resetPeak(relay.proc);
    const base = peakRss(relay.proc);
    // Each asks for 48 results of 1 MiB (each streamed by the node, reassembled by the relay) and reads none.
    const requests = Buffer.concat(Array.from({ length: 48 }, (_, i) => encode([0, i + 1, 'Abuse.Blob', [MiB]])));
    const abusers = await Promise.all(Array.from({ length: 16 }, () => stalledRpc(port, requests)));
    // Each is cut by its backlog or by the budget, whatever the machine's speed; the bound is a safety net.
    await waitUntil(() => relay.proc.logs.filter((l) => l.msg === 'slow consumer: closing connection').length >= 16, 150_000, 'all 16 cut');
    await Promise.all(abusers.map((s) => closedByRelay(s, 10_000)));
    const peak = peakRss(relay.proc) - base;
    const budgetCuts = relay.proc.logs.filter((l) => l.msg === 'over the memory budget: cutting the largest holder').length;
    console.log(
      `[abuse-many] 16 msgpack-rpc callers not reading, 48 x 1 MiB reassembled each: peak RSS over baseline ${mib(peak)}, cut by the budget ${budgetCuts}`,
    );
    // Before: ~43 MiB each (16 MiB queued + 32 MiB reassembled), 700 MiB for 16.
    expect(peak).toBeLessThan(200 * MiB);
    // The relay still serves.
    expect(((await rpcCall(port, 'Abuse.Blob', [MiB]))[3] as Uint8Array).length).toBe(MiB);
  }, 240_000);

  it('cuts the largest holders first when WebSocket and MessagePack-RPC abusers together pass --max-memory, and serves an honest caller', async () => {
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--max-memory', '48MiB']);
    const port = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    // A node that sheds no load of its own: all of it reaches the relay.
    await startNode(relay.addr, ['--name', 'blob-1', '--services', ABUSE, '--max-backlog', '1GiB']);
    const honest: Client = await connect(relay.addr);
    expect(((await honest.call('Abuse.Blob', 200_000)) as Buffer).length).toBe(200_000);
    resetPeak(relay.proc);
    const base = peakRss(relay.proc);
    // 8 WebSocket callers that ask for 64 × 200 KB (over the 8 MiB limit, under the 16 MiB cut: each is only paused) and do not read, 8 MessagePack-RPC ones likewise.
    const ws = await Promise.all(Array.from({ length: 8 }, () => rawCaller(relay.addr)));
    for (const p of ws) {
      p.ws.pause();
      for (let id = 1; id <= 64; id++) p.send([0, id, 'Abuse.Blob', encode([200_000]), { timeout: 60_000 }]);
    }
    const rpcRequests = Buffer.concat(Array.from({ length: 64 }, (_, i) => encode([0, i + 1, 'Abuse.Blob', [200_000]])));
    const rpc = await Promise.all(Array.from({ length: 8 }, () => stalledRpc(port, rpcRequests)));
    // Until every call is answered, refused (the node sheds load too) or cancelled with its caller.
    await waitUntil(async () => (await inFlight(relay.addr)) === 0, 60_000, 'no call in flight');
    const budgetCuts = relay.proc.logs.filter((l) => l.msg === 'over the memory budget: cutting the largest holder');
    const peak = peakRss(relay.proc) - base;
    console.log(
      `[abuse-many] 8 WebSocket + 8 msgpack-rpc abusers, --max-memory 48MiB: peak RSS over baseline ${mib(peak)}, cut by the budget ${budgetCuts.length}, ` +
        `most held at a cut ${mib(Math.max(0, ...budgetCuts.map((c) => c.totalBytes as number)))}`,
    );
    expect(budgetCuts.length).toBeGreaterThan(0);
    // Cut as soon as the sum passed the budget (it is added up again on every write over a
    // connection's limit, at most every 5 ms): never more than one burst over it.
    for (const cut of budgetCuts) {
      expect(cut.limit).toBe(48 * MiB);
      expect(cut.totalBytes as number).toBeLessThan(48 * MiB + 32 * MiB);
    }
    const held = Math.max(...budgetCuts.map((c) => c.totalBytes as number));
    // 16 × 16 MiB would be allowed per connection; the budget held them all to about 48 MiB.
    expect(held).toBeLessThan(16 * 16 * MiB);
    expect(peak).toBeLessThan(300 * MiB);
    for (const p of ws) p.ws.terminate();
    for (const s of rpc) s.destroy();
    expect(((await honest.call('Abuse.Blob', 200_000, { timeout: 10_000 })) as Buffer).length).toBe(200_000);
    await honest.close();
  }, 120_000);

  it('keeps a node bounded while 16 callers that stop reading ask it for 256 × 250 KB each', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'kv-1']);
    const honest = await connect(relay.addr);
    expect(await honest.call('KV.Set', 'big', Buffer.alloc(250_000, 3))).toBe(true);
    for (let i = 0; i < 32; i++) expect(((await honest.call('KV.Get', 'big')) as Buffer).length).toBe(250_000);
    resetPeak(node);
    const base = peakRss(node);
    const callers = await Promise.all(Array.from({ length: 16 }, () => rawCaller(relay.addr)));
    for (const p of callers) {
      p.ws.pause();
      for (let id = 1; id <= 256; id++) p.send([0, id, 'KV.Get', encode(['big']), { timeout: 60_000 }]);
    }
    // The node has answered (or refused) everything the relay passed it: nothing is in flight.
    await waitUntil(async () => (await inFlight(relay.addr)) === 0, 60_000, 'no call in flight');
    const peak = peakRss(node) - base;
    console.log(`[abuse-many] 16 callers x 256 KV.Get of 250 KB, not reading: node peak RSS over baseline ${mib(peak)}`);
    // Before: 16 × 256 × 250 KB encoded at once, ~1 GB (4.1 GiB with 1,024 each).
    expect(peak).toBeLessThan(200 * MiB);
    for (const p of callers) p.ws.terminate();
    expect(((await honest.call('KV.Get', 'big', { timeout: 10_000 })) as Buffer).length).toBe(250_000);
    await honest.close();
  }, 120_000);
});

describe('a fleet behind one address', () => {
  it('admits more authenticated nodes from one address than --max-connections-per-address, keeps anonymous connections to it, and bounds nodes by --max-nodes-per-address', async () => {
    const relay = await startRelay([
      '--node-token',
      'fleet-secret-0123456789',
      '--max-connections-per-address',
      '16',
      '--max-nodes-per-address',
      '40',
      '--hello-timeout',
      '30s',
    ]);
    const nodes: TunnelNode[] = [];
    try {
      for (let i = 0; i < 40; i++) {
        const node = new TunnelNode({
          relay: `ws://${relay.addr}/`,
          name: `fleet-${i}`,
          token: 'fleet-secret-0123456789',
          services: registerExamples(new ServiceRegistry()),
          reconnectBase: 100,
          reconnectCap: 1_000,
        });
        nodes.push(node);
        node.start();
      }
      const caller = await connect(relay.addr);
      await waitUntil(async () => (await caller.nodes()).length === 40, 30_000, '40 nodes from one address');
      // The 41st node is refused with 4009 and a reason.
      const forty1 = new RawPeer(`ws://${relay.addr}/`);
      await forty1.open();
      forty1.send([4, { version: 2, role: 'node', name: 'fleet-40', services: { Arith: ['Multiply'] }, token: 'fleet-secret-0123456789' }]);
      await forty1.until(() => forty1.closed !== undefined, 10_000, 'the 41st node refused');
      expect(forty1.closed).toMatchObject({ code: 4009, reason: expect.stringMatching(/already has 40 nodes connected \(--max-nodes-per-address\)/) });
      // Anonymous connections from the same address still have their 16 (the caller is one of them).
      const idle: Socket[] = [];
      for (let i = 0; i < 15; i++) {
        const s = tcpConnect({ port: relay.port, host: '127.0.0.1' });
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        idle.push(s);
      }
      const extra = new RawPeer(`ws://${relay.addr}/`);
      await extra.until(() => extra.closed !== undefined, 10_000, 'the 17th anonymous connection refused');
      for (const s of idle) s.destroy();
      expect((await caller.nodes()).length).toBe(40);
      expect(await caller.call('Arith.Multiply', 6, 7, { node: 'fleet-39' })).toBe(42);
      await caller.close();
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
    }
  }, 90_000);
});
