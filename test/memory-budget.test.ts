import { describe, expect, it } from 'vitest';
import { HIGH_WATER, MemoryBudget, defaultMaxMemory, type MemoryHolder } from '../src/relay/memory.js';
import { silentLogger } from '../src/util/logger.js';

/** The relay's memory budget over every connection (issue 19, A), with holders in memory. */

class Holder implements MemoryHolder {
  cut: string | undefined;
  constructor(
    public bytes: number,
    readonly who = { door: 'websocket' as const, address: '127.0.0.1:1' },
  ) {}
  held(): number {
    return this.cut ? 0 : this.bytes;
  }
  shed(reason: string): void {
    this.cut = reason;
  }
}

describe('memory budget', () => {
  it('adds up every holder, says when it is pressed, and cuts the largest holders first until under the high-water mark', () => {
    const budget = new MemoryBudget(1_000, silentLogger);
    const holders = [100, 450, 50, 300, 200].map((n) => new Holder(n));
    const releases = holders.map((h) => budget.add(h));
    budget.check();
    // 1,100 > 1,000: the 450 goes (650 left, under 900); nobody else.
    expect(holders.map((h) => h.cut !== undefined)).toEqual([false, true, false, false, false]);
    expect(holders[1]!.cut).toMatch(/over its memory budget \(1000 bytes\) and this connection held the most \(450 bytes\)/);
    expect(budget.total).toBe(650);
    expect(budget.pressed).toBe(false);
    holders[3]!.bytes = 600; // 100 + 50 + 600 + 200 = 950: pressed, not over
    budget.check();
    expect(budget.pressed).toBe(true);
    expect(budget.describe()).toMatch(/holds 950 bytes .* memory budget of 1000 \(--max-memory\)/);
    expect(holders.filter((h) => h.cut).length).toBe(1);
    holders[0]!.bytes = 400; // 1,250: the 600 goes (650 left)
    budget.check();
    expect(holders.map((h) => h.cut !== undefined)).toEqual([false, true, false, true, false]);
    expect(budget.total).toBeLessThanOrEqual(1_000 * HIGH_WATER);
    for (const r of releases) r();
    budget.check();
    expect(budget.total).toBe(0);
    budget.stop();
  });

  it('forgets a released holder and ignores holders that hold nothing', () => {
    const budget = new MemoryBudget(100, silentLogger);
    const a = new Holder(0);
    const b = new Holder(150);
    budget.add(a);
    budget.add(b)();
    budget.check();
    expect(budget.total).toBe(0);
    expect(b.cut).toBeUndefined();
    budget.stop();
  });

  it('defaults to a quarter of the memory there is', () => {
    const n = defaultMaxMemory();
    expect(n).toBeGreaterThan(0);
    expect(Number.isSafeInteger(n)).toBe(true);
  });
});
