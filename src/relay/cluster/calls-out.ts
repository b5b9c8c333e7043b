import { ErrorCode, noNode, NoNodeReason, TunnelError } from '../../errors.js';
import { PendingTable } from '../../rpc/pending.js';
import type { NodeMeta } from '../../wire/messages.js';
import { STREAM_THRESHOLD } from '../../wire/streams.js';
import type { RoutedCall } from '../contracts.js';
import { HopStream } from './hop-stream.js';
import type { ClusterLink } from './link.js';
import { ClusterKind, type ClusterMessage } from './messages.js';
import type { PeerWatcher } from './peers.js';
import type { RemoteRoute, RouteTransport } from './remote-route.js';

/**
 * How often a relay with calls in flight through another relay asks NATS whether that relay is still
 * there, ms: a relay that died is then known within this, not at its heartbeat expiry.
 */
export const PING_INTERVAL = 250;

/** What the calls this relay sends need to know of the relay they go to. */
export interface PeerView {
  /** The other relay is reachable now (NATS connected, its heartbeats arriving, not suspect). */
  reachable(relayId: string): boolean;
  /** Its NATS connection count as last heard (RelayStamp.link), 0 when unknown. */
  linkOf(relayId: string): number;
  /** NATS said nobody listens on its inbox: not used until it is heard from again. */
  suspect(relayId: string): void;
  /** The relay as known now, as a handle for {@link gone}; undefined when it is not known. */
  known(relayId: string): object | undefined;
  /** NATS says it is gone (a ping found no responders): it goes now, not at heartbeat expiry; a stale handle does nothing. */
  gone(peer: object, why: string): void;
}

/** A call this relay sent to another one: the caller's call, the route, its params stream. */
interface OutCall {
  call: RoutedCall;
  route: RemoteRoute;
  up: HopStream | undefined;
  /** What it takes to send the call again by another route while it was not delivered (whole params only). */
  resend: { params: Uint8Array; meta: NodeMeta } | undefined;
  /** The node's relay's NATS connection count when the call was sent (RelayStamp.link). */
  peerLink: number;
}

/**
 * The calls this relay's callers send to nodes on other relays: their opens, params chunks, cancels,
 * and what comes back. Presence tells it when a route, a relay or its connection went.
 */
export class OutCalls implements RouteTransport, PeerWatcher {
  private readonly outCalls = new PendingTable<OutCall>();
  private pingTimer: NodeJS.Timeout | undefined;
  private readonly pinging = new Set<string>();

  constructor(
    private readonly link: ClusterLink,
    private readonly peers: PeerView,
  ) {
    link.onStatus((up) => {
      // Answers to calls sent to other relays may be lost with the connection: fail them now, once.
      if (!up) this.failOutCalls(() => true, 'the connection to the cluster (NATS) was lost while the call was in flight; it may or may not have run');
    });
    link.onMessage('m', (m, from) => this.onCallerSide(m, from));
    link.onUndelivered((ids) => {
      for (const callId of ids) this.undelivered(callId);
    });
  }

  start(): void {
    this.pingTimer = setInterval(() => this.pingBusyPeers(), PING_INTERVAL);
    this.pingTimer.unref();
  }

  stop(): void {
    clearInterval(this.pingTimer);
  }

  reachable(relayId: string): boolean {
    return this.peers.reachable(relayId);
  }

  open(route: RemoteRoute, call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream: number): void {
    const out: OutCall = {
      call,
      route,
      up: undefined,
      resend: stream === 0 && params.length <= STREAM_THRESHOLD ? { params, meta } : undefined,
      peerLink: this.peers.linkOf(route.relayId),
    };
    const callId = this.outCalls.add(out);
    call.tunnelId = callId;
    route.inFlight++;
    if (!this.reachable(route.relayId)) {
      this.finishOut(callId);
      call.caller.complete(
        call,
        noNode(NoNodeReason.RELAY_UNREACHABLE, `relay ${route.relayName} of node ${route.name} is not reachable; the call was not sent`).toWire(),
        null,
      );
      return;
    }
    const whole = stream === 0 && params.length > STREAM_THRESHOLD;
    const length = whole ? params.length : stream;
    if (length > 0) {
      call.uploading = whole;
      out.up = new HopStream((final, bytes) => this.toServer(route.relayId, [ClusterKind.CHUNK, callId, final, bytes]));
    }
    const body = length > 0 ? null : params;
    this.link.send(route.relayId, 'open', [ClusterKind.OPEN, callId, route.name, call.method, body, length > 0 ? { ...meta, stream: length } : meta], callId);
    if (whole) out.up!.pushBody(params);
  }

  chunk(route: RemoteRoute, call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void {
    const out = this.outCalls.get(call.tunnelId);
    if (!out || out.call !== call || !out.up) return onSent();
    void route;
    out.up.push(final, bytes, onSent);
  }

  abandon(route: RemoteRoute, call: RoutedCall, tellNode: boolean): void {
    const out = this.outCalls.get(call.tunnelId);
    if (!out || out.call !== call) return;
    this.finishOut(call.tunnelId);
    if (tellNode) this.toServer(route.relayId, [ClusterKind.CANCEL, call.tunnelId]);
  }

  closeSession(route: RemoteRoute, session: string): void {
    this.toServer(route.relayId, [ClusterKind.SESSION_CLOSED, session, route.name]);
  }

  private finishOut(callId: number): OutCall | undefined {
    const out = this.outCalls.take(callId);
    if (!out) return undefined;
    out.route.inFlight--;
    out.up?.close();
    return out;
  }

  /**
   * A relay we knew reconnected to NATS: what we sent it and what it sent us over its old connection
   * may have been lost with it (the open of a call, its answer), and it stopped the calls it was
   * serving for us when it lost NATS. Our calls sent to it before fail NODE_LOST now, not at their
   * deadline. (The calls it sent us are left to run: it failed them on its side when it lost NATS,
   * and their answers, if late, are ignored there; one it sent since is an ordinary call.)
   */
  peerReconnected(relayId: string, relayName: string, link: number): void {
    this.failOutCalls(
      (o) => o.route.relayId === relayId && o.peerLink < link,
      `relay ${relayName} lost its connection to the cluster (NATS) while the call was in flight; it may or may not have run`,
    );
  }

  routeRemoved(route: RemoteRoute, relayName: string): void {
    this.failOutCalls((o) => o.route === route, `node ${route.name} left relay ${relayName} while the call was in flight; it may or may not have run`);
  }

  /** The others have given up on us meanwhile and cancelled our calls on their nodes. */
  frozen(gapMs: number): void {
    this.failOutCalls(() => true, `this relay was frozen for ${gapMs} ms while the call was in flight on another relay; it may or may not have run`);
  }

  private failOutCalls(match: (o: OutCall) => boolean, message: string): void {
    const error = new TunnelError(ErrorCode.NODE_LOST, message).toWire();
    for (const o of [...this.outCalls.values()]) {
      if (!match(o)) continue;
      this.finishOut(o.call.tunnelId);
      o.call.caller.complete(o.call, error, null);
    }
  }

  /** What the node's relay sends back about a call of ours. */
  private onCallerSide(m: ClusterMessage, from: string): void {
    if (m.kind !== ClusterKind.RESPONSE && m.kind !== ClusterKind.RESPONSE_STREAM && m.kind !== ClusterKind.CHUNK && m.kind !== ClusterKind.ACK) return;
    const out = this.outCalls.get(m.callId);
    // Only the relay the call went to may answer it.
    if (!out || out.route.relayId !== from) {
      if (m.kind === ClusterKind.CHUNK) this.toServer(from, [ClusterKind.ACK, m.callId, m.bytes.length]);
      return;
    }
    const { call, route } = out;
    switch (m.kind) {
      case ClusterKind.RESPONSE:
        this.finishOut(m.callId);
        route.served++;
        call.caller.complete(call, m.error, m.result);
        return;
      case ClusterKind.RESPONSE_STREAM:
        call.streaming = true;
        call.caller.streamStart(call, m.length);
        return;
      case ClusterKind.CHUNK: {
        if (m.final) {
          this.finishOut(m.callId);
          route.served++;
        }
        const bytes = m.bytes.length;
        call.caller.streamChunk(call, m.final, m.bytes, () => this.toServer(from, [ClusterKind.ACK, m.callId, bytes]));
        return;
      }
      case ClusterKind.ACK:
        if (!out.up?.ack(m.bytes)) this.link.warnOnce(`ack:${from}`, { relay: route.relayName }, 'relay acknowledged more than it was sent; ignoring');
    }
  }

  private undelivered(callId: number): void {
    const out = this.outCalls.get(callId);
    if (!out) return;
    this.finishOut(callId);
    this.peers.suspect(out.route.relayId);
    // Nobody received the call, so sending it by another route of the same node keeps it at most once.
    const { call, resend } = out;
    if (resend && call.node !== out.route && call.node.available) {
      call.path = undefined;
      call.node.forward(call, resend.params, resend.meta, 0);
      return;
    }
    call.caller.complete(
      call,
      noNode(NoNodeReason.RELAY_UNREACHABLE, `relay ${out.route.relayName} of node ${out.route.name} is not reachable; the call was not delivered`).toWire(),
      null,
    );
  }

  /** To the relay that serves the call (about our call): `.s`. */
  private toServer(relayId: string, message: unknown[]): void {
    this.link.send(relayId, 's', message);
  }

  /**
   * Pings the relays our calls in flight went to. NATS answers "no responders" at once for a relay
   * whose connection it has seen close (SIGKILL, a dead machine's reset), so its calls fail NODE_LOST
   * within a ping instead of at heartbeat expiry; a relay that only answers slowly is left alone.
   */
  private pingBusyPeers(): void {
    if (!this.link.connected) return;
    const busy = new Set<string>();
    for (const o of this.outCalls.values()) busy.add(o.route.relayId);
    for (const id of busy) {
      const peer = this.peers.known(id);
      if (!peer || this.pinging.has(id)) continue;
      this.pinging.add(id);
      this.link.request(id, [ClusterKind.PING], PING_INTERVAL * 4, 'pong').then(
        () => this.pinging.delete(id),
        (err: Error & { isNoResponders?: () => boolean }) => {
          this.pinging.delete(id);
          const gone = typeof err.isNoResponders === 'function' ? err.isNoResponders() : /no responders/i.test(err.message);
          if (gone) this.peers.gone(peer, 'gone from NATS (no responders)');
        },
      );
    }
  }
}
