import type { Socket } from 'node:net';

/** Batches up to this many bytes are joined into one buffer; larger ones are written uncopied, corked. */
export const COPY_LIMIT = 64 * 1024;

/**
 * Largest batch of coalesced messages on a WebSocket connection, bytes. Small batches let the next
 * hop start on the first calls of a burst while this one still encodes the rest: on the benchmark,
 * 8 KiB gave ~20 % more relayed calls/s than 256 KiB with 256 calls in flight.
 */
export const COALESCE_LIMIT = 8 * 1024;

/**
 * What one event-loop turn queues, handed on together: one write for many small messages. Where
 * the batch goes is the owner's `write`: one WebSocket message (connection.ts), or one writev on a
 * TCP socket ({@link TurnWriter}).
 */
export class Coalescer<T extends Uint8Array = Uint8Array> {
  private queue: T[] = [];
  /** Bytes queued and not yet handed on. */
  queued = 0;
  private scheduled = false;

  constructor(
    /** Takes one batch (never empty): the pieces in order, and their total size. */
    private readonly write: (batch: T[], bytes: number) => void,
    /** When the batch is written: `process.nextTick` or `setImmediate`. */
    private readonly schedule: (flush: () => void) => void,
    /**
     * A batch never grows past this many bytes: what is queued is handed on first. Small batches let
     * the next hop start on the first messages of a burst while this one still encodes the rest.
     */
    private readonly limit = Infinity,
  ) {}

  /** Queues `bytes`, and `more` right after them. */
  push(bytes: T, more?: T): void {
    const size = bytes.length + (more ? more.length : 0);
    if (this.queued > 0 && this.queued + size > this.limit) this.flush();
    this.queue.push(bytes);
    if (more) this.queue.push(more);
    this.queued += size;
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(this.scheduledFlush);
    }
  }

  /** Writes what is queued now. */
  readonly flush = (): void => {
    if (this.queue.length === 0) return;
    const queue = this.queue;
    const bytes = this.queued;
    this.drop();
    this.write(queue, bytes);
  };

  /** Forgets what is queued (the socket is going away). */
  drop(): void {
    this.queue = [];
    this.queued = 0;
  }

  private readonly scheduledFlush = (): void => {
    this.scheduled = false;
    this.flush();
  };
}

/**
 * What one event-loop turn queues for a TCP socket, written together: one system call for many
 * small messages, and large pieces (params or results passed on as bytes) written as they are in
 * one writev with what surrounds them. Used by the relay's msgpack-rpc port and the node's `--forward`.
 */
export class TurnWriter extends Coalescer {
  constructor(
    socket: Socket,
    /** False once the owner has closed: what is queued then is not written. */
    isOpen: () => boolean,
    /** When the batch is written: `process.nextTick` or `setImmediate`. */
    schedule: (flush: () => void) => void,
  ) {
    super((queue, bytes) => {
      if (isOpen()) writeBatch(socket, queue, bytes);
    }, schedule);
  }
}

/** Small batches are copied into one buffer; large ones are written as they are, in one writev. */
function writeBatch(socket: Socket, queue: Uint8Array[], bytes: number): void {
  if (queue.length === 1) socket.write(queue[0]!);
  else if (bytes <= COPY_LIMIT) socket.write(Buffer.concat(queue, bytes));
  else {
    socket.cork();
    for (const b of queue) socket.write(b);
    socket.uncork();
  }
}

/**
 * A batch as WebSocket messages: one, joined, when it fits in `maxFrame`; else split between values
 * so that coalescing never builds a message bigger than the peer accepts (a value over it goes alone).
 */
export function inMessagesOf(queue: Buffer[], total: number, maxFrame: number, send: (message: Buffer) => void): void {
  if (total <= maxFrame) {
    send(queue.length === 1 ? queue[0]! : Buffer.concat(queue, total));
    return;
  }
  let batch: Buffer[] = [];
  let bytes = 0;
  for (const b of queue) {
    if (bytes > 0 && bytes + b.length > maxFrame) {
      send(Buffer.concat(batch, bytes));
      batch = [];
      bytes = 0;
    }
    batch.push(b);
    bytes += b.length;
  }
  send(Buffer.concat(batch, bytes));
}
