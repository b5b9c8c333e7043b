import { ErrorCode, TunnelError, type WireError } from '../errors.js';
import { PendingTable } from '../rpc/pending.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import type { Connection } from '../wire/connection.js';
import { cancel, Kind, request, response, sessionClosed, type Message, type NodeMeta, type ServiceDescription } from '../wire/messages.js';
import type { NodeRoute, RoutedCall } from './contracts.js';
import { methodsIn, servesMethod, serviceTable } from './service-table.js';
import { STREAM_THRESHOLD } from '../wire/streams.js';
import { encodeRequest } from '../wire/call-envelope.js';

/** The relay's side of one node connection: what it serves and the calls in flight on it. A local route. */
export class NodeLink implements NodeRoute {
  readonly services: Map<string, Set<string>>;
  readonly connectedAt = new Date();
  readonly local = true;
  readonly relays: readonly string[];
  /** The node said GOAWAY, or a newer connection took its name: it leaves once its calls are answered. */
  goingAway = false;
  /** An operator drained it on this relay (operator.ts `drainNode`): it stays connected and takes no new calls until undrained. */
  private operatorDrained = false;
  closed = false;
  /** Called when it starts or stops draining (presence tells everyone). */
  onUpdate: (() => void) | undefined;
  served = 0;
  private readonly inflight = new PendingTable<RoutedCall>();

  constructor(
    readonly name: string,
    readonly conn: Connection,
    services: ServiceDescription,
    readonly labels: Record<string, string>,
    readonly address: string,
    private readonly log: Logger,
    /** The node process's random id from its hello (undefined for peers that send none). */
    readonly instance: string | undefined,
    /** This relay's name, for presence (`relays`). */
    relayName: string,
  ) {
    this.relays = [relayName];
    this.services = serviceTable(services);
  }

  /** Takes no new calls: going away, or drained by an operator. */
  get draining(): boolean {
    return this.goingAway || this.operatorDrained;
  }

  /** Drained by an operator on this relay ({@link drain}). */
  get drained(): boolean {
    return this.operatorDrained;
  }

  /**
   * An operator drains the node on this relay, or puts it back in rotation (`drained` false);
   * presence hears of it unless `quiet` (at its join, before anyone heard of the node). False when
   * nothing changed.
   */
  drain(drained: boolean, quiet = false): boolean {
    if (this.operatorDrained === drained) return false;
    this.operatorDrained = drained;
    if (!quiet) this.onUpdate?.();
    return true;
  }

  /** Closes the node's connection for an operator (1008, `reason`); its calls in flight fail NODE_LOST. */
  disconnect(reason: string): void {
    this.conn.close(CloseCode.POLICY, reason);
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /**
   * May take new calls: not draining, and its socket is still open. A socket the relay already knows
   * is closing is skipped here, so a call that was not sent yet goes to another node instead.
   */
  get available(): boolean {
    return !this.draining && !this.closed && this.conn.isOpen;
  }

  hasMethod(service: string, method: string): boolean {
    return servesMethod(this.services, service, method);
  }

  methods(service: string): string[] {
    return methodsIn(this.services, service);
  }

  /**
   * Sends a call to the node under a tunnel id unique on this connection. Large params go in chunks;
   * with `stream` > 0 the caller is still sending them, and {@link forwardChunk} passes each on.
   */
  forward(call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream = 0): void {
    call.path = this;
    call.tunnelId = this.inflight.add(call);
    if (stream > 0) this.conn.send(request(call.tunnelId, call.method, null, { ...meta, stream }));
    else if (params.length > STREAM_THRESHOLD) {
      call.uploading = true;
      this.conn.sendStream(request(call.tunnelId, call.method, null, { ...meta, stream: params.length }), call.tunnelId, params);
    } else this.conn.sendEncoded(encodeRequest(call.tunnelId, call.method, params, meta));
  }

  /** Passes on a chunk of a call's params as the caller sends it; `onSent` once it is written. */
  forwardChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void {
    if (this.inflight.get(call.tunnelId) === call) this.conn.sendChunk(call.tunnelId, final, bytes, onSent);
    else onSent();
  }

  /** Forgets a call (answered elsewhere, expired, or its caller left) and tells the node to stop it. */
  abandon(call: RoutedCall, tellNode: boolean): void {
    if (this.inflight.take(call.tunnelId) !== call) return;
    if (call.uploadLeft > 0 || call.uploading) this.conn.dropStream(call.tunnelId);
    if (tellNode) this.conn.send(cancel(call.tunnelId));
  }

  closeSession(session: string): void {
    if (!this.closed) this.conn.send(sessionClosed(session));
  }

  onMessage(m: Message): void {
    switch (m.kind) {
      case Kind.RESPONSE: {
        const call = this.inflight.take(m.id);
        if (!call) return; // answered after its deadline or after the caller left
        this.served++;
        call.caller.complete(call, m.error, m.result);
        return;
      }
      case Kind.RESPONSE_STREAM: {
        const call = this.inflight.get(m.id);
        if (call) call.caller.streamStart(call, m.length);
        return;
      }
      case Kind.CHUNK: {
        const done = () => this.conn.acknowledge(m.id, m.bytes.length);
        const call = m.final ? this.inflight.take(m.id) : this.inflight.get(m.id);
        if (!call) return done();
        if (m.final) this.served++;
        call.caller.streamChunk(call, m.final, m.bytes, done);
        return;
      }
      case Kind.GOAWAY:
        this.goingAway = true;
        this.log.info({ node: this.name, reason: m.reason, inFlight: this.inflight.size }, 'node is draining');
        this.onUpdate?.();
        return;
      case Kind.REQUEST:
        this.conn.send(response(m.id, { code: ErrorCode.BAD_REQUEST, message: 'nodes serve calls; they cannot make them on this connection' }, null));
        return;
      default:
        this.log.debug({ node: this.name, kind: m.kind }, 'ignoring message not meant for the relay');
    }
  }

  /** The node is gone: every call in flight on it fails at once; none is re-sent elsewhere. */
  onClose(): number {
    this.closed = true;
    const calls = this.inflight.drain();
    const error: WireError = new TunnelError(
      ErrorCode.NODE_LOST,
      `node ${this.name} disconnected while the call was in flight; it may or may not have run`,
    ).toWire();
    for (const call of calls) call.caller.complete(call, error, null);
    return calls.length;
  }
}
