import type { Socket } from 'node:net';

/** Batches up to this many bytes are joined into one buffer; larger ones are written uncopied, corked. */
export const COPY_LIMIT = 64 * 1024;

/**
 * What one event-loop turn queues for a TCP socket, written together: one system call for many
 * small messages, and large pieces (params or results passed on as bytes) written as they are in
 * one writev with what surrounds them. Used by the relay's msgpack-rpc port and the node's `--forward`.
 */
export class TurnWriter {
  private queue: Uint8Array[] = [];
  /** Bytes queued and not yet handed to the socket. */
  queued = 0;
  private scheduled = false;

  constructor(
    private readonly socket: Socket,
    /** False once the owner has closed: what is queued then is not written. */
    private readonly isOpen: () => boolean,
    /** When the batch is written: `process.nextTick` or `setImmediate`. */
    private readonly schedule: (flush: () => void) => void,
  ) {}

  /** Queues `bytes`, and `more` right after them. */
  push(bytes: Uint8Array, more?: Uint8Array): void {
    this.queue.push(bytes);
    this.queued += bytes.length;
    if (more) {
      this.queue.push(more);
      this.queued += more.length;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(this.flush);
    }
  }

  /** Writes what is queued now. */
  readonly flush = (): void => {
    this.scheduled = false;
    const queue = this.queue;
    const bytes = this.queued;
    this.drop();
    if (queue.length === 0 || !this.isOpen()) return;
    if (queue.length === 1) this.socket.write(queue[0]!);
    else if (bytes <= COPY_LIMIT) this.socket.write(Buffer.concat(queue, bytes));
    else {
      this.socket.cork();
      for (const b of queue) this.socket.write(b);
      this.socket.uncork();
    }
  };

  /** Forgets what is queued (the socket is going away). */
  drop(): void {
    this.queue = [];
    this.queued = 0;
  }
}
