import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import { DeadlineWheel } from '../rpc/deadlines.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Kind, type Message, type NodeMeta } from '../wire/messages.js';
import { UNKNOWN as UNKNOWN_METHOD } from './metrics.js';
import { admit, nodeBusy, type Admitted, type CallRequest } from './admission.js';
import { Broadcast } from './broadcast.js';
import type { NodeDirectory } from './directory.js';
import type { LoginFailures } from './limits.js';
import type { CallerLimits, CallerOutput, CallObserver, CallSink, NodeRoute, RoutedCall } from './contracts.js';
import type { CallerAccess } from './permissions.js';
import type { Presence } from './presence.js';
import { RelayedCall } from './relayed-call.js';
import { Reassembly, ReassemblyBudget } from '../wire/streams.js';

/** The relay's one timer for every call's deadline; only caller links schedule calls on it. */
export function relayDeadlines(): DeadlineWheel<RelayedCall> {
  return new DeadlineWheel<RelayedCall>((call) => (call.caller as CallerLink).expire(call));
}

/** What a caller link is made of: who the caller is, where its answers go, and the relay's parts it routes with. */
export interface CallerLinkParts {
  /** Relay-unique id of the session. */
  session: string;
  out: CallerOutput;
  /** The caller's `ip:port`. */
  address: string;
  /** The caller's token name; null for an anonymous caller. */
  identity: string | null;
  directory: NodeDirectory;
  limits: CallerLimits;
  /** The relay's deadline wheel ({@link relayDeadlines}). */
  deadlines: DeadlineWheel<RelayedCall>;
  log: Logger;
  presence: Presence;
  observer?: CallObserver | undefined;
  logins?: LoginFailures | undefined;
}

/**
 * The relay's side of one caller connection, which is one session. It routes the caller's requests,
 * remembers which nodes saw the session, and cleans up on both sides when the caller leaves.
 */
export class CallerLink implements CallSink {
  private readonly inflight = new Map<number, RelayedCall | Broadcast>();
  private readonly nodesSeen = new Set<NodeRoute>();
  private readonly affinity = new Map<string, NodeRoute>();
  /** Streamed requests the relay needs whole (broadcasts), by caller id. */
  private readonly uploads: Reassembly<CallRequest>;
  /** Streamed results for a transport that cannot pass chunks on, by caller id. */
  private readonly downloads: Reassembly<RoutedCall>;
  /** What this connection's incomplete bodies may hold at the relay, together (uploads, downloads, broadcast results). */
  readonly budget: ReassemblyBudget;
  /** Set when the relay is draining: new requests fail at once with GOING_AWAY. */
  goingAway: string | undefined;

  readonly session: string;
  readonly out: CallerOutput;
  readonly address: string;
  readonly identity: string | null;
  private readonly directory: NodeDirectory;
  private readonly limits: CallerLimits;
  private readonly deadlines: DeadlineWheel<RelayedCall>;
  private readonly log: Logger;
  private readonly presence: Presence;
  private readonly observer: CallObserver | undefined;
  private readonly logins: LoginFailures | undefined;

  constructor(parts: CallerLinkParts) {
    this.session = parts.session;
    this.out = parts.out;
    this.address = parts.address;
    this.identity = parts.identity;
    this.directory = parts.directory;
    this.limits = parts.limits;
    this.deadlines = parts.deadlines;
    this.log = parts.log;
    this.presence = parts.presence;
    this.observer = parts.observer;
    this.logins = parts.logins;
    this.budget = new ReassemblyBudget(this.limits.maxReassembly, 'this caller connection');
    this.uploads = new Reassembly(this.limits.maxMessage, this.budget);
    this.downloads = new Reassembly(this.limits.maxMessage, this.budget);
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /** The caller's ids of its calls in flight: what to answer when a transport that cannot close is revoked. */
  get inFlightIds(): number[] {
    return [...this.inflight.keys()];
  }

  onMessage(m: Message): void {
    switch (m.kind) {
      case Kind.REQUEST:
        this.onRequest(m);
        return;
      case Kind.CHUNK:
        this.onChunk(m);
        return;
      case Kind.CANCEL: {
        this.uploads.drop(m.id);
        const call = this.inflight.get(m.id);
        if (!call) return;
        call.abandon(true);
        this.complete(call, new TunnelError(ErrorCode.CANCELLED, `${call.method} was cancelled by the caller`).toWire(), null);
        return;
      }
      default:
        this.log.debug({ session: this.session, kind: m.kind }, 'ignoring message not meant for the relay');
    }
  }

  /** Refuses a request before it reaches a node; a FORBIDDEN one is an audit line (the log carries the peer). */
  private reply(id: number, method: string, error: TunnelError): void {
    if (error.code === ErrorCode.FORBIDDEN) {
      this.log.warn({ session: this.session, identity: this.identity, method, reason: error.message }, 'refused call');
      this.observer?.refused?.(this, method, error.message);
    }
    this.observer?.ended(method, error.code, undefined);
    this.out.respond(id, error.toWire(), null);
  }

  private onRequest(m: CallRequest): void {
    const { id, method, meta } = m;
    // Read per call: a reload that changes this caller's call= applies to its next call.
    const access = this.directory.permissions.access(this.identity);
    const a = admit(m, {
      idInUse: this.inflight.has(id) || this.uploads.has(id),
      inFlight: this.inflight.size,
      uploads: this.uploads.size,
      goingAway: this.goingAway,
      limits: this.limits,
      logins: this.logins,
      access,
    });
    if (!a.ok) return this.reply(id, a.method, a.error);
    switch (a.to) {
      case 'upload':
        try {
          this.uploads.start(id, m.stream, m);
        } catch (err) {
          this.reply(id, method, err as TunnelError);
        }
        return;
      case 'relay':
        return this.presence.answer(this.out, this.session, id, method, m.params, meta, this.identity);
      case 'broadcast':
        return this.broadcast(id, method, a, access, m.params);
      case 'call':
        return this.call(m, a, access);
    }
  }

  /** Routes an admitted call to one node and forwards it. */
  private call(m: CallRequest, a: Admitted, access: CallerAccess | undefined): void {
    const { id, method, meta } = m;
    const { service, timeout } = a;
    // `affinity: false` lets a caller spread stateless calls over the fleet on one connection.
    const sticky = meta.affinity !== false;
    const previous = sticky ? this.affinity.get(service) : undefined;
    let node: NodeRoute;
    try {
      node = this.directory.route({ service, method: a.method, node: a.node, affinity: previous, where: a.where, selector: a.selector, access });
    } catch (err) {
      return this.reply(id, method, err as TunnelError);
    }
    const busy = nodeBusy(node, this.limits.maxNodeInFlight);
    if (busy) return this.reply(id, method, busy);
    // The session sticks to the node of its first call; a call sent elsewhere by node or where does
    // not move it. Only a sticky node that left or drains is replaced.
    if (sticky && (previous === undefined || !previous.available)) this.affinity.set(service, node);
    this.nodesSeen.add(node);
    const call = new RelayedCall(this, id, node, method, timeout);
    this.inflight.set(id, call);
    this.observer?.started(call);
    call.uploadLeft = m.stream;
    node.forward(call, m.params, this.nodeMeta(timeout), m.stream);
    this.deadlines.add(call, timeout);
  }

  /** What the node is told of the caller with each call. */
  private nodeMeta(timeout: number): NodeMeta {
    return { session: this.session, address: this.address, identity: this.identity, timeout };
  }

  /** A chunk of a streamed request's params: passed on to the node, or kept until the body is whole. */
  private onChunk(m: Extract<Message, { kind: 8 }>): void {
    // The caller's window moves on once the chunk is written to the node, or now if it goes nowhere.
    const done = () => this.out.acknowledge?.(m.id, m.bytes.length);
    if (this.uploads.has(m.id)) {
      done();
      let whole;
      try {
        whole = this.uploads.add(m.id, m.bytes, m.final);
      } catch (err) {
        return this.reply(m.id, UNKNOWN_METHOD, TunnelError.from(err));
      }
      if (whole) this.onRequest({ ...whole.owner, params: whole.body, stream: 0 });
      return;
    }
    const call = this.inflight.get(m.id);
    if (!(call instanceof RelayedCall)) return done(); // a late chunk of a cancelled or expired call
    call.uploadLeft -= m.bytes.length;
    if (call.uploadLeft < 0 || (m.final && call.uploadLeft !== 0)) {
      done();
      call.abandon(true);
      this.complete(call, new TunnelError(ErrorCode.BAD_REQUEST, `the chunks of ${call.method} do not add up to the announced stream length`).toWire(), null);
      return;
    }
    call.node.forwardChunk(call, m.final, m.bytes, done);
  }

  /** Counts a LOGIN_FAILED answer; past the limit the caller's connection is closed (4005). */
  private loginFailed(): void {
    const reason = this.logins?.failed();
    if (reason === undefined) return;
    this.log.warn({ session: this.session, address: this.address, reason }, 'closing caller after failed Logins');
    this.out.close?.(CloseCode.LOGIN_LIMIT, reason);
  }

  /** The node streams a large result: pass it on, or collect it for a transport that needs it whole. */
  streamStart(call: RoutedCall, length: number): void {
    if (this.inflight.get(call.callerId) !== call) return;
    if (length > this.limits.maxMessage) {
      call.abandon(true);
      const message = `the result of ${call.method} is ${length} bytes; this relay passes at most ${this.limits.maxMessage}`;
      this.complete(call, new TunnelError(ErrorCode.TOO_LARGE, message).toWire(), null);
      return;
    }
    call.streaming = true;
    if (this.out.streamStart) this.out.streamStart(call.callerId, length);
    else {
      try {
        this.downloads.start(call.callerId, length, call);
      } catch (err) {
        call.abandon(true);
        this.complete(call, TunnelError.from(err).toWire(), null);
      }
    }
  }

  streamChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, done: () => void): void {
    if (this.inflight.get(call.callerId) !== call) return done();
    if (this.out.streamChunk) {
      this.out.streamChunk(call.callerId, final, bytes, done);
      if (!final) return;
      this.inflight.delete(call.callerId);
      this.deadlines.remove(call as RelayedCall);
      this.observer?.ended(call.method, 'OK', call);
      return;
    }
    done();
    let whole;
    try {
      whole = this.downloads.add(call.callerId, bytes, final);
    } catch (err) {
      // Over the budget, or chunks that do not add up: the node need not send the rest.
      if (!final) call.abandon(true);
      this.complete(call, TunnelError.from(err).toWire(), null);
      return;
    }
    if (whole) this.complete(call, null, whole.body);
    else this.out.reassembled?.();
  }

  /**
   * Cancels the streams of this connection that stopped moving: broadcast uploads whose chunks stopped
   * coming, and results the relay reassembles whose node stopped sending. Called now and then by the relay.
   */
  expireIdleStreams(idleMs: number, now = Date.now()): void {
    for (const { id, owner } of this.uploads.expireIdle(idleMs, now)) {
      this.reply(
        id,
        owner.method,
        new TunnelError(ErrorCode.TIMEOUT, `the streamed params of ${owner.method} stopped arriving for ${idleMs} ms; the call was dropped`),
      );
    }
    for (const { owner: call } of this.downloads.expireIdle(idleMs, now)) {
      call.abandon(true);
      this.complete(
        call,
        new TunnelError(ErrorCode.TIMEOUT, `the result of ${call.method} stopped arriving from node ${call.node.name} for ${idleMs} ms`).toWire(),
        null,
      );
    }
    for (const call of this.inflight.values()) if (call instanceof Broadcast) call.expireIdle(idleMs, now);
  }

  private broadcast(id: number, method: string, a: Admitted, access: CallerAccess | undefined, params: Uint8Array): void {
    let nodes: NodeRoute[];
    try {
      nodes = this.directory.targets(a.service, a.method, a.where, access);
    } catch (err) {
      return this.reply(id, method, err as TunnelError);
    }
    for (const node of nodes) this.nodesSeen.add(node);
    const call = new Broadcast(this, id, method, a.timeout, nodes, this.limits.maxMessage, this.budget);
    this.inflight.set(id, call);
    this.observer?.started(call);
    this.log.debug({ session: this.session, method, nodes: nodes.length }, 'broadcast');
    call.start(params, this.nodeMeta(a.timeout));
  }

  /** The deadline passed: answer TIMEOUT and tell the node to stop. */
  expire(call: RelayedCall): void {
    call.abandon(true);
    this.complete(call, new TunnelError(ErrorCode.TIMEOUT, `${call.method} on node ${call.node.name} did not answer within ${call.timeout} ms`).toWire(), null);
  }

  /** Delivers the outcome of a call to the caller, once. */
  complete(call: RoutedCall | Broadcast, error: WireError | null, result: Uint8Array | null): void {
    if (this.inflight.get(call.callerId) !== call) return;
    this.inflight.delete(call.callerId);
    this.downloads.drop(call.callerId);
    if (call instanceof RelayedCall && call.streaming) this.out.dropStream?.(call.callerId);
    if (result !== null && result.length > this.limits.maxMessage) {
      error = new TunnelError(
        ErrorCode.TOO_LARGE,
        `the result of ${call.method} is ${result.length} bytes; this relay passes at most ${this.limits.maxMessage}`,
      ).toWire();
    }
    if (call instanceof RelayedCall) this.deadlines.remove(call);
    else call.abandon(false);
    this.observer?.ended(call.method, error ? error.code : 'OK', call);
    this.out.respond(call.callerId, error, result);
    if (error?.code === ErrorCode.LOGIN_FAILED) this.loginFailed();
  }

  /** The caller is gone: forget its calls and tell every node that saw it to drop the session. */
  onClose(): void {
    for (const call of this.inflight.values()) {
      call.abandon(false);
      if (call instanceof RelayedCall) this.deadlines.remove(call);
      this.observer?.ended(call.method, ErrorCode.CANCELLED, call);
    }
    this.presence.forget(this.out);
    this.inflight.clear();
    this.uploads.clear();
    this.downloads.clear();
    // SESSION_CLOSED also aborts the session's running handlers on the node, so no CANCEL is needed.
    for (const node of this.nodesSeen) node.closeSession(this.session);
    this.nodesSeen.clear();
    this.affinity.clear();
  }
}
