import { CHUNK_SIZE, CONNECTION_WINDOW, STREAM_WINDOW } from './streams.js';

/**
 * Per-stream flow control of one connection (docs/PROTOCOL.md, "Flow control"), both ways: the
 * chunks this side sends wait for the peer's windows ({@link OutgoingStreams}), and the chunks the
 * peer sends must fit in ours ({@link IncomingWindows}). No socket here: the connection hands
 * chunks to its socket and reports what the peer acknowledged.
 */

/** One chunk waiting for its stream's window: `onSent` runs once it is handed to the socket, or dropped. */
export interface QueuedChunk {
  final: boolean;
  bytes: Uint8Array;
  onSent: (() => void) | undefined;
}

/** A stream this side sends: chunks waiting for credit, and bytes sent that the peer has not acknowledged. */
export interface OutStream {
  readonly id: number;
  unacked: number;
  queue: QueuedChunk[];
  head: number;
  /** The final chunk was sent, or the stream was dropped: no more chunks will come. */
  done: boolean;
}

/** The streams this side sends, served round-robin within the stream and connection windows. */
export class OutgoingStreams {
  /** Streams by id, kept until the peer has acknowledged all their bytes. */
  private readonly out = new Map<number, OutStream>();
  /** Streams with chunks waiting. */
  private active: OutStream[] = [];
  private cursor = 0;
  private unackedTotal = 0;
  private heldBytes = 0;

  /** Chunk bytes sent on every stream and not yet acknowledged. */
  get unacked(): number {
    return this.unackedTotal;
  }

  /**
   * Bytes of queued chunks that have an `onSent` (chunks passed on for another peer): held for the
   * peer, so part of its backlog. Chunks of a body this side made itself are not: that body is in
   * memory whatever the peer does, and bounded by the message limit.
   */
  get held(): number {
    return this.heldBytes;
  }

  /** Some stream has chunks waiting (perhaps for credit). */
  get waiting(): boolean {
    return this.active.length > 0;
  }

  /** The stream `id`, made if new; an id used again while the peer still owes acknowledgements of its last stream keeps one record. */
  open(id: number): OutStream {
    let s = this.out.get(id);
    if (!s) {
      s = { id, unacked: 0, queue: [], head: 0, done: false };
      this.out.set(id, s);
    }
    s.done = false;
    return s;
  }

  enqueue(s: OutStream, final: boolean, bytes: Uint8Array, onSent: (() => void) | undefined): void {
    if (s.head === s.queue.length) this.active.push(s);
    s.queue.push({ final, bytes, onSent });
    if (onSent) this.heldBytes += bytes.length;
  }

  /** Queues `body` on stream `id` in chunks of at most CHUNK_SIZE, the last one final (one empty final chunk for an empty body). */
  enqueueBody(id: number, body: Uint8Array | Uint8Array[]): void {
    const stream = this.open(id);
    const pieces = Array.isArray(body) ? body : [body];
    let total = 0;
    for (const p of pieces) total += p.length;
    let sent = 0;
    let parts: Uint8Array[] = [];
    let size = 0;
    const cut = () => {
      sent += size;
      this.enqueue(stream, sent === total, parts.length === 1 ? parts[0]! : Buffer.concat(parts, size), undefined);
      parts = [];
      size = 0;
    };
    for (const piece of pieces) {
      for (let offset = 0; offset < piece.length;) {
        const take = Math.min(CHUNK_SIZE - size, piece.length - offset);
        parts.push(piece.subarray(offset, offset + take));
        size += take;
        offset += take;
        if (size === CHUNK_SIZE) cut();
      }
    }
    if (size > 0 || total === 0) cut();
  }

  /** The next stream in turn whose first queued chunk fits in its window and the connection's. */
  next(): OutStream | undefined {
    const n = this.active.length;
    for (let i = 0; i < n; i++) {
      const at = (this.cursor + i) % n;
      const s = this.active[at]!;
      const size = s.queue[s.head]!.bytes.length;
      // A stream with nothing outstanding may always send one chunk, so that no chunk size can stall it.
      if (s.unacked > 0 && s.unacked + size > STREAM_WINDOW) continue;
      if (this.unackedTotal > 0 && this.unackedTotal + size > CONNECTION_WINDOW) return undefined;
      this.cursor = at + 1;
      return s;
    }
    return undefined;
  }

  /** Takes the first chunk of `s` (from {@link next}) to be sent now: its bytes count as unacknowledged. */
  take(s: OutStream): QueuedChunk {
    const q = s.queue[s.head]!;
    s.queue[s.head++] = undefined as unknown as QueuedChunk;
    if (s.head === s.queue.length) {
      s.queue = [];
      s.head = 0;
      this.active.splice(this.active.indexOf(s), 1);
    }
    if (q.onSent) this.heldBytes -= q.bytes.length;
    s.unacked += q.bytes.length;
    this.unackedTotal += q.bytes.length;
    if (q.final) s.done = true;
    this.retire(s);
    return q;
  }

  /**
   * Stops sending stream `id`: returns the chunks still queued, whose `onSent` the caller runs.
   * Bytes already sent stay counted until the peer acknowledges them, as it must.
   */
  drop(id: number): QueuedChunk[] {
    const s = this.out.get(id);
    if (!s) return [];
    const dropped = s.queue.slice(s.head);
    if (dropped.length > 0) this.active.splice(this.active.indexOf(s), 1);
    s.queue = [];
    s.head = 0;
    s.done = true;
    for (const q of dropped) if (q.onSent) this.heldBytes -= q.bytes.length;
    this.retire(s);
    return dropped;
  }

  /**
   * The peer acknowledged `bytes` of stream `id`, or (version 1, `id` undefined) of the whole
   * connection, oldest streams first. Returns the protocol error when that is more than it was sent.
   */
  ack(id: number | undefined, bytes: number): string | undefined {
    if (bytes === 0) return undefined;
    if (id === undefined) return this.ackConnection(bytes);
    const s = this.out.get(id);
    if (!s) return undefined; // a stream we no longer track; nothing was owed
    if (bytes > s.unacked) return `acknowledgement of ${bytes} bytes of stream ${id}, which has ${s.unacked} bytes unacknowledged`;
    s.unacked -= bytes;
    this.unackedTotal -= bytes;
    this.retire(s);
    return undefined;
  }

  /** Forgets every stream (the connection closed); returns the chunks that will never be sent. */
  clear(): QueuedChunk[] {
    const dropped: QueuedChunk[] = [];
    for (const s of this.active) dropped.push(...s.queue.slice(s.head));
    this.active = [];
    this.out.clear();
    this.heldBytes = 0;
    return dropped;
  }

  /** Streams tracked (sending, or owed acknowledgements). */
  get size(): number {
    return this.out.size;
  }

  private ackConnection(bytes: number): string | undefined {
    if (bytes > this.unackedTotal) return `acknowledgement of ${bytes} bytes, but only ${this.unackedTotal} bytes of chunks are unacknowledged`;
    this.unackedTotal -= bytes;
    let left = bytes;
    for (const s of this.out.values()) {
      const take = Math.min(left, s.unacked);
      s.unacked -= take;
      left -= take;
      this.retire(s);
      if (left === 0) break;
    }
    return undefined;
  }

  /** Forgets a stream once it has nothing queued, will send nothing more, and the peer owes nothing. */
  private retire(s: OutStream): void {
    if (s.done && s.unacked === 0 && s.head === s.queue.length && this.out.get(s.id) === s) this.out.delete(s.id);
  }
}

/** Chunk bytes the peer sent and this side has not acknowledged yet: the peer may not exceed the windows. */
export class IncomingWindows {
  private readonly received = new Map<number, number>();
  private total = 0;

  /** Chunk bytes held over every stream. */
  get held(): number {
    return this.total;
  }

  /**
   * A chunk of `bytes` arrived on stream `id`: returns the protocol error if it does not fit.
   * `perStream` is false for version 1 peers, which know only the connection's window.
   */
  admit(id: number, bytes: number, perStream: boolean): string | undefined {
    if (bytes > CHUNK_SIZE) return `chunk of ${bytes} bytes; chunks are at most ${CHUNK_SIZE}`;
    const held = (this.received.get(id) ?? 0) + bytes;
    if (perStream && held > STREAM_WINDOW) return `stream ${id} sent ${held} bytes without acknowledgement; the stream window is ${STREAM_WINDOW}`;
    if (this.total + bytes > CONNECTION_WINDOW)
      return `${this.total + bytes} chunk bytes sent without acknowledgement; the connection window is ${CONNECTION_WINDOW}`;
    if (bytes > 0) this.received.set(id, held);
    this.total += bytes;
    return undefined;
  }

  /** This side consumed `bytes` of stream `id` and acknowledges them. */
  release(id: number, bytes: number): void {
    const held = this.received.get(id);
    if (held === undefined) return;
    const left = held - bytes;
    if (left > 0) this.received.set(id, left);
    else this.received.delete(id);
    this.total -= Math.min(bytes, held);
  }

  clear(): void {
    this.received.clear();
    this.total = 0;
  }
}
