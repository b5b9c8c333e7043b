import { CHUNK_SIZE, STREAM_WINDOW } from '../../wire/streams.js';

interface Pending {
  bytes: number;
  onAcked: (() => void) | undefined;
}

/**
 * The chunks of one stream of one call between two relays, with the per-stream window of the
 * protocol: at most 1 MiB sent and not acknowledged by the other relay. A chunk passed on from a
 * caller or a node is acknowledged to it (`onAcked`) only once the other relay has acknowledged it in
 * turn, so the window holds end to end and no relay buffers more than one window per stream.
 */
export class HopStream {
  private readonly queue: Array<{ final: boolean; bytes: Uint8Array; onAcked: (() => void) | undefined }> = [];
  /** Sent and not acknowledged, oldest first. */
  private readonly inFlight: Pending[] = [];
  private outstanding = 0;
  private closed = false;

  constructor(private readonly publish: (final: boolean, bytes: Uint8Array) => void) {}

  /** Nothing queued and nothing owed. */
  get idle(): boolean {
    return this.queue.length === 0 && this.inFlight.length === 0;
  }

  /** Queues one chunk (at most 256 KiB); it leaves as the window allows. */
  push(final: boolean, bytes: Uint8Array, onAcked?: () => void): void {
    if (this.closed) {
      onAcked?.();
      return;
    }
    this.queue.push({ final, bytes, onAcked });
    this.pump();
  }

  /** Cuts a whole body into chunks and queues them. */
  pushBody(body: Uint8Array): void {
    for (let at = 0; at < body.length; at += CHUNK_SIZE) {
      this.push(at + CHUNK_SIZE >= body.length, body.subarray(at, at + CHUNK_SIZE));
    }
  }

  /** The other relay consumed `bytes`; false when that is more than it was sent (a broken peer). */
  ack(bytes: number): boolean {
    if (bytes > this.outstanding) return false;
    this.outstanding -= bytes;
    let left = bytes;
    while (left > 0 && this.inFlight.length > 0) {
      const head = this.inFlight[0]!;
      const take = Math.min(left, head.bytes);
      head.bytes -= take;
      left -= take;
      if (head.bytes === 0) {
        this.inFlight.shift();
        head.onAcked?.();
      }
    }
    // Empty chunks are acknowledged by nothing: release them once everything before them is.
    while (this.inFlight.length > 0 && this.inFlight[0]!.bytes === 0) this.inFlight.shift()!.onAcked?.();
    this.pump();
    return true;
  }

  /** The call is over: nothing more is sent, and whoever waits for an acknowledgement is released. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const waiting = [...this.inFlight, ...this.queue];
    this.inFlight.length = 0;
    this.queue.length = 0;
    for (const w of waiting) w.onAcked?.();
  }

  private pump(): void {
    while (!this.closed && this.queue.length > 0) {
      const next = this.queue[0]!;
      if (this.outstanding > 0 && this.outstanding + next.bytes.length > STREAM_WINDOW) return;
      this.queue.shift();
      this.outstanding += next.bytes.length;
      this.inFlight.push({ bytes: next.bytes.length, onAcked: next.onAcked });
      this.publish(next.final, next.bytes);
      if (next.bytes.length === 0 && this.inFlight.length === 1) {
        this.inFlight.shift();
        next.onAcked?.();
      }
    }
  }
}
