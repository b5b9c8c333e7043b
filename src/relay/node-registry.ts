import { EventEmitter } from 'node:events';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import type { Connection } from '../wire/connection.js';
import { WELCOME_RELAY_LIMITS } from '../wire/bounds.js';
import { welcome, type Hello, type Welcome } from '../wire/messages.js';
import type { Credential } from './auth.js';
import type { NodeRoute } from './contracts.js';
import type { NodeDirectory } from './directory.js';
import type { RelayMetrics } from './metrics.js';
import { NodeLink } from './node-link.js';

/** How long a node holding a name may take to answer a ping before a newcomer may take the name, ms. */
export const NAME_PROBE_TIMEOUT = 2_000;

/** Node names remembered to tell a reconnect from a first connection; more are not remembered. */
const SEEN_NODES_LIMIT = 10_000;

export interface NodeRegistryOptions {
  relayName: string;
  relayVersion: string;
  maxMessage: number;
  heartbeatTimeout: number;
  log: Logger;
  directory: NodeDirectory;
  metrics: RelayMetrics;
  /** Refuses a newcomer: close with `code` and count it under `metric`. */
  reject(conn: Connection, code: number, reason: string, metric: string): void;
}

/**
 * The nodes whose tunnels end on this relay: registration (one name, one live node), their links in
 * the directory, and what leaves with them. Events: `join` (link), `update` (link: it starts or stops draining),
 * `leave` (link, reason: 'closed' | 'replaced' | 'revoked' | 'conflict').
 */
export class NodeRegistry extends EventEmitter {
  private readonly links = new Set<NodeLink>();
  private readonly credentials = new WeakMap<NodeLink, Credential>();
  private readonly revoked = new WeakSet<NodeLink>();
  private readonly seen = new Set<string>();
  /**
   * Whether the node behind a route of another relay still answers (set by the cluster). Without a
   * cluster there are no such routes.
   */
  probeRemote: ((route: NodeRoute, timeout: number) => Promise<boolean>) | undefined;
  /**
   * In a cluster (set by the relay): this relay's advertised URL and the other relays' ones, for the
   * welcome of a node, which may move to one of them when this relay stays unreachable.
   */
  clusterWelcome: (() => { url: string | undefined; relays: readonly string[] }) | undefined;

  constructor(private readonly o: NodeRegistryOptions) {
    super();
  }

  /** The node links of this relay. */
  all(): IterableIterator<NodeLink> {
    return this.links.values();
  }

  get size(): number {
    return this.links.size;
  }

  credentialOf(link: NodeLink): Credential | undefined {
    return this.credentials.get(link);
  }

  /**
   * One name, one live node. The same process reconnecting (same instance id) replaces its old
   * connection at once: that one is half-open. Another process is refused while the holder answers
   * a ping, so that two nodes left on one name never take turns; a holder that does not answer is
   * gone, and the newcomer replaces it. The holder may be on another relay of the cluster.
   */
  claim(conn: Connection, h: Hello, address: string, log: Logger, credential: Credential): void {
    const name = h.name!;
    const node = this.o.directory.get(name);
    // A node an operator drained here still holds its name: only one going away gives it up.
    const leaving = (r: NodeRoute) => (r instanceof NodeLink ? r.goingAway : r.draining);
    const holders = node ? node.routes.filter((r) => !leaving(r) && !(h.instance !== undefined && r.instance === h.instance)) : [];
    if (holders.length === 0) return this.register(conn, h, address, log, credential);
    // Messages the newcomer sends meanwhile are not calls; it is not registered yet.
    conn.setHandlers({ message: () => undefined, close: () => undefined });
    const wait = Math.min(NAME_PROBE_TIMEOUT, this.o.heartbeatTimeout || NAME_PROBE_TIMEOUT);
    void Promise.all(holders.map((r) => this.probe(r, wait))).then((answers) => {
      if (!conn.isOpen) return;
      const now = this.o.directory.get(name);
      if (now !== node || holders.some((r) => !now?.routes.includes(r))) return this.claim(conn, h, address, log, credential);
      const live = holders.filter((_, i) => answers[i]);
      if (live.length === 0) {
        log.warn({ node: name, previous: holders[0]!.address, probeMs: wait }, 'node name held by a connection that does not answer; replacing it');
        return this.register(conn, h, address, log, credential);
      }
      const holder = live[0]!;
      const where = holder.local ? '' : ` on relay ${holder.relays.join(', ')}`;
      const reason = `name ${name} is held by a live node from ${holder.address}${where} since ${holder.connectedAt.toISOString()}; give each node its own --name`;
      log.warn({ node: name, holder: holder.address, reason }, 'refused hello');
      this.o.reject(conn, CloseCode.NAME_CONFLICT, reason, 'name_conflict');
    });
  }

  private probe(route: NodeRoute, wait: number): Promise<boolean> {
    if (route instanceof NodeLink) return route.conn.probe(wait);
    return this.probeRemote ? this.probeRemote(route, wait) : Promise.resolve(false);
  }

  private register(conn: Connection, h: Hello, address: string, log: Logger, credential: Credential): void {
    const name = h.name!;
    const services = h.services!;
    const link = new NodeLink(name, conn, services, h.labels ?? {}, address, log, h.instance, this.o.relayName);
    link.onUpdate = () => this.emit('update', link);
    this.credentials.set(link, credential);
    this.links.add(link);
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        this.links.delete(link);
        const failed = link.onClose();
        const current = this.o.directory.remove(link);
        const gone = this.revoked.has(link) ? 'revoked node connection closed' : 'replaced node connection closed';
        log.info({ node: name, code, reason, failedCalls: failed }, current ? 'node disconnected' : gone);
        if (current) this.emit('leave', link, 'closed');
      },
    });
    if (this.seen.has(name)) this.o.metrics.nodeReconnected(name);
    else if (this.seen.size < SEEN_NODES_LIMIT) this.seen.add(name);
    // A holder on another relay that did not answer: its relay will drop it; here it stops being used.
    const stale = this.o.directory.get(name)?.routes.filter((r) => !r.local && !(link.instance !== undefined && r.instance === link.instance)) ?? [];
    for (const r of stale) this.o.directory.remove(r);
    const old = this.o.directory.add(link) as NodeLink | undefined;
    if (old) {
      old.goingAway = true;
      this.links.delete(old);
      log.warn(
        { node: name, previous: old.address, sameProcess: old.instance !== undefined && old.instance === link.instance },
        'node name reconnected; replacing the previous connection',
      );
      old.conn.close(CloseCode.REPLACED, `replaced by a new connection for node ${name}`);
      this.emit('leave', old, 'replaced');
    }
    conn.send(welcome(this.welcomeOf(name, conn.peerVersion)));
    log.info({ node: name, services: Object.keys(services), labels: link.labels }, 'node connected');
    this.emit('join', link);
  }

  /** A node's welcome; in a cluster with the relays it may move to, bounded (wire/bounds.ts). */
  private welcomeOf(name: string, version: number): Welcome {
    const w: Welcome = { version, relay: this.o.relayVersion, name, maxMessage: this.o.maxMessage };
    const cluster = this.clusterWelcome?.();
    if (cluster) {
      if (cluster.url !== undefined) w.url = cluster.url;
      w.relays = cluster.relays.filter((u) => u.length <= WELCOME_RELAY_LIMITS.url).slice(0, WELCOME_RELAY_LIMITS.count);
    }
    return w;
  }

  /** A node of another relay, older under the same name, keeps it: this one is refused after the fact (4006). */
  yieldName(link: NodeLink, reason: string): void {
    this.o.log.warn({ node: link.name, reason }, 'refused hello');
    this.o.metrics.connectionRejected('name_conflict');
    this.links.delete(link);
    link.conn.close(CloseCode.NAME_CONFLICT, reason);
    link.onClose();
    if (this.o.directory.remove(link)) this.emit('leave', link, 'conflict');
  }

  /** The node leaves at once (presence, routing; its calls fail NODE_LOST), whatever its socket does. */
  revoke(link: NodeLink, reason: string): void {
    this.revoked.add(link);
    this.links.delete(link);
    link.conn.close(CloseCode.UNAUTHORIZED, reason);
    link.onClose();
    if (this.o.directory.remove(link)) this.emit('leave', link, 'revoked');
  }
}
