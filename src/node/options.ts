import { OptionChecks, OptionError, withDefaults } from '../util/options.js';
import { DEFAULT_MAX_FRAME, ENVELOPE_ALLOWANCE } from '../wire/messages.js';

/** Every default of `new TunnelNode()` (the name defaults to the host name, in node.ts). */
export const NODE_DEFAULTS = {
  heartbeatTimeout: 30_000,
  reconnectBase: 500,
  reconnectCap: 30_000,
  reconnectReset: 10_000,
  drainTimeout: 10_000,
  defaultTimeout: 30_000,
  maxMessage: DEFAULT_MAX_FRAME,
  maxReassembly: 32 * 1024 * 1024,
  streamIdleTimeout: 30_000,
  maxBacklog: 32 * 1024 * 1024,
  maxInFlight: 4_096,
  followCluster: true,
};

/** The node's settings once resolved: every defaulted option is present. */
export type NodeSettings = typeof NODE_DEFAULTS;

type Given<S> = { [K in keyof S]?: S[K] | undefined };

/**
 * The node's options merged over {@link NODE_DEFAULTS} (an explicit `undefined` keeps the default)
 * and checked: durations and sizes finite and in range, `reconnectBase` ≤ `reconnectCap`, `services`
 * a registry, `followCluster` a boolean, `lookup` a function. Throws an OptionError naming the option.
 */
export function resolveNodeOptions<O extends Given<NodeSettings> & { services?: unknown; lookup?: unknown }>(options: O): O & NodeSettings {
  const o = withDefaults(NODE_DEFAULTS, options);
  new OptionChecks('TunnelNode', o)
    .duration('heartbeatTimeout', 'turns heartbeats off')
    .duration('reconnectBase')
    .duration('reconnectCap')
    .notAbove('reconnectBase', 'reconnectCap')
    .duration('reconnectReset')
    .duration('drainTimeout', 'aborts running calls at once')
    .duration('defaultTimeout')
    // What the node accepts is this less the envelope allowance; it must leave room for params.
    .count('maxMessage', ENVELOPE_ALLOWANCE + 1, ' of bytes')
    .bytes('maxReassembly')
    .duration('streamIdleTimeout')
    .bytes('maxBacklog')
    .count('maxInFlight')
    .boolean('followCluster')
    .optionalFunction('lookup', "the shape of Node's net lookup option, e.g. dns.lookup");
  const services = o.services as { describe?: unknown; lookup?: unknown } | undefined;
  if (typeof services?.describe !== 'function' || typeof services.lookup !== 'function') {
    throw OptionError.invalid('TunnelNode', 'services', "must be a ServiceRegistry (new ServiceRegistry().register('Name', impl))", services);
  }
  return o;
}

/** Every default of `new ForwardedService()`. */
export const FORWARD_DEFAULTS = {
  connections: 2,
  connectTimeout: 5_000,
  maxMessage: DEFAULT_MAX_FRAME,
  args: 'one' as ForwardArgs,
};

/** How many arguments a forwarded call may carry: Go's net/rpc takes exactly `one`. */
export type ForwardArgs = 'one' | 'any';

export type ForwardSettings = typeof FORWARD_DEFAULTS;

/** A forwarded service's options over {@link FORWARD_DEFAULTS}, checked. */
export function resolveForwardOptions<O extends Given<ForwardSettings>>(options: O): O & ForwardSettings {
  const o = withDefaults(FORWARD_DEFAULTS, options);
  new OptionChecks('ForwardedService', o).count('connections').duration('connectTimeout').bytes('maxMessage').oneOf('args', ['one', 'any']);
  return o;
}

/** Every default of `new DirectListener()`. */
export const DIRECT_DEFAULTS = {
  maxMessage: DEFAULT_MAX_FRAME,
  heartbeatTimeout: 30_000,
};

export type DirectSettings = typeof DIRECT_DEFAULTS;

/** The direct listener's options over {@link DIRECT_DEFAULTS}, checked. */
export function resolveDirectOptions<O extends Given<DirectSettings>>(options: O): O & DirectSettings {
  const o = withDefaults(DIRECT_DEFAULTS, options);
  new OptionChecks('DirectListener', o).bytes('maxMessage').duration('heartbeatTimeout', 'turns heartbeats off');
  return o;
}
