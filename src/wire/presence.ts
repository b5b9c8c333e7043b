/**
 * Shapes of the relay's own service, `Relay`: presence and broadcast results. The relay answers these
 * itself; no node may register a service of that name (docs/PROTOCOL.md, "Presence" and "Broadcast").
 */
export const RELAY_SERVICE = 'Relay';

export const RelayMethod = {
  /** `Relay.List()` → NodeInfo[]; `where` in the metadata filters by labels. */
  LIST: 'Relay.List',
  /** `Relay.Watch()` → NodeInfo[] now, then `Relay.presence` notifications until Unwatch or close. */
  WATCH: 'Relay.Watch',
  UNWATCH: 'Relay.Unwatch',
} as const;

/** Method of the notification `[2, "Relay.presence", bin([PresenceEvent])]` sent to watchers. */
export const PRESENCE_NOTIFICATION = 'Relay.presence';

/** One attached node as the relay sees it. */
export interface NodeInfo {
  name: string;
  labels: Record<string, string>;
  /** Service → method names (`*` when the node forwards any method). */
  services: Record<string, string[]>;
  /** Address the node's connection came from, as the relay saw it. */
  address: string;
  /** ISO 8601 time the node attached. */
  connectedAt: string;
  /** Calls forwarded to the node and not answered yet. */
  inFlight: number;
  /** Calls the node has answered on this connection. */
  served: number;
  /** The node said GOAWAY: it finishes its calls and takes no new ones. */
  draining: boolean;
  /** The relays holding the node's tunnels (one, unless the node is dual-homed in a cluster), sorted. */
  relays: string[];
}

/**
 * A node joined (attached), or left (closed, replaced, or dropped for missing heartbeats), or changed
 * without leaving (`update`: a dual-homed node gained or lost one of its tunnels).
 */
export interface PresenceEvent {
  event: 'join' | 'leave' | 'update';
  node: NodeInfo;
  /** ISO 8601 time of the event at the relay. */
  at: string;
}

/** One node's outcome in the result of a broadcast call, as the relay encodes it. */
export interface WireBroadcastEntry {
  node: string;
  /** Milliseconds from forwarding to the answer (or to the deadline). */
  ms: number;
  error: { code: string; message: string; data?: unknown } | null;
  /** The node's result, still MessagePack-encoded (the relay does not decode it). */
  result: Uint8Array | null;
}
