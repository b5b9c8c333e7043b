import type { Logger } from '../util/logger.js';
import type { Session } from './session.js';

/** Who is calling, as the relay saw it. */
export interface CallerInfo {
  /** Remote address of the caller's connection at the relay, `ip:port`. */
  address: string;
  /** Identity proven to the relay (token name), or null when the relay asked for none. */
  identity: string | null;
}

/** What a handler wrapped with {@link withContext} receives as its first parameter. */
export interface CallContext {
  /** Per-caller-connection state (Login lives here). */
  session: Session;
  /** Who is calling, as the relay saw it. */
  caller: CallerInfo;
  /** Name of the node running the handler. */
  node: string;
  /** `Service.Method` being called. */
  method: string;
  /** Aborted when the caller cancels or disconnects, at the deadline, or when the node shuts down. */
  signal: AbortSignal;
  /** Epoch milliseconds after which nobody waits for the answer. */
  deadline: number;
  /** The node's logger (pino), for lines about this call. */
  log: Logger;
}

// Symbol.for, not Symbol(): a --services module may import its own copy of the library, and the
// node's copy must still see the mark.
const CONTEXT: unique symbol = Symbol.for('tunnel-rpc.withContext');

/**
 * A handler made with {@link withContext}: the node calls it with the {@link CallContext} first, then
 * the caller's arguments. A typed stub ({@link ServiceStub}) leaves the context out of its signature.
 */
// `any` defaults: the loosest handler, which every concrete one is assignable to.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export interface ContextHandler<Args extends unknown[] = any[], Result = unknown, This = any> {
  (this: This, ctx: CallContext, ...args: Args): Result;
  /** The mark the node looks for; set by {@link withContext}. */
  readonly [CONTEXT]: true;
}

/**
 * Marks a handler as one that needs the call's context, which it then receives as its first
 * parameter, before the caller's arguments. A handler without the mark receives exactly the caller's
 * arguments, so rest and default parameters work as in any function.
 *
 * ```ts
 * Hello: withContext((ctx, name: string) => `Hello ${name} from ${ctx.caller.address}`),
 * Logout: withContext(function (this: Accounts, ctx) { this.forget(ctx.session.user); ctx.session.logout(); }),
 * ```
 *
 * The function itself is marked and returned (so `this` is still the service object when the node
 * calls it); wrapping twice is harmless.
 */
export function withContext<Args extends unknown[], Result, This = unknown>(
  handler: (this: This, ctx: CallContext, ...args: Args) => Result,
): ContextHandler<Args, Result, This> {
  if (typeof handler !== 'function') throw new TypeError(`withContext takes a function, got ${handler === null ? 'null' : typeof handler}`);
  if (!isContextHandler(handler)) Object.defineProperty(handler, CONTEXT, { value: true });
  return handler as ContextHandler<Args, Result, This>;
}

/** True for a function marked by {@link withContext}. */
export function isContextHandler(fn: unknown): fn is ContextHandler {
  return typeof fn === 'function' && (fn as Partial<ContextHandler>)[CONTEXT] === true;
}
