import type { ContextHandler } from '../rpc/context.js';
import type { WireArgs, WireTop } from '../rpc/wire-value.js';
import { BROADCAST_OPTION_KEYS, CALL_OPTION_KEYS, type BroadcastOptions, type BroadcastResult, type CallOptions } from './options.js';

/**
 * Names a stub keeps for itself: its own `with` and `broadcast`, and JavaScript's protocol names
 * (`then`, so that `await stub` gives the stub back instead of sending a call; `toJSON` and
 * Object.prototype's `toString`, `valueOf`, `constructor`…, so that printing a stub sends nothing).
 * A service method with one of these names is left out of the stub; call it with
 * `client.call('Service.with', ...)`.
 */
export type ReservedName = 'with' | 'broadcast' | 'then' | 'toJSON' | keyof typeof Object.prototype;

// `any` because each handler declares its own parameters.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => unknown;

/**
 * The names of `T`'s methods a node serves, as a stub offers them: function-valued string keys,
 * except names starting with `_` (never served) and the {@link ReservedName}s.
 */
export type MethodName<T> = {
  [K in keyof T]-?: K extends ReservedName | `_${string}` ? never : K extends string ? (T[K] extends AnyFunction ? K : never) : never;
}[keyof T];

/**
 * The arguments a caller passes to handler `F`: its parameters (without the context of a
 * {@link withContext} handler), each as it reaches the handler (`Wire`, rpc/wire-value.ts): a handler declaring a
 * `Map<string, number>` receives a `Record<string, number>`, so that is what its stub asks for.
 */
export type StubArgs<F> = F extends ContextHandler<infer A> ? WireArgs<A> : F extends (...args: infer A) => unknown ? WireArgs<A> : never;

/**
 * What a caller receives from handler `F`: its (awaited) return value as it arrives
 * (`Wire`, rpc/wire-value.ts): `undefined` as `null`, a `Map` as a record, a `Set` as an array, a `bigint` as a
 * number or a bigint, and so on (docs/LIBRARY.md, "What survives the wire").
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type StubResult<F> = F extends (...args: any[]) => infer R ? WireTop<Awaited<R>> : never;

/** One method of a {@link ServiceStub}: the handler's arguments, a promise of its result. */
export type StubMethod<F> = (...args: StubArgs<F>) => Promise<StubResult<F>>;

/** One method of a {@link BroadcastStub}: the handler's arguments, one outcome per node. */
export type BroadcastMethod<F> = (...args: StubArgs<F>) => Promise<BroadcastResult<StubResult<F>>[]>;

/**
 * A typed caller-side view of a service, made by {@link Client.service} from the service object's
 * own type: `client.service<typeof Arith>('Arith').Multiply(2, 3)` is a `Promise<number>`, and a
 * wrong argument or an unknown method does not compile. `with` and `broadcast` are reserved
 * ({@link ReservedName}).
 */
export type ServiceStub<T> = { readonly [K in MethodName<T>]: StubMethod<T[K]> } & {
  /**
   * The same stub with call options (merged over this stub's own; an `undefined` value leaves the
   * current one): `arith.with({ timeout: 500, node: 'office-1' }).Multiply(2, 3)`.
   */
  with(options: CallOptions): ServiceStub<T>;
  /**
   * The service's methods called on every node that serves it (see {@link Client.broadcast}). Takes
   * this stub's `timeout`, `where` and `signal`; a stub with `node`, `selector` or `retry` refuses.
   */
  readonly broadcast: BroadcastStub<T>;
};

/** {@link ServiceStub}'s broadcast side: each method resolves with one {@link BroadcastResult} per node. */
export type BroadcastStub<T> = { readonly [K in MethodName<T>]: BroadcastMethod<T[K]> } & {
  /** The same broadcast stub with these options merged over its own: `arith.broadcast.with({ where: { region: 'eu' } })`. */
  with(options: BroadcastOptions): BroadcastStub<T>;
};

/** The type a stub takes when given none: any method, any arguments, an `unknown` result. */
export type UntypedService = Record<string, (...args: unknown[]) => unknown>;

/** What a stub needs of a client, so that stubs can be tested without a relay. */
export interface StubTarget {
  /** One call of `Service.Method`; {@link Client.request}. */
  request(method: string, args: readonly unknown[], options: CallOptions): Promise<unknown>;
  /** One call of `Service.Method` on every matching node; {@link Client.broadcast}. */
  broadcast(method: string, args: readonly unknown[], options: BroadcastOptions): Promise<BroadcastResult[]>;
}

/** Names a stub turns into calls: what a node could serve (Go exports start with a letter too). */
const METHOD = /^[A-Za-z]\w*$/;
const PROTOCOL_NAMES = new Set(['then', 'toJSON', ...Object.getOwnPropertyNames(Object.prototype)]);
const SERVICE = /^[A-Za-z_][\w.-]*$/;

/** Makes the {@link ServiceStub} behind {@link Client.service}. */
export function serviceStub<T>(target: StubTarget, service: string, options: CallOptions = {}): ServiceStub<T> {
  if (typeof service !== 'string' || !SERVICE.test(service)) {
    throw new TypeError(`service name "${String(service)}" must start with a letter and hold only letters, digits, _ . -`);
  }
  let broadcast: BroadcastStub<T> | undefined;
  const extras = {
    with: (more: CallOptions) => serviceStub<T>(target, service, merge('call', CALL_OPTION_KEYS, options, more)),
    get broadcast() {
      const refused = (['node', 'selector', 'retry'] as const).filter((k) => options[k] !== undefined);
      if (refused.length > 0) {
        throw new TypeError(
          `broadcast calls every node, so it does not combine with ${refused.join(', ')}; use a stub without ${refused.length === 1 ? 'it' : 'them'}`,
        );
      }
      const { timeout, where, signal } = options;
      return (broadcast ??= broadcastStub<T>(target, service, merge('broadcast', BROADCAST_OPTION_KEYS, {}, { timeout, where, signal })));
    },
  };
  return methodProxy(
    extras,
    (method) =>
      (...args: unknown[]) =>
        target.request(`${service}.${method}`, args, options),
  ) as ServiceStub<T>;
}

function broadcastStub<T>(target: StubTarget, service: string, options: BroadcastOptions): BroadcastStub<T> {
  const extras = {
    with: (more: BroadcastOptions) => broadcastStub<T>(target, service, merge('broadcast', BROADCAST_OPTION_KEYS, options, more)),
  };
  return methodProxy(
    extras,
    (method) =>
      (...args: unknown[]) =>
        target.broadcast(`${service}.${method}`, args, options),
  ) as BroadcastStub<T>;
}

/**
 * A proxy answering `extras` by name and every other method-like name with a function made once by
 * `make`. Symbols, protocol names ({@link ReservedName}) and names no node could serve are undefined,
 * so that `await`, `String()`, `JSON.stringify` and `util.inspect` do not send calls.
 */
function methodProxy(extras: object, make: (method: string) => (...args: unknown[]) => Promise<unknown>): object {
  const methods = new Map<string, (...args: unknown[]) => Promise<unknown>>();
  return new Proxy(Object.create(null) as object, {
    get(_target, key) {
      if (typeof key !== 'string') return undefined;
      if (Object.hasOwn(extras, key)) return (extras as Record<string, unknown>)[key];
      if (PROTOCOL_NAMES.has(key) || !METHOD.test(key)) return undefined;
      let fn = methods.get(key);
      if (fn === undefined) methods.set(key, (fn = make(key)));
      return fn;
    },
    set: () => false,
    defineProperty: () => false,
    deleteProperty: () => false,
  });
}

/** `base` with `more` over it, minus undefined values; an unknown option name is a TypeError naming it. */
function merge<O extends object>(kind: string, known: ReadonlySet<string>, base: O, more: O): O {
  if (more === null || typeof more !== 'object' || Array.isArray(more)) {
    throw new TypeError(`with() takes an object of ${kind} options, got ${more === null ? 'null' : Array.isArray(more) ? 'an array' : typeof more}`);
  }
  const unknown = Object.keys(more).filter((k) => !known.has(k));
  if (unknown.length > 0) {
    throw new TypeError(`unknown ${kind} option${unknown.length === 1 ? '' : 's'} ${unknown.join(', ')}; ${kind} options are ${[...known].join(', ')}`);
  }
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(more)) if (v !== undefined) out[k] = v;
  return out as O;
}
