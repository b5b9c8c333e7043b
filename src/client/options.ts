/** Options of one call; the same names as `tunnel-call`'s flags. */
export interface CallOptions {
  /** Milliseconds to wait for the answer (default: the client's `timeout`). */
  timeout?: number;
  /** Only this node may serve the call. */
  node?: string;
  /** Cancels the call: the relay and the node are told, the promise rejects with CANCELLED. */
  signal?: AbortSignal;
}

const CALL_OPTION_KEYS = new Set(['timeout', 'node', 'signal']);

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
