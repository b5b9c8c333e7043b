import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { CloseCode } from '../src/wire/close-codes.js';
import { decodeAll, encode } from '../src/wire/codec.js';
import { COALESCE_LIMIT, Connection, type ConnectionOptions } from '../src/wire/connection.js';
import { MemorySocket, type MemorySocketOptions } from '../src/wire/memory-socket.js';
import { cancel, chunk, chunkAck, chunkAckV1, hello, Kind, notify, request, type Message } from '../src/wire/messages.js';
import { CHUNK_SIZE, CONNECTION_WINDOW, STREAM_WINDOW } from '../src/wire/streams.js';
import { elapse, settle, useFakeClock } from './helpers/fake-clock.js';

/**
 * A Connection held in the hand: one end of an in-memory socket pair (memory-socket.ts), the other
 * end a raw socket the test drives. Timers are fake, so heartbeats and slow-consumer timeouts run
 * in no time; delivery runs on microtasks, which `settle` lets finish.
 */

const log = pino({ level: 'silent' });

useFakeClock();

interface Close {
  code: number;
  reason: string;
}

/** A Connection on one end; the far end is a raw socket that records what arrives, frame by frame. */
function harness(options: Partial<ConnectionOptions> = {}, socket: MemorySocketOptions = {}) {
  const [local, remote] = MemorySocket.pair(socket);
  const received: Message[] = [];
  const closes: Close[] = [];
  const conn = new Connection(
    local,
    {
      message: (m) => received.push(m),
      close: (code, reason) => closes.push({ code, reason }),
    },
    { log, heartbeatTimeout: 0, ...options },
  );
  /** The values of each binary frame the far end read, and the raw bytes. */
  const frames: unknown[][] = [];
  const sizes: number[] = [];
  const remoteCloses: Close[] = [];
  remote.on('message', (data: Buffer, isBinary: boolean) => {
    sizes.push(data.length);
    frames.push(isBinary ? decodeAll(data) : [data.toString()]);
  });
  remote.on('close', (code: number, reason: Buffer) => remoteCloses.push({ code, reason: reason.toString() }));
  remote.on('error', () => {});
  return {
    conn,
    local,
    remote,
    received,
    closes,
    frames,
    sizes,
    remoteCloses,
    /** Every value the far end read, in order. */
    values: () => frames.flat() as unknown[][],
    /** Chunks the far end read: [id, final, bytes]. */
    chunks: () => frames.flat().filter((v) => (v as unknown[])[0] === Kind.CHUNK) as Array<[number, number, boolean, Uint8Array]>,
    /** The far end sends these values in one binary frame. */
    sendRaw: (...values: unknown[]) => remote.send(Buffer.concat(values.map((v) => encode(v)))),
  };
}

const bytes = (n: number, fill = 7) => Buffer.alloc(n, fill);
const chunkBytes = (cs: Array<[number, number, boolean, Uint8Array]>, id?: number) =>
  cs.filter((c) => id === undefined || c[1] === id).reduce((sum, c) => sum + c[3].length, 0);

describe('messages', () => {
  it('travel both ways between two connections', async () => {
    const [a, b] = MemorySocket.pair();
    const atA: Message[] = [];
    const atB: Message[] = [];
    const ca = new Connection(a, { message: (m) => atA.push(m), close: () => {} }, { log, heartbeatTimeout: 0 });
    const cb = new Connection(b, { message: (m) => atB.push(m), close: () => {} }, { log, heartbeatTimeout: 0 });
    ca.send(notify('Chat.say', encode(['hi'])));
    cb.send(cancel(42));
    await settle();
    expect(atB).toEqual([{ kind: Kind.NOTIFY, method: 'Chat.say', params: encode(['hi']) }]);
    expect(atA).toEqual([{ kind: Kind.CANCEL, id: 42 }]);
  });

  it('queued in one turn leave as one frame, in order', async () => {
    const h = harness();
    for (let i = 0; i < 100; i++) h.conn.send(cancel(i));
    expect(h.frames).toHaveLength(0); // nothing leaves during send
    await settle();
    expect(h.frames).toHaveLength(1);
    expect(h.values().map((v) => v[1])).toEqual([...Array(100).keys()]);
  });

  it('queued in different turns leave as different frames', async () => {
    const h = harness();
    h.conn.send(cancel(1));
    await settle();
    h.conn.send(cancel(2));
    await settle();
    expect(h.frames).toEqual([[[Kind.CANCEL, 1]], [[Kind.CANCEL, 2]]]);
  });

  it('a batch never grows past the coalescing limit; order is kept across batches', async () => {
    const h = harness();
    for (let i = 0; i < 50; i++) h.conn.send(notify(`N.m${i}`, bytes(1000)));
    await settle();
    expect(h.frames.length).toBeGreaterThanOrEqual(Math.ceil((50 * 1000) / COALESCE_LIMIT));
    expect(h.frames.length).toBeLessThan(50);
    for (const size of h.sizes) expect(size).toBeLessThanOrEqual(COALESCE_LIMIT);
    expect(h.values().map((v) => v[1])).toEqual([...Array(50).keys()].map((i) => `N.m${i}`));
  });

  it('a batch over the peer limit (maxFrame) is split between values, never inside one', async () => {
    const h = harness({ maxFrame: 1000 });
    for (let i = 0; i < 20; i++) h.conn.send(notify('N.m', bytes(300, i)));
    await settle();
    expect(h.frames.length).toBeGreaterThan(1);
    for (const size of h.sizes) expect(size).toBeLessThanOrEqual(1000);
    expect(h.values().map((v) => (v[2] as Uint8Array)[0])).toEqual([...Array(20).keys()]);
  });

  it('sends nothing once closed', async () => {
    const h = harness();
    h.conn.close();
    h.conn.send(cancel(1));
    await settle();
    expect(h.values()).toEqual([]);
    expect(h.remoteCloses).toEqual([{ code: 1000, reason: '' }]);
  });
});

describe('chunked bodies and flow control', () => {
  it('a large body leaves as a head and chunks of at most CHUNK_SIZE, one chunk a frame, that add up to it', async () => {
    const h = harness();
    const body = Buffer.alloc(CHUNK_SIZE * 2 + 10);
    for (let i = 0; i < body.length; i++) body[i] = i % 251;
    h.conn.sendStream([Kind.RESPONSE_STREAM, 5, body.length], 5, [body.subarray(0, 1000), body.subarray(1000)]);
    await settle();
    expect(h.frames[0]).toEqual([[Kind.RESPONSE_STREAM, 5, body.length]]);
    const cs = h.chunks();
    expect(cs.map((c) => c[3].length)).toEqual([CHUNK_SIZE, CHUNK_SIZE, 10]);
    expect(cs.map((c) => c[2])).toEqual([false, false, true]);
    expect(h.frames.slice(1).every((f) => f.length === 1)).toBe(true);
    expect(Buffer.concat(cs.map((c) => c[3])).equals(body)).toBe(true);
  });

  it('an empty body is one final empty chunk', async () => {
    const h = harness();
    h.conn.sendStream([Kind.RESPONSE_STREAM, 5, 0], 5, Buffer.alloc(0));
    await settle();
    expect(h.chunks().map((c) => [c[1], c[2], c[3].length])).toEqual([[5, true, 0]]);
  });

  it('a stream waits for credit: no more than the stream window unacknowledged, and acknowledgements release it', async () => {
    const h = harness();
    const body = bytes(3 * STREAM_WINDOW);
    h.conn.sendStream([Kind.RESPONSE_STREAM, 1, body.length], 1, body);
    await settle();
    expect(chunkBytes(h.chunks())).toBe(STREAM_WINDOW);
    await elapse(1000); // time alone does not release anything
    expect(chunkBytes(h.chunks())).toBe(STREAM_WINDOW);

    h.sendRaw(chunkAck(1, CHUNK_SIZE));
    await settle();
    expect(chunkBytes(h.chunks())).toBe(STREAM_WINDOW + CHUNK_SIZE);

    h.sendRaw(chunkAck(1, 3 * CHUNK_SIZE));
    await settle();
    expect(chunkBytes(h.chunks())).toBe(2 * STREAM_WINDOW);
    expect(h.conn.isOpen).toBe(true);
  });

  it('one stalled stream does not stall the others', async () => {
    const h = harness();
    h.conn.sendStream([Kind.RESPONSE_STREAM, 1, 2 * STREAM_WINDOW], 1, bytes(2 * STREAM_WINDOW));
    h.conn.sendStream([Kind.RESPONSE_STREAM, 2, 2 * STREAM_WINDOW], 2, bytes(2 * STREAM_WINDOW));
    await settle();
    expect([chunkBytes(h.chunks(), 1), chunkBytes(h.chunks(), 2)]).toEqual([STREAM_WINDOW, STREAM_WINDOW]);
    h.sendRaw(chunkAck(2, STREAM_WINDOW));
    await settle();
    expect([chunkBytes(h.chunks(), 1), chunkBytes(h.chunks(), 2)]).toEqual([STREAM_WINDOW, 2 * STREAM_WINDOW]);
  });

  it('no more than the connection window is unacknowledged over all streams, served in turn', async () => {
    const h = harness();
    const streams = CONNECTION_WINDOW / STREAM_WINDOW + 4; // 20 streams of a full stream window each
    for (let id = 1; id <= streams; id++) h.conn.sendStream([Kind.RESPONSE_STREAM, id, STREAM_WINDOW], id, bytes(STREAM_WINDOW));
    await settle();
    const cs = h.chunks();
    expect(chunkBytes(cs)).toBe(CONNECTION_WINDOW);
    for (let id = 1; id <= streams; id++) expect(chunkBytes(cs, id)).toBeLessThanOrEqual(STREAM_WINDOW);
    // In turn: every stream got its share of the window (one stream at a time would leave 4 with none).
    for (let id = 1; id <= streams; id++) expect(chunkBytes(cs, id)).toBeGreaterThanOrEqual(Math.floor(CONNECTION_WINDOW / CHUNK_SIZE / streams) * CHUNK_SIZE);

    h.sendRaw(chunkAck(1, chunkBytes(cs, 1)));
    await settle();
    expect(chunkBytes(h.chunks())).toBe(CONNECTION_WINDOW + chunkBytes(cs, 1));
  });

  it('at most two chunks wait in the socket, and small messages overtake the chunks behind them', async () => {
    const h = harness();
    h.remote.stopReading();
    h.conn.sendStream([Kind.RESPONSE_STREAM, 1, 4 * CHUNK_SIZE], 1, bytes(4 * CHUNK_SIZE));
    await settle();
    expect(h.local.framesInFlight).toBe(3); // the head and two chunks
    h.conn.send(cancel(99));
    await settle();
    // The cancel goes into the socket at once, ahead of the two chunks still waiting for their turn.
    expect(h.local.framesInFlight).toBe(4);
    h.remote.startReading();
    await settle();
    const order = h.values().map((v) => (v[0] === Kind.CHUNK ? `chunk${String(v[2])}` : v[0]));
    expect(order).toEqual([Kind.RESPONSE_STREAM, 'chunkfalse', 'chunkfalse', Kind.CANCEL, 'chunkfalse', 'chunktrue']);
  });

  it('a forged acknowledgement (credit for bytes never sent) closes 1002 and names the stream', async () => {
    const h = harness();
    h.conn.sendStream([Kind.RESPONSE_STREAM, 3, 100], 3, bytes(100));
    await settle();
    h.sendRaw(chunkAck(3, 101));
    await settle();
    expect(h.remoteCloses).toEqual([
      { code: CloseCode.PROTOCOL_ERROR, reason: 'protocol error: acknowledgement of 101 bytes of stream 3, which has 100 bytes unacknowledged' },
    ]);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.PROTOCOL_ERROR]);
  });

  it('a version 1 acknowledgement for more than the connection has unacknowledged closes 1002', async () => {
    const h = harness();
    h.conn.peerVersion = 1;
    h.conn.sendStream([Kind.RESPONSE_STREAM, 3, 100], 3, bytes(100));
    await settle();
    h.sendRaw(chunkAckV1(100));
    await settle();
    expect(h.conn.isOpen).toBe(true);
    h.sendRaw(chunkAckV1(1));
    await settle();
    expect(h.remoteCloses.map((c) => c.code)).toEqual([CloseCode.PROTOCOL_ERROR]);
    expect(h.remoteCloses[0]!.reason).toContain('only 0 bytes of chunks are unacknowledged');
  });

  it('an acknowledgement of 0 bytes or of an unknown stream is ignored', async () => {
    const h = harness();
    h.sendRaw(chunkAck(7, 0), chunkAck(8, 1000), cancel(1));
    await settle();
    expect(h.conn.isOpen).toBe(true);
    expect(h.received).toEqual([{ kind: Kind.CANCEL, id: 1 }]); // acknowledgements are taken, not handed on
  });

  it('received chunks are acknowledged per stream as they arrive (autoAck)', async () => {
    const h = harness();
    for (let i = 0; i < 5; i++) h.sendRaw(chunk(9, i === 4, bytes(CHUNK_SIZE)));
    await settle();
    expect(h.conn.isOpen).toBe(true);
    expect(h.received.filter((m) => m.kind === Kind.CHUNK)).toHaveLength(5);
    expect(h.values()).toEqual(Array(5).fill([Kind.CHUNK_ACK, 9, CHUNK_SIZE]));
  });

  it('a peer past the stream window without acknowledgement closes 1002; acknowledge() releases it', async () => {
    const h = harness({ autoAck: false });
    for (let i = 0; i < 4; i++) h.sendRaw(chunk(9, false, bytes(CHUNK_SIZE)));
    await settle();
    h.conn.acknowledge(9, CHUNK_SIZE);
    await settle();
    expect(h.values()).toEqual([[Kind.CHUNK_ACK, 9, CHUNK_SIZE]]);
    h.sendRaw(chunk(9, false, bytes(CHUNK_SIZE))); // fits again
    await settle();
    expect(h.conn.isOpen).toBe(true);
    h.sendRaw(chunk(9, false, bytes(1)));
    await settle();
    expect(h.remoteCloses.map((c) => c.code)).toEqual([CloseCode.PROTOCOL_ERROR]);
    expect(h.remoteCloses[0]!.reason).toContain(`the stream window is ${STREAM_WINDOW}`);
    expect(h.received.filter((m) => m.kind === Kind.CHUNK)).toHaveLength(5); // the offending chunk is not handed on
  });

  it('a peer past the connection window without acknowledgement closes 1002', async () => {
    const h = harness({ autoAck: false });
    const streams = CONNECTION_WINDOW / STREAM_WINDOW;
    for (let id = 1; id <= streams; id++) for (let i = 0; i < STREAM_WINDOW / CHUNK_SIZE; i++) h.sendRaw(chunk(id, false, bytes(CHUNK_SIZE)));
    await settle();
    expect(h.conn.isOpen).toBe(true);
    h.sendRaw(chunk(streams + 1, false, bytes(1)));
    await settle();
    expect(h.remoteCloses.map((c) => c.code)).toEqual([CloseCode.PROTOCOL_ERROR]);
    expect(h.remoteCloses[0]!.reason).toContain(`the connection window is ${CONNECTION_WINDOW}`);
  });

  it('a chunk over CHUNK_SIZE closes 1002', async () => {
    const h = harness();
    h.sendRaw(chunk(1, true, bytes(CHUNK_SIZE + 1)));
    await settle();
    expect(h.remoteCloses).toEqual([
      { code: CloseCode.PROTOCOL_ERROR, reason: `protocol error: chunk of ${CHUNK_SIZE + 1} bytes; chunks are at most ${CHUNK_SIZE}` },
    ]);
    expect(h.received).toEqual([]);
  });

  it('chunks passed on (sendChunk) report onSent as they reach the socket; dropStream and close release the rest', async () => {
    const h = harness();
    const sent: number[] = [];
    for (let i = 0; i < 6; i++) h.conn.sendChunk(1, i === 5, bytes(CHUNK_SIZE), () => sent.push(i));
    for (let i = 0; i < 6; i++) h.conn.sendChunk(2, i === 5, bytes(CHUNK_SIZE), () => sent.push(10 + i));
    await settle();
    expect(sent.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 10, 11, 12, 13]); // each stream's window
    h.conn.dropStream(1);
    expect(sent).toContain(5);
    expect(sent).toContain(4);
    h.remote.close(1000);
    await settle();
    expect(sent.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]);
    expect(chunkBytes(h.chunks(), 1)).toBe(STREAM_WINDOW); // dropped chunks never left
  });
});

describe('backlog and the slow-consumer cut', () => {
  const LIMIT = 64 * 1024;

  function slow(extra: Partial<ConnectionOptions> = {}) {
    const cuts: number[] = [];
    const h = harness({ maxBacklog: LIMIT, slowConsumerTimeout: 1000, onSlowConsumer: (b) => cuts.push(b), ...extra });
    h.remote.stopReading();
    return { ...h, cuts };
  }

  it('a backlog above maxBacklog for slowConsumerTimeout is cut 4008, onSlowConsumer once', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    expect(h.conn.socketBacklog).toBeGreaterThan(LIMIT);
    await elapse(999, 111);
    expect(h.conn.isOpen).toBe(true);
    expect(h.cuts).toEqual([]);
    await elapse(200);
    expect(h.conn.isOpen).toBe(false);
    expect(h.cuts).toHaveLength(1);
    expect(h.cuts[0]).toBeGreaterThan(LIMIT);
    // The close frame waits behind what the peer does not read; the socket is ended 1 s later.
    await elapse(1000);
    expect(h.closes).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]);
    expect(h.cuts).toHaveLength(1);
    h.remote.startReading();
    await settle();
    expect(h.remoteCloses).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]); // it never read the 4008 frame
  });

  it('a peer that reads again before the socket is ended receives 4008 and the reason', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    await elapse(1100);
    expect(h.cuts).toHaveLength(1);
    h.remote.startReading();
    await settle();
    expect(h.remoteCloses).toHaveLength(1);
    expect(h.remoteCloses[0]!.code).toBe(CloseCode.SLOW_CONSUMER);
    expect(h.remoteCloses[0]!.reason).toMatch(/^slow consumer: \d+ bytes waited to be written to this connection \(limit 65536\)/);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.SLOW_CONSUMER]);
  });

  it('a backlog that drains within slowConsumerTimeout is not cut', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    await elapse(900);
    h.remote.startReading();
    await settle();
    expect(h.conn.socketBacklog).toBe(0);
    await elapse(5000);
    expect(h.conn.isOpen).toBe(true);
    expect(h.cuts).toEqual([]);
  });

  it('after a freeze of this process, a peer over maxBacklog is given a fresh period, not cut for our stop', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    expect(h.conn.socketBacklog).toBeGreaterThan(LIMIT);
    // The process stops for a minute: the clock moves on, no timer runs; then the overdue timer runs first.
    vi.setSystemTime(Date.now() + 60_000);
    await elapse(1100);
    expect(h.cuts).toEqual([]);
    // What the peer read meanwhile is reported now: it is under the limit and stays.
    h.remote.startReading();
    await settle();
    await elapse(5000);
    expect(h.conn.isOpen).toBe(true);
    expect(h.cuts).toEqual([]);
  });

  it('after a freeze, a peer that still reads nothing is cut when its fresh period ends', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    vi.setSystemTime(Date.now() + 60_000);
    await elapse(1100);
    expect(h.cuts).toEqual([]);
    await elapse(1100);
    expect(h.cuts).toHaveLength(1);
    expect(h.conn.isOpen).toBe(false);
  });

  it('a backlog at twice maxBacklog is cut at once', async () => {
    const h = slow();
    h.conn.send(notify('N.huge', bytes(2 * LIMIT)));
    await settle();
    expect(h.cuts).toHaveLength(1);
    expect(h.cuts[0]).toBeGreaterThanOrEqual(2 * LIMIT);
    expect(h.conn.isOpen).toBe(false);
  });

  it('what is queued and not yet in the socket is dropped with the cut', async () => {
    const h = slow();
    h.conn.send(notify('N.huge', bytes(2 * LIMIT)));
    h.conn.send(cancel(1)); // coalesced? No: over COALESCE_LIMIT, the big one left first
    await settle();
    h.remote.startReading();
    await settle();
    expect(h.values().map((v) => v[0])).toEqual([Kind.NOTIFY]);
    expect(h.remoteCloses.map((c) => c.code)).toEqual([CloseCode.SLOW_CONSUMER]);
  });

  it('chunks waiting for the peer window do not count toward the cut, only bytes in the socket', async () => {
    const h = harness({ maxBacklog: 1024 * 1024, slowConsumerTimeout: 1000, onSlowConsumer: () => expect.fail('cut') });
    let sent = 0;
    // A relay passing on 5 MiB for a peer that reads but acknowledges nothing: 1 MiB leaves, 4 MiB wait.
    for (let i = 0; i < 20; i++) h.conn.sendChunk(1, i === 19, bytes(CHUNK_SIZE), () => sent++);
    await settle();
    expect(sent).toBe(STREAM_WINDOW / CHUNK_SIZE);
    expect(h.conn.socketBacklog).toBe(0);
    expect(h.conn.backlog).toBe(16 * CHUNK_SIZE); // held for the peer, past twice maxBacklog
    await elapse(20_000, 1000);
    expect(h.conn.isOpen).toBe(true);
  });

  it('above maxBacklog, pauseWhenBacklogged stops reading the peer, and reads again once it drains', async () => {
    const h = slow();
    h.conn.pauseWhenBacklogged = true;
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    expect(h.local.isPaused).toBe(true);
    h.sendRaw(cancel(5));
    await settle();
    expect(h.received).toEqual([]);
    await elapse(500);
    h.remote.startReading();
    await settle();
    expect(h.local.isPaused).toBe(false);
    expect(h.received).toEqual([{ kind: Kind.CANCEL, id: 5 }]);
    expect(h.cuts).toEqual([]);
  });

  it('without pauseWhenBacklogged a backlogged peer is still read (only cut)', async () => {
    const h = slow();
    h.conn.send(notify('N.big', bytes(LIMIT + 1000)));
    await settle();
    h.sendRaw(cancel(5));
    await settle();
    expect(h.local.isPaused).toBe(false);
    expect(h.received).toEqual([{ kind: Kind.CANCEL, id: 5 }]);
  });

  it('onPressure runs on writes while the backlog is above maxBacklog, not below it', async () => {
    let pressure = 0;
    const h = slow({ onPressure: () => pressure++ });
    h.conn.send(notify('N.small', bytes(1000)));
    await settle();
    expect(pressure).toBe(0);
    h.conn.send(notify('N.big', bytes(LIMIT)));
    await settle();
    expect(pressure).toBeGreaterThan(0);
  });

  it('shed cuts 4008 with the reason given, and onSlowConsumer once', async () => {
    const h = slow();
    h.remote.startReading();
    h.conn.shed('the relay is over its memory budget');
    h.conn.shed('again');
    await settle();
    expect(h.cuts).toHaveLength(1);
    expect(h.remoteCloses).toEqual([{ code: CloseCode.SLOW_CONSUMER, reason: 'slow consumer: the relay is over its memory budget' }]);
  });

  it('maxBacklog 0 never cuts', async () => {
    const h = harness({ slowConsumerTimeout: 10, onSlowConsumer: () => expect.fail('cut') });
    h.remote.stopReading();
    h.conn.send(notify('N.huge', bytes(1024 * 1024)));
    await settle();
    await elapse(1000);
    expect(h.conn.isOpen).toBe(true);
  });
});

describe('heartbeats', () => {
  const TIMEOUT = 3000;
  const INTERVAL = TIMEOUT / 3;

  it('a silent peer (half-open) is dropped after heartbeatTimeout, without a close frame', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT });
    h.local.cutSilently();
    await elapse(TIMEOUT);
    expect(h.conn.isOpen).toBe(true); // not before the timeout
    await elapse(INTERVAL);
    expect(h.closes).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]);
  });

  it('a peer that answers pings is kept', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT });
    let pings = 0;
    h.remote.on('ping', () => pings++);
    await elapse(10 * TIMEOUT);
    expect(h.conn.isOpen).toBe(true);
    expect(pings).toBeGreaterThanOrEqual((10 * TIMEOUT) / INTERVAL - 1);
  });

  it('a peer that stops answering is dropped a timeout after its last pong', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT });
    await elapse(5 * TIMEOUT);
    expect(h.conn.isOpen).toBe(true);
    h.remote.stopReading();
    await elapse(TIMEOUT - INTERVAL);
    expect(h.conn.isOpen).toBe(true);
    await elapse(2 * INTERVAL);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.ABNORMAL]);
  });

  it('a frozen process (its timers late by more than the timeout) does not drop its peers', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT });
    await elapse(INTERVAL);
    // The process stops for a minute: the clock moves on, no timer runs.
    vi.setSystemTime(Date.now() + 60_000);
    await elapse(INTERVAL);
    expect(h.conn.isOpen).toBe(true);
    await elapse(10 * TIMEOUT);
    expect(h.conn.isOpen).toBe(true);
  });

  it('after a freeze, a peer that is really gone gets a fresh timeout, then is dropped', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT });
    await elapse(INTERVAL);
    h.local.cutSilently();
    vi.setSystemTime(Date.now() + 60_000);
    await elapse(INTERVAL);
    expect(h.conn.isOpen).toBe(true);
    await elapse(TIMEOUT + INTERVAL);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.ABNORMAL]);
  });

  it('a peer we stopped reading (pauseWhenBacklogged) is not dropped as silent while it reads what we send', async () => {
    // Its backlog stays between an eighth of maxBacklog and maxBacklog: we do not read it (so not its
    // pongs either), and it is not cut; it reads our messages, and our pings behind them, as fast as they come.
    const KIB = 1024;
    const h = harness({ heartbeatTimeout: TIMEOUT, maxBacklog: 64 * KIB, slowConsumerTimeout: 60_000 });
    h.conn.pauseWhenBacklogged = true;
    let pings = 0;
    h.remote.on('ping', () => pings++);
    h.remote.stopReading();
    for (let i = 0; i < 4; i++) {
      h.conn.send(notify('N.m', bytes(20 * KIB)));
      await settle();
    }
    expect(h.local.isPaused).toBe(true);
    h.remote.read(40 * KIB);
    await settle();
    for (let t = 0; t < 4 * TIMEOUT; t += 500) {
      h.conn.send(notify('N.m', bytes(20 * KIB)));
      await settle();
      h.remote.read(20 * KIB);
      await elapse(500);
      expect([t, h.closes, h.conn.socketBacklog > 8 * KIB]).toEqual([t, [], true]);
    }
    expect(h.local.isPaused).toBe(true);
    expect(pings).toBeGreaterThan(4);
    expect(h.closes).toEqual([]);
    expect(h.conn.isOpen).toBe(true);
  });

  it('a peer we stopped reading that reads nothing either is still dropped after heartbeatTimeout', async () => {
    const h = harness({ heartbeatTimeout: TIMEOUT, maxBacklog: 64 * 1024, slowConsumerTimeout: 60_000, onSlowConsumer: () => expect.fail('cut') });
    h.conn.pauseWhenBacklogged = true;
    h.remote.stopReading();
    h.conn.send(notify('N.m', bytes(100 * 1024)));
    await settle();
    expect(h.local.isPaused).toBe(true);
    await elapse(TIMEOUT);
    expect(h.conn.isOpen).toBe(true);
    await elapse(INTERVAL);
    expect(h.closes.map((c) => c.code)).toEqual([CloseCode.ABNORMAL]);
  });

  it('heartbeatTimeout 0 sends no pings and drops no one', async () => {
    const h = harness({ heartbeatTimeout: 0 });
    let pings = 0;
    h.remote.on('ping', () => pings++);
    h.local.cutSilently();
    await elapse(60_000, 1000);
    expect(h.conn.isOpen).toBe(true);
    expect(pings).toBe(0);
  });

  it('probe answers true when the pong comes, false from a half-open peer', async () => {
    const h = harness();
    await expect(h.conn.probe(1000)).resolves.toBe(true);
    h.local.cutSilently();
    const probe = h.conn.probe(1000);
    await elapse(1000);
    await expect(probe).resolves.toBe(false);
  });
});

describe('bad input', () => {
  it('bytes that are not MessagePack close 1007 with the decoder reason', async () => {
    const h = harness();
    h.remote.send(Buffer.from([0xc1]));
    await settle();
    expect(h.remoteCloses).toHaveLength(1);
    expect(h.remoteCloses[0]!.code).toBe(CloseCode.INVALID_DATA);
    expect(h.remoteCloses[0]!.reason).toMatch(/^invalid MessagePack: /);
    expect(h.received).toEqual([]);
  });

  it('a refused extension closes 1007 naming what is accepted', async () => {
    const h = harness();
    h.remote.send(Buffer.from([0xd5, 0x05, 0x00, 0x00])); // fixext 2 of type 5
    await settle();
    expect(h.remoteCloses[0]!.code).toBe(CloseCode.INVALID_DATA);
    expect(h.remoteCloses[0]!.reason).toContain('extensions accepted');
  });

  it('an undefined kind closes 1002', async () => {
    const h = harness();
    h.sendRaw([99, 1]);
    await settle();
    expect(h.remoteCloses).toEqual([{ code: CloseCode.PROTOCOL_ERROR, reason: 'protocol error: unknown message kind 99' }]);
  });

  it('a request of the wrong shape with a usable id is answered BAD_REQUEST and the connection stays open', async () => {
    const h = harness();
    h.sendRaw([Kind.REQUEST, 5, '', null], cancel(6));
    await settle();
    expect(h.values()).toEqual([[Kind.RESPONSE, 5, { code: 'BAD_REQUEST', message: 'request method must be a non-empty string' }, null]]);
    expect(h.received).toEqual([{ kind: Kind.CANCEL, id: 6 }]);
    expect(h.conn.isOpen).toBe(true);
  });

  it('a text frame closes 1003, first or later', async () => {
    for (const before of [false, true]) {
      const h = harness();
      if (before) {
        h.sendRaw(cancel(1));
        await settle();
      }
      h.remote.send('{"hello": true}');
      await settle();
      expect(h.remoteCloses).toEqual([{ code: CloseCode.UNSUPPORTED_DATA, reason: 'text frames are not accepted: send binary MessagePack' }]);
      expect(h.received).toHaveLength(before ? 1 : 0);
    }
  });

  it('a first message over maxFirstMessage closes 1009; later messages have no such limit', async () => {
    const big = hello({ version: 2, role: 'caller', token: 'x'.repeat(200) });
    const size = encode(big).length;
    const h = harness({ maxFirstMessage: 100 });
    h.sendRaw(big);
    await settle();
    expect(h.remoteCloses).toEqual([{ code: CloseCode.TOO_LARGE, reason: `the hello is ${size} bytes; at most 100` }]);
    expect(h.received).toEqual([]);

    const ok = harness({ maxFirstMessage: 100 });
    ok.sendRaw(cancel(1));
    ok.sendRaw(big);
    await settle();
    expect(ok.received.map((m) => m.kind)).toEqual([Kind.CANCEL, Kind.HELLO]);
  });

  it('a message over the socket maxPayload closes 1009 at the sender', async () => {
    const h = harness({}, { maxPayload: 1024 });
    h.sendRaw(notify('N.big', bytes(2048)));
    await settle();
    expect(h.remoteCloses).toEqual([{ code: CloseCode.TOO_LARGE, reason: '' }]);
    expect(h.received).toEqual([]);
    expect(h.closes).toHaveLength(1);
    expect(h.conn.isOpen).toBe(false);
  });

  it('with helloFirst, a malformed first request closes 1002 instead of being answered', async () => {
    const h = harness({ helloFirst: true });
    h.sendRaw([Kind.REQUEST, 5, '', null]);
    await settle();
    expect(h.values()).toEqual([]);
    expect(h.remoteCloses).toEqual([{ code: CloseCode.PROTOCOL_ERROR, reason: 'protocol error: request method must be a non-empty string' }]);
  });

  it('with helloFirst, a first acknowledgement goes to the handler instead of being taken', async () => {
    const h = harness({ helloFirst: true });
    h.sendRaw(chunkAck(1, 10), chunkAck(1, 0));
    await settle();
    expect(h.received).toEqual([{ kind: Kind.CHUNK_ACK, id: 1, bytes: 10 }]); // only the first
    expect(h.conn.isOpen).toBe(true);
  });

  it('with helloFirst, a hello first is handed on and later bad requests are answered again', async () => {
    const h = harness({ helloFirst: true });
    h.sendRaw(hello({ version: 2, role: 'caller' }), [Kind.REQUEST, 5, '', null]);
    await settle();
    expect(h.received.map((m) => m.kind)).toEqual([Kind.HELLO]);
    expect(h.values().map((v) => v[0])).toEqual([Kind.RESPONSE]);
  });

  it('values after a fatal one in the same frame are not handled', async () => {
    const h = harness();
    h.sendRaw(cancel(1), [99], cancel(2));
    await settle();
    expect(h.received).toEqual([{ kind: Kind.CANCEL, id: 1 }]);
    expect(h.remoteCloses.map((c) => c.code)).toEqual([CloseCode.PROTOCOL_ERROR]);
  });

  it('a handler that throws does not stop the next value', async () => {
    const [local, remote] = MemorySocket.pair();
    const seen: number[] = [];
    new Connection(
      local,
      {
        message: (m) => {
          seen.push((m as { id: number }).id);
          throw new Error('bug');
        },
        close: () => {},
      },
      { log, heartbeatTimeout: 0 },
    );
    remote.send(Buffer.concat([encode(cancel(1)), encode(cancel(2))]));
    await settle();
    expect(seen).toEqual([1, 2]);
  });
});

describe('closing', () => {
  it('the peer close code and reason reach the handler', async () => {
    const h = harness();
    h.remote.close(CloseCode.UNAUTHORIZED, 'token refused');
    await settle();
    expect(h.closes).toEqual([{ code: CloseCode.UNAUTHORIZED, reason: 'token refused' }]);
    expect(h.conn.isOpen).toBe(false);
  });

  it('close sends what is queued first, and a reason cut to 123 bytes', async () => {
    const h = harness();
    h.conn.send(cancel(1));
    h.conn.close(CloseCode.GOING_AWAY, 'é'.repeat(100));
    await settle();
    expect(h.values()).toEqual([[Kind.CANCEL, 1]]);
    expect(h.remoteCloses).toHaveLength(1);
    expect(h.remoteCloses[0]!.code).toBe(CloseCode.GOING_AWAY);
    expect(Buffer.byteLength(h.remoteCloses[0]!.reason)).toBeLessThanOrEqual(123);
    expect(h.remoteCloses[0]!.reason).toMatch(/^é+\.\.\.$/);
    expect(h.closes).toEqual([{ code: CloseCode.GOING_AWAY, reason: h.remoteCloses[0]!.reason }]);
  });

  it('a peer that never answers the close handshake is dropped 5 s later', async () => {
    const h = harness();
    h.remote.stopReading();
    h.conn.close(CloseCode.NORMAL);
    await elapse(4900);
    expect(h.closes).toEqual([]);
    await elapse(200);
    expect(h.closes).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]);
  });

  it('terminate ends the connection without a close frame', async () => {
    const h = harness();
    h.conn.terminate();
    await settle();
    expect(h.closes).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]);
    expect(h.remoteCloses).toEqual([{ code: CloseCode.ABNORMAL, reason: '' }]);
  });

  it('the handler hears the close once', async () => {
    const h = harness();
    h.conn.close(CloseCode.NORMAL);
    h.conn.close(CloseCode.GOING_AWAY);
    h.remote.close(CloseCode.POLICY);
    await elapse(10_000, 1000);
    expect(h.closes).toHaveLength(1);
    expect(h.remoteCloses).toHaveLength(1);
  });

  it('setHandlers moves later messages to the new handler', async () => {
    const h = harness();
    const later: Message[] = [];
    h.conn.setHandlers({ message: (m) => later.push(m), close: () => {} });
    h.sendRaw(request(1, 'A.b', encode([]), {}));
    await settle();
    expect(later.map((m) => m.kind)).toEqual([Kind.REQUEST]);
    expect(h.received).toEqual([]);
  });
});
