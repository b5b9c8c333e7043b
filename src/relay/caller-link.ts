import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { Kind, type Message, type NodeMeta } from '../wire/messages.js';
import type { NodeDirectory } from './directory.js';
import type { NodeLink } from './node-link.js';
import { RelayedCall } from './relayed-call.js';
import { DeadlineWheel } from '../rpc/deadlines.js';

/**
 * Where a caller's answers go: a WebSocket connection, one HTTP gateway request, or a connection on
 * the MessagePack-RPC port.
 */
export interface CallerOutput {
  respond(id: number, error: WireError | null, result: Uint8Array | null): void;
  /** Tells the caller the relay is draining, where its transport can say so. */
  goaway?(reason: string): void;
}

export interface CallerLimits {
  defaultTimeout: number;
  maxTimeout: number;
}

/** The relay's one timer for every call's deadline. */
export function relayDeadlines(): DeadlineWheel<RelayedCall> {
  return new DeadlineWheel<RelayedCall>((call) => call.caller.expire(call));
}

/** Sees every call begin and end, for metrics and for the relay's drain. */
export interface CallObserver {
  /** A call was routed to a node. */
  started(call: RelayedCall): void;
  /**
   * A call ended with `code` (`OK` on success). `call` is undefined when the request was refused
   * before it reached a node; then `method` is what the caller asked for.
   */
  ended(method: string, code: string, call: RelayedCall | undefined): void;
}

/**
 * The relay's side of one caller connection, which is one session. It routes the caller's requests,
 * remembers which nodes saw the session, and cleans up on both sides when the caller leaves.
 */
export class CallerLink {
  private readonly inflight = new Map<number, RelayedCall>();
  private readonly nodesSeen = new Set<NodeLink>();
  private readonly affinity = new Map<string, NodeLink>();
  /** Set when the relay is draining: new requests fail at once with GOING_AWAY. */
  goingAway: string | undefined;

  constructor(
    readonly session: string,
    readonly out: CallerOutput,
    readonly address: string,
    readonly identity: string | null,
    private readonly directory: NodeDirectory,
    private readonly limits: CallerLimits,
    private readonly deadlines: DeadlineWheel<RelayedCall>,
    private readonly log: Logger,
    private readonly observer?: CallObserver,
  ) {}

  get inFlight(): number {
    return this.inflight.size;
  }

  onMessage(m: Message): void {
    switch (m.kind) {
      case Kind.REQUEST:
        this.onRequest(m);
        return;
      case Kind.CANCEL: {
        const call = this.inflight.get(m.id);
        if (!call) return;
        call.node.abandon(call, true);
        this.complete(call, new TunnelError(ErrorCode.CANCELLED, `${call.method} was cancelled by the caller`).toWire(), null);
        return;
      }
      default:
        this.log.debug({ session: this.session, kind: m.kind }, 'ignoring message not meant for the relay');
    }
  }

  /** Refuses a request before it reaches a node. */
  private reply(id: number, method: string, error: TunnelError): void {
    this.observer?.ended(method, error.code, undefined);
    this.out.respond(id, error.toWire(), null);
  }

  private onRequest(m: Extract<Message, { kind: 0 }>): void {
    const { id, method, meta } = m;
    if (this.inflight.has(id)) return this.reply(id, method, new TunnelError(ErrorCode.BAD_REQUEST, `request id ${id} is already in flight on this connection`));
    if (this.goingAway !== undefined) {
      return this.reply(id, method, new TunnelError(ErrorCode.GOING_AWAY, `the relay is going away (${this.goingAway}) and takes no new calls; reconnect and call again`));
    }
    const dot = method.lastIndexOf('.');
    if (dot <= 0 || dot === method.length - 1) {
      return this.reply(id, method, new TunnelError(ErrorCode.BAD_REQUEST, `method "${method}" must be Service.Method`));
    }
    const service = method.slice(0, dot);
    let timeout = this.limits.defaultTimeout;
    if (meta.timeout !== undefined) {
      if (typeof meta.timeout !== 'number' || !(meta.timeout > 0)) {
        return this.reply(id, method, new TunnelError(ErrorCode.BAD_REQUEST, 'metadata timeout must be a positive number of milliseconds'));
      }
      timeout = Math.min(meta.timeout, this.limits.maxTimeout);
    }
    if (meta.node !== undefined && typeof meta.node !== 'string') {
      return this.reply(id, method, new TunnelError(ErrorCode.BAD_REQUEST, 'metadata node must be a string'));
    }
    let node: NodeLink;
    try {
      node = this.directory.route(service, method.slice(dot + 1), meta.node as string | undefined, this.affinity.get(service));
    } catch (err) {
      return this.reply(id, method, err as TunnelError);
    }
    this.affinity.set(service, node);
    this.nodesSeen.add(node);
    const call = new RelayedCall(this, id, node, method, timeout);
    this.inflight.set(id, call);
    this.observer?.started(call);
    const nodeMeta: NodeMeta = { session: this.session, address: this.address, identity: this.identity, timeout };
    node.forward(call, m.params, nodeMeta);
    this.deadlines.add(call, timeout);
  }

  /** The deadline passed: answer TIMEOUT and tell the node to stop. */
  expire(call: RelayedCall): void {
    call.node.abandon(call, true);
    this.complete(
      call,
      new TunnelError(ErrorCode.TIMEOUT, `${call.method} on node ${call.node.name} did not answer within ${call.timeout} ms`).toWire(),
      null,
    );
  }

  /** Delivers the outcome of a call to the caller, once. */
  complete(call: RelayedCall, error: WireError | null, result: Uint8Array | null): void {
    if (this.inflight.get(call.callerId) !== call) return;
    this.inflight.delete(call.callerId);
    this.deadlines.remove(call);
    this.observer?.ended(call.method, error ? error.code : 'OK', call);
    this.out.respond(call.callerId, error, result);
  }

  /** The caller is gone: forget its calls and tell every node that saw it to drop the session. */
  onClose(): void {
    for (const call of this.inflight.values()) {
      this.deadlines.remove(call);
      call.node.abandon(call, false);
      this.observer?.ended(call.method, ErrorCode.CANCELLED, call);
    }
    this.inflight.clear();
    // SESSION_CLOSED also aborts the session's running handlers on the node, so no CANCEL is needed.
    for (const node of this.nodesSeen) node.closeSession(this.session);
    this.nodesSeen.clear();
    this.affinity.clear();
  }
}
