import { ErrorCode, TunnelError, type WireError } from '../errors.js';

/**
 * Message shapes on the WebSocket transport. Kinds 0–2 follow the MessagePack-RPC spec; 3 and up
 * are our extensions. Params and results travel as a `bin` holding a MessagePack value so that the
 * relay can forward them without decoding (docs/PROTOCOL.md).
 */
export const Kind = {
  REQUEST: 0,
  RESPONSE: 1,
  NOTIFY: 2,
  CANCEL: 3,
  HELLO: 4,
  WELCOME: 5,
  SESSION_CLOSED: 6,
  GOAWAY: 7,
  CHUNK: 8,
  RESPONSE_STREAM: 9,
  CHUNK_ACK: 10,
} as const;

/**
 * The protocol version our peers speak. Version 2 made chunk acknowledgements name their stream
 * (`[10, id, bytes]`, per-stream flow control); a relay still accepts version 1 peers for this
 * release and acknowledges their chunks the old way (`[10, bytes]`).
 */
export const PROTOCOL_VERSION = 2;

/** Versions a relay accepts in a hello. */
export const SUPPORTED_VERSIONS: readonly number[] = [1, 2];

/** In a hello's method list: the node takes any method of that service (a forwarded service). */
export const ANY_METHOD = '*';

/** Largest params or result by default, bytes (the relay's `--max-message`). */
export const DEFAULT_MAX_BODY = 16 * 1024 * 1024;

/** Room for the envelope (kind, id, method, metadata) around the largest params or result. */
export const ENVELOPE_ALLOWANCE = 64 * 1024;

/** The largest WebSocket message for a given largest body. */
export function frameLimit(maxBody: number): number {
  return maxBody + ENVELOPE_ALLOWANCE;
}

/** The largest message every role accepts unless told otherwise. */
export const DEFAULT_MAX_FRAME = frameLimit(DEFAULT_MAX_BODY);

/** Largest request id; ids are unsigned 32-bit so that every MessagePack peer can hold them. */
export const MAX_ID = 0xffff_ffff;

export type Role = 'node' | 'caller';

/** Per-call metadata a caller sends to the relay. */
export interface CallerMeta {
  /** Milliseconds the caller is willing to wait. */
  timeout?: number;
  /** Name of the node that must serve the call. */
  node?: string;
}

/** Per-call metadata the relay sends to a node. */
export interface NodeMeta {
  session: string;
  address: string;
  identity: string | null;
  timeout: number;
}

export interface ServiceDescription {
  [service: string]: string[];
}

export interface Hello {
  version: number;
  role: Role;
  /** Node name (nodes only). */
  name?: string;
  /** Services and their methods (nodes only). */
  services?: ServiceDescription;
  labels?: Record<string, string>;
  token?: string;
  /**
   * Random id of the node process, the same on every reconnect of that process: the relay tells a
   * reconnect of the same node (replace the old connection) from another process claiming its name.
   */
  instance?: string;
}

export interface Welcome {
  version: number;
  relay: string;
  /** The caller's session id, or the node's accepted name. */
  session?: string;
  name?: string;
  /** Largest params or result the relay accepts, bytes; peers check before sending. */
  maxMessage?: number;
  /**
   * To nodes, from a relay of a cluster: the URL this relay advertises (`--advertise`), so that a
   * node with several tunnels can tell that a URL another relay lists is one it already holds.
   */
  url?: string;
  /**
   * To nodes, from a relay of a cluster: the advertised URLs of the other relays it hears from now
   * (at most 32, each at most 256 characters: `WELCOME_RELAY_LIMITS` in bounds.ts), where the node may go when this relay stays unreachable.
   * Older nodes ignore it.
   */
  relays?: string[];
}

export type Message =
  /**
   * `stream` > 0: params (that many bytes) follow in CHUNK messages for this id; `params` is empty.
   */
  | { kind: typeof Kind.REQUEST; id: number; method: string; params: Uint8Array; meta: Record<string, unknown>; stream: number }
  | { kind: typeof Kind.RESPONSE; id: number; error: WireError | null; result: Uint8Array | null }
  | { kind: typeof Kind.NOTIFY; method: string; params: Uint8Array }
  | { kind: typeof Kind.CANCEL; id: number }
  | { kind: typeof Kind.HELLO; hello: Hello }
  | { kind: typeof Kind.WELCOME; welcome: Welcome }
  | { kind: typeof Kind.SESSION_CLOSED; session: string }
  | { kind: typeof Kind.GOAWAY; reason: string }
  | { kind: typeof Kind.CHUNK; id: number; final: boolean; bytes: Uint8Array }
  | { kind: typeof Kind.RESPONSE_STREAM; id: number; length: number }
  /** `id` undefined: a version 1 acknowledgement, for the whole connection. */
  | { kind: typeof Kind.CHUNK_ACK; id: number | undefined; bytes: number };

export const request = (id: number, method: string, params: Uint8Array | null, meta: object) => [Kind.REQUEST, id, method, params, meta];
export const response = (id: number, error: WireError | null, result: Uint8Array | null) => [Kind.RESPONSE, id, error, error ? null : result];
export const notify = (method: string, params: Uint8Array) => [Kind.NOTIFY, method, params];
export const cancel = (id: number) => [Kind.CANCEL, id];
export const hello = (h: Hello) => [Kind.HELLO, h];
export const welcome = (w: Welcome) => [Kind.WELCOME, w];
export const sessionClosed = (session: string) => [Kind.SESSION_CLOSED, session];
export const goaway = (reason: string) => [Kind.GOAWAY, reason];
export const chunk = (id: number, final: boolean, bytes: Uint8Array) => [Kind.CHUNK, id, final, bytes];
export const responseStream = (id: number, length: number) => [Kind.RESPONSE_STREAM, id, length];
export const chunkAck = (id: number, bytes: number) => [Kind.CHUNK_ACK, id, bytes];
/** The version 1 form, for peers that said version 1 in their hello. */
export const chunkAckV1 = (bytes: number) => [Kind.CHUNK_ACK, bytes];

const EMPTY = new Uint8Array(0);

/**
 * A message that could not be accepted. `id` is set when the message carried a usable request id,
 * so that the receiver can answer it with BAD_REQUEST instead of dropping the connection.
 */
export class ShapeError extends TunnelError {
  constructor(
    message: string,
    readonly id: number | undefined,
  ) {
    super(ErrorCode.BAD_REQUEST, message);
  }
}

const isId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_ID;
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isLength = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);

function describe(v: unknown): string {
  if (v === null) return 'nil';
  if (Array.isArray(v)) return `array(${v.length})`;
  if (v instanceof Uint8Array) return `bin(${v.length})`;
  return typeof v;
}

/** Checks one decoded value against the message shapes; throws ShapeError with a precise reason. */
export function parse(v: unknown): Message {
  if (!Array.isArray(v) || v.length < 2) {
    throw new ShapeError(`a message is an array [kind, ...], got ${describe(v)}`, undefined);
  }
  const kind = v[0];
  switch (kind) {
    case Kind.REQUEST: {
      const id = isId(v[1]) ? v[1] : undefined;
      if (id === undefined) throw new ShapeError(`request id must be an integer 0..${MAX_ID}`, undefined);
      if (v.length !== 4 && v.length !== 5) throw new ShapeError(`request has ${v.length} elements, want 4 or 5`, id);
      if (typeof v[2] !== 'string' || v[2].length === 0) throw new ShapeError('request method must be a non-empty string', id);
      const meta = v[4] ?? {};
      if (!isMap(meta)) throw new ShapeError(`request metadata must be a map or nil, got ${describe(meta)}`, id);
      if (v[3] === null && meta.stream !== undefined) {
        if (!isLength(meta.stream)) throw new ShapeError('request metadata stream must be a positive byte count', id);
        return { kind, id, method: v[2], params: EMPTY, meta, stream: meta.stream };
      }
      if (!isBytes(v[3])) throw new ShapeError(`request params must be bin (MessagePack-encoded array), got ${describe(v[3])}`, id);
      return { kind, id, method: v[2], params: v[3], meta, stream: 0 };
    }
    case Kind.RESPONSE: {
      if (v.length !== 4 || !isId(v[1])) throw new ShapeError('response is [1, id, error, result]', undefined);
      const error = v[2];
      if (error !== null && !(isMap(error) && typeof error.code === 'string' && typeof error.message === 'string')) {
        throw new ShapeError('response error must be nil or {code, message, data?}', undefined);
      }
      if (v[3] !== null && !isBytes(v[3])) throw new ShapeError('response result must be bin or nil', undefined);
      return { kind, id: v[1], error: error as WireError | null, result: v[3] as Uint8Array | null };
    }
    case Kind.NOTIFY:
      if (v.length !== 3 || typeof v[1] !== 'string' || !isBytes(v[2])) {
        throw new ShapeError('notification is [2, method, params-bin]', undefined);
      }
      return { kind, method: v[1], params: v[2] };
    case Kind.CANCEL:
      if (v.length !== 2 || !isId(v[1])) throw new ShapeError('cancel is [3, id]', undefined);
      return { kind, id: v[1] };
    case Kind.HELLO: {
      const h = v[1];
      if (v.length !== 2 || !isMap(h)) throw new ShapeError('hello is [4, {version, role, ...}]', undefined);
      if (typeof h.version !== 'number') throw new ShapeError('hello.version must be a number', undefined);
      if (h.role !== 'node' && h.role !== 'caller') throw new ShapeError('hello.role must be "node" or "caller"', undefined);
      if (h.name !== undefined && typeof h.name !== 'string') throw new ShapeError('hello.name must be a string', undefined);
      if (h.token !== undefined && typeof h.token !== 'string') throw new ShapeError('hello.token must be a string', undefined);
      // Its length is a rule of the relay's (1008, like every limit of a hello), not a shape (1002).
      if (h.instance !== undefined && typeof h.instance !== 'string') throw new ShapeError('hello.instance must be a string', undefined);
      if (h.services !== undefined && !isServices(h.services)) {
        throw new ShapeError('hello.services must map service names to arrays of method names', undefined);
      }
      if (h.labels !== undefined && !isStringMap(h.labels)) throw new ShapeError('hello.labels must map strings to strings', undefined);
      return { kind, hello: h as unknown as Hello };
    }
    case Kind.WELCOME:
      if (v.length !== 2 || !isMap(v[1])) throw new ShapeError('welcome is [5, {...}]', undefined);
      return { kind, welcome: v[1] as unknown as Welcome };
    case Kind.SESSION_CLOSED:
      if (v.length !== 2 || typeof v[1] !== 'string') throw new ShapeError('session closed is [6, session]', undefined);
      return { kind, session: v[1] };
    case Kind.GOAWAY:
      if (v.length !== 2 || typeof v[1] !== 'string') throw new ShapeError('goaway is [7, reason]', undefined);
      return { kind, reason: v[1] };
    case Kind.CHUNK:
      if (v.length !== 4 || !isId(v[1]) || typeof v[2] !== 'boolean' || !isBytes(v[3])) {
        throw new ShapeError('chunk is [8, id, final, bytes]', undefined);
      }
      return { kind, id: v[1], final: v[2], bytes: v[3] };
    case Kind.RESPONSE_STREAM:
      if (v.length !== 3 || !isId(v[1]) || !isLength(v[2])) throw new ShapeError('response stream is [9, id, length]', undefined);
      return { kind, id: v[1], length: v[2] };
    case Kind.CHUNK_ACK:
      if (v.length === 3 && isId(v[1]) && isCount(v[2])) return { kind, id: v[1], bytes: v[2] };
      if (v.length === 2 && isCount(v[1])) return { kind, id: undefined, bytes: v[1] };
      throw new ShapeError('chunk acknowledgement is [10, id, bytes]: a stream id and a byte count', undefined);
    default:
      throw new ShapeError(`unknown message kind ${String(kind)}`, undefined);
  }
}

function isServices(v: unknown): v is ServiceDescription {
  if (!isMap(v)) return false;
  for (const methods of Object.values(v)) {
    if (!Array.isArray(methods) || !methods.every((m) => typeof m === 'string')) return false;
  }
  return true;
}

function isStringMap(v: unknown): v is Record<string, string> {
  return isMap(v) && Object.values(v).every((x) => typeof x === 'string');
}
