import { ErrorCode, TunnelError } from '../errors.js';
import type { ServiceDescription } from '../wire/messages.js';
import { isContextHandler, type CallContext } from './context.js';

// Each service declares its own parameters; `any` so that every handler is one.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (...args: any[]) => unknown;

/** An object whose methods become the service's methods, as Go's `rpc.Register` does with a type. */
export type ServiceImpl = object;

/** How a service is registered; given to {@link defineService} or {@link ServiceRegistry.register}. */
export interface ServiceOptions {
  /**
   * Methods that fail with NOT_LOGGED_IN unless the session has a user. `true` means every method
   * except `Login`.
   */
  requireLogin?: boolean | string[];
}

// Symbol.for: a --services module may import its own copy of the library (see context.ts).
const SERVICE_OPTIONS = Symbol.for('tunnel-rpc.serviceOptions');

/**
 * Declares a service object, with optional {@link ServiceOptions} attached to it for modules that
 * export a plain map of services (`export default { Hello: defineService({...}, { requireLogin: ['Hello'] }) }`).
 * Returns `impl` itself, with its type unchanged, so that callers can take their stub's type from it:
 * `client.service<typeof Arith>('Arith')`.
 */
export function defineService<T extends object>(impl: T, options?: ServiceOptions): T {
  if (impl === null || typeof impl !== 'object') throw new TypeError(`defineService takes an object of methods, got ${impl === null ? 'null' : typeof impl}`);
  if (options !== undefined) Object.defineProperty(impl, SERVICE_OPTIONS, { value: options, enumerable: false, configurable: true });
  return impl;
}

/** One registered method, as {@link ServiceRegistry.lookup} finds it for the node. */
export interface MethodEntry {
  service: string;
  method: string;
  fn: Handler;
  self: object;
  requireLogin: boolean;
  /** Made with withContext: receives the CallContext before the caller's arguments. */
  wantsContext: boolean;
}

const SERVICE_NAME = /^[A-Za-z_][\w.-]*$/;
const METHOD_NAME = /^[A-Za-z_]\w*$/;

/**
 * Prototypes of the language's own types. Their methods (`toFixed`, `toString`, `push`, `call`, …)
 * are never a service's: discovery stops at the first of them, so that a Map or an array given by
 * mistake is refused instead of serving `clear` and `pop`.
 */
const BUILT_IN_PROTOTYPES: ReadonlySet<object> = new Set<object>(
  [
    Object,
    Function,
    Array,
    Number,
    String,
    Boolean,
    Symbol,
    BigInt,
    Date,
    RegExp,
    Error,
    Map,
    Set,
    WeakMap,
    WeakSet,
    Promise,
    ArrayBuffer,
    SharedArrayBuffer,
    DataView,
    Object.getPrototypeOf(Uint8Array),
    Uint8Array,
    Buffer,
  ].map((c) => c.prototype as object),
);

/**
 * Methods of an object and of its class chain, up to the first built-in prototype (Object's,
 * Array's, …), excluding constructors and private-looking names.
 */
export function discoverMethods(impl: object): string[] {
  const names = new Set<string>();
  for (let o: object | null = impl; o !== null && !BUILT_IN_PROTOTYPES.has(o); o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (name === 'constructor' || name.startsWith('_') || !METHOD_NAME.test(name)) continue;
      const d = Object.getOwnPropertyDescriptor(o, name);
      if (d && typeof d.value === 'function') names.add(name);
    }
  }
  return [...names].sort();
}

/** Why `impl` cannot be a service (undefined when it can): it must be an object, not a value of a built-in type. */
function shapeProblem(name: string, impl: unknown): string | undefined {
  const example = `e.g. { Greet(name) { return \`hi \${name}\`; } }`;
  if (impl === null || impl === undefined) return `service ${name} is ${impl}; give an object of methods (${example})`;
  if (typeof impl === 'function') {
    const cls = /^class\b/.test(Function.prototype.toString.call(impl));
    return cls
      ? `service ${name} is a class; give an instance (new ${(impl as { name?: string }).name || name}()) or an object of methods`
      : `service ${name} is a function; give an object of methods (${example})`;
  }
  if (typeof impl !== 'object')
    return `service ${name} must be an object of methods (${example}), got the ${typeof impl} ${typeof impl === 'string' ? JSON.stringify(impl) : String(impl)}`;
  if (Array.isArray(impl)) return `service ${name} must be an object of methods (${example}), got an array`;
  return undefined;
}

/** The services one node serves. */
export class ServiceRegistry {
  private readonly services = new Map<string, Map<string, MethodEntry>>();

  /**
   * Registers `impl`'s methods under `name`. Each method receives exactly the caller's arguments; one
   * wrapped with {@link withContext} receives the {@link CallContext} first. What it returns (or
   * resolves to) is the result, what it throws the error.
   */
  register(name: string, impl: ServiceImpl, options?: ServiceOptions): this {
    if (!SERVICE_NAME.test(name)) {
      throw new TypeError(`service name "${name}" must start with a letter and hold only letters, digits, _ . -`);
    }
    if (this.services.has(name)) throw new TypeError(`service ${name} is already registered`);
    const problem = shapeProblem(name, impl);
    if (problem !== undefined) throw new TypeError(problem);
    const methods = discoverMethods(impl);
    if (methods.length === 0) {
      const proto = Object.getPrototypeOf(impl) as object | null;
      const kind =
        proto !== null && proto !== Object.prototype && BUILT_IN_PROTOTYPES.has(proto)
          ? ` (a ${(proto.constructor as { name: string }).name}: its built-in methods are not served)`
          : '';
      throw new TypeError(`service ${name} has no methods${kind}; give an object whose own or class methods are the service's`);
    }
    const { requireLogin = false } = options ?? (impl as { [SERVICE_OPTIONS]?: ServiceOptions })[SERVICE_OPTIONS] ?? {};
    const table = new Map<string, MethodEntry>();
    for (const method of methods) {
      const needsLogin = requireLogin === true ? method !== 'Login' : Array.isArray(requireLogin) && requireLogin.includes(method);
      const fn = (impl as Record<string, Handler>)[method]!;
      table.set(method, { service: name, method, fn, self: impl, requireLogin: needsLogin, wantsContext: isContextHandler(fn) });
    }
    if (Array.isArray(requireLogin)) {
      const unknown = requireLogin.filter((m) => !table.has(m));
      if (unknown.length > 0) throw new TypeError(`service ${name}: requireLogin names unknown methods: ${unknown.join(', ')}`);
    }
    this.services.set(name, table);
    return this;
  }

  /** True when a service of that name is registered. */
  has(service: string): boolean {
    return this.services.has(service);
  }

  /** Number of registered services. */
  get size(): number {
    return this.services.size;
  }

  /** Each service's method names, as the node announces them to the relay. */
  describe(): ServiceDescription {
    const out: ServiceDescription = {};
    for (const [name, table] of this.services) out[name] = [...table.keys()];
    return out;
  }

  /** The method to run for `Service.Method`; NO_SERVICE or NO_METHOD, naming what exists, otherwise. */
  lookup(service: string, method: string): MethodEntry {
    const table = this.services.get(service);
    if (!table) {
      throw new TunnelError(ErrorCode.NO_SERVICE, `this node does not serve ${service}; it serves ${[...this.services.keys()].join(', ') || 'nothing'}`);
    }
    const entry = table.get(method);
    if (!entry) {
      throw new TunnelError(ErrorCode.NO_METHOD, `service ${service} has no method ${method}; methods: ${[...table.keys()].join(', ')}`);
    }
    return entry;
  }
}

/**
 * Runs one handler with exactly the caller's arguments, and the context first when the handler was
 * made with withContext. Go's net/rpc always sends one argument (nil or an empty struct for a method
 * that takes none): a handler without parameters just ignores it.
 */
export async function invoke(entry: MethodEntry, args: unknown[], ctx: CallContext): Promise<unknown> {
  if (entry.requireLogin && !ctx.session.loggedIn) {
    throw new TunnelError(ErrorCode.NOT_LOGGED_IN, `${entry.service}.${entry.method} needs a login: call ${entry.service}.Login first on this connection`);
  }
  if (entry.wantsContext) return entry.fn.call(entry.self, ctx, ...args);
  try {
    return await entry.fn.apply(entry.self, args);
  } catch (err) {
    throw explainMissingContext(entry, err);
  }
}

const CONTEXT_FIELDS = new Set(['session', 'caller', 'node', 'method', 'signal', 'deadline', 'log']);
const MISSING_PROPERTY = /^Cannot (?:read properties of (?:undefined|null) \(reading '(\w+)'\)|destructure property '(\w+)' of .* as it is (?:undefined|null))/;

/**
 * A handler written for the old convention (context as its last parameter) now finds `undefined`
 * there and fails reading `ctx.session`: say how to fix it instead of only "Cannot read properties".
 */
function explainMissingContext(entry: MethodEntry, err: unknown): unknown {
  if (!(err instanceof TypeError)) return err;
  const m = MISSING_PROPERTY.exec(err.message);
  const field = m?.[1] ?? m?.[2];
  if (field === undefined || !CONTEXT_FIELDS.has(field)) return err;
  return new TunnelError(
    ErrorCode.APP_ERROR,
    `${entry.service}.${entry.method} failed: ${err.message}. If it reads the call context (ctx.${field}), wrap it with ` +
      `withContext((ctx, ...args) => ...): a handler receives the context only that way, as its first parameter, never as its last`,
    { cause: err },
  );
}
