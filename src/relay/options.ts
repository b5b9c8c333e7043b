import type { TlsOptions as NodeTlsOptions } from 'node:tls';
import { advertiseUrl, listenAddress } from '../util/address.js';
import { OptionChecks, withDefaults } from '../util/options.js';
import { DEFAULT_MAX_FRAME } from '../wire/messages.js';
import { LIMIT_DEFAULTS, type Limits } from './limits.js';
import { SELECTORS, type SelectorName } from './selectors.js';
import type { Logger } from '../util/logger.js';
import type { AuthOptions } from './auth.js';
import type { ClusterOptions } from './cluster/options.js';
import type { TlsOptions } from './listener.js';

/**
 * Relay settings; the limits (`maxMessage`, `maxCallerInFlight`, `helloTimeout`, ...) are in
 * limits.ts with their defaults, authentication in auth.ts, TLS in listener.ts.
 */
export interface RelayOptions extends Partial<Limits>, TlsOptions, Omit<AuthOptions, 'nodeCertificates'> {
  /** `[host]:port` to listen on; empty host means every interface (default `:9090`). */
  listen?: string;
  log?: Logger;
  /** Drop a peer silent this long, ms (default 30 000). */
  heartbeatTimeout?: number;
  /** Deadline of a call whose caller gives none, ms (default 30 000). */
  defaultTimeout?: number;
  /** Longest deadline a caller may ask for, ms (default 300 000). */
  maxTimeout?: number;
  /**
   * `[host]:port` of a separate listener for /metrics, /nodes, /healthz, /readyz and the dashboard.
   * When set, the main port no longer serves /metrics and /nodes, so they need not be public (default: none).
   */
  adminListen?: string;
  /** /readyz answers 503 until nodes with these names are connected (default none). */
  requireNode?: string[];
  /** /readyz answers 503 until every one of these services has a node (default none). */
  requireService?: string[];
  /** How long `Relay.drain` waits for calls in flight, ms (default 30 000). */
  drainTimeout?: number;
  /** How a call that names no node picks one (default `round-robin`); callers may override per call. */
  selector?: SelectorName;
  /**
   * Origins (`scheme://host[:port]`) whose web pages may open WebSockets and call the gateway; `*`
   * allows any. A request with another `Origin` header is refused with 403; clients that send no
   * `Origin` (ws, curl, Go, Python) are not affected (default: none).
   */
  allowOrigin?: string[];
  /**
   * `Host` names accepted besides localhost, 127.x.x.x and [::1]. A relay listening on loopback
   * accepts only those (against DNS rebinding); elsewhere `Host` is checked only when this is given
   * (default: none).
   */
  allowHost?: string[];
  /** This relay's name in presence (`relays` of each node) and in a cluster (default: the host name). */
  relayName?: string;
  /**
   * The URL nodes dial to reach this relay, `ws://host:port` or `wss://host:port`: in a cluster the
   * other relays list it in the welcome they send their nodes, so that a node can move here when its
   * own relay stays unreachable (default: from `listen` when it names a host, e.g. `ws://127.0.0.1:9090`,
   * else the host name and the bound port; `wss://` with TLS).
   */
  advertise?: string;
  /**
   * Join a cluster of relays over NATS (docs/CLUSTER.md): any relay reaches any node. Without it the
   * relay stands alone, with nothing to install.
   */
  cluster?: ClusterOptions;
  /**
   * Serves the live dashboard (`/dashboard`) on the public port too, to whoever presents this token
   * (`Authorization: Bearer`, or `?token=` when opening the page). Without it the dashboard is served
   * on the admin listener only, and not at all without `adminListen` (default: none).
   */
  dashboardToken?: string;
  /** Enables the dashboard's actions (drain, undrain or disconnect a node, disconnect a caller) for whoever presents this token (default: none, actions disabled). */
  adminToken?: string;
}

/** Every default of `new Relay()` that is not a limit (limits.ts has those). */
export const RELAY_DEFAULTS = {
  listen: ':9090',
  heartbeatTimeout: 30_000,
  defaultTimeout: 30_000,
  maxTimeout: 300_000,
  ...LIMIT_DEFAULTS,
  requireNode: [] as string[],
  requireService: [] as string[],
  drainTimeout: 30_000,
  selector: 'round-robin' as SelectorName,
};

/** The relay's settings once resolved: every defaulted option is present. */
export type RelaySettings = typeof RELAY_DEFAULTS;

/** What {@link resolveRelayOptions} reads: the defaulted options, any of them `undefined`. */
type Given = { [K in keyof RelaySettings]?: RelaySettings[K] | undefined } & { adminListen?: string | undefined; advertise?: string | undefined };

/**
 * The relay's options merged over {@link RELAY_DEFAULTS} (an explicit `undefined` keeps the default)
 * and checked: every duration, count and size is a finite number in range, the selector is known, the
 * addresses parse (`advertise`: a ws:// or wss:// URL), and `defaultTimeout` ≤ `maxTimeout`, `maxReassembly` ≥ `maxMessage`. Throws an
 * OptionError (util/options.ts; an address: an Error) naming the option.
 */
export function resolveRelayOptions<O extends Given>(options: O): O & RelaySettings {
  const o = withDefaults(RELAY_DEFAULTS, options);
  const check = new OptionChecks('Relay', o);
  check
    .duration('heartbeatTimeout', 'turns heartbeats off')
    .duration('defaultTimeout')
    .duration('maxTimeout')
    .notAbove('defaultTimeout', 'maxTimeout')
    .duration('drainTimeout', 'closes at once')
    .oneOf('selector', SELECTORS)
    .strings('requireNode')
    .strings('requireService');
  checkLimitOptions(check);
  listenAddress(o.listen, 'Relay option listen');
  if (o.adminListen !== undefined) listenAddress(o.adminListen, 'Relay option adminListen');
  if (o.advertise !== undefined) advertiseUrl(o.advertise, 'Relay option advertise');
  return o;
}

/** Each limit of limits.ts: its kind and range. */
function checkLimitOptions(check: OptionChecks): void {
  check
    .bytes('maxMessage')
    .count('maxCallerInFlight')
    .count('maxNodeInFlight')
    .duration('helloTimeout')
    .count('maxLoginFailures')
    .count('maxLoginFailuresPerAddress')
    .duration('loginFailureWindow')
    .count('maxAuthFailuresPerAddress')
    .duration('authFailureWindow')
    .duration('authBackoff')
    .duration('maxAuthBackoff')
    .notAbove('authBackoff', 'maxAuthBackoff')
    .count('maxConnectionsPerAddress')
    .count('maxNodesPerAddress')
    .bytes('maxMemory')
    .count('maxConnections')
    .bytes('maxBacklog')
    .duration('slowConsumerTimeout')
    .bytes('maxReassembly')
    .duration('streamIdleTimeout')
    .notAbove('maxMessage', 'maxReassembly', ', or a body of the largest size could never be reassembled');
}

/** The options of `MsgpackRpcPort` that have defaults. */
export const MSGPACK_RPC_PORT_DEFAULTS = {
  listen: ':9091',
  maxMessage: DEFAULT_MAX_FRAME,
  keepAlive: 30_000,
  idleTimeout: 300_000,
};

/** The port's defaults that come from its relay's limits. */
type PortLimits = Pick<Limits, 'helloTimeout' | 'maxBacklog' | 'slowConsumerTimeout'>;

export type MsgpackRpcPortSettings = typeof MSGPACK_RPC_PORT_DEFAULTS & { firstRequestTimeout: number; maxBacklog: number; slowConsumerTimeout: number };

type PortGiven = { [K in keyof MsgpackRpcPortSettings]?: MsgpackRpcPortSettings[K] | undefined } & { tls?: NodeTlsOptions | undefined };

/**
 * The MessagePack-RPC port's options over its defaults, some taken from the relay's limits
 * (`firstRequestTimeout` from `helloTimeout`, `maxBacklog`, `slowConsumerTimeout`), then checked.
 */
export function resolveMsgpackRpcPortOptions<O extends PortGiven>(options: O, limits: PortLimits): O & MsgpackRpcPortSettings {
  const defaults = {
    ...MSGPACK_RPC_PORT_DEFAULTS,
    firstRequestTimeout: limits.helloTimeout,
    maxBacklog: limits.maxBacklog,
    slowConsumerTimeout: limits.slowConsumerTimeout,
  };
  const o = withDefaults(defaults, options);
  new OptionChecks('MsgpackRpcPort', o)
    .bytes('maxMessage')
    .duration('keepAlive')
    .duration('idleTimeout')
    .duration('firstRequestTimeout')
    .bytes('maxBacklog')
    .duration('slowConsumerTimeout');
  listenAddress(o.listen, 'MsgpackRpcPort option listen');
  return o;
}
