import { totalmem } from 'node:os';
import type { Logger } from '../util/logger.js';

/**
 * The relay's one memory budget over every connection (issue 19): each connection's bound keeps one
 * abuser small, this keeps many of them together under a figure the operator chose. Doors register
 * what they hold for a peer (bytes queued for its socket, chunks waiting for its window, bodies
 * reassembled for it); near the budget new work is refused with OVERLOADED, over it the largest
 * holders are cut first, as NATS cuts slow consumers.
 */

/** Something that holds bytes for one peer, and can let go of them by cutting that peer. */
export interface MemoryHolder {
  /** Bytes held for the peer now. */
  held(): number;
  /** Cuts the peer (its calls fail or are cancelled as for a slow consumer), with a reason it can read. */
  shed(reason: string): void;
  /** Who it is, for the log and the audit record. */
  readonly who: { readonly door: 'websocket' | 'msgpack-rpc' | 'http'; readonly address: string };
}

/** Above this share of the budget, new work is refused; shedding stops once under it. */
export const HIGH_WATER = 0.9;
/** How often the holdings are added up, ms. */
export const MEMORY_CHECK_INTERVAL = 100;
/** The shortest time between two checks asked for by {@link MemoryBudget.poke}, ms. */
const POKE_INTERVAL = 5;

/** A quarter of the machine's memory (or of the cgroup's limit, in a container). */
export function defaultMaxMemory(): number {
  // process.constrainedMemory() (Node 19.6+): the cgroup's limit, or 0 / undefined without one.
  const constrained = (process as { constrainedMemory?: () => number | undefined }).constrainedMemory?.();
  const total = constrained !== undefined && constrained > 0 ? Math.min(constrained, totalmem()) : totalmem();
  return Math.floor(total / 4);
}

export class MemoryBudget {
  private readonly holders = new Set<MemoryHolder>();
  private timer: NodeJS.Timeout | undefined;
  private totalNow = 0;
  private pressedNow = false;
  private checkedAt = 0;

  constructor(
    /** Bytes every holder together may hold. */
    readonly limit: number,
    private readonly log: Logger,
    /** Called for each holder cut to get back under the budget (metrics, audit). */
    private readonly onShed?: (holder: MemoryHolder, bytes: number) => void,
  ) {}

  /** Bytes held, as of the last check. */
  get total(): number {
    return this.totalNow;
  }

  /** True while held memory is above {@link HIGH_WATER} of the budget: refuse new work. */
  get pressed(): boolean {
    return this.pressedNow;
  }

  /** Why new work is refused now, for an OVERLOADED error. */
  describe(): string {
    return `the relay holds ${this.totalNow} bytes for its peers, near its memory budget of ${this.limit} (--max-memory); try again shortly`;
  }

  /** Starts counting `holder`; returns the function that stops it (call it when the peer goes). */
  add(holder: MemoryHolder): () => void {
    this.holders.add(holder);
    if (!this.timer) {
      this.timer = setInterval(() => this.check(), MEMORY_CHECK_INTERVAL);
      this.timer.unref();
    }
    return () => {
      this.holders.delete(holder);
      if (this.holders.size === 0) this.stop();
    };
  }

  /**
   * Something grew fast (a result reassembled, a large write): adds up again now unless that was
   * done in the last few milliseconds, so that a burst does not outrun the timer.
   */
  poke(): void {
    if (performance.now() - this.checkedAt >= POKE_INTERVAL) this.check();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Adds up the holdings; over the budget, cuts the largest holders until under the high-water mark. */
  check(): void {
    this.checkedAt = performance.now();
    let total = 0;
    const sizes: Array<[MemoryHolder, number]> = [];
    for (const h of this.holders) {
      const n = h.held();
      if (n <= 0) continue;
      total += n;
      sizes.push([h, n]);
    }
    if (total > this.limit) {
      sizes.sort((a, b) => b[1] - a[1]);
      const target = this.limit * HIGH_WATER;
      for (const [holder, bytes] of sizes) {
        if (total <= target) break;
        this.log.warn({ ...holder.who, heldBytes: bytes, totalBytes: total, limit: this.limit }, 'over the memory budget: cutting the largest holder');
        this.holders.delete(holder);
        holder.shed(`the relay is over its memory budget (${this.limit} bytes) and this connection held the most (${bytes} bytes); read your messages`);
        this.onShed?.(holder, bytes);
        total -= bytes;
      }
    }
    this.totalNow = total;
    this.pressedNow = total > this.limit * HIGH_WATER;
  }
}
