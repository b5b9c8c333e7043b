import { describe, expect, it } from 'vitest';
import { IncomingWindows, OutgoingStreams, type QueuedChunk } from '../src/wire/flow-control.js';
import { CHUNK_SIZE, CONNECTION_WINDOW, STREAM_WINDOW } from '../src/wire/streams.js';

/** Sends whatever the windows allow now: the stream id and size of each chunk taken, in order. */
function drain(out: OutgoingStreams, max = 1_000): Array<[number, number, boolean]> {
  const taken: Array<[number, number, boolean]> = [];
  for (let i = 0; i < max; i++) {
    const s = out.next();
    if (!s) break;
    const q = out.take(s);
    taken.push([s.id, q.bytes.length, q.final]);
  }
  return taken;
}

describe('OutgoingStreams', () => {
  it('cuts a body into chunks of CHUNK_SIZE across its pieces, the last one final', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(1, [Buffer.alloc(CHUNK_SIZE + 10, 1), Buffer.alloc(CHUNK_SIZE - 5, 2)]);
    const chunks: QueuedChunk[] = [];
    for (let s = out.next(); s; s = out.next()) chunks.push(out.take(s));
    expect(chunks.map((q) => [q.bytes.length, q.final])).toEqual([
      [CHUNK_SIZE, false],
      [CHUNK_SIZE, false],
      [5, true],
    ]);
    // The second chunk joins the first piece's last 10 bytes and the second piece's first ones.
    expect([...chunks[1]!.bytes.subarray(8, 12)]).toEqual([1, 1, 2, 2]);
  });

  it('an empty body is one empty final chunk', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(3, Buffer.alloc(0));
    expect(drain(out)).toEqual([[3, 0, true]]);
    expect(out.size).toBe(0); // nothing is owed for 0 bytes: the stream is forgotten at once
  });

  it('serves the streams with chunks waiting in turn', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(1, Buffer.alloc(2 * CHUNK_SIZE));
    out.enqueueBody(2, Buffer.alloc(2 * CHUNK_SIZE));
    expect(drain(out).map(([id]) => id)).toEqual([1, 2, 1, 2]);
  });

  it('a stream stops at its window and goes on when the peer acknowledges; the others are not held up', () => {
    const out = new OutgoingStreams();
    const perWindow = STREAM_WINDOW / CHUNK_SIZE;
    out.enqueueBody(1, Buffer.alloc(STREAM_WINDOW + CHUNK_SIZE));
    expect(drain(out)).toHaveLength(perWindow);
    expect(out.waiting).toBe(true);
    out.enqueueBody(2, Buffer.alloc(CHUNK_SIZE));
    expect(drain(out)).toEqual([[2, CHUNK_SIZE, true]]);
    expect(out.ack(1, CHUNK_SIZE - 1)).toBeUndefined();
    expect(drain(out)).toEqual([]); // one byte short of room for the next chunk
    expect(out.ack(1, 1)).toBeUndefined();
    expect(drain(out)).toEqual([[1, CHUNK_SIZE, true]]);
    expect(out.unacked).toBe(STREAM_WINDOW + CHUNK_SIZE);
  });

  it('a stream with nothing unacknowledged may send one chunk larger than its window', () => {
    const out = new OutgoingStreams();
    const s = out.open(1);
    out.enqueue(s, false, Buffer.alloc(STREAM_WINDOW + 1), undefined);
    out.enqueue(s, true, Buffer.alloc(1), undefined);
    expect(drain(out)).toEqual([[1, STREAM_WINDOW + 1, false]]);
  });

  it('all streams together stop at the connection window', () => {
    const out = new OutgoingStreams();
    const streams = CONNECTION_WINDOW / STREAM_WINDOW;
    const body = Buffer.alloc(STREAM_WINDOW);
    for (let id = 1; id <= streams + 1; id++) out.enqueueBody(id, body);
    const taken = drain(out, 10_000);
    expect(taken.reduce((n, [, size]) => n + size, 0)).toBe(CONNECTION_WINDOW);
    expect(out.unacked).toBe(CONNECTION_WINDOW);
    // Served in turn, every stream got its share; what is left waits for the connection's window.
    expect(new Set(taken.map(([id]) => id)).size).toBe(streams + 1);
    expect(out.waiting).toBe(true);
    expect(out.next()).toBeUndefined();
    expect(out.ack(1, CHUNK_SIZE)).toBeUndefined();
    expect(drain(out).map(([, size]) => size)).toEqual([CHUNK_SIZE]);
  });

  it('counts chunks passed on for another peer (with onSent) as held until they are taken or dropped', () => {
    const out = new OutgoingStreams();
    const sent: number[] = [];
    const s = out.open(7);
    out.enqueue(s, false, Buffer.alloc(100), () => sent.push(1));
    out.enqueue(s, false, Buffer.alloc(50), () => sent.push(2));
    out.enqueueBody(8, Buffer.alloc(1_000)); // this side's own body: not held
    expect(out.held).toBe(150);
    const first = out.take(out.next()!);
    expect(first.bytes.length).toBe(100);
    expect(out.held).toBe(50);
    const dropped = out.drop(7);
    expect(dropped.map((q) => q.bytes.length)).toEqual([50]);
    for (const q of dropped) q.onSent?.();
    expect(sent).toEqual([2]); // drop only returns the chunks; their onSent is the caller's to run
    expect(out.held).toBe(0);
  });

  it('keeps a stream until the peer has acknowledged every byte, then forgets it', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(5, Buffer.alloc(1_000));
    drain(out);
    expect(out.size).toBe(1);
    expect(out.ack(5, 999)).toBeUndefined();
    expect(out.size).toBe(1);
    expect(out.ack(5, 1)).toBeUndefined();
    expect(out.size).toBe(0);
    expect(out.unacked).toBe(0);
  });

  it('an id used again while the peer still owes acknowledgements keeps one record', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(5, Buffer.alloc(1_000));
    drain(out);
    out.enqueueBody(5, Buffer.alloc(CHUNK_SIZE));
    expect(out.size).toBe(1);
    drain(out);
    expect(out.ack(5, 1_000 + CHUNK_SIZE)).toBeUndefined();
    expect(out.size).toBe(0);
  });

  it('an acknowledgement of more than was sent is a protocol error; of a stream no longer tracked, nothing', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(1, Buffer.alloc(10));
    drain(out);
    expect(out.ack(1, 11)).toBe('acknowledgement of 11 bytes of stream 1, which has 10 bytes unacknowledged');
    expect(out.ack(99, 5)).toBeUndefined();
    expect(out.ack(1, 0)).toBeUndefined();
    expect(out.unacked).toBe(10);
  });

  it('a version 1 acknowledgement counts for the whole connection, oldest streams first', () => {
    const out = new OutgoingStreams();
    out.enqueueBody(1, Buffer.alloc(100));
    out.enqueueBody(2, Buffer.alloc(100));
    drain(out);
    expect(out.ack(undefined, 150)).toBeUndefined();
    expect(out.size).toBe(1); // stream 1 fully acknowledged and forgotten; stream 2 still owes 50
    expect(out.unacked).toBe(50);
    expect(out.ack(undefined, 51)).toBe('acknowledgement of 51 bytes, but only 50 bytes of chunks are unacknowledged');
  });

  it('clear returns every chunk still queued, so that their owners are released', () => {
    const out = new OutgoingStreams();
    const s = out.open(1);
    const onSent = () => undefined;
    out.enqueue(s, false, Buffer.alloc(1), onSent);
    out.enqueueBody(2, Buffer.alloc(2 * CHUNK_SIZE));
    const cleared: QueuedChunk[] = out.clear();
    expect(cleared.map((q) => q.bytes.length)).toEqual([1, CHUNK_SIZE, CHUNK_SIZE]);
    expect(cleared[0]!.onSent).toBe(onSent);
    expect(out.waiting).toBe(false);
    expect(out.held).toBe(0);
    expect(out.size).toBe(0);
  });
});

describe('IncomingWindows', () => {
  it('admits chunks within the windows and releases what is acknowledged', () => {
    const w = new IncomingWindows();
    expect(w.admit(1, CHUNK_SIZE, true)).toBeUndefined();
    expect(w.admit(2, 10, true)).toBeUndefined();
    expect(w.held).toBe(CHUNK_SIZE + 10);
    w.release(1, CHUNK_SIZE);
    w.release(3, 99); // a stream that holds nothing
    expect(w.held).toBe(10);
    w.release(2, 1_000); // more than held releases what it holds, no more
    expect(w.held).toBe(0);
  });

  it('a chunk over CHUNK_SIZE is a protocol error', () => {
    expect(new IncomingWindows().admit(1, CHUNK_SIZE + 1, true)).toBe(`chunk of ${CHUNK_SIZE + 1} bytes; chunks are at most ${CHUNK_SIZE}`);
  });

  it('a stream past its window is a protocol error for version 2 peers only', () => {
    const fill = (w: IncomingWindows, perStream: boolean) => {
      for (let i = 0; i < STREAM_WINDOW / CHUNK_SIZE; i++) expect(w.admit(1, CHUNK_SIZE, perStream)).toBeUndefined();
      return w.admit(1, 1, perStream);
    };
    expect(fill(new IncomingWindows(), true)).toBe(`stream 1 sent ${STREAM_WINDOW + 1} bytes without acknowledgement; the stream window is ${STREAM_WINDOW}`);
    expect(fill(new IncomingWindows(), false)).toBeUndefined();
  });

  it('all streams past the connection window is a protocol error, and the refused chunk is not counted', () => {
    const w = new IncomingWindows();
    let id = 0;
    for (let held = 0; held < CONNECTION_WINDOW; held += CHUNK_SIZE) expect(w.admit(++id, CHUNK_SIZE, true)).toBeUndefined();
    expect(w.admit(++id, 1, true)).toBe(`${CONNECTION_WINDOW + 1} chunk bytes sent without acknowledgement; the connection window is ${CONNECTION_WINDOW}`);
    expect(w.held).toBe(CONNECTION_WINDOW);
    w.clear();
    expect(w.held).toBe(0);
  });
});
