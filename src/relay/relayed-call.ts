import type { WireError } from '../errors.js';
import type { Expiring } from '../rpc/deadlines.js';
import type { NodeLink } from './node-link.js';

/** Where a forwarded call's outcome goes: the caller's link, or a broadcast collecting answers. */
export interface CallSink {
  complete(call: RelayedCall, error: WireError | null, result: Uint8Array | null): void;
  /** The node answers with a result of `length` bytes, in chunks that follow. */
  streamStart(call: RelayedCall, length: number): void;
  /**
   * One chunk of that result; after the final one the call is over. `done` acknowledges the chunk to
   * the node: call it once the chunk is passed on or no longer needed.
   */
  streamChunk(call: RelayedCall, final: boolean, bytes: Uint8Array, done: () => void): void;
}

/**
 * One call in transit through the relay: who asked (caller, callerId), who runs it (node, tunnelId),
 * and when the relay stops waiting. It sits in both links' tables until it is answered, expires,
 * is cancelled, or one side disconnects.
 */
export class RelayedCall implements Expiring {
  tunnelId = 0;
  deadlineSlot = 0;
  /** Bytes of params the caller has still to send (streamed requests). */
  uploadLeft = 0;
  /** The relay streams this call's params to the node itself (a whole body it cut into chunks). */
  uploading = false;
  /** The node answers with a stream, which the relay may be passing on. */
  streaming = false;
  /** Monotonic and finer than a millisecond, for the latency histogram. */
  readonly started = performance.now();

  constructor(
    readonly caller: CallSink,
    readonly callerId: number,
    readonly node: NodeLink,
    readonly method: string,
    readonly timeout: number,
  ) {}

  /** Forgets the call on its node, telling the node to stop it when `tellNode`. */
  abandon(tellNode: boolean): void {
    this.node.abandon(this, tellNode);
  }
}
