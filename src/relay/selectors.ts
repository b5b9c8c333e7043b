import { ErrorCode, TunnelError } from '../errors.js';
import type { NodeRoute } from './contracts.js';
import type { CallerAccess } from './permissions.js';

/** The ways the relay picks one of several nodes serving a service. */
export const SELECTORS = ['round-robin', 'random', 'least-pending'] as const;
export type SelectorName = (typeof SELECTORS)[number];

/** Labels a call requires: a node qualifies when it carries every key with the same value. */
export type Where = Readonly<Record<string, string>>;

/**
 * Picks a node among `nodes` (the service's nodes, in registration order). `start` is the service's
 * round-robin cursor; selectors scan from it so that ties rotate instead of piling onto the first node.
 * `access` is the caller's permissions (undefined: it may call every node). Returns the index of the
 * chosen node, or -1 when no node is eligible. Selectors never allocate: route() runs once per call.
 * @internal
 */
export type Selector = (nodes: readonly NodeRoute[], start: number, service: string, method: string, where: Where | undefined, access?: CallerAccess) => number;

/** True when `node` can take a new call to `service.method` restricted to `where`, from a caller with `access`. @internal */
export function eligible(node: NodeRoute, service: string, method: string, where: Where | undefined, access?: CallerAccess): boolean {
  return node.available && node.hasMethod(service, method) && matchesWhere(node, where) && (access === undefined || access.mayCall(node.name, service, method));
}

/** @internal */
export function matchesWhere(node: NodeRoute, where: Where | undefined): boolean {
  if (where === undefined) return true;
  for (const key in where) if (node.labels[key] !== where[key]) return false;
  return true;
}

const firstFrom: Selector = (nodes, start, service, method, where, access) => {
  const n = nodes.length;
  for (let i = 0; i < n; i++) {
    const at = (start + i) % n;
    if (eligible(nodes[at]!, service, method, where, access)) return at;
  }
  return -1;
};

/** The next eligible node after the previous pick. */
const roundRobin: Selector = firstFrom;

const random: Selector = (nodes, _start, service, method, where, access) =>
  firstFrom(nodes, Math.floor(Math.random() * nodes.length), service, method, where, access);

/** The eligible node with the fewest calls in flight through this relay; ties go round-robin. */
const leastPending: Selector = (nodes, start, service, method, where, access) => {
  const n = nodes.length;
  let best = -1;
  let bestLoad = Infinity;
  for (let i = 0; i < n; i++) {
    const at = (start + i) % n;
    const node = nodes[at]!;
    if (node.inFlight >= bestLoad || !eligible(node, service, method, where, access)) continue;
    best = at;
    bestLoad = node.inFlight;
    if (bestLoad === 0) break;
  }
  return best;
};

const BY_NAME: Record<SelectorName, Selector> = { 'round-robin': roundRobin, random, 'least-pending': leastPending };

/** The selector called `name`; throws BAD_REQUEST naming the choices for anything else. @internal */
export function selectorNamed(name: unknown): Selector {
  if (typeof name === 'string' && Object.hasOwn(BY_NAME, name)) return BY_NAME[name as SelectorName];
  throw new TunnelError(ErrorCode.BAD_REQUEST, `unknown selector ${JSON.stringify(name)}; choose one of ${SELECTORS.join(', ')}`);
}

/** Checks a `where` from the wire: a map of label names to string values. */
export function parseWhere(value: unknown): Where | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) {
    throw new TunnelError(ErrorCode.BAD_REQUEST, 'metadata where must be a map of label names to string values');
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return undefined;
  for (const [k, v] of entries) {
    if (typeof v !== 'string') throw new TunnelError(ErrorCode.BAD_REQUEST, `metadata where.${k} must be a string, got ${typeof v}`);
  }
  return value as Where;
}

/** "region=eu,tier=gold", for messages. */
export function formatLabels(labels: Where): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
  return parts.length > 0 ? parts.join(',') : 'no labels';
}
