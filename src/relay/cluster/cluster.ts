import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type Authenticator,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { ErrorCode, noNode, NoNodeReason, TunnelError, type WireError } from '../../errors.js';
import { encode } from '../../wire/codec.js';
import { DeadlineWheel } from '../../rpc/deadlines.js';
import { PendingTable } from '../../rpc/pending.js';
import type { Logger } from '../../util/logger.js';
import type { NodeMeta } from '../../wire/messages.js';
import { STREAM_THRESHOLD } from '../../wire/streams.js';
import type { CallSink, NodeRoute, RoutedCall } from '../contracts.js';
import type { NodeDirectory } from '../directory.js';
import type { NodeLink } from '../node-link.js';
import { RelayedCall } from '../relayed-call.js';
import { HopStream } from './hop-stream.js';
import {
  ClusterKind,
  ClusterMessageError,
  pack,
  unpack,
  unpackBatch,
  type ClusterMessage,
  type PresenceBody,
  type RelayStamp,
  type RemoteNodeInfo,
} from './messages.js';
import { RemoteRoute, type RouteTransport } from './remote-route.js';
import { checkClusterOptions, clusterServer, type ClusterOptions, type ClusterState } from './options.js';
import { ClusterSeal, OpenSeal, readClusterKey, SealError, type Seal, type SealFailure } from './seal.js';

export type { ClusterOptions, ClusterState } from './options.js';

/** How often a relay announces itself, ms. */
export const HEARTBEAT_INTERVAL = 1_000;
/** A relay not heard from for this long is gone, with its nodes, ms. */
export const PEER_EXPIRY = 3_000;
/** How long a probe or a snapshot page may take to be answered, ms. */
const REQUEST_TIMEOUT = 2_000;
/** Nodes per snapshot page: well below NATS's default max_payload of 1 MB. */
const SNAPSHOT_PAGE = 200;
/**
 * How often a relay with calls in flight through another relay asks NATS whether that relay is still
 * there, ms: a relay that died is then known within this, not at its heartbeat expiry.
 */
const PING_INTERVAL = 250;
/** Largest batch of messages for one relay in one NATS message, bytes (NATS's default max_payload is 1 MB). */
const BATCH_LIMIT = 512 * 1024;
/** Batches of opens remembered for a "no responders" answer, which comes at once if it comes. */
const OPEN_BATCHES = 4_096;
/** Relay ids remembered as gone, so that their late messages never bring their nodes back. */
const TOMBSTONES = 1_000;
/**
 * A relay that stopped answering without saying goodbye is "unreachable" (the cluster is split) for
 * this long, unless it is heard again or a newer process takes its name; then it is forgotten, ms.
 */
export const LOST_MEMORY = 5 * 60_000;
/** Refused cluster messages are logged once per reason in this long, with how many there were, ms. */
const REJECT_LOG_INTERVAL = 10_000;

/** What the cluster needs from the relay it belongs to. */
export interface ClusterHost {
  readonly relayName: string;
  readonly log: Logger;
  readonly directory: NodeDirectory;
  /** The relay's own node links. */
  localLinks(): Iterable<NodeLink>;
  /** Largest deadline the relay gives a call, ms; a call from another relay asking more is capped. */
  readonly maxTimeout: number;
  readonly maxNodeInFlight: number;
  readonly maxMessage: number;
  /** The services of a node of another relay that this relay's own rules (`serve=`) let it serve. */
  allowedServices(node: string, services: string[]): string[];
  /** A route to a node of another relay appeared (`join` or `update` for presence) or went. */
  routeAdded(route: NodeRoute): void;
  routeRemoved(route: NodeRoute, why: 'left' | 'relay-gone' | 'conflict'): void;
  /** The local link lost a name conflict with a node of another relay: close it (4006). */
  yieldName(link: NodeLink, reason: string): void;
  /** For metrics: a presence event arrived `seconds` after it happened; the NATS connection went up or down. */
  presenceLag?(seconds: number): void;
  /** For metrics: a message from NATS was refused (not sealed with the cluster key, replayed, stale, malformed). */
  rejected?(reason: SealFailure): void;
  /** The URL nodes dial to reach this relay (`--advertise`), told to the other relays for their welcomes. */
  readonly url?: string;
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

/** A call another relay sent to a node of this relay. */
class ServedCall implements CallSink {
  call!: RelayedCall;
  down: HopStream | undefined;
  over = false;
  uploadLeft = 0;

  constructor(
    readonly cluster: Cluster,
    readonly peerId: string,
    readonly callId: number,
    readonly link: NodeLink,
  ) {}

  get key(): string {
    return `${this.peerId}:${this.callId}`;
  }

  complete(_call: RoutedCall, error: WireError | null, result: Uint8Array | null): void {
    this.cluster.servedComplete(this, error, result);
  }

  streamStart(_call: RoutedCall, length: number): void {
    this.cluster.servedStreamStart(this, length);
  }

  streamChunk(_call: RoutedCall, final: boolean, bytes: Uint8Array, done: () => void): void {
    this.cluster.servedChunk(this, final, bytes, done);
  }
}

/**
 * This relay's membership of a cluster over NATS (docs/CLUSTER.md): it announces its nodes and learns
 * the others' (presence), carries calls from its callers to nodes on other relays (as remote routes
 * in the directory), and serves calls from other relays to its own nodes.
 */
export class Cluster implements RouteTransport {
  /** Random per process: this relay's inbox, and its epoch in presence. */
  readonly id = randomBytes(8).toString('hex');
  private readonly started = Date.now();
  private seq = 0;
  /** Our connections to NATS so far (RelayStamp.link): 1 on the first, one more at each reconnect. */
  private links = 0;
  private readonly prefix: string;
  private readonly servers: string[];
  private readonly log: Logger;
  private nc: NatsConnection | undefined;
  private connectedNow = false;
  private stopping = false;
  private readonly peers = new Map<string, Peer>();
  /** Ids that must stay gone: the relay said goodbye, or a newer process took its name. */
  private readonly tombstones = new Map<string, { why: 'bye' | 'replaced'; at: number }>();
  /** Relays that stopped answering without a goodbye: heard again, they come back with a fresh snapshot. */
  private readonly lost = new Map<string, { stamp: RelayStamp; at: number }>();
  private readonly seal: Seal;
  private readonly tokens = new Map<string, string>();
  private readonly inbox: string;
  /** In the reply subject of our batches of opens, so that only who saw them can answer "no responders". */
  private readonly batchSecret = randomBytes(12).toString('hex');
  private readonly idBytes: Uint8Array;
  private readonly rejectLog = new Map<SealFailure, { count: number; loggedAt: number }>();
  /** When the expiry timer last ran: a long gap means this process was frozen, not its peers. */
  private lastTick = Date.now();
  private heartbeatSoon = false;
  /** Calls other relays sent us that were stopped while NATS was away: told NODE_LOST once it is back. */
  private abandonedWhileAway: Array<[string, number]> = [];
  /** Name conflicts being settled (a probe in flight), by relay id and node name. */
  private readonly conflicts = new Set<string>();
  private readonly outCalls = new PendingTable<OutCall>();
  private readonly served = new Map<string, ServedCall>();
  /** Sessions of other relays' callers that reached our nodes: closed when their relay goes. */
  private readonly peerSessions = new Map<string, Map<string, Set<NodeLink>>>();
  private readonly deadlines = new DeadlineWheel<RelayedCall>((call) => this.servedExpired(call));
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private readonly pinging = new Set<string>();
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly badMessages = new Set<string>();
  /** Messages queued for other relays in this turn, by subject. */
  private readonly batches = new Map<string, { parts: Uint8Array[]; size: number; calls: number[] | undefined }>();
  private flushScheduled = false;
  private batchCounter = 0;
  /** The calls of recent batches of opens, by batch: NATS's "no responders" names the batch. */
  private readonly openBatches = new Map<number, number[]>();

  constructor(
    private readonly host: ClusterHost,
    private readonly opts: ClusterOptions,
  ) {
    checkClusterOptions(opts);
    this.servers = opts.servers.map(clusterServer);
    this.prefix = opts.name ?? 'tunnel';
    this.log = host.log.child({ cluster: this.prefix });
    if (opts.key !== undefined) {
      const { key, warning } = readClusterKey(opts.key);
      if (warning) this.log.warn(warning);
      this.seal = new ClusterSeal(key, this.prefix);
    } else {
      this.seal = new OpenSeal();
      this.log.warn(
        'cluster messages are neither encrypted nor authenticated (--cluster-insecure without --cluster-key): anyone who may publish on NATS can speak for a relay and read every call',
      );
    }
    this.inbox = `${this.prefix}.relay.${this.token(this.id)}.`;
    this.idBytes = encode(this.id);
  }

  /** How the cluster stands now: `degraded` without NATS, `split` while a known relay is unreachable. */
  get state(): ClusterState {
    if (!this.connectedNow) return 'degraded';
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

  /** The subject token of a relay: with a cluster key, an HMAC of its id, so that ids never travel in clear. */
  private token(relayId: string): string {
    let t = this.tokens.get(relayId);
    if (t === undefined) {
      t = this.seal.token(relayId);
      if (this.tokens.size > 4 * TOMBSTONES) this.tokens.clear();
      this.tokens.set(relayId, t);
    }
    return t;
  }

  /** Connected to NATS now. */
  get connected(): boolean {
    return this.connectedNow;
  }

  /** The other relays heard from, by name. */
  get peerNames(): string[] {
    return [...this.peers.values()].map((p) => p.stamp.name).sort();
  }

  /** Connects in the background, forever: a relay without NATS keeps serving its own nodes and callers. */
  start(): void {
    this.dial(0);
    this.heartbeatTimer = setInterval(() => this.heartbeat(), HEARTBEAT_INTERVAL);
    this.heartbeatTimer.unref();
    this.expiryTimer = setInterval(() => this.expirePeers(), HEARTBEAT_INTERVAL / 2);
    this.expiryTimer.unref();
    this.pingTimer = setInterval(() => this.pingBusyPeers(), PING_INTERVAL);
    this.pingTimer.unref();
  }

  /**
   * Connects. nats.js retries unreachable servers by itself; a refusal it gives up on (credentials
   * refused) is tried again here with backoff, so a fixed account or server brings the relay back.
   */
  private dial(attempt: number): void {
    if (this.stopping) return;
    const authenticator = this.authenticator();
    void connect({
      servers: this.servers,
      name: `tunnel-relay ${this.host.relayName}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      pingInterval: 5_000,
      maxPingOut: 2,
      // Replies to our requests come under the cluster's prefix too: one NATS permission covers everything.
      inboxPrefix: `${this.prefix}._INBOX`,
      ...(authenticator ? { authenticator } : {}),
      ...(this.opts.ca ? { tls: { caFile: this.opts.ca } } : {}),
    }).then(
      (nc) => this.onConnected(nc),
      (err: Error) => {
        const delayMs = Math.min(30_000, 1_000 * 2 ** Math.min(attempt, 5));
        this.log.error({ err: err.message, retryInMs: delayMs }, 'cannot connect to the cluster; serving local nodes and callers only');
        this.retryTimer = setTimeout(() => this.dial(attempt + 1), delayMs);
        this.retryTimer.unref();
      },
    );
  }

  /** Says goodbye (other relays drop our nodes at once) and closes the NATS connection. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    clearInterval(this.heartbeatTimer);
    clearInterval(this.expiryTimer);
    this.deadlines.clear();
    const nc = this.nc;
    if (!nc) return;
    if (this.connectedNow) {
      this.publishPresence({ event: 'bye' });
      await nc.flush().catch(() => undefined);
    }
    await nc.close().catch(() => undefined);
  }

  private authenticator(): Authenticator | undefined {
    const o = this.opts;
    if (o.creds !== undefined) return credsAuthenticator(readFileSync(o.creds));
    if (o.token !== undefined) return tokenAuthenticator(o.token);
    if (o.user !== undefined) return usernamePasswordAuthenticator(o.user, o.password);
    return undefined;
  }

  private onConnected(nc: NatsConnection): void {
    if (this.stopping) {
      void nc.close();
      return;
    }
    this.nc = nc;
    nc.subscribe(`${this.prefix}.presence`, {
      callback: (err, msg) => {
        if (!err) this.onPresenceMessage(msg);
      },
    });
    nc.subscribe(`${this.inbox}>`, {
      callback: (err, msg) => {
        if (!err) this.onInbox(msg);
      },
    });
    this.setConnected(true);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.setConnected(false);
        else if (s.type === 'reconnect') this.setConnected(true);
      }
    })().catch(() => undefined);
    void nc.closed().then(() => this.setConnected(false));
  }

  private setConnected(up: boolean): void {
    if (up === this.connectedNow) return;
    this.connectedNow = up;
    this.host.presenceLag?.(-1);
    if (up) {
      this.links++;
      this.log.info({ server: this.nc?.getServer(), secure: this.seal.secure }, 'connected to the cluster');
      // Everyone learns our nodes again, and we theirs: announce now, ask every relay we know for its
      // list now (events may have been lost while we were away), heartbeats do the rest.
      for (const link of this.host.localLinks()) this.announce('join', link);
      this.heartbeat();
      this.refreshPeers();
      // Calls we served while away had their answers dropped: their relays hear NODE_LOST now, not at their deadline.
      const lost = new TunnelError(
        ErrorCode.NODE_LOST,
        'the relay of the node lost the cluster (NATS) while the call was in flight; it may or may not have run',
      ).toWire();
      for (const [peerId, callId] of this.abandonedWhileAway) this.toCaller(peerId, [ClusterKind.RESPONSE, callId, lost, null]);
      this.abandonedWhileAway = [];
      return;
    }
    if (this.stopping) return;
    this.log.warn('lost the cluster (NATS); serving local nodes and callers only until it is back');
    // Answers to calls sent to other relays may be lost with the connection: fail them now, once.
    this.failOutCalls(() => true, 'the connection to the cluster (NATS) was lost while the call was in flight; it may or may not have run');
    // And the answers of calls other relays sent us cannot reach them: stop those calls, and say so once back.
    for (const served of [...this.served.values()]) {
      if (this.abandonedWhileAway.length < OPEN_BATCHES) this.abandonedWhileAway.push([served.peerId, served.callId]);
      served.call.abandon(true);
      this.endServed(served);
    }
  }

  // ---- presence ----

  /** Tells the cluster a local node joined, changed or left. */
  announce(event: 'join' | 'update' | 'leave', link: NodeLink): void {
    if (!this.connectedNow) return;
    if (event === 'leave') this.publishPresence({ event, node: link.name, instance: link.instance ?? null });
    else this.publishPresence({ event, node: infoOf(link) });
  }

  private heartbeat(): void {
    if (!this.connectedNow) return;
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
    const stamp: RelayStamp = { name: this.host.relayName, id: this.id, started: this.started, seq: ++this.seq, link: this.links };
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
    const subject = `${this.prefix}.presence`;
    this.publish(subject, this.seal.seal(subject, pack([ClusterKind.PRESENCE, stamp, body.event, payload])));
  }

  private onPresenceMessage(msg: Msg): void {
    if (this.seal.own(msg.data)) return;
    const m = this.parse(msg, 'presence');
    if (!m || m.kind !== ClusterKind.PRESENCE) return;
    const { relay, body } = m;
    if (relay.id === this.id) return;
    const now = Date.now();
    const tomb = this.tombstones.get(relay.id);
    let sameNameAlive = false;
    if (tomb) {
      // Gone for good after a goodbye. Replaced by a newer process of its name, it is still alive if it
      // goes on heartbeating: two relays run under one name. A heartbeat that proves an id alive wins.
      if (tomb.why === 'bye' || body.event !== 'heartbeat' || now - tomb.at < 2 * HEARTBEAT_INTERVAL) return;
      this.tombstones.delete(relay.id);
      sameNameAlive = true;
      this.warnOnce(`name:${relay.name}`, { relay: relay.name }, 'two live relay processes use one --relay-name; give each relay its own');
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
      peer = { stamp: relay, lastSeen: now, url: undefined, routes: new Map(), snapshotting: false, suspect: false, heardOnLink: this.links };
      this.peers.set(relay.id, peer);
      if (lost) this.log.info({ relay: relay.name, rejoined: true, unreachableMs: now - lost.at }, 'relay joined the cluster');
      else this.log.info({ relay: relay.name }, 'relay joined the cluster');
      this.requestSnapshot(peer);
      this.heartbeatNow();
    } else if (relay.seq <= peer.stamp.seq) {
      return; // a late or repeated message
    } else if (relay.link !== undefined && relay.link > (peer.stamp.link ?? relay.link) && peer.heardOnLink === this.links) {
      // (Heard first since our own reconnect, it only tells us where it is now: we failed our calls
      // when we lost NATS, and those sent since went out after it was gone from the old server.)
      this.peerReconnected(peer, relay.link);
    }
    peer.heardOnLink = this.links;
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
      this.warnOnce(
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
    const route = new RemoteRoute(peer.stamp.id, peer.stamp.name, info, this);
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
        this.warnOnce(
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
    this.failOutCalls((o) => o.route === route, `node ${route.name} left relay ${peer.stamp.name} while the call was in flight; it may or may not have run`);
    if (this.host.directory.remove(route)) this.host.routeRemoved(route, why);
  }

  private requestSnapshot(peer: Peer): void {
    if (!this.nc || !this.connectedNow || peer.snapshotting) return;
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
        reply = await this.request(peer.stamp.id, [ClusterKind.SNAPSHOT, offset], REQUEST_TIMEOUT, 'snapshot');
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

  private expirePeers(): void {
    const now = Date.now();
    const gap = now - this.lastTick;
    this.lastTick = now;
    if (gap > PEER_EXPIRY) {
      // This process was frozen (a long GC pause, a stopped VM): the others did not go quiet, we did.
      this.log.warn({ frozenMs: gap }, 'this relay was frozen; asking every relay for its list again instead of dropping them');
      // The others have given up on us meanwhile and cancelled our calls on their nodes.
      this.failOutCalls(() => true, `this relay was frozen for ${gap} ms while the call was in flight on another relay; it may or may not have run`);
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
    for (const served of [...this.served.values()]) {
      if (served.peerId !== peer.stamp.id) continue;
      served.call.abandon(true);
      this.endServed(served);
    }
    const sessions = this.peerSessions.get(peer.stamp.id);
    this.peerSessions.delete(peer.stamp.id);
    for (const [session, links] of sessions ?? []) for (const link of links) link.closeSession(session);
  }

  /**
   * Pings the relays our calls in flight went to. NATS answers "no responders" at once for a relay
   * whose connection it has seen close (SIGKILL, a dead machine's reset), so its calls fail NODE_LOST
   * within a ping instead of at heartbeat expiry; a relay that only answers slowly is left alone.
   */
  private pingBusyPeers(): void {
    if (!this.nc || !this.connectedNow) return;
    const busy = new Set<string>();
    for (const o of this.outCalls.values()) busy.add(o.route.relayId);
    for (const id of busy) {
      const peer = this.peers.get(id);
      if (!peer || this.pinging.has(id)) continue;
      this.pinging.add(id);
      this.request(id, [ClusterKind.PING], PING_INTERVAL * 4, 'pong').then(
        () => this.pinging.delete(id),
        (err: Error & { isNoResponders?: () => boolean }) => {
          this.pinging.delete(id);
          const gone = typeof err.isNoResponders === 'function' ? err.isNoResponders() : /no responders/i.test(err.message);
          if (gone) this.expirePeer(peer, 'gone from NATS (no responders)');
        },
      );
    }
  }

  private bury(id: string, why: 'bye' | 'replaced'): void {
    this.tombstones.set(id, { why, at: Date.now() });
    if (this.tombstones.size > TOMBSTONES) this.tombstones.delete(this.tombstones.keys().next().value!);
  }

  // ---- calls this relay sends (RouteTransport) ----

  reachable(relayId: string): boolean {
    const peer = this.peers.get(relayId);
    return this.connectedNow && peer !== undefined && !peer.suspect;
  }

  open(route: RemoteRoute, call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream: number): void {
    const out: OutCall = {
      call,
      route,
      up: undefined,
      resend: stream === 0 && params.length <= STREAM_THRESHOLD ? { params, meta } : undefined,
      peerLink: this.peers.get(route.relayId)?.stamp.link ?? 0,
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
    this.queue(route.relayId, 'open', [ClusterKind.OPEN, callId, route.name, call.method, body, length > 0 ? { ...meta, stream: length } : meta], callId);
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
  private peerReconnected(peer: Peer, link: number): void {
    const id = peer.stamp.id;
    this.log.info({ relay: peer.stamp.name, link }, 'relay reconnected to the cluster');
    this.failOutCalls(
      (o) => o.route.relayId === id && o.peerLink < link,
      `relay ${peer.stamp.name} lost its connection to the cluster (NATS) while the call was in flight; it may or may not have run`,
    );
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
        if (!out.up?.ack(m.bytes)) this.warnOnce(`ack:${from}`, { relay: route.relayName }, 'relay acknowledged more than it was sent; ignoring');
    }
  }

  // ---- calls other relays send to our nodes ----

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
        if (!served.down.ack(m.bytes)) this.warnOnce(`ack:${from}`, { from }, 'relay acknowledged more than it was sent; ignoring');
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

  // ---- requests (probes, snapshots) ----

  /** Whether the node behind `route` (on another relay) still answers a ping. */
  async probe(route: NodeRoute, timeout: number): Promise<boolean> {
    if (!(route instanceof RemoteRoute)) return false;
    return this.probeNode(route.relayId, route.name, timeout);
  }

  private async probeNode(relayId: string, node: string, timeout: number): Promise<boolean> {
    if (!this.nc || !this.connectedNow) return false;
    try {
      const m = await this.request(relayId, [ClusterKind.PROBE, node], timeout + 500, 'probe reply');
      return m?.kind === ClusterKind.PROBE_REPLY && m.alive;
    } catch {
      return false;
    }
  }

  /** A sealed request to another relay; resolves with its checked reply (undefined when refused), rejects as nats.js does. */
  private async request(relayId: string, message: unknown[], timeout: number, what: string): Promise<ClusterMessage | undefined> {
    const subject = `${this.prefix}.relay.${this.token(relayId)}.q`;
    const msg = await this.nc!.request(subject, this.seal.seal(subject, pack(message)), { timeout });
    return this.parse(msg, what);
  }

  private onRequest(msg: Msg): void {
    const m = this.parse(msg, 'request');
    if (!m || !msg.reply) return;
    const reply = msg.reply;
    const answer = (message: unknown[]) => this.publish(reply, this.seal.seal(reply, pack(message)));
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

  // ---- plumbing ----

  private onInbox(msg: Msg): void {
    // ${prefix}.relay.${token}.${what}[.${secret}.${batch}]
    const rest = msg.subject.slice(this.inbox.length);
    const dot = rest.indexOf('.');
    const what = dot < 0 ? rest : rest.slice(0, dot);
    if (what === 'q') return this.onRequest(msg);
    if (what === 'r') {
      // Only NATS writes here, and only to the reply subject of a batch we sent: the secret says so.
      const tail = dot < 0 ? '' : rest.slice(dot + 1);
      const at = tail.indexOf('.');
      if (at < 0 || tail.slice(0, at) !== this.batchSecret) return;
      return this.onNoResponders(msg, Number(tail.slice(at + 1)));
    }
    if (what !== 'open' && what !== 'm' && what !== 's') return;
    let plain: Uint8Array;
    try {
      plain = this.seal.open(msg.subject, msg.data);
    } catch (err) {
      return this.refuse(err, msg.subject);
    }
    // The sender's id comes first, inside the seal: subjects can be written by anyone on NATS.
    let batch: ReturnType<typeof unpackBatch>;
    try {
      batch = unpackBatch(plain);
    } catch (err) {
      return this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: (err as Error).message }, 'ignoring a malformed cluster message');
    }
    const { from } = batch;
    for (const m of batch.messages) {
      if (m instanceof ClusterMessageError) {
        this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: m.message }, 'ignoring a malformed cluster message');
        continue;
      }
      if (what === 'open') {
        // A relay that just joined may call before its first heartbeat reaches us: it is served all the same.
        if (m.kind === ClusterKind.OPEN) this.onOpen(m, from);
      } else if (what === 'm') this.onCallerSide(m, from);
      else this.onServedSide(m, from);
    }
  }

  /** NATS says nobody listens on the relay a batch of calls went to: none of them was delivered. */
  private onNoResponders(msg: Msg, batch: number): void {
    if (msg.headers?.code !== 503) return;
    const ids = this.openBatches.get(batch);
    this.openBatches.delete(batch);
    for (const callId of ids ?? []) this.undelivered(callId);
  }

  private undelivered(callId: number): void {
    const out = this.outCalls.get(callId);
    if (!out) return;
    this.finishOut(callId);
    // That relay is gone (it died, or lost NATS): use it no more until it is heard from again.
    const peer = this.peers.get(out.route.relayId);
    if (peer && !peer.suspect) {
      peer.suspect = true;
      this.log.warn({ relay: peer.stamp.name }, 'relay does not answer on NATS; not using it until it is heard from again');
    }
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

  /** To the relay that made the call (about its call): `.m`. */
  private toCaller(relayId: string, message: unknown[]): void {
    this.queue(relayId, 'm', message);
  }

  /** To the relay that serves the call (about our call): `.s`. */
  private toServer(relayId: string, message: unknown[]): void {
    this.queue(relayId, 's', message);
  }

  /**
   * Messages for one relay queued in one turn of the event loop leave as one NATS message, values
   * back to back, as a WebSocket writer coalesces: at many calls in flight NATS carries a few large
   * messages instead of many small ones. Opens carry the batch's reply subject, where NATS says "no
   * responders" when the relay is gone.
   */
  private queue(relayId: string, what: 'open' | 'm' | 's', message: unknown[], callId?: number): void {
    const subject = `${this.prefix}.relay.${this.token(relayId)}.${what}`;
    let b = this.batches.get(subject);
    const bytes = pack(message);
    if (b && b.size + bytes.length > BATCH_LIMIT) {
      this.flushBatch(subject, b);
      b = undefined;
    }
    if (!b) {
      b = { parts: [this.idBytes], size: this.idBytes.length, calls: what === 'open' ? [] : undefined };
      this.batches.set(subject, b);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        process.nextTick(this.flushAll);
      }
    }
    b.parts.push(bytes);
    b.size += bytes.length;
    if (callId !== undefined) b.calls?.push(callId);
  }

  private readonly flushAll = (): void => {
    this.flushScheduled = false;
    const batches = [...this.batches];
    this.batches.clear();
    for (const [subject, b] of batches) this.flushBatch(subject, b);
  };

  private flushBatch(subject: string, b: { parts: Uint8Array[]; size: number; calls: number[] | undefined }): void {
    if (this.batches.get(subject) === b) this.batches.delete(subject);
    const data = this.seal.seal(subject, Buffer.concat(b.parts, b.size));
    if (!b.calls) return this.publish(subject, data);
    const batch = ++this.batchCounter;
    this.openBatches.set(batch, b.calls);
    if (this.openBatches.size > OPEN_BATCHES) this.openBatches.delete(this.openBatches.keys().next().value!);
    this.publish(subject, data, `${this.inbox}r.${this.batchSecret}.${batch}`);
  }

  private publish(subject: string, data: Uint8Array, reply?: string): void {
    if (!this.nc || !this.connectedNow) return;
    try {
      this.nc.publish(subject, data, reply ? { reply } : undefined);
    } catch (err) {
      this.log.debug({ subject, err: (err as Error).message }, 'cluster publish failed');
    }
  }

  private parse(msg: Msg, what: string): ClusterMessage | undefined {
    let plain: Uint8Array;
    try {
      plain = this.seal.open(msg.subject, msg.data);
    } catch (err) {
      this.refuse(err, msg.subject);
      return undefined;
    }
    try {
      return unpack(plain);
    } catch (err) {
      if (err instanceof ClusterMessageError)
        this.warnOnce(`bad:${what}`, { subject: msg.subject, reason: err.message }, 'ignoring a malformed cluster message');
      return undefined;
    }
  }

  /**
   * A message that is not sealed with our key, or a copy of one already seen: dropped, counted, and
   * logged once per reason in {@link REJECT_LOG_INTERVAL} with how many came meanwhile.
   */
  private refuse(err: unknown, subject: string): void {
    const reason: SealFailure = err instanceof SealError ? err.reason : 'malformed';
    this.host.rejected?.(reason);
    const now = Date.now();
    let entry = this.rejectLog.get(reason);
    if (!entry) {
      entry = { count: 0, loggedAt: 0 };
      this.rejectLog.set(reason, entry);
    }
    entry.count++;
    if (now - entry.loggedAt < REJECT_LOG_INTERVAL) return;
    this.log.warn({ reason, subject, count: entry.count, err: (err as Error).message }, 'refused a cluster message');
    entry.count = 0;
    entry.loggedAt = now;
  }

  /** Logs a warning once per key: a broken peer must not flood the log. */
  private warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.badMessages.has(key)) return;
    if (this.badMessages.size < 1_000) this.badMessages.add(key);
    this.log.warn(fields, message);
  }
}

const EMPTY = new Uint8Array(0);

function infoOf(link: NodeLink): RemoteNodeInfo {
  return {
    name: link.name,
    instance: link.instance ?? null,
    services: Object.fromEntries([...link.services].map(([s, m]) => [s, [...m].sort()])),
    labels: link.labels,
    address: link.address,
    connectedAt: link.connectedAt.getTime(),
    draining: link.draining,
  };
}

function infoOfRoute(route: RemoteRoute): RemoteNodeInfo {
  return {
    name: route.name,
    instance: route.instance ?? null,
    services: {},
    labels: {},
    address: route.address,
    connectedAt: route.connectedAt.getTime(),
    draining: route.draining,
  };
}

/** What a heartbeat compares: each node's name, instance, connection time and draining flag. */
function digestOf(nodes: RemoteNodeInfo[]): string {
  const h = createHash('sha1');
  for (const n of [...nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    h.update(`${n.name}\0${n.instance ?? ''}\0${n.connectedAt}\0${n.draining ? 1 : 0}\n`);
  }
  return h.digest('hex');
}

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
