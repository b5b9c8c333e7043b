import { decode, decodeAll, encode } from '../../wire/codec.js';
import { CONTROL_RULE, controlProblem, labelsProblem, methodProblem, nodeNameProblem, servicesProblem } from '../../wire/bounds.js';
import { CHUNK_SIZE } from '../../wire/streams.js';
import type { WireError } from '../../errors.js';

/**
 * What relays say to each other over NATS (docs/CLUSTER.md). Every message is one MessagePack array
 * whose first element is its kind; params and results stay the bytes the node or caller sent. Nothing
 * from NATS is trusted more than a peer on a socket: every message is checked here, with the same
 * bounds, before anything is done with it.
 */
export const ClusterKind = {
  /** caller's relay → node's relay: a call. `[0, callId, node, method, params|nil, meta]` */
  OPEN: 0,
  /** node's relay → caller's relay: the outcome. `[1, callId, error|nil, result|nil]` */
  RESPONSE: 1,
  /** caller's relay → node's relay: stop the call. `[3, callId]` */
  CANCEL: 3,
  /** caller's relay → node's relay: the caller is gone. `[6, session, node]` */
  SESSION_CLOSED: 6,
  /** either way: a chunk of params or result. `[8, callId, final, bytes]` */
  CHUNK: 8,
  /** node's relay → caller's relay: the result follows in chunks. `[9, callId, length]` */
  RESPONSE_STREAM: 9,
  /** either way: chunk bytes consumed. `[10, callId, bytes]` */
  ACK: 10,
  /** is this node still there? (request/reply) `[11, node]` → `[12, alive]` */
  PROBE: 11,
  PROBE_REPLY: 12,
  /** the whole node list of a relay, a page at a time (request/reply) `[13, offset]` → `[14, total, nodes]` */
  SNAPSHOT: 13,
  SNAPSHOT_PAGE: 14,
  /** is this relay still there? (request/reply; NATS answers "no responders" when it is not) `[15]` → `[16]` */
  PING: 15,
  PONG: 16,
  /** presence, on the cluster's presence subject. `[20, relay, event, payload]` */
  PRESENCE: 20,
} as const;

/** Node fields as relays announce them to each other. */
export interface RemoteNodeInfo {
  name: string;
  instance: string | null;
  services: Record<string, string[]>;
  labels: Record<string, string>;
  address: string;
  /** ms since the epoch. */
  connectedAt: number;
  draining: boolean;
}

/** Who sends a presence message: a relay process. */
export interface RelayStamp {
  /** The relay's name (`--relay-name`). */
  name: string;
  /** Random per process: its inbox, and its epoch (a restarted relay has a new id). */
  id: string;
  /** ms since the epoch when the process started: a newer process under the same name replaces an older one. */
  started: number;
  /** Counts the relay's presence messages. */
  seq: number;
  /**
   * Counts the relay's connections to NATS, from 1; it grows at each reconnect. Messages in flight
   * across a reconnect may be lost either way, so a peer fails the calls it had in flight with this
   * relay when it sees the count grow. Absent from relays that predate it.
   */
  link?: number;
}

export type PresenceBody =
  | { event: 'join' | 'update'; node: RemoteNodeInfo }
  | { event: 'leave'; node: string; instance: string | null }
  /** Every second: how many nodes and a digest of their names and instances; the URL nodes dial for it. */
  | { event: 'heartbeat'; count: number; digest: string; url?: string | undefined }
  /** The relay is shutting down: its nodes go with it now, not at expiry. */
  | { event: 'bye' };

export type ClusterMessage =
  | { kind: 0; callId: number; node: string; method: string; params: Uint8Array | null; meta: Record<string, unknown> }
  | { kind: 1; callId: number; error: WireError | null; result: Uint8Array | null }
  | { kind: 3; callId: number }
  | { kind: 6; session: string; node: string }
  | { kind: 8; callId: number; final: boolean; bytes: Uint8Array }
  | { kind: 9; callId: number; length: number }
  | { kind: 10; callId: number; bytes: number }
  | { kind: 11; node: string }
  | { kind: 12; alive: boolean }
  | { kind: 13; offset: number }
  | { kind: 14; total: number; nodes: RemoteNodeInfo[] }
  | { kind: 15 }
  | { kind: 16 }
  | { kind: 20; relay: RelayStamp; body: PresenceBody };

export class ClusterMessageError extends Error {
  override name = 'ClusterMessageError';
}

const isId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isShortString = (v: unknown, max = 256): v is string => typeof v === 'string' && v.length > 0 && v.length <= max;

function bad(what: string): never {
  throw new ClusterMessageError(what);
}

/** Encodes a cluster message (the array form). */
export function pack(value: unknown[]): Uint8Array {
  return encode(value);
}

/** Decodes and checks one message from NATS; throws ClusterMessageError. */
export function unpack(bytes: Uint8Array): ClusterMessage {
  let v: unknown;
  try {
    v = decode(bytes);
  } catch (err) {
    return bad(`not MessagePack: ${(err as Error).message}`);
  }
  return check(v);
}

/**
 * Decodes a NATS message that carries several cluster messages back to back (what one relay queued
 * for another in one turn of its event loop), after the sender's relay id. Throws ClusterMessageError
 * when the bytes do not decode or name no sender; a value that is not a message is returned as the
 * error it is, so that the others still count.
 */
export function unpackBatch(bytes: Uint8Array): { from: string; messages: Array<ClusterMessage | ClusterMessageError> } {
  let values: unknown[];
  try {
    values = decodeAll(bytes);
  } catch (err) {
    return bad(`not MessagePack: ${(err as Error).message}`);
  }
  const from = values[0];
  if (!isShortString(from, 64)) return bad('a batch starts with the sending relay id');
  const messages = values.slice(1).map((v) => {
    try {
      return check(v);
    } catch (err) {
      return err as ClusterMessageError;
    }
  });
  return { from, messages };
}

function check(v: unknown): ClusterMessage {
  if (!Array.isArray(v) || v.length < 1) return bad('a cluster message is an array [kind, ...]');
  switch (v[0]) {
    case ClusterKind.OPEN: {
      if (v.length !== 6 || !isId(v[1]) || !isShortString(v[2], 128) || !isShortString(v[3], 258) || !(v[4] === null || isBytes(v[4])) || !isMap(v[5])) {
        return bad('open is [0, callId, node, method, params, meta]');
      }
      const badName = methodProblem(v[3]) ?? controlProblem(v[2], 'node name');
      if (badName !== undefined) return bad(badName);
      return { kind: 0, callId: v[1], node: v[2], method: v[3], params: v[4] as Uint8Array | null, meta: v[5] };
    }
    case ClusterKind.RESPONSE: {
      const error = v[2];
      if (v.length !== 4 || !isId(v[1])) return bad('response is [1, callId, error, result]');
      if (error !== null && !(isMap(error) && typeof error.code === 'string' && typeof error.message === 'string'))
        return bad('response error must be nil or {code, message}');
      if (v[3] !== null && !isBytes(v[3])) return bad('response result must be bin or nil');
      return { kind: 1, callId: v[1], error: error as WireError | null, result: v[3] as Uint8Array | null };
    }
    case ClusterKind.CANCEL:
      if (v.length !== 2 || !isId(v[1])) return bad('cancel is [3, callId]');
      return { kind: 3, callId: v[1] };
    case ClusterKind.SESSION_CLOSED:
      if (v.length !== 3 || !isShortString(v[1]) || !isShortString(v[2], 128)) return bad('session closed is [6, session, node]');
      if (controlProblem(v[1], 'session') !== undefined || controlProblem(v[2], 'node name') !== undefined) return bad(`session closed: ${CONTROL_RULE}`);
      return { kind: 6, session: v[1], node: v[2] };
    case ClusterKind.CHUNK:
      if (v.length !== 4 || !isId(v[1]) || typeof v[2] !== 'boolean' || !isBytes(v[3]) || v[3].length > CHUNK_SIZE)
        return bad('chunk is [8, callId, final, bytes] of at most 256 KiB');
      return { kind: 8, callId: v[1], final: v[2], bytes: v[3] };
    case ClusterKind.RESPONSE_STREAM:
      if (v.length !== 3 || !isId(v[1]) || !isCount(v[2]) || v[2] === 0) return bad('response stream is [9, callId, length]');
      return { kind: 9, callId: v[1], length: v[2] };
    case ClusterKind.ACK:
      if (v.length !== 3 || !isId(v[1]) || !isCount(v[2])) return bad('ack is [10, callId, bytes]');
      return { kind: 10, callId: v[1], bytes: v[2] };
    case ClusterKind.PROBE:
      if (v.length !== 2 || !isShortString(v[1], 128)) return bad('probe is [11, node]');
      if (controlProblem(v[1], 'node name') !== undefined) return bad(`probe: ${CONTROL_RULE}`);
      return { kind: 11, node: v[1] };
    case ClusterKind.PROBE_REPLY:
      if (v.length !== 2 || typeof v[1] !== 'boolean') return bad('probe reply is [12, alive]');
      return { kind: 12, alive: v[1] };
    case ClusterKind.SNAPSHOT:
      if (v.length !== 2 || !isCount(v[1])) return bad('snapshot is [13, offset]');
      return { kind: 13, offset: v[1] };
    case ClusterKind.SNAPSHOT_PAGE: {
      if (v.length !== 3 || !isCount(v[1]) || !Array.isArray(v[2])) return bad('snapshot page is [14, total, nodes]');
      return { kind: 14, total: v[1], nodes: v[2].map(nodeInfo) };
    }
    case ClusterKind.PING:
    case ClusterKind.PONG:
      if (v.length !== 1) return bad('ping is [15], pong [16]');
      return { kind: v[0] };
    case ClusterKind.PRESENCE: {
      if (v.length !== 4 || !isMap(v[1]) || typeof v[2] !== 'string') return bad('presence is [20, relay, event, payload]');
      const relay = stamp(v[1]);
      switch (v[2]) {
        case 'join':
        case 'update':
          return { kind: 20, relay, body: { event: v[2], node: nodeInfo(v[3]) } };
        case 'leave':
          if (!isShortString(v[3], 128)) return bad('leave names a node');
          if (controlProblem(v[3], 'node name') !== undefined) return bad(`leave: ${CONTROL_RULE}`);
          return { kind: 20, relay, body: { event: 'leave', node: v[3], instance: null } };
        case 'heartbeat': {
          const p = v[3];
          if (!isMap(p) || !isCount(p.count) || !isShortString(p.digest, 64)) return bad('heartbeat is {count, digest, url?}');
          if (p.url !== undefined && p.url !== null && !isShortString(p.url, 256)) return bad('heartbeat url is a string of at most 256 characters');
          const url = typeof p.url === 'string' ? p.url : undefined;
          return { kind: 20, relay, body: { event: 'heartbeat', count: p.count, digest: p.digest, url } };
        }
        case 'bye':
          return { kind: 20, relay, body: { event: 'bye' } };
        default:
          return bad(`unknown presence event ${String(v[2]).slice(0, 20)}`);
      }
    }
    default:
      return bad(`unknown cluster message kind ${String(v[0]).slice(0, 20)}`);
  }
}

function stamp(v: Record<string, unknown>): RelayStamp {
  if (!isShortString(v.name, 128) || !isShortString(v.id, 64) || !isCount(v.started) || !isCount(v.seq)) return bad('relay is {name, id, started, seq}');
  if (controlProblem(v.name, 'relay name') !== undefined) return bad(`relay name: ${CONTROL_RULE}`);
  if (v.link !== undefined && !isCount(v.link)) return bad('relay link is a count');
  return v.link === undefined
    ? { name: v.name, id: v.id, started: v.started, seq: v.seq }
    : { name: v.name, id: v.id, started: v.started, seq: v.seq, link: v.link };
}

/** A node as another relay announced it, held to the same rules as a node's own hello. */
function nodeInfo(v: unknown): RemoteNodeInfo {
  if (!isMap(v)) return bad('a node is a map');
  const { name, instance, services, labels, address, connectedAt, draining } = v;
  if (typeof name !== 'string' || nodeNameProblem(name) !== undefined) return bad('node name');
  if (!(instance === null || isShortString(instance, 64))) return bad('node instance');
  if (!isMap(services) || !Object.values(services).every((m) => Array.isArray(m) && m.every((x) => typeof x === 'string'))) return bad('node services');
  const problem = servicesProblem(services as Record<string, string[]>);
  if (problem !== undefined || Object.keys(services).length === 0) return bad(`node services: ${problem ?? 'none'}`);
  if (!isMap(labels) || !Object.values(labels).every((x) => typeof x === 'string')) return bad('node labels');
  const labelProblem = labelsProblem(labels as Record<string, string>, 'labels');
  if (labelProblem !== undefined) return bad(labelProblem);
  if (!isShortString(address, 128) || !isCount(connectedAt) || typeof draining !== 'boolean') return bad('node address, connectedAt, draining');
  return { name, instance, services: services as Record<string, string[]>, labels: labels as Record<string, string>, address, connectedAt, draining };
}
