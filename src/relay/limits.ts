import { ErrorCode, TunnelError } from '../errors.js';
import { DEFAULT_MAX_LOGIN_FAILURES } from '../rpc/login.js';
import type { Logger } from '../util/logger.js';
import { DEFAULT_MAX_BODY } from '../wire/messages.js';
import { defaultMaxMemory } from './memory.js';

/**
 * Every limit the relay enforces, with its default. README ("Running a relay on the internet") has the same table with what
 * happens when each one is hit; keep the two in step.
 */
export interface Limits {
  /** Largest params or result, bytes. Over it: TOO_LARGE; a WebSocket message over it plus the envelope allowance closes 1009. */
  maxMessage: number;
  /** Calls in flight on one caller connection. Over it: OVERLOADED at once. */
  maxCallerInFlight: number;
  /** Calls in flight on one node. Over it: OVERLOADED at once. */
  maxNodeInFlight: number;
  /** From TCP (or TLS) connect to an accepted hello, ms. Over it: the socket is closed (4002 once it is a WebSocket). */
  helloTimeout: number;
  /** Failed Logins on one caller connection. At it: the connection closes with 4005. */
  maxLoginFailures: number;
  /** Failed Logins from one IP address within `loginFailureWindow`. Over it: Logins from that address are refused. */
  maxLoginFailuresPerAddress: number;
  /** The window of `maxLoginFailuresPerAddress`, ms. */
  loginFailureWindow: number;
  /**
   * Open connections from one IP address, every door together, not counting authenticated nodes
   * (connections before their hello, callers, nodes of a relay without node authentication). Over
   * it: HTTP 429 (or the socket is closed).
   */
  maxConnectionsPerAddress: number;
  /** Authenticated nodes from one IP address (a fleet behind one NAT). Over it: the hello is refused (4009). */
  maxNodesPerAddress: number;
  /**
   * Bytes the relay holds for all its peers together: backlogs, chunks waiting for windows, bodies
   * reassembled. Near it (90 %) new calls are refused OVERLOADED; over it the largest holders are cut (4008).
   */
  maxMemory: number;
  /** Open connections on every door together. Over it: HTTP 503 (or the socket is closed). */
  maxConnections: number;
  /**
   * Bytes queued for one peer and not yet written to its socket (its outbound backlog). Above it the
   * relay stops reading from that peer; a peer that stays above it for `slowConsumerTimeout`, or
   * reaches twice it, is cut as a slow consumer (close 4008).
   */
  maxBacklog: number;
  /** How long a peer's backlog may stay above `maxBacklog` before the peer is cut, ms. */
  slowConsumerTimeout: number;
  /**
   * Bytes of incomplete streamed bodies the relay holds for one connection (bodies it reassembles:
   * broadcasts, the Relay service, gateway and MessagePack-RPC results). Over it: OVERLOADED for that call.
   */
  maxReassembly: number;
  /** A streamed body that receives no chunk for this long is cancelled, ms. */
  streamIdleTimeout: number;
}

export const LIMIT_DEFAULTS: Limits = {
  maxMessage: DEFAULT_MAX_BODY,
  maxCallerInFlight: 1_024,
  maxNodeInFlight: 65_536,
  helloTimeout: 5_000,
  maxLoginFailures: DEFAULT_MAX_LOGIN_FAILURES,
  maxLoginFailuresPerAddress: 50,
  loginFailureWindow: 10 * 60_000,
  maxConnectionsPerAddress: 256,
  maxNodesPerAddress: 4_096,
  maxMemory: defaultMaxMemory(),
  maxConnections: 16_384,
  maxBacklog: 8 * 1024 * 1024,
  slowConsumerTimeout: 10_000,
  maxReassembly: 32 * 1024 * 1024,
  streamIdleTimeout: 30_000,
};

export { ENVELOPE_ALLOWANCE, frameLimit } from '../wire/messages.js';

/** Checks limits given by a user; a message names the option. */
export function checkLimits(limits: Limits): void {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${String(value)}`);
  }
  if (limits.maxReassembly < limits.maxMessage) {
    throw new RangeError(
      `maxReassembly (${limits.maxReassembly}) must be at least maxMessage (${limits.maxMessage}), or a body of the largest size could never be reassembled`,
    );
  }
}

interface AddressState {
  /** Connections not yet (or never) an authenticated node: bounded by maxConnectionsPerAddress. */
  open: number;
  /** Authenticated nodes: bounded by maxNodesPerAddress. */
  nodes: number;
  failures: number;
  windowStart: number;
}

/** Which connection limit a refused connection hit: its address's, or the relay's total. */
export type ConnectionRefusal = 'address' | 'total';

/**
 * What the relay remembers per remote IP address: open connections and recent failed Logins.
 * An address is forgotten once it has no connection and its failure window has passed.
 */
export class AddressTable {
  private readonly table = new Map<string, AddressState>();
  private openTotal = 0;

  constructor(
    private readonly limits: Limits,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.table.size;
  }

  /** Open connections from every address. */
  get total(): number {
    return this.openTotal;
  }

  /** Counts a new connection; false when the address already has the most it may. */
  open(ip: string): boolean {
    const s = this.state(ip);
    s.open++;
    this.openTotal++;
    return s.open <= this.limits.maxConnectionsPerAddress;
  }

  /** Counts a new connection only if both limits allow it; otherwise says which one is full. */
  admit(ip: string): ConnectionRefusal | undefined {
    if (this.openTotal >= this.limits.maxConnections) return 'total';
    if (this.connections(ip) >= this.limits.maxConnectionsPerAddress) return 'address';
    this.open(ip);
    return undefined;
  }

  /**
   * An open connection of `ip` proved to be an authenticated node: it moves from the tight
   * per-address count to the nodes' own, so that a fleet behind one NAT is not held to what one
   * anonymous client may open. False when the address already has `maxNodesPerAddress` nodes.
   */
  promote(ip: string): boolean {
    const s = this.state(ip);
    if (s.nodes >= this.limits.maxNodesPerAddress) return false;
    s.open--;
    s.nodes++;
    return true;
  }

  /** A connection of `ip` closed; `promoted` if it had been counted as a node. */
  close(ip: string, promoted = false): void {
    const s = this.table.get(ip);
    if (!s) return;
    if (promoted) s.nodes--;
    else s.open--;
    this.openTotal--;
    this.forgetIfIdle(ip, s);
  }

  connections(ip: string): number {
    return this.table.get(ip)?.open ?? 0;
  }

  /** Counts a failed Login from `ip`; returns the failures in the current window. */
  loginFailed(ip: string): number {
    const s = this.state(ip);
    this.roll(s);
    return ++s.failures;
  }

  /** Milliseconds until `ip` may try to log in again, or 0 when it may now. */
  loginLockedFor(ip: string): number {
    const s = this.table.get(ip);
    if (!s) return 0;
    this.roll(s);
    if (s.failures < this.limits.maxLoginFailuresPerAddress) return 0;
    return Math.max(1, s.windowStart + this.limits.loginFailureWindow - this.now());
  }

  /** Drops addresses with nothing left to remember (call now and then). */
  prune(): void {
    for (const [ip, s] of this.table) {
      this.roll(s);
      this.forgetIfIdle(ip, s);
    }
  }

  private state(ip: string): AddressState {
    let s = this.table.get(ip);
    if (!s) {
      s = { open: 0, nodes: 0, failures: 0, windowStart: this.now() };
      this.table.set(ip, s);
    }
    return s;
  }

  private roll(s: AddressState): void {
    const now = this.now();
    if (now - s.windowStart >= this.limits.loginFailureWindow) {
      s.windowStart = now;
      s.failures = 0;
    }
  }

  private forgetIfIdle(ip: string, s: AddressState): void {
    if (s.open <= 0 && s.nodes <= 0 && s.failures === 0) this.table.delete(ip);
  }
}

/**
 * Failed Login attempts of one caller connection. The relay sees every LOGIN_FAILED answer going
 * back (the error is part of the envelope it reads), so the limit holds for every service whose
 * Login fails with LOGIN_FAILED, whoever wrote it.
 */
export class LoginFailures {
  private count = 0;

  constructor(
    private readonly addresses: AddressTable,
    private readonly ip: string,
    private readonly limits: Limits,
  ) {}

  /** Before a `*.Login` call is forwarded: the error to answer instead, when the address is locked out. */
  refuse(method: string): TunnelError | undefined {
    if (!method.endsWith('.Login')) return undefined;
    const wait = this.addresses.loginLockedFor(this.ip);
    if (wait === 0) return undefined;
    return new TunnelError(ErrorCode.LOGIN_FAILED, `too many failed Login attempts from ${this.ip}; try again in ${Math.ceil(wait / 1000)} s`);
  }

  /** After a LOGIN_FAILED answer went back: a close reason when this connection must close now. */
  failed(): string | undefined {
    this.count++;
    const fromAddress = this.addresses.loginFailed(this.ip);
    if (this.count >= this.limits.maxLoginFailures) {
      return `too many failed Login attempts on this connection (${this.count}); reconnect to try again`;
    }
    if (fromAddress >= this.limits.maxLoginFailuresPerAddress) return `too many failed Login attempts from ${this.ip}`;
    return undefined;
  }
}

/**
 * One warn line per burst of refused connections, not one per connection: the first refusal after
 * `quiet` ms without any is logged; the rest are counted into the next line, written at most once
 * every `every` ms while the burst lasts.
 */
export class RefusalLog {
  private lastRefusal = -Infinity;
  private lastLine = -Infinity;
  private unlogged = 0;

  constructor(
    private readonly log: Logger,
    private readonly msg: string,
    private readonly quiet = 10_000,
    private readonly every = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  refused(fields: Record<string, unknown>): void {
    const now = this.now();
    const burstStarts = now - this.lastRefusal >= this.quiet;
    this.lastRefusal = now;
    if (!burstStarts && now - this.lastLine < this.every) {
      this.unlogged++;
      return;
    }
    this.log.warn({ ...fields, refusedSinceLastLine: this.unlogged }, this.msg);
    this.unlogged = 0;
    this.lastLine = now;
  }
}
