import { ErrorCode, TunnelError } from '../errors.js';

/** Node names an operator may hold drained on one relay at once. */
export const MAX_DRAINED = 1_000;

/**
 * The node names an operator drained on this relay (cordoned, in Kubernetes' words): a node of such a
 * name takes no new calls here, through every reconnect, until it is undrained. Bounded: at most
 * `limit` names; a drain past it is refused.
 */
export class DrainMarks {
  private readonly names = new Set<string>();

  constructor(private readonly limit = MAX_DRAINED) {}

  get size(): number {
    return this.names.size;
  }

  has(name: string): boolean {
    return this.names.has(name);
  }

  /** Marks `name`; throws OVERLOADED when `limit` names are marked already. */
  add(name: string): void {
    if (this.names.has(name)) return;
    if (this.names.size >= this.limit) {
      throw new TunnelError(ErrorCode.OVERLOADED, `at most ${this.limit} nodes may be drained on this relay at once; undrain some first`);
    }
    this.names.add(name);
  }

  /** Unmarks `name`; false when it was not marked. */
  delete(name: string): boolean {
    return this.names.delete(name);
  }

  /** The marked names in the order they were marked, at most `max`. */
  list(max: number): string[] {
    const out: string[] = [];
    for (const n of this.names) {
      if (out.length >= max) break;
      out.push(n);
    }
    return out;
  }
}
