import type { Logger } from '../../util/logger.js';
import type { NodeRoute } from '../contracts.js';
import type { NodeDirectory } from '../directory.js';
import type { NodeLink } from '../node-link.js';
import type { ClusterLink, PresenceMessage } from './link.js';
import { ClusterKind, type ClusterMessage, type PresenceBody, type RelayStamp, type RemoteNodeInfo } from './messages.js';
import type { ClusterState } from './options.js';
import { digestOf, infoOf, infoOfRoute } from './node-info.js';
import { RemoteRoute, type RouteTransport } from './remote-route.js';

/** How often a relay announces itself, ms. */
export const HEARTBEAT_INTERVAL = 1_000;
/** A relay not heard from for this long is gone, with its nodes, ms. */
export const PEER_EXPIRY = 3_000;
/** How long a probe or a snapshot page may take to be answered, ms. */
export const REQUEST_TIMEOUT = 2_000;
/** Nodes per snapshot page: well below NATS's default max_payload of 1 MB. */
const SNAPSHOT_PAGE = 200;
/** Relay ids remembered as gone, so that their late messages never bring their nodes back. */
const TOMBSTONES = 1_000;
/**
 * A relay that stopped answering without saying goodbye is "unreachable" (the cluster is split) for
 * this long, unless it is heard again or a newer process takes its name; then it is forgotten, ms.
 */
export const LOST_MEMORY = 5 * 60_000;

/** What presence needs from the relay it belongs to. */
export interface PeersHost {
  readonly relayName: string;
  readonly directory: NodeDirectory;
  /** The relay's own node links. */
  localLinks(): Iterable<NodeLink>;
  /** The services of a node of another relay that this relay's own rules (`serve=`) let it serve. */
  allowedServices(node: string, services: string[]): string[];
  /** A route to a node of another relay appeared (`join` or `update` for presence) or went. */
  routeAdded(route: NodeRoute): void;
  routeRemoved(route: NodeRoute, why: 'left' | 'relay-gone' | 'conflict'): void;
  /** The local link lost a name conflict with a node of another relay: close it (4006). */
  yieldName(link: NodeLink, reason: string): void;
  /** For metrics: a presence event arrived `seconds` after it happened; the NATS connection went up or down. */
  presenceLag?(seconds: number): void;
  /** The URL nodes dial to reach this relay (`--advertise`), told to the other relays for their welcomes. */
  readonly url?: string;
}

/**
 * What the call parts hear from presence. They are told; presence never reaches into their calls.
 * Each runs in the order the watchers were added.
 */
export interface PeerWatcher {
  /** A route to a node of another relay went: the node left (`left`), or its relay went (`relay-gone`). */
  routeRemoved?(route: RemoteRoute, relayName: string): void;
  /** A relay is gone (it went quiet, said goodbye, or a newer process took its name), after its routes. */
  peerGone?(relayId: string): void;
  /** A relay we knew reconnected to NATS: its connection count (RelayStamp.link) grew to `link`. */
  peerReconnected?(relayId: string, relayName: string, link: number): void;
  /** This process was frozen for `gapMs` (its timers ran that late): the others gave up on us meanwhile. */
  frozen?(gapMs: number): void;
}

interface Peer {
  stamp: RelayStamp;
  lastSeen: number;
  /** Its `--advertise` URL, from its heartbeats. */
  url: string | undefined;
  routes: Map<string, RemoteRoute>;
  snapshotting: boolean;
  /** NATS said nobody listens on its inbox: it is not used until it is heard from again. */
  suspect: boolean;
  /** Our own NATS connection count when we last heard from it. */
  heardOnLink: number;
}

/**
 * The other relays of the cluster as this relay knows them: presence out (our nodes, heartbeats) and
 * in (their nodes as remote routes in the directory), lost relays and tombstones, expiry, snapshots
 * and probes.
 */
export class Peers {
  private readonly started = Date.now();
  private seq = 0;
  private readonly peers = new Map<string, Peer>();
  /** Ids that must stay gone: the relay said goodbye, or a newer process took its name. */
  private readonly tombstones = new Map<string, { why: 'bye' | 'replaced'; at: number }>();
  /** Relays that stopped answering without a goodbye: heard again, they come back with a fresh snapshot. */
  private readonly lost = new Map<string, { stamp: RelayStamp; at: number }>();
  /** When the expiry timer last ran: a long gap means this process was frozen, not its peers. */
  private lastTick = Date.now();
  private heartbeatSoon = false;
  /** Name conflicts being settled (a probe in flight), by relay id and node name. */
  private readonly conflicts = new Set<string>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly watchers: PeerWatcher[] = [];

  /** @param transport what the remote routes made here send their calls through */
  constructor(
    private readonly host: PeersHost,
    private readonly link: ClusterLink,
    private readonly log: Logger,
    private readonly transport: RouteTransport,
  ) {
    link.onStatus((up) => {
      if (!up) return;
      // Everyone learns our nodes again, and we theirs: announce now, ask every relay we know for its
      // list now (events may have been lost while we were away), heartbeats do the rest.
      for (const l of this.host.localLinks()) this.announce('join', l);
      this.heartbeat();
      this.refreshPeers();
    });
    link.onPresence((m) => this.onPresence(m));
    link.onRequest((m, answer) => this.onRequest(m, answer));
  }

  watch(watcher: PeerWatcher): void {
    this.watchers.push(watcher);
  }

  /** How the cluster stands now: `degraded` without NATS, `split` while a known relay is unreachable. */
  get state(): ClusterState {
    if (!this.link.connected) return 'degraded';
    return this.lost.size > 0 ? 'split' : 'connected';
  }

  /** Relays that stopped answering without a goodbye, by name (forgotten after {@link LOST_MEMORY}). */
  get unreachable(): string[] {
    return [...new Set([...this.lost.values()].map((l) => l.stamp.name))].sort();
  }

  /** The `--advertise` URLs of the other relays that answer now: what a node is told in its welcome. */
  peerUrls(): string[] {
    const urls = new Set<string>();
    for (const p of this.peers.values()) if (p.url !== undefined && !p.suspect && p.url !== this.host.url) urls.add(p.url);
    return [...urls].sort();
  }

  /** The other relays heard from, by name. */
  get peerNames(): string[] {
    return [...this.peers.values()].map((p) => p.stamp.name).sort();
  }

  start(): void {
    this.heartbeatTimer = setInterval(() => this.heartbeat(), HEARTBEAT_INTERVAL);
    this.heartbeatTimer.unref();
    this.expiryTimer = setInterval(() => this.expirePeers(), HEARTBEAT_INTERVAL / 2);
    this.expiryTimer.unref();
  }

  stop(): void {
    clearInterval(this.heartbeatTimer);
    clearInterval(this.expiryTimer);
  }

  reachable(relayId: string): boolean {
    const peer = this.peers.get(relayId);
    return this.link.connected && peer !== undefined && !peer.suspect;
  }

  linkOf(relayId: string): number {
    return this.peers.get(relayId)?.stamp.link ?? 0;
  }

  suspect(relayId: string): void {
    // That relay is gone (it died, or lost NATS): use it no more until it is heard from again.
    const peer = this.peers.get(relayId);
    if (peer && !peer.suspect) {
      peer.suspect = true;
      this.log.warn({ relay: peer.stamp.name }, 'relay does not answer on NATS; not using it until it is heard from again');
    }
  }

  known(relayId: string): object | undefined {
    return this.peers.get(relayId);
  }

  gone(peer: object, why: string): void {
    this.expirePeer(peer as Peer, why);
  }

  // ---- presence out ----

  /** Tells the cluster a local node joined, changed or left. */
  announce(event: 'join' | 'update' | 'leave', link: NodeLink): void {
    if (!this.link.connected) return;
    if (event === 'leave') this.publishPresence({ event, node: link.name, instance: link.instance ?? null });
    else this.publishPresence({ event, node: infoOf(link) });
  }

  /** Our goodbye: other relays drop our nodes at once. */
  bye(): void {
    this.publishPresence({ event: 'bye' });
  }

  private heartbeat(): void {
    if (!this.link.connected) return;
    const links = [...this.host.localLinks()];
    this.publishPresence({ event: 'heartbeat', count: links.length, digest: digestOf(links.map(infoOf)), url: this.host.url });
  }

  /** A relay joined or came back: it hears from us now rather than at our next heartbeat. */
  private heartbeatNow(): void {
    if (this.heartbeatSoon) return;
    this.heartbeatSoon = true;
    setImmediate(() => {
      this.heartbeatSoon = false;
      this.heartbeat();
    });
  }

  /**
   * After our own reconnect or a freeze of this process: every relay we still know gets a fresh
   * deadline and is asked for its whole list; one that does not answer expires as usual.
   */
  private refreshPeers(): void {
    const now = Date.now();
    for (const peer of this.peers.values()) {
      peer.lastSeen = now;
      peer.suspect = false;
      this.requestSnapshot(peer);
    }
  }

  private publishPresence(body: PresenceBody): void {
    const stamp: RelayStamp = { name: this.host.relayName, id: this.link.id, started: this.started, seq: ++this.seq, link: this.link.count };
    let payload: unknown;
    switch (body.event) {
      case 'join':
      case 'update':
        payload = body.node;
        break;
      case 'leave':
        payload = body.node;
        break;
      case 'heartbeat':
        payload = body.url !== undefined ? { count: body.count, digest: body.digest, url: body.url } : { count: body.count, digest: body.digest };
        break;
      case 'bye':
        payload = null;
        break;
    }
    this.link.publishPresence([ClusterKind.PRESENCE, stamp, body.event, payload]);
  }

  // ---- presence in ----

  private onPresence(m: PresenceMessage): void {
    const { relay, body } = m;
    if (relay.id === this.link.id) return;
    const now = Date.now();
    const tomb = this.tombstones.get(relay.id);
    let sameNameAlive = false;
    if (tomb) {
      // Gone for good after a goodbye. Replaced by a newer process of its name, it is still alive if it
      // goes on heartbeating: two relays run under one name. A heartbeat that proves an id alive wins.
      if (tomb.why === 'bye' || body.event !== 'heartbeat' || now - tomb.at < 2 * HEARTBEAT_INTERVAL) return;
      this.tombstones.delete(relay.id);
      sameNameAlive = true;
      this.link.warnOnce(`name:${relay.name}`, { relay: relay.name }, 'two live relay processes use one --relay-name; give each relay its own');
    }
    let peer = this.peers.get(relay.id);
    if (!peer) {
      // A restarted relay has a new id: the older process under that name is gone, with its nodes.
      if (!sameNameAlive) {
        for (const other of [...this.peers.values()]) {
          if (other.stamp.name !== relay.name) continue;
          if (other.stamp.started > relay.started) return this.bury(relay.id, 'replaced');
          this.expirePeer(other, 'restarted', 'replaced');
        }
        for (const [id, l] of [...this.lost]) {
          if (l.stamp.name !== relay.name || id === relay.id) continue;
          if (l.stamp.started > relay.started) return this.bury(relay.id, 'replaced');
          this.lost.delete(id);
          this.bury(id, 'replaced');
        }
      }
      if (body.event === 'bye') {
        this.lost.delete(relay.id);
        return this.bury(relay.id, 'bye');
      }
      const lost = this.lost.get(relay.id);
      this.lost.delete(relay.id);
      peer = { stamp: relay, lastSeen: now, url: undefined, routes: new Map(), snapshotting: false, suspect: false, heardOnLink: this.link.count };
      this.peers.set(relay.id, peer);
      if (lost) this.log.info({ relay: relay.name, rejoined: true, unreachableMs: now - lost.at }, 'relay joined the cluster');
      else this.log.info({ relay: relay.name }, 'relay joined the cluster');
      this.requestSnapshot(peer);
      this.heartbeatNow();
    } else if (relay.seq <= peer.stamp.seq) {
      return; // a late or repeated message
    } else if (relay.link !== undefined && relay.link > (peer.stamp.link ?? relay.link) && peer.heardOnLink === this.link.count) {
      // (Heard first since our own reconnect, it only tells us where it is now: we failed our calls
      // when we lost NATS, and those sent since went out after it was gone from the old server.)
      this.log.info({ relay: peer.stamp.name, link: relay.link }, 'relay reconnected to the cluster');
      for (const w of this.watchers) w.peerReconnected?.(peer.stamp.id, peer.stamp.name, relay.link);
    }
    peer.heardOnLink = this.link.count;
    peer.stamp = relay;
    peer.lastSeen = now;
    peer.suspect = false;
    switch (body.event) {
      case 'join':
      case 'update':
        this.host.presenceLag?.(Math.max(0, now - body.node.connectedAt) / 1_000);
        this.upsertRoute(peer, body.node);
        return;
      case 'leave': {
        const route = peer.routes.get(body.node);
        if (route) this.removeRoute(peer, route, 'left');
        return;
      }
      case 'heartbeat':
        peer.url = body.url;
        if (!peer.snapshotting && (body.count !== peer.routes.size || body.digest !== digestOf([...peer.routes.values()].map(infoOfRoute)))) {
          this.requestSnapshot(peer);
        }
        return;
      case 'bye':
        this.expirePeer(peer, 'said goodbye', 'bye');
    }
  }

  private upsertRoute(peer: Peer, info: RemoteNodeInfo): void {
    const allowed = this.host.allowedServices(info.name, Object.keys(info.services));
    if (allowed.length === 0) {
      this.link.warnOnce(
        `serve:${info.name}`,
        { node: info.name, relay: peer.stamp.name },
        "ignoring a node of another relay: this relay's serve= rules let it serve none of its services",
      );
      return;
    }
    if (allowed.length < Object.keys(info.services).length) info = { ...info, services: Object.fromEntries(allowed.map((s) => [s, info.services[s]!])) };
    const existing = peer.routes.get(info.name);
    if (existing && existing.instance === (info.instance ?? undefined) && existing.connectedAt.getTime() === info.connectedAt) {
      const wasDraining = existing.draining;
      existing.update(info);
      if (wasDraining !== existing.draining) this.host.routeAdded(existing);
      return;
    }
    if (existing) this.removeRoute(peer, existing, 'left');
    // One name, one live node, across the cluster: of two processes under one name the older keeps it.
    const local = this.host.directory.local(info.name) as NodeLink | undefined;
    if (local && !(local.instance !== undefined && local.instance === info.instance)) {
      const localOlder =
        local.connectedAt.getTime() < info.connectedAt || (local.connectedAt.getTime() === info.connectedAt && this.host.relayName < peer.stamp.name);
      if (localOlder) return; // the other relay will give way when it hears of ours
      return this.settleConflict(peer, info, local);
    }
    const route = new RemoteRoute(peer.stamp.id, peer.stamp.name, info, this.transport);
    peer.routes.set(info.name, route);
    this.host.directory.add(route);
    this.host.routeAdded(route);
  }

  /**
   * Another relay holds a node under the name of one of ours, connected earlier. Ours gives way only
   * once that relay, asked through NATS (sealed, so only a relay can answer), says its node answers a
   * ping: no announcement alone closes a live local node.
   */
  private settleConflict(peer: Peer, info: RemoteNodeInfo, local: NodeLink): void {
    const key = `${peer.stamp.id}:${info.name}`;
    if (this.conflicts.has(key)) return;
    this.conflicts.add(key);
    void this.probeNode(peer.stamp.id, info.name, REQUEST_TIMEOUT).then((alive) => {
      this.conflicts.delete(key);
      if (this.peers.get(peer.stamp.id) !== peer || this.host.directory.local(info.name) !== local) return;
      if (!alive) {
        this.link.warnOnce(
          `conflict:${key}`,
          { node: info.name, relay: peer.stamp.name },
          'another relay announces a node under the name of a local node, but it does not answer there; keeping the local node',
        );
        return;
      }
      this.host.yieldName(
        local,
        `name ${info.name} is held by a live node from ${info.address} on relay ${peer.stamp.name} since ${new Date(info.connectedAt).toISOString()}; give each node its own --name`,
      );
      this.upsertRoute(peer, info);
    });
  }

  private removeRoute(peer: Peer, route: RemoteRoute, why: 'left' | 'relay-gone'): void {
    peer.routes.delete(route.name);
    for (const w of this.watchers) w.routeRemoved?.(route, peer.stamp.name);
    if (this.host.directory.remove(route)) this.host.routeRemoved(route, why);
  }

  private requestSnapshot(peer: Peer): void {
    if (!this.link.connected || peer.snapshotting) return;
    peer.snapshotting = true;
    void this.fetchSnapshot(peer).finally(() => {
      peer.snapshotting = false;
    });
  }

  /** Reads a peer's whole node list, a page at a time, and makes our view of it the same. */
  private async fetchSnapshot(peer: Peer): Promise<void> {
    const nodes: RemoteNodeInfo[] = [];
    for (let offset = 0; ;) {
      let reply: ClusterMessage | undefined;
      try {
        reply = await this.link.request(peer.stamp.id, [ClusterKind.SNAPSHOT, offset], REQUEST_TIMEOUT, 'snapshot');
      } catch (err) {
        this.log.debug({ relay: peer.stamp.name, err: (err as Error).message }, 'snapshot request failed');
        return;
      }
      if (!reply || reply.kind !== ClusterKind.SNAPSHOT_PAGE) return;
      nodes.push(...reply.nodes);
      offset += reply.nodes.length;
      if (offset >= reply.total || reply.nodes.length === 0) break;
    }
    if (this.peers.get(peer.stamp.id) !== peer) return;
    const names = new Set(nodes.map((n) => n.name));
    for (const route of [...peer.routes.values()]) if (!names.has(route.name)) this.removeRoute(peer, route, 'left');
    for (const info of nodes) this.upsertRoute(peer, info);
  }

  // ---- expiry ----

  private expirePeers(): void {
    const now = Date.now();
    const gap = now - this.lastTick;
    this.lastTick = now;
    if (gap > PEER_EXPIRY) {
      // This process was frozen (a long GC pause, a stopped VM): the others did not go quiet, we did.
      this.log.warn({ frozenMs: gap }, 'this relay was frozen; asking every relay for its list again instead of dropping them');
      // The others have given up on us meanwhile and cancelled our calls on their nodes.
      for (const w of this.watchers) w.frozen?.(gap);
      this.refreshPeers();
      return;
    }
    for (const peer of [...this.peers.values()]) {
      if (now - peer.lastSeen > PEER_EXPIRY) this.expirePeer(peer, `no heartbeat for ${PEER_EXPIRY} ms`);
    }
    for (const [id, l] of this.lost) if (now - l.at > LOST_MEMORY) this.lost.delete(id);
  }

  /**
   * A relay is gone: its nodes leave, calls through it fail NODE_LOST, calls it sent us are cancelled.
   * Without `tomb` (it went quiet) it is only unreachable: heard again, it is admitted again with a
   * fresh snapshot. A tombstone (it said goodbye, or a newer process took its name) is for good.
   */
  private expirePeer(peer: Peer, why: string, tomb?: 'bye' | 'replaced'): void {
    if (this.peers.get(peer.stamp.id) !== peer) return;
    this.peers.delete(peer.stamp.id);
    if (tomb) this.bury(peer.stamp.id, tomb);
    else {
      this.lost.set(peer.stamp.id, { stamp: peer.stamp, at: Date.now() });
      if (this.lost.size > TOMBSTONES) this.lost.delete(this.lost.keys().next().value!);
    }
    this.log.warn({ relay: peer.stamp.name, reason: why, nodes: peer.routes.size }, 'relay left the cluster');
    for (const route of [...peer.routes.values()]) this.removeRoute(peer, route, 'relay-gone');
    for (const w of this.watchers) w.peerGone?.(peer.stamp.id);
  }

  private bury(id: string, why: 'bye' | 'replaced'): void {
    this.tombstones.set(id, { why, at: Date.now() });
    if (this.tombstones.size > TOMBSTONES) this.tombstones.delete(this.tombstones.keys().next().value!);
  }

  // ---- requests (probes, snapshots, pings) ----

  /** Whether the node behind `route` (on another relay) still answers a ping. */
  async probe(route: NodeRoute, timeout: number): Promise<boolean> {
    if (!(route instanceof RemoteRoute)) return false;
    return this.probeNode(route.relayId, route.name, timeout);
  }

  private async probeNode(relayId: string, node: string, timeout: number): Promise<boolean> {
    if (!this.link.connected) return false;
    try {
      const m = await this.link.request(relayId, [ClusterKind.PROBE, node], timeout + 500, 'probe reply');
      return m?.kind === ClusterKind.PROBE_REPLY && m.alive;
    } catch {
      return false;
    }
  }

  private onRequest(m: ClusterMessage, answer: (message: unknown[]) => void): void {
    if (m.kind === ClusterKind.PROBE) {
      const link = this.host.directory.local(m.node) as NodeLink | undefined;
      if (!link || link.draining) return answer([ClusterKind.PROBE_REPLY, false]);
      void link.conn.probe(REQUEST_TIMEOUT).then((alive) => answer([ClusterKind.PROBE_REPLY, alive]));
      return;
    }
    if (m.kind === ClusterKind.PING) return answer([ClusterKind.PONG]);
    if (m.kind === ClusterKind.SNAPSHOT) {
      const all = [...this.host.localLinks()].map(infoOf);
      answer([ClusterKind.SNAPSHOT_PAGE, all.length, all.slice(m.offset, m.offset + SNAPSHOT_PAGE)]);
    }
  }
}
