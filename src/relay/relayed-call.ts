import type { Expiring } from '../rpc/deadlines.js';
import type { CallerLink } from './caller-link.js';
import type { NodeLink } from './node-link.js';

/**
 * One call in transit through the relay: who asked (caller, callerId), who runs it (node, tunnelId),
 * and when the relay stops waiting. It sits in both links' tables until it is answered, expires,
 * is cancelled, or one side disconnects.
 */
export class RelayedCall implements Expiring {
  tunnelId = 0;
  deadlineSlot = 0;
  /** Monotonic and finer than a millisecond, for the latency histogram. */
  readonly started = performance.now();

  constructor(
    readonly caller: CallerLink,
    readonly callerId: number,
    readonly node: NodeLink,
    readonly method: string,
    readonly timeout: number,
  ) {}
}
