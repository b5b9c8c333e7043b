import type { NodeMeta } from '../../wire/messages.js';
import type { NodeRoute, RoutedCall } from '../contracts.js';
import type { NodeLink } from '../node-link.js';
import { InCalls, type InCallsHost } from './calls-in.js';
import { OutCalls } from './calls-out.js';
import { NatsLink, type LinkHost } from './link.js';
import { checkClusterOptions, type ClusterOptions, type ClusterState } from './options.js';
import { Peers, type PeersHost } from './peers.js';
import type { RemoteRoute, RouteTransport } from './remote-route.js';

export type { ClusterOptions, ClusterState } from './options.js';
export { HEARTBEAT_INTERVAL, LOST_MEMORY, PEER_EXPIRY } from './peers.js';

/** What the cluster needs from the relay it belongs to: what each of its parts needs. */
export type ClusterHost = LinkHost & PeersHost & InCallsHost;

/**
 * This relay's membership of a cluster over NATS (docs/CLUSTER.md): it announces its nodes and learns
 * the others' (presence), carries calls from its callers to nodes on other relays (as remote routes
 * in the directory), and serves calls from other relays to its own nodes.
 *
 * Four parts, each depending only on those before it: the NATS link (link.ts), the other relays and
 * presence (peers.ts), the calls this relay sends (calls-out.ts) and those it serves (calls-in.ts).
 * The link hands each message to whichever part registered for it; presence tells the call parts
 * that a route, a relay or its connection went, through {@link PeerWatcher}, and never reaches into
 * their calls.
 */
export class Cluster implements RouteTransport {
  private readonly link: NatsLink;
  private readonly peers: Peers;
  private readonly out: OutCalls;
  private readonly in: InCalls;

  constructor(host: ClusterHost, opts: ClusterOptions) {
    checkClusterOptions(opts);
    const log = host.log.child({ cluster: opts.name ?? 'tunnel' });
    // The order matters: the parts hear the link's news (connected, lost) in the order they are made.
    this.link = new NatsLink(host, opts, log);
    this.peers = new Peers(host, this.link, log, this);
    this.out = new OutCalls(this.link, this.peers);
    this.in = new InCalls(host, this.link);
    // A relay gone: its routes' calls fail first, then the calls it sent us stop.
    this.peers.watch(this.out);
    this.peers.watch(this.in);
  }

  /** Random per process: this relay's inbox, and its epoch in presence. */
  get id(): string {
    return this.link.id;
  }

  /** How the cluster stands now: `degraded` without NATS, `split` while a known relay is unreachable. */
  get state(): ClusterState {
    return this.peers.state;
  }

  /** Relays that stopped answering without a goodbye, by name (forgotten after {@link LOST_MEMORY}). */
  get unreachable(): string[] {
    return this.peers.unreachable;
  }

  /** The `--advertise` URLs of the other relays that answer now: what a node is told in its welcome. */
  peerUrls(): string[] {
    return this.peers.peerUrls();
  }

  /** Connected to NATS now. */
  get connected(): boolean {
    return this.link.connected;
  }

  /** The other relays heard from, by name. */
  get peerNames(): string[] {
    return this.peers.peerNames;
  }

  /** What /metrics reports of the cluster (metrics.ts `RelayGauges.cluster`). */
  gauges(): { connected: boolean; peers: number; unreachable: number } {
    return { connected: this.connected, peers: this.peerNames.length, unreachable: this.unreachable.length };
  }

  /** Connects in the background, forever: a relay without NATS keeps serving its own nodes and callers. */
  start(): void {
    this.link.start();
    this.peers.start();
    this.out.start();
  }

  /** Says goodbye (other relays drop our nodes at once) and closes the NATS connection. */
  async stop(): Promise<void> {
    this.out.stop();
    this.peers.stop();
    this.in.stop();
    await this.link.stop(() => this.peers.bye());
  }

  /** Tells the cluster a local node joined, changed or left. */
  announce(event: 'join' | 'update' | 'leave', link: NodeLink): void {
    this.peers.announce(event, link);
  }

  /** Whether the node behind `route` (on another relay) still answers a ping. */
  probe(route: NodeRoute, timeout: number): Promise<boolean> {
    return this.peers.probe(route, timeout);
  }

  // ---- calls this relay sends (RouteTransport), for the remote routes ----

  reachable(relayId: string): boolean {
    return this.out.reachable(relayId);
  }

  open(route: RemoteRoute, call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream: number): void {
    this.out.open(route, call, params, meta, stream);
  }

  chunk(route: RemoteRoute, call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void {
    this.out.chunk(route, call, final, bytes, onSent);
  }

  abandon(route: RemoteRoute, call: RoutedCall, tellNode: boolean): void {
    this.out.abandon(route, call, tellNode);
  }

  closeSession(route: RemoteRoute, session: string): void {
    this.out.closeSession(route, session);
  }
}
