import type { Logger } from '../../util/logger.js';
import type { NodeRoute } from '../contracts.js';
import type { AuthFailures } from '../auth-failures.js';
import type { RelayEvents } from '../events.js';

/** How a caller reaches the relay. */
export type CallerTransport = 'websocket' | 'msgpack-rpc' | 'http';

/** One caller connection (a session), as the dashboard lists it. */
export interface CallerConnection {
  session: string;
  transport: CallerTransport;
  /** `ip:port` as the relay saw it. */
  address: string;
  /** From the caller's token; null when anonymous. */
  identity: string | null;
  inFlight: number;
  /** When it connected, ms since the epoch. */
  since: number;
}

/**
 * What the dashboard needs from the relay: read access to its nodes, callers and state, its event
 * bus, and the three operator actions. The relay is one implementation; a test may give another.
 */
export interface DashboardHost {
  readonly log: Logger;
  readonly events: RelayEvents;
  readonly relayName: string;
  readonly draining: boolean;
  /** Calls routed to a node and not answered yet. */
  readonly inFlight: number;
  /** Every node reachable from here, attached to this relay or to another of the cluster. */
  readonly directory: { all(): Iterable<NodeRoute>; readonly size: number };
  /** Nodes whose tunnel ends on this relay. */
  readonly registry: { readonly size: number };
  readonly cluster:
    | { readonly connected: boolean; readonly state: 'connected' | 'degraded' | 'split'; readonly peerNames: string[]; readonly unreachable: string[] }
    | undefined;
  readonly limits: { readonly slowConsumerTimeout: number };
  /** Counts a peer cut for not reading (the metric `tunnel_relay_slow_consumers_total`). */
  readonly metrics: { slowConsumer(transport: 'http'): void };
  /** Wrong tokens per address, shared with every door of the relay (auth-failures.ts); absent: not limited. */
  readonly authFailures?: Pick<AuthFailures, 'refusal' | 'failed'> | undefined;
  callerConnections(): CallerConnection[];
  /** Node names drained on this relay: they take no new calls, through reconnects, until undrained. */
  readonly drainMarks: { has(name: string): boolean; list(max: number): string[]; readonly size: number };
  /** The node stays connected, finishes its calls and takes no new ones, until undrained (across reconnects). Throws NO_NODE. */
  drainNode(name: string, reason: string): void;
  /** Puts a drained node name back in rotation. Throws NO_NODE for a name that is not drained. */
  undrainNode(name: string, reason: string): void;
  /** Closes the node's connection now; its calls in flight fail NODE_LOST. Throws NO_NODE. */
  disconnectNode(name: string, reason: string): void;
  /** Closes a caller connection; its calls are cancelled on the nodes. Throws CONNECTION_CLOSED for an unknown session. */
  disconnectCaller(session: string, reason: string): void;
}
