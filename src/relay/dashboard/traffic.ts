import { ErrorCode } from '../../errors.js';
import { LabelCap, OTHER, UNKNOWN } from '../metrics.js';

/** Settings of {@link TrafficStats}; every one has a default. */
export interface TrafficOptions {
  /** Seconds of calls/s and errors/s kept per service (default 300: five minutes). */
  window?: number;
  /** Seconds over which p50 and p99 are computed (default 60, or the window when shorter). */
  latencyWindow?: number;
  /** Services tracked by name; calls of any other service count under "(other)" (default 64). */
  maxServices?: number;
  /** Custom error codes counted by name; more count under "(other)" (default 50). */
  maxCodes?: number;
  /** Methods errors are attributed to by name; errors of any other method count under "(other)" (default 200). */
  maxMethods?: number;
  /** The clock, ms (tests). */
  now?: () => number;
}

/** One service's counters, as the dashboard shows them. */
export interface ServiceSeries {
  /** Calls answered in each second of the range, oldest first. */
  calls: number[];
  /** Of those, the ones that ended with an error code. */
  errors: number[];
  /** Median and 99th percentile of the latency over the latency window, ms; null without calls. */
  p50: number | null;
  p99: number | null;
}

/** Counters of the seconds [`end` - `seconds`, `end`), `end` being the second in progress (epoch seconds). */
export interface TrafficSeries {
  end: number;
  seconds: number;
  services: Record<string, ServiceSeries>;
  /** Calls per error code over the whole window, every service together. */
  codes: Record<string, number>;
  /** The same calls by the method they came from: code -> `Service.Method` -> calls. */
  codeMethods: Record<string, Record<string, number>>;
}

/** Latency buckets: from 0.1 ms, each 1.4 times the previous, up to past 300 s (the longest deadline). */
const MIN_LATENCY = 0.0001;
const FACTOR = 1.4;
const BUCKETS = Math.ceil(Math.log(300 / MIN_LATENCY) / Math.log(FACTOR)) + 2;
const LOG_FACTOR = Math.log(FACTOR);
/** Methods whose service is remembered, so that a call costs one map look-up; past it, the name is cut each time. */
const METHOD_CACHE = 2_000;
const KNOWN_CODES = new Set<string>(Object.values(ErrorCode));
/** (code, method) pairs counted in one second; more count under the code and "(other)". */
const PAIRS_PER_SECOND = 256;

class ServiceTraffic {
  readonly calls: Uint32Array;
  readonly errors: Uint32Array;
  /** Per second of the latency window, a histogram of BUCKETS counts. */
  readonly latency: Uint32Array;

  constructor(window: number, latencyWindow: number) {
    this.calls = new Uint32Array(window);
    this.errors = new Uint32Array(window);
    this.latency = new Uint32Array(latencyWindow * BUCKETS);
  }
}

/**
 * Calls/s, errors/s and latency per service over the last minutes: ring buffers of per-second
 * counters, fed by the relay's call observer. Memory is bounded: at most `maxServices` services
 * (plus "(other)" and "(unknown)"), each a few fixed arrays; error codes are capped like the metrics'.
 */
export class TrafficStats {
  readonly window: number;
  readonly latencyWindow: number;
  private readonly maxServices: number;
  private readonly now: () => number;
  private readonly services = new Map<string, ServiceTraffic>();
  private readonly byMethod = new Map<string, ServiceTraffic>();
  /** Per second of the window, the calls of each error code and method (undefined: none that second). */
  private readonly codeRing: (Map<string, Map<string, number>> | undefined)[];
  private readonly pairs: Uint16Array;
  private readonly codeCap: LabelCap;
  private readonly methodCap: LabelCap;
  /** The latest second the rings were advanced to. */
  private head: number;

  constructor(options: TrafficOptions = {}) {
    this.window = positiveInteger(options.window ?? 300, 'window');
    this.latencyWindow = positiveInteger(options.latencyWindow ?? Math.min(60, this.window), 'latencyWindow');
    if (this.latencyWindow > this.window) throw new RangeError(`TrafficStats latencyWindow (${this.latencyWindow}) must not exceed window (${this.window})`);
    this.maxServices = positiveInteger(options.maxServices ?? 64, 'maxServices');
    this.codeCap = new LabelCap(positiveInteger(options.maxCodes ?? 50, 'maxCodes'));
    this.methodCap = new LabelCap(positiveInteger(options.maxMethods ?? 200, 'maxMethods'));
    this.now = options.now ?? Date.now;
    this.codeRing = new Array<Map<string, Map<string, number>> | undefined>(this.window);
    this.pairs = new Uint16Array(this.window);
    this.head = this.second();
  }

  /** Services tracked now, "(other)" and "(unknown)" included. */
  get serviceCount(): number {
    return this.services.size;
  }

  /**
   * Counts one finished call of `method` (`Service.Method`) with outcome `code` (`OK` or an error
   * code), `seconds` from routing to answer (undefined when it never reached a node). `known` is
   * false when no node serves the method: then the name is the caller's and counts as "(unknown)".
   */
  record(method: string, code: string, seconds: number | undefined, known = true): void {
    // A clock set back counts in the latest second rather than overwrite a newer one.
    const s = Math.max(this.second(), this.head);
    if (s > this.head) this.advance(s);
    const t = known ? this.trafficOf(method) : this.service(UNKNOWN);
    const slot = s % this.window;
    t.calls[slot]!++;
    if (code !== 'OK') {
      t.errors[slot]!++;
      const name = KNOWN_CODES.has(code) ? code : this.codeCap.get(code);
      let codes = this.codeRing[slot];
      if (!codes) this.codeRing[slot] = codes = new Map();
      let methods = codes.get(name);
      if (!methods) codes.set(name, (methods = new Map()));
      let by = known ? this.methodCap.get(method) : UNKNOWN;
      if (!methods.has(by) && this.pairs[slot]! >= PAIRS_PER_SECOND) by = OTHER;
      if (!methods.has(by)) this.pairs[slot]!++;
      methods.set(by, (methods.get(by) ?? 0) + 1);
    }
    if (seconds !== undefined) t.latency[(s % this.latencyWindow) * BUCKETS + bucketOf(seconds)]!++;
  }

  /** The completed seconds from `from` (default: the whole window) up to the one in progress. */
  series(from?: number): TrafficSeries {
    const end = this.second();
    if (end > this.head) this.advance(end);
    const start = Math.max(from ?? end - this.window, end - this.window + 1, 0);
    const seconds = Math.max(0, end - start);
    const services: Record<string, ServiceSeries> = {};
    for (const [name, t] of this.services) {
      const calls: number[] = [];
      const errors: number[] = [];
      for (let s = start; s < end; s++) {
        calls.push(t.calls[s % this.window]!);
        errors.push(t.errors[s % this.window]!);
      }
      services[name] = { calls, errors, ...this.percentiles(t, end) };
    }
    const codes: Record<string, number> = {};
    // Codes and method names come from peers: objects without a prototype take any of them as a key.
    const codeMethods: Record<string, Record<string, number>> = Object.create(null) as Record<string, Record<string, number>>;
    for (let s = end - this.window + 1; s < end; s++) {
      const m = this.codeRing[s % this.window];
      if (!m) continue;
      for (const [code, methods] of m) {
        const by = (codeMethods[code] ??= Object.create(null) as Record<string, number>);
        for (const [method, n] of methods) {
          codes[code] = (codes[code] ?? 0) + n;
          by[method] = (by[method] ?? 0) + n;
        }
      }
    }
    return { end, seconds, services, codes, codeMethods };
  }

  private second(): number {
    return Math.floor(this.now() / 1_000);
  }

  private trafficOf(method: string): ServiceTraffic {
    const cached = this.byMethod.get(method);
    if (cached) return cached;
    const dot = method.lastIndexOf('.');
    const t = this.service(dot > 0 ? method.slice(0, dot) : UNKNOWN);
    if (this.byMethod.size < METHOD_CACHE) this.byMethod.set(method, t);
    return t;
  }

  private service(name: string): ServiceTraffic {
    let t = this.services.get(name);
    if (t) return t;
    const named = this.services.size - (this.services.has(OTHER) ? 1 : 0) - (this.services.has(UNKNOWN) ? 1 : 0);
    if (name !== UNKNOWN && name !== OTHER && named >= this.maxServices) return this.service(OTHER);
    t = new ServiceTraffic(this.window, this.latencyWindow);
    this.services.set(name, t);
    return t;
  }

  /** Clears the slots of the seconds after `head` up to `to`, which are reused from `window` seconds ago. */
  private advance(to: number): void {
    const from = Math.max(this.head + 1, to - this.window + 1);
    for (let s = from; s <= to; s++) {
      const slot = s % this.window;
      const lat = (s % this.latencyWindow) * BUCKETS;
      this.codeRing[slot] = undefined;
      this.pairs[slot] = 0;
      for (const t of this.services.values()) {
        t.calls[slot] = 0;
        t.errors[slot] = 0;
        t.latency.fill(0, lat, lat + BUCKETS);
      }
    }
    this.head = to;
  }

  /** p50 and p99 over the completed seconds of the latency window, from the buckets' geometric middles, ms. */
  private percentiles(t: ServiceTraffic, end: number): { p50: number | null; p99: number | null } {
    const sum = new Array<number>(BUCKETS).fill(0);
    let total = 0;
    for (let s = Math.max(0, end - this.latencyWindow + 1); s < end; s++) {
      const base = (s % this.latencyWindow) * BUCKETS;
      for (let b = 0; b < BUCKETS; b++) {
        const n = t.latency[base + b]!;
        sum[b]! += n;
        total += n;
      }
    }
    if (total === 0) return { p50: null, p99: null };
    return { p50: quantile(sum, total, 0.5), p99: quantile(sum, total, 0.99) };
  }
}

/** The bucket of a latency: bucket 0 holds up to 0.1 ms, bucket i up to 0.1 ms · 1.4^i. */
export function bucketOf(seconds: number): number {
  if (!(seconds > MIN_LATENCY)) return 0;
  return Math.min(BUCKETS - 1, Math.ceil(Math.log(seconds / MIN_LATENCY) / LOG_FACTOR));
}

function quantile(buckets: number[], total: number, q: number): number {
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let b = 0; b < buckets.length; b++) {
    seen += buckets[b]!;
    if (seen >= rank) {
      const upper = MIN_LATENCY * FACTOR ** b;
      const middle = b === 0 ? upper / 2 : upper / Math.sqrt(FACTOR);
      return Math.round(middle * 1e6) / 1e3;
    }
  }
  return MIN_LATENCY * FACTOR ** (buckets.length - 1) * 1e3;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`TrafficStats ${name} must be a positive integer; got ${value}`);
  return value;
}
