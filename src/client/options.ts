import type { TunnelError } from '../errors.js';
import { OptionChecks, withDefaults } from '../util/options.js';
import { DEFAULT_MAX_FRAME } from '../wire/messages.js';

/** How the relay picks a node for a call that names none (the relay's `--selector` is the default). */
export type Selector = 'round-robin' | 'random' | 'least-pending';

/** Options of one call; the same names as `tunnel-call`'s flags. */
export interface CallOptions {
  /** Milliseconds to wait for the answer, retries included (default: the client's `timeout`). */
  timeout?: number;
  /** Only this node may serve the call. */
  node?: string;
  /** Only nodes carrying all these labels may serve the call (`{ region: 'eu' }`). */
  where?: Record<string, string>;
  /** How the relay picks among the matching nodes, for this call (default: the relay's selector). */
  selector?: Selector;
  /**
   * Keep calls to a service on the node that served this connection's first call to it (default
   * true), so that a Login stays valid. `false` lets stateless calls spread over the fleet.
   */
  affinity?: boolean;
  /**
   * Times a call that failed with NODE_LOST is sent again, to another node, with backoff (default 0).
   * NODE_LOST means the node may or may not have run the call: only use this for idempotent calls.
   */
  retry?: number;
  /** Cancels the call: the relay and the node are told, the promise rejects with CANCELLED. */
  signal?: AbortSignal;
}

/** Options of a broadcast: the call goes to every node serving the method that matches `where`. */
export interface BroadcastOptions {
  /** Milliseconds to wait for every node; the ones that have not answered by then report TIMEOUT. */
  timeout?: number;
  /** Only nodes carrying all these labels are called. */
  where?: Record<string, string>;
  /** Cancels the broadcast on every node; the promise rejects with CANCELLED. */
  signal?: AbortSignal;
}

/** The names of {@link CallOptions}, for telling options from arguments and refusing typos. */
export const CALL_OPTION_KEYS: ReadonlySet<string> = new Set<keyof CallOptions>(['timeout', 'node', 'where', 'selector', 'affinity', 'retry', 'signal']);

/** The names of {@link BroadcastOptions}. */
export const BROADCAST_OPTION_KEYS: ReadonlySet<string> = new Set<keyof BroadcastOptions>(['timeout', 'where', 'signal']);

/**
 * `call(method, ...args, options)` takes its last argument as options when it is a plain object whose
 * keys are all option names. Use `request(method, args, options)` when an argument could look like that.
 */
export function isCallOptions(value: unknown): value is CallOptions {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return false;
  const keys = Object.keys(value);
  return keys.length > 0 && keys.every((k) => CALL_OPTION_KEYS.has(k));
}

/** One node's outcome of a broadcast: its result `R`, or its error; `ms` as the relay measured. */
export type BroadcastResult<R = unknown> = { node: string; ok: true; result: R; ms: number } | { node: string; ok: false; error: TunnelError; ms: number };

/** Every default of `connect()`'s options but `connectTimeout`, which is derived from `timeout`. */
export const CLIENT_DEFAULTS = {
  timeout: 30_000,
  maxMessage: DEFAULT_MAX_FRAME,
  heartbeatTimeout: 30_000,
};

/** Longest wait to be welcomed by the relay when `timeout` is longer, ms. */
const CONNECT_TIMEOUT = 10_000;

export type ClientSettings = typeof CLIENT_DEFAULTS & { connectTimeout: number };

type Given = { [K in keyof ClientSettings]?: ClientSettings[K] | undefined };

/**
 * The options of `connect()` merged over {@link CLIENT_DEFAULTS} (an explicit `undefined` keeps the
 * default) and checked. `connectTimeout` defaults to 10 s, or to `timeout` when that is shorter: a
 * caller that gives a call 3 s does not wait 10 s for a relay that accepts TCP and never answers.
 */
export function resolveClientOptions<O extends Given>(options: O): O & ClientSettings {
  const merged = withDefaults(CLIENT_DEFAULTS, options);
  const timeout = typeof merged.timeout === 'number' && merged.timeout > 0 ? merged.timeout : CONNECT_TIMEOUT;
  const o = withDefaults({ ...merged, connectTimeout: Math.min(CONNECT_TIMEOUT, timeout) }, options);
  new OptionChecks('connect()', o).duration('timeout').duration('connectTimeout').bytes('maxMessage').duration('heartbeatTimeout', 'turns heartbeats off');
  return o;
}
