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
 * Chunk bytes a sender may have on the way to one peer before the peer acknowledges them. The
 * socket's own buffers (several MiB on loopback) would otherwise fill with chunks, and a small
 * message sent after them would wait for all of them: the window bounds that wait.
 */
export const CHUNK_WINDOW = 1024 * 1024;

/** A receiver acknowledges chunk bytes once this many have arrived since its last acknowledgement. */
export const ACK_EVERY = 256 * 1024;

interface Partial<T> {
  owner: T;
  /** Allocated once at the announced size: each chunk is copied in as it arrives, so completing a
   *  body costs no copy of the whole (which would stall the event loop for a 16 MiB body). */
  body: Buffer;
  received: number;
}

/**
 * Bodies being received in chunks on one connection, keyed by call id. `owner` is whatever the role
 * needs to resume the call once the body is whole (the request head, the pending call).
 */
export class Reassembly<T> {
  private readonly partials = new Map<number, Partial<T>>();

  constructor(private readonly maxBytes: number) {}

  get size(): number {
    return this.partials.size;
  }

  start(id: number, expected: number, owner: T): void {
    if (expected > this.maxBytes) {
      throw new TunnelError(ErrorCode.TOO_LARGE, `a body of ${expected} bytes is over the limit of ${this.maxBytes}`);
    }
    this.partials.set(id, { owner, body: Buffer.allocUnsafe(expected), received: 0 });
  }

  has(id: number): boolean {
    return this.partials.has(id);
  }

  /**
   * Adds a chunk. Returns the owner and the whole body after the final chunk, undefined before it
   * (or for an id that is not being received: a late chunk of a cancelled call).
   */
  add(id: number, bytes: Uint8Array, final: boolean): { owner: T; body: Buffer } | undefined {
    const p = this.partials.get(id);
    if (!p) return undefined;
    const end = p.received + bytes.length;
    if (end > p.body.length || (final && end !== p.body.length)) {
      this.partials.delete(id);
      throw new TunnelError(ErrorCode.BAD_REQUEST, `chunks of call ${id} add up to ${end} bytes, announced ${p.body.length}`);
    }
    p.body.set(bytes, p.received);
    p.received = end;
    if (!final) return undefined;
    this.partials.delete(id);
    return { owner: p.owner, body: p.body };
  }

  drop(id: number): T | undefined {
    const p = this.partials.get(id);
    this.partials.delete(id);
    return p?.owner;
  }

  /** Drops every partial body whose owner matches. */
  dropWhere(match: (owner: T) => boolean): void {
    for (const [id, p] of this.partials) if (match(p.owner)) this.partials.delete(id);
  }

  clear(): void {
    this.partials.clear();
  }
}
