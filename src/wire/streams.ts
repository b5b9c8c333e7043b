import { ErrorCode, TunnelError } from '../errors.js';

/**
 * Large params and results travel in chunks so that small calls on the same connection are not
 * stuck behind them (head-of-line blocking), and so that the relay can pass each chunk on as it
 * arrives instead of holding the whole body (docs/PROTOCOL.md, "Large payloads").
 */
export const CHUNK_SIZE = 256 * 1024;

/** Bodies larger than this are streamed. */
export const STREAM_THRESHOLD = CHUNK_SIZE;

/**
 * Chunk bytes a sender may have sent on one stream and not yet seen acknowledged. A receiver that
 * does not acknowledge a stream stalls that stream only: the other streams of the connection keep
 * their own windows (docs/PROTOCOL.md, "Flow control").
 */
export const STREAM_WINDOW = 1024 * 1024;

/**
 * Chunk bytes a sender may have unacknowledged over all streams of one connection: what a receiver
 * may have to hold for one peer, at most.
 */
export const CONNECTION_WINDOW = 16 * 1024 * 1024;

/**
 * Bytes that several reassemblies share: one caller connection's at the relay, one session's or
 * one relay connection's at a node. Memory is charged as chunks arrive and released when a body is
 * complete or dropped, never reserved from an announced length.
 */
export class ReassemblyBudget {
  used = 0;

  constructor(
    readonly limit: number,
    /** Says whose budget this is in the error ("this connection", "this caller session"). */
    readonly owner: string,
    /** A wider budget this one also draws from (a session's within its connection's). */
    readonly parent?: ReassemblyBudget,
  ) {}

  /** Takes `bytes`, or throws OVERLOADED naming the limit. */
  take(bytes: number): void {
    if (this.used + bytes > this.limit) {
      throw new TunnelError(
        ErrorCode.OVERLOADED,
        `${this.owner} already holds ${this.used} bytes of incomplete streamed bodies (the limit is ${this.limit}); finish or cancel them first`,
      );
    }
    this.parent?.take(bytes);
    this.used += bytes;
  }

  release(bytes: number): void {
    this.used -= bytes;
    this.parent?.release(bytes);
  }
}

interface Partial<T> {
  owner: T;
  expected: number;
  received: number;
  pieces: Uint8Array[];
  budget: ReassemblyBudget;
  lastChunk: number;
}

/**
 * Bodies being received in chunks on one connection, keyed by call id. `owner` is whatever the role
 * needs to resume the call once the body is whole (the request head, the pending call). Chunks are
 * kept as they came and joined once, at the end: memory follows what arrived, not what was announced.
 */
export class Reassembly<T> {
  private readonly partials = new Map<number, Partial<T>>();

  /**
   * @param maxBytes largest body; a longer announced length is TOO_LARGE at once.
   * @param budget what the incomplete bodies may hold together (undefined: only `maxBytes` each).
   */
  constructor(
    private readonly maxBytes: number,
    private readonly budget: ReassemblyBudget = new ReassemblyBudget(Number.MAX_SAFE_INTEGER, 'this connection'),
  ) {}

  get size(): number {
    return this.partials.size;
  }

  /** Starts a body of `expected` bytes, drawing on `budget` (default: this reassembly's). */
  start(id: number, expected: number, owner: T, budget: ReassemblyBudget = this.budget): void {
    if (expected > this.maxBytes) {
      throw new TunnelError(ErrorCode.TOO_LARGE, `a body of ${expected} bytes is over the limit of ${this.maxBytes}`);
    }
    this.drop(id);
    this.partials.set(id, { owner, expected, received: 0, pieces: [], budget, lastChunk: Date.now() });
  }

  has(id: number): boolean {
    return this.partials.has(id);
  }

  /**
   * Adds a chunk. Returns the owner and the whole body after the final chunk, undefined before it
   * (or for an id that is not being received: a late chunk of a cancelled call). Throws (and drops
   * the body) when the chunks do not add up to the announced length or the budget is spent.
   */
  add(id: number, bytes: Uint8Array, final: boolean): { owner: T; body: Buffer } | undefined {
    const p = this.partials.get(id);
    if (!p) return undefined;
    const end = p.received + bytes.length;
    if (end > p.expected || (final && end !== p.expected)) {
      this.drop(id);
      throw new TunnelError(ErrorCode.BAD_REQUEST, `chunks of call ${id} add up to ${end} bytes, announced ${p.expected}`);
    }
    try {
      p.budget.take(bytes.length);
    } catch (err) {
      this.drop(id);
      throw err;
    }
    p.pieces.push(bytes);
    p.received = end;
    p.lastChunk = Date.now();
    if (!final) return undefined;
    this.partials.delete(id);
    p.budget.release(p.received);
    return { owner: p.owner, body: Buffer.concat(p.pieces, p.received) };
  }

  drop(id: number): T | undefined {
    const p = this.partials.get(id);
    if (!p) return undefined;
    this.partials.delete(id);
    p.budget.release(p.received);
    return p.owner;
  }

  /** Drops every partial body whose owner matches. */
  dropWhere(match: (owner: T) => boolean): void {
    for (const [id, p] of this.partials) if (match(p.owner)) this.drop(id);
  }

  /** Drops the bodies that received no chunk for `idleMs`; returns their owners, for the caller to fail them. */
  expireIdle(idleMs: number, now = Date.now()): Array<{ id: number; owner: T }> {
    const out: Array<{ id: number; owner: T }> = [];
    for (const [id, p] of this.partials) {
      if (now - p.lastChunk >= idleMs) {
        this.drop(id);
        out.push({ id, owner: p.owner });
      }
    }
    return out;
  }

  clear(): void {
    for (const id of [...this.partials.keys()]) this.drop(id);
  }
}
