/**
 * Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base * 2^n)].
 * Full jitter spreads a fleet of nodes that all lost the same relay, so they do not return in step.
 */
export class Backoff {
  /** Waits drawn since the last reset: what logs call the attempt. */
  private attempt = 0;
  /** The power of two of the next ceiling; {@link exhaust} jumps it to the cap, the count goes on. */
  private exponent = 0;

  constructor(
    readonly base: number,
    readonly cap: number,
    private readonly random: () => number = Math.random,
  ) {
    if (!(base > 0) || !(cap >= base)) throw new RangeError(`backoff needs 0 < base <= cap, got base=${base} cap=${cap}`);
  }

  /** The next wait, and the ceiling it was drawn under (for logs). */
  next(): { delay: number; ceiling: number; attempt: number } {
    const ceiling = Math.min(this.cap, this.base * 2 ** Math.min(this.exponent, 30));
    this.exponent++;
    this.attempt++;
    return { delay: Math.round(this.random() * ceiling), ceiling, attempt: this.attempt };
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
