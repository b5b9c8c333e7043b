import { ErrorCode, TunnelError } from '../errors.js';
import type { ServiceDescription } from '../wire/messages.js';
import type { CallContext } from './context.js';

// Handlers take the call's arguments and the context last; `any` because each service declares its own.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (...args: any[]) => unknown;

/** An object whose methods become the service's methods, as Go's `rpc.Register` does with a type. */
export type ServiceImpl = object;

export interface ServiceOptions {
  /**
   * Methods that fail with NOT_LOGGED_IN unless the session has a user. `true` means every method
   * except `Login`.
   */
  requireLogin?: boolean | string[];
}

const SERVICE_OPTIONS = Symbol('tunnel.serviceOptions');

/**
 * Attaches {@link ServiceOptions} to a service object, for modules that export a plain map of
 * services (`export default { Hello: defineService({...}, { requireLogin: ['Hello'] }) }`).
 */
export function defineService<T extends object>(impl: T, options: ServiceOptions): T {
  Object.defineProperty(impl, SERVICE_OPTIONS, { value: options, enumerable: false });
  return impl;
}

export interface MethodEntry {
  service: string;
  method: string;
  fn: Handler;
  self: object;
  requireLogin: boolean;
}

const SERVICE_NAME = /^[A-Za-z_][\w.-]*$/;
const METHOD_NAME = /^[A-Za-z_]\w*$/;

/** Methods of an object and of its class chain, excluding Object's own and private-looking names. */
export function discoverMethods(impl: object): string[] {
  const names = new Set<string>();
  for (let o: object | null = impl; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (name === 'constructor' || name.startsWith('_') || !METHOD_NAME.test(name)) continue;
      const d = Object.getOwnPropertyDescriptor(o, name);
      if (d && typeof d.value === 'function') names.add(name);
    }
  }
  return [...names].sort();
}

/** The services one node serves. */
export class ServiceRegistry {
  private readonly services = new Map<string, Map<string, MethodEntry>>();

  /**
   * Registers `impl`'s methods under `name`. Each method receives the call's arguments followed by a
   * {@link CallContext}; what it returns (or resolves to) is the result, what it throws the error.
   */
  register(name: string, impl: ServiceImpl, options: ServiceOptions = (impl as { [SERVICE_OPTIONS]?: ServiceOptions })[SERVICE_OPTIONS] ?? {}): this {
    if (!SERVICE_NAME.test(name)) {
      throw new TypeError(`service name "${name}" must start with a letter and hold only letters, digits, _ . -`);
    }
    if (this.services.has(name)) throw new TypeError(`service ${name} is already registered`);
    const methods = discoverMethods(impl);
    if (methods.length === 0) throw new TypeError(`service ${name} has no methods`);
    const { requireLogin = false } = options;
    const table = new Map<string, MethodEntry>();
    for (const method of methods) {
      const needsLogin = requireLogin === true ? method !== 'Login' : Array.isArray(requireLogin) && requireLogin.includes(method);
      table.set(method, {
        service: name,
        method,
        fn: (impl as Record<string, Handler>)[method]!,
        self: impl,
        requireLogin: needsLogin,
      });
    }
    if (Array.isArray(requireLogin)) {
      const unknown = requireLogin.filter((m) => !table.has(m));
      if (unknown.length > 0) throw new TypeError(`service ${name}: requireLogin names unknown methods: ${unknown.join(', ')}`);
    }
    this.services.set(name, table);
    return this;
  }

  has(service: string): boolean {
    return this.services.has(service);
  }

  get size(): number {
    return this.services.size;
  }

  describe(): ServiceDescription {
    const out: ServiceDescription = {};
    for (const [name, table] of this.services) out[name] = [...table.keys()];
    return out;
  }

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
 * Runs one handler. Arguments are padded with `undefined` up to the handler's declared arity so that
 * the context always lands in the last declared parameter; surplus arguments are a BAD_REQUEST,
 * except trailing nil or empty-map ones, which are dropped.
 */
export async function invoke(entry: MethodEntry, args: unknown[], ctx: CallContext): Promise<unknown> {
  if (entry.requireLogin && !ctx.session.loggedIn) {
    throw new TunnelError(ErrorCode.NOT_LOGGED_IN, `${entry.service}.${entry.method} needs a login: call ${entry.service}.Login first on this connection`);
  }
  const arity = entry.fn.length;
  if (arity > 0) {
    const wanted = arity - 1;
    // Go's net/rpc always sends exactly one argument, nil or an empty struct when the method needs
    // none: surplus arguments that carry nothing are dropped instead of refused.
    while (args.length > wanted && isEmpty(args[args.length - 1])) args.pop();
    if (args.length > wanted) {
      throw new TunnelError(
        ErrorCode.BAD_REQUEST,
        `${entry.service}.${entry.method} takes ${wanted} argument${wanted === 1 ? '' : 's'}, got ${args.length}` +
          ' (a handler\'s last declared parameter receives the call context)',
      );
    }
    while (args.length < wanted) args.push(undefined);
  }
  return entry.fn.call(entry.self, ...args, ctx);
}

function isEmpty(v: unknown): boolean {
  if (v === null || v === undefined) return true;
  return typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) && Object.keys(v).length === 0;
}
