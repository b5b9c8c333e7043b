import { describe, expect, it } from 'vitest';
import { bucketOf, TrafficStats } from '../src/relay/dashboard/traffic.js';

/** A clock the test moves by hand, ms. */
function clock(start = 1_000_000_000_000) {
  let now = start;
  return { now: () => now, tick: (ms: number) => (now += ms) };
}

describe('TrafficStats', () => {
  it('counts calls and errors per service in per-second slots', () => {
    const c = clock();
    const t = new TrafficStats({ window: 10, latencyWindow: 5, now: c.now });
    t.record('Arith.Multiply', 'OK', 0.001);
    t.record('Arith.Divide', 'APP_ERROR', 0.002);
    c.tick(1_000);
    t.record('Arith.Multiply', 'OK', 0.001);
    t.record('KV.Get', 'OK', 0.001);
    c.tick(1_000);
    const s = t.series();
    expect(s.seconds).toBe(9);
    expect(s.services.Arith!.calls.slice(-2)).toEqual([2, 1]);
    expect(s.services.Arith!.errors.slice(-2)).toEqual([1, 0]);
    expect(s.services.KV!.calls.slice(-2)).toEqual([0, 1]);
    expect(s.codes).toEqual({ APP_ERROR: 1 });
  });

  it('gives only the seconds completed since `from`', () => {
    const c = clock();
    const t = new TrafficStats({ window: 10, now: c.now });
    const first = t.series();
    t.record('A.x', 'OK', 0.001);
    c.tick(1_000);
    t.record('A.x', 'OK', 0.001);
    t.record('A.x', 'OK', 0.001);
    c.tick(1_000);
    const next = t.series(first.end);
    expect(next.end).toBe(first.end + 2);
    expect(next.seconds).toBe(2);
    expect(next.services.A!.calls).toEqual([1, 2]);
    expect(t.series(next.end).services.A!.calls).toEqual([]);
  });

  it('forgets seconds older than the window, even after a long quiet time', () => {
    const c = clock();
    const t = new TrafficStats({ window: 5, latencyWindow: 5, now: c.now });
    t.record('A.x', 'TIMEOUT', 1);
    c.tick(3_000);
    expect(t.series().services.A!.calls.reduce((a, b) => a + b, 0)).toBe(1);
    c.tick(3_000);
    const s = t.series();
    expect(s.services.A!.calls.every((n) => n === 0)).toBe(true);
    expect(s.codes).toEqual({});
    expect(s.services.A!.p50).toBeNull();
    c.tick(3_600_000);
    t.record('A.x', 'OK', 0.01);
    c.tick(1_000);
    expect(t.series().services.A!.calls).toEqual([0, 0, 0, 1]);
  });

  it('computes p50 and p99 over the latency window within a bucket', () => {
    const c = clock();
    const t = new TrafficStats({ window: 60, latencyWindow: 30, now: c.now });
    for (let i = 0; i < 98; i++) t.record('S.m', 'OK', 0.002);
    t.record('S.m', 'OK', 0.5);
    t.record('S.m', 'OK', 0.5);
    c.tick(1_000);
    const { p50, p99 } = t.series().services.S!;
    expect(p50!).toBeGreaterThan(2 / 1.4);
    expect(p50!).toBeLessThan(2 * 1.4);
    expect(p99!).toBeGreaterThan(500 / 1.4);
    expect(p99!).toBeLessThan(500 * 1.4);
    c.tick(31_000);
    expect(t.series().services.S!.p50).toBeNull();
  });

  it('tracks at most maxServices by name; the rest count as (other), unserved names as (unknown)', () => {
    const c = clock();
    const t = new TrafficStats({ maxServices: 3, now: c.now });
    for (let i = 0; i < 100; i++) t.record(`S${i}.m`, 'OK', 0.001);
    t.record('Whatever.x', 'NO_SERVICE', undefined, false);
    t.record('NoDot', 'BAD_REQUEST', undefined);
    c.tick(1_000);
    const s = t.series();
    expect(Object.keys(s.services).sort()).toEqual(['(other)', '(unknown)', 'S0', 'S1', 'S2']);
    expect(s.services['(other)']!.calls.at(-1)).toBe(97);
    expect(s.services['(unknown)']!.calls.at(-1)).toBe(2);
    expect(t.serviceCount).toBe(5);
  });

  it('caps custom error codes like the metrics do', () => {
    const c = clock();
    const t = new TrafficStats({ maxCodes: 2, now: c.now });
    for (const code of ['MINE_1', 'MINE_2', 'MINE_3', 'MINE_4', 'TIMEOUT']) t.record('A.x', code, 0.001);
    c.tick(1_000);
    expect(t.series().codes).toEqual({ MINE_1: 1, MINE_2: 1, '(other)': 2, TIMEOUT: 1 });
  });

  it('puts latencies in increasing buckets and refuses bad settings', () => {
    expect(bucketOf(0)).toBe(0);
    expect(bucketOf(0.0001)).toBe(0);
    expect(bucketOf(0.001)).toBeLessThan(bucketOf(0.01));
    expect(bucketOf(1e9)).toBe(bucketOf(1e10));
    expect(() => new TrafficStats({ window: 0 })).toThrow(/window must be a positive integer/);
    expect(() => new TrafficStats({ window: 10, latencyWindow: 20 })).toThrow(/latencyWindow \(20\) must not exceed window \(10\)/);
  });

  it('attributes each error code to the methods it came from, bounded in methods', () => {
    const c = clock();
    const t = new TrafficStats({ window: 10, maxMethods: 2, now: c.now });
    t.record('Arith.Divide', 'APP_ERROR', 0.001);
    t.record('Arith.Divide', 'APP_ERROR', 0.001);
    t.record('KV.Get', 'APP_ERROR', 0.001);
    t.record('Arith.Power', 'NO_METHOD', undefined, false);
    t.record('Hello.Hello', 'TIMEOUT', 0.5);
    c.tick(1_000);
    const s = t.series();
    expect(s.codes).toEqual({ APP_ERROR: 3, NO_METHOD: 1, TIMEOUT: 1 });
    expect({ ...s.codeMethods }).toEqual({
      APP_ERROR: { 'Arith.Divide': 2, 'KV.Get': 1 },
      NO_METHOD: { '(unknown)': 1 },
      // Past maxMethods, under "(other)".
      TIMEOUT: { '(other)': 1 },
    });
  });
});
