import { createHash } from 'node:crypto';
import type { NodeLink } from '../node-link.js';
import type { RemoteNodeInfo } from './messages.js';
import type { RemoteRoute } from './remote-route.js';

/** A local node as presence announces it. */
export function infoOf(link: NodeLink): RemoteNodeInfo {
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

/** What we know of a node of another relay, as its heartbeat digest counts it. */
export function infoOfRoute(route: RemoteRoute): RemoteNodeInfo {
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
export function digestOf(nodes: RemoteNodeInfo[]): string {
  const h = createHash('sha1');
  for (const n of [...nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    h.update(`${n.name}\0${n.instance ?? ''}\0${n.connectedAt}\0${n.draining ? 1 : 0}\n`);
  }
  return h.digest('hex');
}
