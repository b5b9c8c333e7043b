import { ErrorCode, noNode, NoNodeReason, TunnelError, type WireError } from '../../errors.js';
import { DeadlineWheel } from '../../rpc/deadlines.js';
import type { NodeMeta } from '../../wire/messages.js';
import { STREAM_THRESHOLD } from '../../wire/streams.js';
import type { CallSink, RoutedCall } from '../contracts.js';
import type { NodeDirectory } from '../directory.js';
import type { NodeLink } from '../node-link.js';
import { RelayedCall } from '../relayed-call.js';
import { HopStream } from './hop-stream.js';
import { OPEN_BATCHES, type ClusterLink } from './link.js';
import { ClusterKind, type ClusterMessage } from './messages.js';
import type { PeerWatcher } from './peers.js';

/** What serving calls from other relays needs from the relay it belongs to. */
export interface InCallsHost {
  readonly relayName: string;
  readonly directory: NodeDirectory;
  /** Largest deadline the relay gives a call, ms; a call from another relay asking more is capped. */
  readonly maxTimeout: number;
  readonly maxNodeInFlight: number;
  readonly maxMessage: number;
}

/** A call another relay sent to a node of this relay. */
class ServedCall implements CallSink {
  call!: RelayedCall;
  down: HopStream | undefined;
  over = false;
  uploadLeft = 0;

  constructor(
    readonly calls: InCalls,
    readonly peerId: string,
    readonly callId: number,
    readonly link: NodeLink,
  ) {}

  get key(): string {
    return `${this.peerId}:${this.callId}`;
  }

  complete(_call: RoutedCall, error: WireError | null, result: Uint8Array | null): void {
    this.calls.servedComplete(this, error, result);
  }

  streamStart(_call: RoutedCall, length: number): void {
    this.calls.servedStreamStart(this, length);
  }

  streamChunk(_call: RoutedCall, final: boolean, bytes: Uint8Array, done: () => void): void {
    this.calls.servedChunk(this, final, bytes, done);
  }
}

/**
 * The calls other relays send to this relay's nodes: served until the node answers, the caller's
 * relay cancels, or presence says that relay went; stopped while NATS is away.
 */
export class InCalls implements PeerWatcher {
  /** Calls other relays sent us that were stopped while NATS was away: told NODE_LOST once it is back. */
  private abandonedWhileAway: Array<[string, number]> = [];
  private readonly served = new Map<string, ServedCall>();
  /** Sessions of other relays' callers that reached our nodes: closed when their relay goes. */
  private readonly peerSessions = new Map<string, Map<string, Set<NodeLink>>>();
  private readonly deadlines = new DeadlineWheel<RelayedCall>((call) => this.servedExpired(call));

  constructor(
    private readonly host: InCallsHost,
    private readonly link: ClusterLink,
  ) {
    link.onStatus((up) => (up ? this.backOnline() : this.offline()));
    link.onMessage('open', (m, from) => {
      // A relay that just joined may call before its first heartbeat reaches us: it is served all the same.
      if (m.kind === ClusterKind.OPEN) this.onOpen(m, from);
    });
    link.onMessage('s', (m, from) => this.onServedSide(m, from));
  }

  stop(): void {
    this.deadlines.clear();
  }

  /** Calls we served while away had their answers dropped: their relays hear NODE_LOST now, not at their deadline. */
  private backOnline(): void {
    const lost = new TunnelError(
      ErrorCode.NODE_LOST,
      'the relay of the node lost the cluster (NATS) while the call was in flight; it may or may not have run',
    ).toWire();
    for (const [peerId, callId] of this.abandonedWhileAway) this.toCaller(peerId, [ClusterKind.RESPONSE, callId, lost, null]);
    this.abandonedWhileAway = [];
  }

  /** The answers of calls other relays sent us cannot reach them: stop those calls, and say so once back. */
  private offline(): void {
    for (const served of [...this.served.values()]) {
      if (this.abandonedWhileAway.length < OPEN_BATCHES) this.abandonedWhileAway.push([served.peerId, served.callId]);
      served.call.abandon(true);
      this.endServed(served);
    }
  }

  /** A relay is gone: the calls it sent us are cancelled, and its callers' sessions on our nodes closed. */
  peerGone(relayId: string): void {
    for (const served of [...this.served.values()]) {
      if (served.peerId !== relayId) continue;
      served.call.abandon(true);
      this.endServed(served);
    }
    const sessions = this.peerSessions.get(relayId);
    this.peerSessions.delete(relayId);
    for (const [session, links] of sessions ?? []) for (const link of links) link.closeSession(session);
  }

  private onOpen(m: Extract<ClusterMessage, { kind: 0 }>, from: string): void {
    const refuse = (error: TunnelError) => this.toCaller(from, [ClusterKind.RESPONSE, m.callId, error.toWire(), null]);
    const reject = (code: ErrorCode, message: string) => refuse(new TunnelError(code, message));
    const link = this.host.directory.local(m.node) as NodeLink | undefined;
    if (!link) return refuse(noNode(NoNodeReason.NODE_NOT_FOUND, `node ${m.node} is no longer attached to relay ${this.host.relayName}`));
    if (!link.available)
      return refuse(noNode(NoNodeReason.DRAINING, `node ${m.node} on relay ${this.host.relayName} is draining or disconnecting and takes no new calls`));
    if (!link.hasMethod(m.method.slice(0, m.method.lastIndexOf('.')), m.method.slice(m.method.lastIndexOf('.') + 1))) {
      return reject(ErrorCode.NO_METHOD, `node ${m.node} does not serve ${m.method}`);
    }
    if (link.inFlight >= this.host.maxNodeInFlight)
      return reject(ErrorCode.OVERLOADED, `node ${m.node} already has ${link.inFlight} calls in flight (the limit); try again shortly`);
    const key = `${from}:${m.callId}`;
    if (this.served.has(key)) return reject(ErrorCode.BAD_REQUEST, `call ${m.callId} is already in flight`);
    const meta = servedMeta(m.meta, this.host.maxTimeout);
    if (typeof meta === 'string') return reject(ErrorCode.BAD_REQUEST, meta);
    const stream = meta.stream ?? 0;
    if (stream > this.host.maxMessage || (m.params && m.params.length > this.host.maxMessage)) {
      return reject(ErrorCode.TOO_LARGE, `params of ${m.method} are over this relay's limit of ${this.host.maxMessage} bytes`);
    }
    if (stream === 0 && m.params === null) return reject(ErrorCode.BAD_REQUEST, 'open without params needs meta.stream');
    const served = new ServedCall(this, from, m.callId, link);
    served.call = new RelayedCall(served, m.callId, link, m.method, meta.timeout);
    served.uploadLeft = stream;
    this.served.set(key, served);
    this.trackSession(from, meta.session, link);
    const nodeMeta: NodeMeta = { session: meta.session, address: meta.address, identity: meta.identity, timeout: meta.timeout };
    link.forward(served.call, m.params ?? EMPTY, nodeMeta, stream);
    this.deadlines.add(served.call, meta.timeout);
  }

  private trackSession(peerId: string, session: string, link: NodeLink): void {
    let sessions = this.peerSessions.get(peerId);
    if (!sessions) {
      sessions = new Map();
      this.peerSessions.set(peerId, sessions);
    }
    let links = sessions.get(session);
    if (!links) {
      links = new Set();
      sessions.set(session, links);
    }
    links.add(link);
  }

  private onServedSide(m: ClusterMessage, from: string): void {
    switch (m.kind) {
      case ClusterKind.CHUNK: {
        const served = this.served.get(`${from}:${m.callId}`);
        const ack = () => this.toCaller(from, [ClusterKind.ACK, m.callId, m.bytes.length]);
        if (!served || served.over) return ack();
        served.uploadLeft -= m.bytes.length;
        if (served.uploadLeft < 0 || (m.final && served.uploadLeft !== 0)) {
          ack();
          served.call.abandon(true);
          this.servedComplete(
            served,
            new TunnelError(ErrorCode.BAD_REQUEST, `the chunks of ${served.call.method} do not add up to the announced stream length`).toWire(),
            null,
          );
          return;
        }
        served.link.forwardChunk(served.call, m.final, m.bytes, ack);
        return;
      }
      case ClusterKind.ACK: {
        const served = this.served.get(`${from}:${m.callId}`);
        if (!served?.down) return;
        if (!served.down.ack(m.bytes)) this.link.warnOnce(`ack:${from}`, { from }, 'relay acknowledged more than it was sent; ignoring');
        // A finished result stream is forgotten once its last chunk is acknowledged.
        if (served.over && served.down.idle) this.endServed(served);
        return;
      }
      case ClusterKind.CANCEL: {
        const served = this.served.get(`${from}:${m.callId}`);
        if (!served) return;
        served.call.abandon(true);
        this.endServed(served);
        return;
      }
      case ClusterKind.SESSION_CLOSED: {
        const link = this.host.directory.local(m.node) as NodeLink | undefined;
        link?.closeSession(m.session);
        this.peerSessions.get(from)?.delete(m.session);
      }
    }
  }

  /** @internal The node answered a served call. */
  servedComplete(served: ServedCall, error: WireError | null, result: Uint8Array | null): void {
    if (served.over) return;
    served.over = true;
    this.deadlines.remove(served.call);
    if (!error && result !== null && result.length > STREAM_THRESHOLD) {
      // A node that answered whole with a large body: it crosses NATS in chunks, like any other.
      this.toCaller(served.peerId, [ClusterKind.RESPONSE_STREAM, served.callId, result.length]);
      served.down = this.downStream(served);
      served.down.pushBody(result);
      return;
    }
    this.toCaller(served.peerId, [ClusterKind.RESPONSE, served.callId, error, error ? null : result]);
    this.endServed(served);
  }

  /** @internal */
  servedStreamStart(served: ServedCall, length: number): void {
    if (served.over) return;
    this.toCaller(served.peerId, [ClusterKind.RESPONSE_STREAM, served.callId, length]);
    served.down = this.downStream(served);
  }

  /** @internal A chunk of a served call's result: the node is acknowledged once the caller's relay acknowledges it. */
  servedChunk(served: ServedCall, final: boolean, bytes: Uint8Array, done: () => void): void {
    if (!served.down) return done();
    served.down.push(final, bytes, done);
    if (final) {
      served.over = true;
      this.deadlines.remove(served.call);
    }
  }

  /** A result stream stays until its last chunk is acknowledged, or the caller's relay cancels or goes. */
  private downStream(served: ServedCall): HopStream {
    return new HopStream((final, bytes) => this.toCaller(served.peerId, [ClusterKind.CHUNK, served.callId, final, bytes]));
  }

  private endServed(served: ServedCall): void {
    served.over = true;
    served.down?.close();
    this.deadlines.remove(served.call);
    if (this.served.get(served.key) === served) this.served.delete(served.key);
  }

  private servedExpired(call: RelayedCall): void {
    const served = call.caller as ServedCall;
    call.abandon(true);
    this.servedComplete(
      served,
      new TunnelError(ErrorCode.TIMEOUT, `${call.method} on node ${served.link.name} did not answer within ${call.timeout} ms`).toWire(),
      null,
    );
  }

  /** To the relay that made the call (about its call): `.m`. */
  private toCaller(relayId: string, message: unknown[]): void {
    this.link.send(relayId, 'm', message);
  }
}

const EMPTY = new Uint8Array(0);

/** The metadata of a call from another relay, checked as a node would check the relay's. */
function servedMeta(meta: Record<string, unknown>, maxTimeout: number): (NodeMeta & { stream?: number }) | string {
  const { session, address, identity, timeout, stream } = meta;
  if (typeof session !== 'string' || session.length === 0 || session.length > 256) return 'meta.session must be a string';
  if (typeof address !== 'string' || address.length > 128) return 'meta.address must be a string';
  if (identity !== null && identity !== undefined && (typeof identity !== 'string' || identity.length > 256)) return 'meta.identity must be a string or nil';
  if (typeof timeout !== 'number' || !(timeout > 0)) return 'meta.timeout must be a positive number';
  if (stream !== undefined && (typeof stream !== 'number' || !Number.isSafeInteger(stream) || stream <= 0)) return 'meta.stream must be a positive integer';
  const out: NodeMeta & { stream?: number } = {
    session,
    address,
    identity: (identity as string | null | undefined) ?? null,
    timeout: Math.min(timeout, maxTimeout),
  };
  if (stream !== undefined) out.stream = stream as number;
  return out;
}
