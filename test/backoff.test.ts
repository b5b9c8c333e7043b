// The one backoff of every retry wait (src/util/backoff.ts): the node's reconnects, the caller's
// retries of NODE_LOST calls, the relay's reconnects to NATS.
import { describe, expect, it } from 'vitest';
import { Backoff } from '../src/util/backoff.js';

/** A random source that answers `values` in turn, then repeats the last. */
const sequence = (...values: number[]) => {
  let i = 0;
  return () => values[Math.min(i++, values.length - 1)]!;
};

describe('Backoff, full jitter', () => {
  it('draws each wait in [0, ceiling], the ceiling doubling from base to the cap', () => {
    const low = new Backoff(100, 2_000, { random: () => 0 });
    const high = new Backoff(100, 2_000, { random: () => 0.999_999 });
    const lows = Array.from({ length: 7 }, () => low.next());
    const highs = Array.from({ length: 7 }, () => high.next());
    expect(lows.map((w) => w.ceiling)).toEqual([100, 200, 400, 800, 1_600, 2_000, 2_000]);
    expect(lows.map((w) => w.delay)).toEqual([0, 0, 0, 0, 0, 0, 0]);
    expect(highs.map((w) => w.delay)).toEqual([100, 200, 400, 800, 1_600, 2_000, 2_000]);
    expect(highs.map((w) => w.attempt)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  it('scales the random draw by the ceiling and rounds to whole milliseconds', () => {
    const b = new Backoff(500, 30_000, { random: sequence(0.5, 0.25, 0.1234) });
    expect(b.next()).toEqual({ delay: 250, ceiling: 500, attempt: 1 });
    expect(b.next()).toEqual({ delay: 250, ceiling: 1_000, attempt: 2 });
    expect(b.next()).toEqual({ delay: 247, ceiling: 2_000, attempt: 3 });
  });

  it('uses Math.random by default and stays in range', () => {
    const b = new Backoff(10, 80);
    for (let i = 0; i < 200; i++) {
      const { delay, ceiling } = b.next();
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(ceiling);
      expect(ceiling).toBeLessThanOrEqual(80);
    }
  });

  it('exhaust() jumps to the cap at once and keeps counting attempts; reset() starts over', () => {
    const b = new Backoff(500, 30_000, { random: () => 1 });
    b.next();
    b.exhaust();
    expect(b.next()).toEqual({ delay: 30_000, ceiling: 30_000, attempt: 2 });
    expect(b.next()).toEqual({ delay: 30_000, ceiling: 30_000, attempt: 3 });
    b.reset();
    expect(b.next()).toEqual({ delay: 500, ceiling: 500, attempt: 1 });
  });

  it('stops doubling at 2^30 times the base: a long outage never overflows', () => {
    const b = new Backoff(1, 2 ** 40, { random: () => 1 });
    let last = 0;
    for (let i = 0; i < 100; i++) last = b.next().ceiling;
    expect(last).toBe(2 ** 30);
    expect(Number.isFinite(last)).toBe(true);
  });
});

describe('Backoff, no jitter', () => {
  it('waits the whole ceiling, never asking the random source', () => {
    let asked = 0;
    const b = new Backoff(1_000, 30_000, {
      jitter: 'none',
      random: () => {
        asked++;
        return 0;
      },
    });
    // What the relay's NATS link waited before it used this class: min(30 s, 1 s · 2^min(n, 5)).
    const waits = Array.from({ length: 8 }, () => b.next().delay);
    expect(waits).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    expect(asked).toBe(0);
    b.reset();
    expect(b.next()).toEqual({ delay: 1_000, ceiling: 1_000, attempt: 1 });
  });
});

describe('Backoff settings', () => {
  it('refuses a base that is not positive and a cap below the base, naming both', () => {
    expect(() => new Backoff(0, 10)).toThrow('backoff needs 0 < base <= cap, got base=0 cap=10');
    expect(() => new Backoff(100, 10)).toThrow('backoff needs 0 < base <= cap, got base=100 cap=10');
    expect(() => new Backoff(Number.NaN, 10)).toThrow(RangeError);
  });
});
