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
   * Wrong credentials (node or caller tokens, `Relay.Auth`, dashboard and admin tokens) from one IP
   * address within `authFailureWindow`, every door together. At it: the address is backed off.
   */
  maxAuthFailuresPerAddress: number;
  /** The window of `maxAuthFailuresPerAddress`, ms; also how long an address must stay clean after a back-off before it is forgiven. */
  authFailureWindow: number;
  /**
   * The first back-off, ms: credentials from a backed-off address are refused without being checked.
   * A wrong credential after a back-off ends (before the address is forgiven) starts the next one, twice as long.
   */
  authBackoff: number;
  /** The longest back-off, ms. */
  maxAuthBackoff: number;
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
  maxAuthFailuresPerAddress: 10,
  authFailureWindow: 60_000,
  authBackoff: 5_000,
  maxAuthBackoff: 10 * 60_000,
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
  if (limits.maxAuthBackoff < limits.authBackoff) {
    throw new RangeError(`maxAuthBackoff (${limits.maxAuthBackoff}) must be at least authBackoff (${limits.authBackoff})`);
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
  /** Wrong credentials, while the address has any to remember. */
  auth?: AuthState;
}

/** Wrong credentials from one address, on every door. */
interface AuthState {
  /** In the window that started at `windowStart`. */
  failures: number;
  windowStart: number;
  /** The last back-off, ms; 0 until there is one, and again once the address is forgiven. */
  backoff: number;
  /** When the last back-off ends (refusals before it). */
  until: number;
  /** The last failure or refusal: a burst goes on while they come less than {@link BURST_QUIET} ms apart. */
  last: number;
}

/** A burst of failures from one address ends after this long without one, ms. */
export const BURST_QUIET = 10_000;

/** What {@link AddressTable.authFailed} tells about a wrong credential. */
export interface AuthFailure {
  /** The first failure of a burst from its address: the one worth a log line. */
  firstOfBurst: boolean;
  /** A back-off began with it, this long (ms); 0 when none did. */
  backoff: number;
  /** Failures counted in the window when it came (the one that began a back-off included). */
  failures: number;
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

  /**
   * Counts a wrong credential from `ip`. The `maxAuthFailuresPerAddress`th in a window begins a
   * back-off of `authBackoff`; once an address has been backed off, every wrong credential before it
   * is forgiven (a clean `authFailureWindow` after its back-off) begins the next, twice as long, at
   * most `maxAuthBackoff`.
   */
  authFailed(ip: string): AuthFailure {
    const now = this.now();
    const s = this.state(ip);
    const a = this.authState(s, now);
    const firstOfBurst = now - a.last >= BURST_QUIET;
    a.last = now;
    if (now < a.until) return { firstOfBurst, backoff: 0, failures: a.failures };
    if (a.backoff > 0) {
      a.backoff = Math.min(2 * a.backoff, this.limits.maxAuthBackoff);
      a.until = now + a.backoff;
      return { firstOfBurst, backoff: a.backoff, failures: 1 };
    }
    if (now - a.windowStart >= this.limits.authFailureWindow) {
      a.windowStart = now;
      a.failures = 0;
    }
    const failures = ++a.failures;
    if (failures < this.limits.maxAuthFailuresPerAddress) return { firstOfBurst, backoff: 0, failures };
    a.failures = 0;
    a.backoff = this.limits.authBackoff;
    a.until = now + a.backoff;
    return { firstOfBurst, backoff: a.backoff, failures };
  }

  /** Milliseconds left of `ip`'s back-off, or 0 when its credentials may be checked. A refusal keeps its burst going. */
  authBackedOff(ip: string): number {
    const a = this.table.get(ip)?.auth;
    if (!a) return 0;
    const now = this.now();
    if (now >= a.until) return 0;
    a.last = now;
    return a.until - now;
  }

  /** Drops addresses with nothing left to remember (call now and then). */
  prune(): void {
    const now = this.now();
    for (const [ip, s] of this.table) {
      this.roll(s);
      if (s.auth) this.authState(s, now);
      this.forgetIfIdle(ip, s);
    }
  }

  /** The address's credential state, forgotten first when it is clean: a window without failures after its last back-off. */
  private authState(s: AddressState, now: number): AuthState {
    const a = s.auth;
    if (a && now - Math.max(a.until, a.last) < this.limits.authFailureWindow) return a;
    s.auth = { failures: 0, windowStart: now, backoff: 0, until: 0, last: -Infinity };
    if (a) s.auth.last = a.last;
    return s.auth;
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
    if (s.auth && s.auth.failures === 0 && s.auth.backoff === 0 && this.now() - s.auth.last >= BURST_QUIET) s.auth = undefined;
    if (s.open <= 0 && s.nodes <= 0 && s.failures === 0 && s.auth === undefined) this.table.delete(ip);
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

/** Only the limits of `o` (a relay's settings hold more): what `Relay.limits` shows. */
export function pickLimits(o: Limits): Limits {
  const out = {} as Limits;
  for (const key of Object.keys(LIMIT_DEFAULTS) as (keyof Limits)[]) out[key] = o[key];
  return out;
}
