/**
 * How a wait is drawn under its ceiling: `full` jitter is uniform in [0, ceiling], so a fleet that
 * lost the same relay does not return in step; `none` waits the whole ceiling, for a single client
 * of a server that is not crowded by its peers (the relay's own reconnect to NATS).
 */
export type Jitter = 'full' | 'none';

export interface BackoffOptions {
  /** Default `full`. */
  jitter?: Jitter;
  /** Uniform in [0, 1); `Math.random` by default. Tests pass their own. */
  random?: () => number;
}

/**
 * Exponential backoff: the n-th wait is drawn under min(cap, base * 2^n) (see {@link Jitter}). The
 * one backoff of every retry: a node's reconnects, a caller's retries of NODE_LOST calls, the
 * relay's reconnects to the cluster's NATS.
 */
export class Backoff {
  /** Waits drawn since the last reset: what logs call the attempt. */
  private attempt = 0;
  /** The power of two of the next ceiling; {@link exhaust} jumps it to the cap, the count goes on. */
  private exponent = 0;
  private readonly jitter: Jitter;
  private readonly random: () => number;

  constructor(
    readonly base: number,
    readonly cap: number,
    options: BackoffOptions = {},
  ) {
    if (!(base > 0) || !(cap >= base)) throw new RangeError(`backoff needs 0 < base <= cap, got base=${base} cap=${cap}`);
    this.jitter = options.jitter ?? 'full';
    this.random = options.random ?? Math.random;
  }

  /** The next wait, and the ceiling it was drawn under (for logs). */
  next(): { delay: number; ceiling: number; attempt: number } {
    const ceiling = Math.min(this.cap, this.base * 2 ** Math.min(this.exponent, 30));
    this.exponent++;
    this.attempt++;
    const delay = this.jitter === 'none' ? ceiling : Math.round(this.random() * ceiling);
    return { delay, ceiling, attempt: this.attempt };
  }

  /** Waits at the ceiling from now on (used when the relay refuses our credentials). */
  exhaust(): void {
    this.exponent = 31;
  }

  reset(): void {
    this.attempt = 0;
    this.exponent = 0;
  }
}
