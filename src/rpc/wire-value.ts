import { MAX_DEPTH } from '../wire/scan.js';

/**
 * What a value becomes on its way through MessagePack, as the receiver gets it: arguments as a
 * handler receives them, results as a caller does. A typed stub's parameters and results are these
 * types (see docs/LIBRARY.md, "What survives the wire"); `test/wire-values.test.ts` round-trips each
 * case through a real relay and node.
 *
 * | sent | arrives |
 * | --- | --- |
 * | `Map<K, V>` (string or number keys) | `Record<string, V>` |
 * | `Set<T>` | `T[]` |
 * | `bigint` | `number` when it is within ±2^53, else `bigint`; beyond 64 bits it is refused |
 * | `Date` | `Date` (MessagePack timestamp) |
 * | `Uint8Array`, `Buffer`, `ArrayBuffer`, any typed array, `DataView` | `Uint8Array` of its bytes |
 * | `Error` | `{ name, message, ...its own enumerable fields }`, never its stack |
 * | `RegExp` | its source as a string, `'/a+/g'` |
 * | an object with `toJSON()` (`URL`, …) | what `toJSON()` returns |
 * | functions and symbols | dropped from objects and maps, `null` in arrays and at the top |
 * | `undefined` | `null` as an argument or a result; inside an object or array it stays `undefined` |
 * | a `Promise` | refused: await it first |
 */
export type Wire<T> = T extends string | number | boolean | null | undefined
  ? T
  : T extends bigint
    ? number | bigint
    : T extends AnyFunction | symbol
      ? never
      : T extends Date
        ? Date
        : T extends ArrayBuffer | ArrayBufferView
          ? Uint8Array
          : T extends RegExp
            ? string
            : T extends PromiseLike<unknown>
              ? never
              : T extends ReadonlyMap<unknown, infer V>
                ? Record<string, WireInside<V>>
                : T extends ReadonlySet<infer U>
                  ? WireInside<U>[]
                  : T extends readonly unknown[]
                    ? { -readonly [K in keyof T]: WireElement<T[K]> }
                    : T extends { toJSON(): infer J }
                      ? Wire<J>
                      : T extends Error
                        ? WireObject<Omit<T, 'stack' | 'cause'>>
                        : T extends object
                          ? WireObject<T>
                          : T;

/** A value at the top (an argument, a result): `undefined`, a function or a symbol arrives as `null`. */
export type WireTop<T> = T extends undefined | AnyFunction | symbol ? null : Wire<T>;

// `any` because a function of any parameters is dropped.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => unknown;

/**
 * A parameter list as the handler receives it: each argument as {@link Wire} says, a function or
 * symbol as `null`. Optional and rest parameters stay so (an omitted argument is not sent; one
 * passed as `undefined` arrives as `null`).
 */
export type WireArgs<A extends readonly unknown[]> = { [K in keyof A]: WireElement<A[K]> };

/** An element of an array: a function or symbol there becomes `null`, as in JSON. */
type WireElement<T> = T extends AnyFunction | symbol ? null : Wire<T>;

/** A value of a Map or an element of a Set: a function or symbol there is dropped. */
type WireInside<T> = Wire<T>;

/** An object's own string keys, without those holding functions or symbols (they are dropped). */
type WireObject<T> = { -readonly [K in keyof T as K extends string | number ? (T[K] extends AnyFunction | symbol ? never : K) : never]: Wire<T[K]> };

/** A value that cannot travel, with where in the value it sat (`[2].when`), for the caller's message. */
export class WireValueError extends Error {
  override name = 'WireValueError';
  readonly path: string[] = [];

  constructor(readonly problem: string) {
    super(problem);
  }

  /** Adds one step (`[2]`, `.when`) in front of the path: "at [2].when: …". */
  within(step: string): void {
    this.path.unshift(step);
    const shown = this.path.length > 12 ? `${this.path.slice(0, 12).join('')}…` : this.path.join('');
    this.message = `at ${shown}: ${this.problem}`;
  }
}

const DROP: unique symbol = Symbol('drop');

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/**
 * Argument or result `value` made into what MessagePack carries as the table of {@link Wire} says
 * (`undefined` at the top is `null`), or a
 * {@link WireValueError} for what cannot travel. What needs no change is returned as it is (the same
 * object), so that the common case copies nothing.
 */
export function toWireValue(value: unknown): unknown {
  const v = prepare(value, 0);
  return v === DROP || v === undefined ? null : v;
}

function prepare(v: unknown, depth: number): unknown {
  switch (typeof v) {
    case 'string':
    case 'number':
    case 'boolean':
    case 'undefined':
      return v;
    case 'function':
    case 'symbol':
      return DROP;
    case 'bigint':
      if (v < INT64_MIN || v > UINT64_MAX) {
        throw new WireValueError(`the bigint ${v} does not fit in 64 bits, the largest integer MessagePack carries; send it as a string (String(n))`);
      }
      return v;
  }
  if (v === null) return v;
  if (depth >= MAX_DEPTH) throw new WireValueError(`the value is nested more than ${MAX_DEPTH} levels deep (does it contain itself?)`);
  if (v instanceof Uint8Array || v instanceof Date || v instanceof ArrayBuffer) return v;
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return prepareArray(v, depth);
  if (v instanceof Map) return prepareMap(v, depth);
  if (v instanceof Set) return prepareArray([...(v as Set<unknown>)], depth);
  if (v instanceof RegExp) return String(v);
  if (v instanceof Error) return prepareObject(v, depth, { name: v.name, message: v.message });
  if (v instanceof Promise || typeof (v as { then?: unknown }).then === 'function') {
    throw new WireValueError('a Promise cannot be sent: await it first');
  }
  if (v instanceof Number || v instanceof String || v instanceof Boolean) return v.valueOf();
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return prepare(toJSON.call(v), depth + 1);
  return prepareObject(v as object, depth);
}

function prepareArray(a: unknown[], depth: number): unknown[] {
  let out: unknown[] | undefined;
  for (let i = 0; i < a.length; i++) {
    const item = a[i];
    let p = item;
    // Only objects, functions, symbols and bigints can change; the rest is checked in one typeof.
    if (item !== null && (typeof item === 'object' || typeof item === 'function' || typeof item === 'symbol' || typeof item === 'bigint')) {
      try {
        p = prepare(item, depth + 1);
      } catch (err) {
        throw within(err, `[${i}]`);
      }
      if (p === DROP) p = null;
    }
    if (p !== item && out === undefined) out = a.slice(0, i);
    if (out !== undefined) out.push(p);
  }
  return out ?? a;
}

function prepareMap(m: Map<unknown, unknown>, depth: number): Map<unknown, unknown> {
  let out: Map<unknown, unknown> | undefined;
  let i = 0;
  for (const [k, item] of m) {
    if (typeof k !== 'string' && typeof k !== 'number') {
      throw new WireValueError(`a Map key must be a string or a number (a Map arrives as an object); key ${i} is ${k === null ? 'null' : typeof k}`);
    }
    let p: unknown;
    try {
      p = prepare(item, depth + 1);
    } catch (err) {
      throw within(err, `.get(${JSON.stringify(k)})`);
    }
    if (p !== item && out === undefined) {
      // The entries before this one, unchanged.
      out = new Map();
      let j = 0;
      for (const [k2, v2] of m) {
        if (j++ === i) break;
        out.set(k2, v2);
      }
    }
    if (out !== undefined && p !== DROP) out.set(k, p);
    i++;
  }
  return out ?? m;
}

/** An object's own enumerable fields, prepared; `extra` (an Error's name and message) set over them. */
function prepareObject(o: object, depth: number, extra?: Record<string, unknown>): object {
  let out: Record<string, unknown> | undefined = extra === undefined ? undefined : Object.create(null);
  const keys = Object.keys(o);
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    if (extra !== undefined && k === 'stack') continue;
    const item = (o as Record<string, unknown>)[k];
    let p = item;
    if (item !== null && (typeof item === 'object' || typeof item === 'function' || typeof item === 'symbol' || typeof item === 'bigint')) {
      try {
        p = prepare(item, depth + 1);
      } catch (err) {
        throw within(err, `.${k}`);
      }
    }
    if (p !== item && out === undefined) {
      // A fresh object without a prototype, so that a `__proto__` key stays a key.
      out = Object.create(null) as Record<string, unknown>;
      for (let j = 0; j < i; j++) out[keys[j]!] = (o as Record<string, unknown>)[keys[j]!];
    }
    if (out !== undefined && p !== DROP) out[k] = p;
  }
  if (extra !== undefined) Object.assign(out!, extra);
  return out ?? o;
}

/** `err`, with `step` added to its path when it is a {@link WireValueError}. (No closure per value: this runs for every object sent.) */
function within(err: unknown, step: string): unknown {
  if (err instanceof WireValueError) err.within(step);
  return err;
}
