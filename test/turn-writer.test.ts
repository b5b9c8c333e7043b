import { once } from 'node:events';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Coalescer, COPY_LIMIT, inMessagesOf, TurnWriter } from '../src/wire/turn-writer.js';

/** A coalescer whose batches are recorded, and whose scheduled flushes run when the test says. */
function recorded(limit?: number) {
  const batches: Array<{ pieces: number[]; bytes: number }> = [];
  const scheduled: Array<() => void> = [];
  const c = new Coalescer<Buffer>(
    (batch, bytes) => batches.push({ pieces: batch.map((b) => b[0]!), bytes }),
    (f) => scheduled.push(f),
    limit,
  );
  const runScheduled = () => {
    for (const f of scheduled.splice(0)) f();
  };
  return { c, batches, scheduled, runScheduled };
}

const piece = (tag: number, size: number) => Buffer.alloc(size, tag);

describe('Coalescer', () => {
  it('hands on what one turn queued as one batch, in order, scheduled once', () => {
    const { c, batches, scheduled, runScheduled } = recorded();
    c.push(piece(1, 10));
    c.push(piece(2, 20), piece(3, 30));
    expect(c.queued).toBe(60);
    expect(scheduled).toHaveLength(1);
    expect(batches).toEqual([]);
    runScheduled();
    expect(batches).toEqual([{ pieces: [1, 2, 3], bytes: 60 }]);
    expect(c.queued).toBe(0);
  });

  it('never grows a batch past its limit: what is queued goes first', () => {
    const { c, batches, runScheduled } = recorded(100);
    c.push(piece(1, 60));
    c.push(piece(2, 40)); // exactly the limit: still one batch
    c.push(piece(3, 1));
    expect(batches).toEqual([{ pieces: [1, 2], bytes: 100 }]);
    c.push(piece(4, 500)); // larger than the limit alone: its own batch
    runScheduled();
    expect(batches).toEqual([
      { pieces: [1, 2], bytes: 100 },
      { pieces: [3], bytes: 1 },
      { pieces: [4], bytes: 500 },
    ]);
  });

  it('a flush now leaves nothing for the scheduled one, which writes no empty batch; later pushes ride on it', () => {
    const { c, batches, scheduled, runScheduled } = recorded();
    c.push(piece(1, 1));
    c.flush();
    c.push(piece(2, 1));
    expect(scheduled).toHaveLength(1);
    runScheduled();
    c.flush();
    expect(batches).toEqual([
      { pieces: [1], bytes: 1 },
      { pieces: [2], bytes: 1 },
    ]);
  });

  it('drop forgets what is queued', () => {
    const { c, batches, runScheduled } = recorded();
    c.push(piece(1, 5));
    c.drop();
    expect(c.queued).toBe(0);
    runScheduled();
    expect(batches).toEqual([]);
  });
});

describe('inMessagesOf', () => {
  const split = (sizes: number[], maxFrame: number) => {
    const queue = sizes.map((n, i) => piece(i + 1, n));
    const messages: Buffer[] = [];
    inMessagesOf(
      queue,
      sizes.reduce((a, b) => a + b, 0),
      maxFrame,
      (m) => messages.push(m),
    );
    return messages.map((m) => [...new Set(m)].join('+') + ':' + m.length);
  };

  it('joins a batch that fits into one message, passing a lone value on as it is', () => {
    expect(split([10, 20, 30], 60)).toEqual(['1+2+3:60']);
    const one = piece(7, 10);
    const got: Buffer[] = [];
    inMessagesOf([one], 10, 5, (m) => got.push(m));
    expect(got).toHaveLength(1);
    inMessagesOf([one], 10, 60, (m) => got.push(m));
    expect(got[1]).toBe(one);
  });

  it('splits between values where one message would pass the limit; a value over it goes alone', () => {
    expect(split([10, 20, 30], 30)).toEqual(['1+2:30', '3:30']);
    expect(split([10, 100, 10], 50)).toEqual(['1:10', '2:100', '3:10']);
  });
});

describe('TurnWriter', () => {
  let server: Server | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets) s.destroy();
    if (server) await new Promise((r) => server!.close(r));
    server = undefined;
  });

  /** A loopback TCP pair: what `writer` side writes, `received` collects. */
  async function pair(): Promise<{ socket: Socket; received: () => Buffer; bytes: () => number }> {
    const chunks: Buffer[] = [];
    server = createServer((s) => {
      sockets.push(s);
      s.on('data', (d: Buffer) => chunks.push(d));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
    sockets.push(socket);
    await once(socket, 'connect');
    return { socket, received: () => Buffer.concat(chunks), bytes: () => chunks.reduce((n, c) => n + c.length, 0) };
  }

  async function until(cond: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 5_000;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setImmediate(r));
    }
  }

  it('writes a small batch as one joined buffer, and a large one uncopied in one corked writev', async () => {
    const { socket, received, bytes } = await pair();
    const write = vi.spyOn(socket, 'write');
    const cork = vi.spyOn(socket, 'cork');
    const w = new TurnWriter(socket, () => true, process.nextTick);
    w.push(piece(1, 10), piece(2, 10));
    w.push(piece(3, 10));
    await new Promise((r) => process.nextTick(r));
    expect(write).toHaveBeenCalledTimes(1);
    expect(cork).not.toHaveBeenCalled();
    const big = piece(5, COPY_LIMIT);
    w.push(piece(4, 1), big);
    await new Promise((r) => process.nextTick(r));
    expect(cork).toHaveBeenCalledTimes(1);
    expect(write).toHaveBeenCalledTimes(3);
    expect(write.mock.calls[2]![0]).toBe(big); // passed on as it is
    await until(() => bytes() === 31 + COPY_LIMIT, 'every byte');
    const got = received();
    expect([...got.subarray(0, 31)]).toEqual([...Array(10).fill(1), ...Array(10).fill(2), ...Array(10).fill(3), 4]);
    expect(got.subarray(31).every((b) => b === 5)).toBe(true);
  });

  it('writes nothing once its owner has closed', async () => {
    const { socket } = await pair();
    const write = vi.spyOn(socket, 'write');
    let open = true;
    const w = new TurnWriter(socket, () => open, process.nextTick);
    w.push(piece(1, 10));
    open = false;
    await new Promise((r) => process.nextTick(r));
    expect(write).not.toHaveBeenCalled();
    expect(w.queued).toBe(0);
  });
});
