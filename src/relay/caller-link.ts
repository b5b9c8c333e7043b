import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import type { Connection } from '../wire/connection.js';
import { Kind, response, type Message, type NodeMeta } from '../wire/messages.js';
import type { NodeDirectory } from './directory.js';
import type { LoginFailures } from './limits.js';
import type { NodeLink } from './node-link.js';
import { RelayedCall } from './relayed-call.js';

export interface CallerLimits {
  defaultTimeout: number;
  maxTimeout: number;
  maxMessage: number;
  maxCallerInFlight: number;
  maxNodeInFlight: number;
}

/**
 * The relay's side of one caller connection, which is one session. It routes the caller's requests,
 * remembers which nodes saw the session, and cleans up on both sides when the caller leaves.
 */
export class CallerLink {
  private readonly inflight = new Map<number, RelayedCall>();
  private readonly nodesSeen = new Set<NodeLink>();
  private readonly affinity = new Map<string, NodeLink>();

  constructor(
    readonly session: string,
    readonly conn: Connection,
    readonly address: string,
    readonly identity: string | null,
    private readonly directory: NodeDirectory,
    private readonly limits: CallerLimits,
    private readonly log: Logger,
    private readonly logins?: LoginFailures,
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

  private reply(id: number, error: TunnelError): void {
    this.conn.send(response(id, error.toWire(), null));
  }

  private onRequest(m: Extract<Message, { kind: 0 }>): void {
    const { id, method, meta } = m;
    if (this.inflight.has(id)) return this.reply(id, new TunnelError(ErrorCode.BAD_REQUEST, `request id ${id} is already in flight on this connection`));
    const dot = method.lastIndexOf('.');
    if (dot <= 0 || dot === method.length - 1) {
      return this.reply(id, new TunnelError(ErrorCode.BAD_REQUEST, `method "${method}" must be Service.Method`));
    }
    if (this.inflight.size >= this.limits.maxCallerInFlight) {
      return this.reply(id, new TunnelError(ErrorCode.OVERLOADED, `this connection already has ${this.inflight.size} calls in flight (the limit); wait for answers before sending more`));
    }
    if (m.params.length > this.limits.maxMessage) {
      return this.reply(id, new TunnelError(ErrorCode.TOO_LARGE, `params of ${method} are ${m.params.length} bytes; this relay accepts at most ${this.limits.maxMessage}`));
    }
    const refused = this.logins?.refuse(method);
    if (refused) return this.reply(id, refused);
    const service = method.slice(0, dot);
    let timeout = this.limits.defaultTimeout;
    if (meta.timeout !== undefined) {
      if (typeof meta.timeout !== 'number' || !(meta.timeout > 0)) {
        return this.reply(id, new TunnelError(ErrorCode.BAD_REQUEST, 'metadata timeout must be a positive number of milliseconds'));
      }
      timeout = Math.min(meta.timeout, this.limits.maxTimeout);
    }
    if (meta.node !== undefined && typeof meta.node !== 'string') {
      return this.reply(id, new TunnelError(ErrorCode.BAD_REQUEST, 'metadata node must be a string'));
    }
    let node: NodeLink;
    try {
      node = this.directory.route(service, method.slice(dot + 1), meta.node as string | undefined, this.affinity.get(service));
    } catch (err) {
      return this.reply(id, err as TunnelError);
    }
    if (node.inFlight >= this.limits.maxNodeInFlight) {
      return this.reply(id, new TunnelError(ErrorCode.OVERLOADED, `node ${node.name} already has ${node.inFlight} calls in flight (the limit); try again shortly`));
    }
    this.affinity.set(service, node);
    this.nodesSeen.add(node);
    const call = new RelayedCall(this, id, node, method, timeout);
    this.inflight.set(id, call);
    const nodeMeta: NodeMeta = { session: this.session, address: this.address, identity: this.identity, timeout };
    node.forward(call, m.params, nodeMeta);
    call.timer = setTimeout(() => this.expire(call), timeout);
  }

  private expire(call: RelayedCall): void {
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
    clearTimeout(call.timer);
    if (result !== null && result.length > this.limits.maxMessage) {
      error = new TunnelError(ErrorCode.TOO_LARGE, `the result of ${call.method} is ${result.length} bytes; this relay passes at most ${this.limits.maxMessage}`).toWire();
    }
    this.conn.send(response(call.callerId, error, result));
    if (error?.code === ErrorCode.LOGIN_FAILED && this.logins) {
      const reason = this.logins.failed();
      if (reason !== undefined) {
        this.log.warn({ session: this.session, address: this.address, reason }, 'closing caller after failed Logins');
        this.conn.close(CloseCode.LOGIN_LIMIT, reason);
      }
    }
  }

  /** The caller is gone: forget its calls and tell every node that saw it to drop the session. */
  onClose(): void {
    for (const call of this.inflight.values()) {
      clearTimeout(call.timer);
      call.node.abandon(call, false);
    }
    this.inflight.clear();
    // SESSION_CLOSED also aborts the session's running handlers on the node, so no CANCEL is needed.
    for (const node of this.nodesSeen) node.closeSession(this.session);
    this.nodesSeen.clear();
    this.affinity.clear();
  }
}
