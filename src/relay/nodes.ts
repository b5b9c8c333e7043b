import { hostname } from 'node:os';
import type { Logger } from '../util/logger.js';
import type { Authenticator } from './auth.js';
import type { Revocation } from './doors/hub.js';
import { Cluster } from './cluster/cluster.js';
import type { ClusterState } from './cluster/options.js';
import type { NodeRoute } from './contracts.js';
import type { NodeDirectory } from './directory.js';
import type { RelayEvents } from './events.js';
import type { RelayMetrics } from './metrics.js';
import type { NodeLink } from './node-link.js';
import { NodeRegistry, type NodeRegistryOptions } from './node-registry.js';
import type { RelayOptions, RelaySettings } from './options.js';
import { Presence } from './presence.js';

/** What /readyz answers (`Relay.readiness`). */
export interface Readiness {
  ready: boolean;
  reasons: string[];
  cluster?: { state: ClusterState; relays: string[]; unreachable: string[]; urls: string[] };
}

/** What a {@link NodeRoster} is built from. */
export interface NodeRosterParts {
  readonly settings: RelaySettings & RelayOptions;
  readonly log: Logger;
  readonly directory: NodeDirectory;
  readonly metrics: RelayMetrics;
  readonly events: Pick<RelayEvents, 'audit'>;
  readonly relayVersion: string;
  /** Closes a node's WebSocket that may not attach (the WebSocket door's `reject`). */
  readonly reject: NodeRegistryOptions['reject'];
  /** A local node joined, before anyone hears of it (the operator applies its drained names). */
  joined(link: NodeLink): void;
  /** The URL nodes dial to reach this relay, once known. */
  advertised(): string | undefined;
  /** The relay's events `node` and `node-left`: a local node joined or left. */
  emit(event: 'node' | 'node-left', name: string): void;
}

/**
 * The nodes a relay knows: the ones whose tunnels end here (node-registry.ts), the routes to the
 * others' nodes through a cluster, and presence. Joins and leaves of either become presence
 * announcements, audit records and the relay's `node` / `node-left` events here.
 */
export class NodeRoster {
  /** The nodes whose tunnels end here. */
  readonly registry: NodeRegistry;
  readonly presence: Presence;
  /** Membership of a cluster over NATS, when `cluster` is given. */
  readonly cluster: Cluster | undefined;
  /** This relay's name (presence, cluster). */
  readonly relayName: string;

  constructor(private readonly parts: NodeRosterParts) {
    const { settings, log, directory, metrics, events } = parts;
    this.presence = new Presence(directory, log);
    this.relayName = settings.relayName ?? hostname();
    this.registry = new NodeRegistry({
      relayName: this.relayName,
      relayVersion: parts.relayVersion,
      maxMessage: settings.maxMessage,
      heartbeatTimeout: settings.heartbeatTimeout,
      log,
      directory,
      metrics,
      reject: parts.reject,
    });
    this.registry.on('join', (link: NodeLink) => {
      parts.joined(link);
      this.joined(link);
      this.cluster?.announce('join', link);
    });
    this.registry.on('update', (link: NodeLink) => {
      if (link.draining) events.audit({ kind: 'node-draining', node: link.name, address: link.address });
      const node = directory.get(link.name);
      if (node) this.presence.announce('update', node);
      this.cluster?.announce('update', link);
    });
    this.registry.on('leave', (link: NodeLink, why: string) => {
      this.left(link, why);
      this.cluster?.announce('leave', link);
    });
    if (settings.cluster) {
      const advertised = parts.advertised;
      const cluster = new Cluster(
        {
          relayName: this.relayName,
          log,
          directory,
          localLinks: () => this.registry.all(),
          maxTimeout: settings.maxTimeout,
          maxNodeInFlight: settings.maxNodeInFlight,
          maxMessage: settings.maxMessage,
          allowedServices: (node, services) => services.filter((s) => directory.permissions.serveRefusal(node, [s], true) === undefined),
          routeAdded: (route) => this.joined(route),
          routeRemoved: (route, why) => this.left(route, why),
          yieldName: (link, reason) => this.registry.yieldName(link, reason),
          presenceLag: (seconds) => metrics.presenceLag(seconds),
          rejected: (reason) => metrics.clusterRejected(reason),
          // Read at each heartbeat: known once listening (port 0 picks the port).
          get url() {
            return advertised();
          },
        },
        settings.cluster,
      );
      this.cluster = cluster;
      this.registry.probeRemote = (route, timeout) => cluster.probe(route, timeout);
      this.registry.clusterWelcome = () => ({ url: parts.advertised(), relays: cluster.peerUrls() });
    }
  }

  /** After a reload of the tokens file: every node its token or the permissions no longer admit is closed (4003). */
  recheck(auth: Pick<Authenticator, 'recheckNode'>, revoked: (r: Revocation) => void): void {
    for (const link of [...this.registry.all()]) {
      const credential = this.registry.credentialOf(link);
      const reason = credential && auth.recheckNode(link.name, credential, link.services.keys());
      if (reason) {
        revoked({ role: 'node', name: link.name, address: link.address, reason });
        this.registry.revoke(link, reason);
      }
    }
  }

  /** The readiness of /readyz: `reasons` so far, and the required nodes and services missing; in a cluster, its state. */
  readiness(reasons: string[], requireNode: readonly string[] = [], requireService: readonly string[] = []): Readiness {
    const { directory } = this.parts;
    for (const name of requireNode) {
      const node = directory.get(name);
      if (!node || node.draining) reasons.push(`required node ${name} is not connected`);
    }
    for (const service of requireService) {
      if (![...directory.all()].some((n) => !n.draining && n.services.has(service))) {
        reasons.push(`no node serves required service ${service}`);
      }
    }
    const out: Readiness = { ready: reasons.length === 0, reasons };
    if (this.cluster) {
      // `urls`: the other relays' --advertise URLs, what a node's welcome lists now.
      out.cluster = { state: this.cluster.state, relays: this.cluster.peerNames, unreachable: this.cluster.unreachable, urls: this.cluster.peerUrls() };
    }
    return out;
  }

  /** A route to a node was added: presence says `join` for a node it did not show yet, else `update`. */
  private joined(route: NodeRoute): void {
    const node = this.parts.directory.get(route.name);
    if (!node) return;
    this.presence.announce(node.routes.length === 1 ? 'join' : 'update', node);
    if (node.routes.length === 1) this.parts.events.audit({ kind: 'node-join', node: route.name, address: route.address, relays: route.relays });
    if (route.local) this.parts.emit('node', route.name);
  }

  /** A route went: the node leaves presence with its last route; a replaced connection leaves before its successor joins. */
  private left(route: NodeRoute, why: string): void {
    const { directory, events, emit } = this.parts;
    const node = directory.get(route.name);
    if (!node || why === 'replaced') this.presence.announce('leave', route);
    else this.presence.announce('update', node);
    if (why === 'replaced') events.audit({ kind: 'node-replaced', node: route.name, address: route.address, reason: 'a new connection took its name' });
    else if (!node) events.audit({ kind: 'node-leave', node: route.name, address: route.address, reason: why, relays: route.relays });
    if (route.local && why !== 'replaced') emit('node-left', route.name);
  }
}
