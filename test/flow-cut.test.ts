import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../src/index.js';
import { encode } from '../src/wire/codec.js';
import { MiB } from './helpers/memory.js';
import { killAll, startNode, startRelay } from './helpers/processes.js';
import { RawPeer } from './helpers/raw.js';

/**
 * Flow control and the slow-consumer cut agree (issue 19, C): a peer that stays inside every window
 * is never cut, however slowly it acknowledges; only a peer that breaks the protocol or stops
 * reading is. The relay runs with a small --max-backlog so that the old rule (chunks waiting for a
 * window counted toward the cut) would cut at once.
 */

const ABUSE = 'test/fixtures/abuse-services.js';
const SMALL = ['--max-backlog', '1MiB', '--slow-consumer-timeout', '1s'];
type Msg = unknown[];

/** Runs `fn` on each message `peer` receives, after RawPeer has recorded it in `received`. */
function onEach(peer: RawPeer, fn: (m: Msg) => void): void {
  let next = 0;
  peer.ws.on('message', () => {
    while (next < peer.received.length) fn(peer.received[next++] as Msg);
  });
}

/** Acknowledges every chunk it receives `delayMs` later: slow, but inside the windows. */
function ackSlowly(peer: RawPeer, delayMs: number): void {
  onEach(peer, (m) => {
    if (m[0] !== 8) return;
    const [, id, , bytes] = m as [number, number, boolean, Uint8Array];
    setTimeout(() => peer.ws.readyState === peer.ws.OPEN && peer.send([10, id, bytes.length]), delayMs);
  });
}

/** A node written by hand that takes uploads (`Blob.Put`) and acknowledges their chunks slowly. */
async function slowNode(addr: string, delayMs: number): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${addr}/`);
  await peer.open();
  const sizes = new Map<number, number>();
  onEach(peer, (m) => {
    if (m[0] === 0 && m[3] !== null) peer.send([1, m[1], null, encode((m[3] as Uint8Array).length)]);
    if (m[0] !== 8) return;
    const [, id, final, bytes] = m as [number, number, boolean, Uint8Array];
    sizes.set(id, (sizes.get(id) ?? 0) + bytes.length);
    if (final) setTimeout(() => peer.ws.readyState === peer.ws.OPEN && peer.send([1, id, null, encode(sizes.get(id))]), delayMs);
  });
  ackSlowly(peer, delayMs);
  peer.send([4, { version: 2, role: 'node', name: 'slow-1', services: { Blob: ['Put'] } }]);
  await peer.until(() => peer.received.some((m) => (m as Msg)[0] === 5), 5_000, 'welcome');
  return peer;
}

describe('flow control and the slow-consumer cut', () => {
  afterEach(killAll);

  it('never cuts a node that acknowledges 12 parallel 3 MiB uploads slowly but inside its windows', async () => {
    const relay = await startRelay(SMALL);
    const node = await slowNode(relay.addr, 40);
    const caller = await connect(relay.addr);
    const body = Buffer.alloc(3 * MiB, 5);
    const results = await Promise.allSettled(Array.from({ length: 12 }, () => caller.call('Blob.Put', body, { timeout: 60_000 })));
    const sizes = results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as { code?: string }).code));
    // Each size is the MessagePack of the params: one 3 MiB bin in an array.
    expect(sizes.every((s) => typeof s === 'number' && s > 3 * MiB)).toBe(true);
    expect(node.closed).toBeUndefined();
    expect(relay.proc.logs.some((l) => l.msg === 'slow consumer: closing connection')).toBe(false);
    await caller.close();
    node.ws.terminate();
  });

  it('never cuts a caller that downloads 12 × 3 MiB in parallel and acknowledges slowly but inside its windows', async () => {
    const relay = await startRelay(SMALL);
    await startNode(relay.addr, ['--name', 'blob-1', '--services', ABUSE]);
    const peer = new RawPeer(`ws://${relay.addr}/`);
    await peer.open();
    ackSlowly(peer, 40);
    peer.send([4, { version: 2, role: 'caller' }]);
    const seen = peer.received as Msg[];
    await peer.until(() => seen.some((m) => m[0] === 5), 5_000, 'welcome');
    for (let id = 1; id <= 12; id++) peer.send([0, id, 'Abuse.Blob', encode([3 * MiB]), { timeout: 60_000 }]);
    const finals = () => seen.filter((m) => m[0] === 8 && m[2] === true).length;
    await peer.until(() => finals() === 12 || peer.closed !== undefined, 60_000, '12 results');
    expect(peer.closed).toBeUndefined();
    const bytes = seen.filter((m) => m[0] === 8).reduce((n, m) => n + (m[3] as Uint8Array).length, 0);
    expect(bytes).toBe(12 * (3 * MiB + 5)); // each result: a bin of 3 MiB with its 5-byte header
    expect(relay.proc.logs.some((l) => l.msg === 'slow consumer: closing connection')).toBe(false);
    peer.ws.terminate();
  });

  it('closes the caller that overruns the connection window (1002) and leaves the innocent node alone', async () => {
    const relay = await startRelay(SMALL);
    // A node that acknowledges nothing for 5 s: the relay may pass it 16 MiB (its window), then holds.
    const node = await slowNode(relay.addr, 5_000);
    const caller = new RawPeer(`ws://${relay.addr}/`);
    await caller.open();
    caller.send([4, { version: 2, role: 'caller' }]);
    await caller.until(() => caller.received.some((m) => (m as Msg)[0] === 5), 5_000, 'welcome');
    // 40 streams of 1 MiB each, sent without waiting for acknowledgements: the relay acknowledges
    // the 16 MiB it passes on to the node, and the caller has still sent 24 MiB more than that.
    const piece = Buffer.alloc(256 * 1024, 1);
    for (let id = 1; id <= 40; id++) {
      caller.send([0, id, 'Blob.Put', null, { timeout: 60_000, stream: MiB }]);
      for (let k = 0; k < 4; k++) caller.send([8, id, k === 3, piece]);
    }
    await caller.until(() => caller.closed !== undefined, 10_000, 'the caller closed');
    expect(caller.closed!.code).toBe(1002);
    expect(caller.closed!.reason).toMatch(/connection window/);
    // The node was slow, not wrong: still attached, and it answers a well-behaved caller.
    expect(node.closed).toBeUndefined();
    const honest = await connect(relay.addr);
    expect(await honest.call('Blob.Put', Buffer.alloc(1000), { timeout: 10_000 })).toBeGreaterThan(1000);
    await honest.close();
    node.ws.terminate();
  });
});
