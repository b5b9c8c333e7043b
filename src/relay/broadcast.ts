import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import { encode } from '../wire/codec.js';
import type { NodeMeta } from '../wire/messages.js';
import type { WireBroadcastEntry } from '../wire/presence.js';
import type { BroadcastOwner, CallSink, NodeRoute, RoutedCall } from './contracts.js';
import { RelayedCall } from './relayed-call.js';
import { Reassembly, type ReassemblyBudget } from '../wire/streams.js';

/**
 * One caller request fanned out to every matching node. Each node gets an ordinary forwarded call;
 * the caller gets one answer once every node has answered, failed or passed the deadline: a list of
 * `{node, ms, error, result}` sorted by node name, each result still the node's own bytes.
 */
export class Broadcast implements CallSink {
  timer: NodeJS.Timeout | undefined;
  /** Monotonic, for the latency histogram (as RelayedCall.started). */
  readonly started = performance.now();
  /** Streamed results of the sub-calls, by sub-call index, charged to the caller connection's budget. */
  private readonly downloads: Reassembly<RoutedCall>;
  private readonly calls: RelayedCall[];
  private readonly entries: Array<WireBroadcastEntry | undefined>;
  private left: number;

  constructor(
    private readonly owner: BroadcastOwner,
    readonly callerId: number,
    readonly method: string,
    readonly timeout: number,
    nodes: readonly NodeRoute[],
    /** Largest result one node may send (the relay's maxMessage): bigger is TOO_LARGE for that node. */
    maxMessage: number,
    budget: ReassemblyBudget,
  ) {
    this.downloads = new Reassembly<RoutedCall>(maxMessage, budget);
    // A sub-call's callerId is its index in `calls`.
    this.calls = nodes.map((node, i) => new RelayedCall(this, i, node, method, timeout));
    this.entries = new Array<WireBroadcastEntry | undefined>(nodes.length);
    this.left = nodes.length;
  }

  get nodeCount(): number {
    return this.calls.length;
  }

  /** Forwards the call to every node at once and starts the shared deadline. */
  start(params: Uint8Array, meta: NodeMeta): void {
    for (const call of this.calls) call.node.forward(call, params, meta);
    this.timer = setTimeout(() => this.expire(), this.timeout);
  }

  complete(call: RoutedCall, error: WireError | null, result: Uint8Array | null): void {
    if (this.entries[call.callerId] !== undefined) return;
    this.entries[call.callerId] = { node: call.node.name, ms: Math.round(performance.now() - call.started), error, result: error ? null : result };
    if (--this.left === 0) this.finish();
  }

  streamStart(call: RoutedCall, length: number): void {
    if (this.entries[call.callerId] !== undefined) return;
    try {
      this.downloads.start(call.callerId, length, call);
    } catch (err) {
      this.fail(call, err);
    }
  }

  streamChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, done: () => void): void {
    done();
    if (this.entries[call.callerId] !== undefined) return;
    let whole;
    try {
      whole = this.downloads.add(call.callerId, bytes, final);
    } catch (err) {
      if (!final) this.fail(call, err);
      else this.complete(call, TunnelError.from(err).toWire(), null);
      return;
    }
    if (whole) this.complete(call, null, whole.body);
  }

  /** One node's result cannot be taken (too large, over the budget): that node is cancelled, its entry says why. */
  private fail(call: RoutedCall, err: unknown): void {
    (call.path ?? call.node).abandon(call, true);
    this.complete(call, TunnelError.from(err).toWire(), null);
  }

  /** Cancels the nodes whose streamed result stopped arriving for `idleMs`. */
  expireIdle(idleMs: number, now: number): void {
    for (const { owner: call } of this.downloads.expireIdle(idleMs, now)) {
      this.fail(call, new TunnelError(ErrorCode.TIMEOUT, `the result of node ${call.node.name} stopped arriving for ${idleMs} ms`));
    }
  }

  /** The caller cancelled or left: stop waiting for the nodes that have not answered. */
  abandon(tellNodes: boolean): void {
    clearTimeout(this.timer);
    this.downloads.clear();
    for (const call of this.calls) if (this.entries[call.callerId] === undefined) call.abandon(tellNodes);
  }

  /** The deadline passed: nodes that have not answered are cancelled and reported as TIMEOUT. */
  private expire(): void {
    for (const call of this.calls) {
      if (this.entries[call.callerId] !== undefined) continue;
      call.abandon(true);
      const error = new TunnelError(ErrorCode.TIMEOUT, `node ${call.node.name} did not answer within ${this.timeout} ms`).toWire();
      this.entries[call.callerId] = { node: call.node.name, ms: Math.round(performance.now() - call.started), error, result: null };
    }
    this.left = 0;
    this.finish();
  }

  private finish(): void {
    this.downloads.clear();
    const entries = (this.entries as WireBroadcastEntry[]).sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
    this.owner.complete(this, null, encode(entries));
  }
}
