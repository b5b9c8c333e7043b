import type { Expiring } from '../rpc/deadlines.js';
import type { CallSink, NodeRoute, RoutedCall } from './contracts.js';

/**
 * One call in transit through the relay: who asked (caller, callerId), who runs it (node, and the
 * route that carries it, with its id there), and when the relay stops waiting. It sits in the
 * caller's and the route's tables until it is answered, expires, is cancelled, or one side leaves.
 */
export class RelayedCall implements RoutedCall, Expiring {
  tunnelId = 0;
  deadlineSlot = 0;
  uploadLeft = 0;
  uploading = false;
  streaming = false;
  path: NodeRoute | undefined;
  /** Monotonic and finer than a millisecond, for the latency histogram. */
  readonly started = performance.now();

  constructor(
    readonly caller: CallSink,
    readonly callerId: number,
    readonly node: NodeRoute,
    readonly method: string,
    readonly timeout: number,
  ) {}

  /** Forgets the call on its route, telling the node to stop it when `tellNode`. */
  abandon(tellNode: boolean): void {
    (this.path ?? this.node).abandon(this, tellNode);
  }
}
