import { randomBytes } from 'node:crypto';
import { ErrorCode, TunnelError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import type { Authenticator, Credential } from './auth.js';
import type { AuthDoor, AuthFailures } from './auth-failures.js';
import { CallerLink, relayDeadlines } from './caller-link.js';
import type { CallerLimits, CallerOutput, CallObserver, GatewaySession } from './contracts.js';
import type { CallerConnection, CallerTransport } from './dashboard/host.js';
import type { NodeDirectory } from './directory.js';
import type { CallerAdmission, Revocation, SessionDoor, SessionHub } from './doors/hub.js';
import type { RelayEvents } from './events.js';
import { LoginFailures, type AddressTable, type Limits } from './limits.js';
import type { MemoryBudget } from './memory.js';
import type { Presence } from './presence.js';

export type { Revocation } from './doors/hub.js';

/** One audit line, metric, audit record and `revoked` event per revoked connection, in the words of the refusals. */
export function revocationAudit(
  log: Logger,
  metrics: { connectionRejected(reason: string): void },
  events: Pick<RelayEvents, 'audit'>,
  emit: (event: 'revoked', r: Revocation) => void,
): (r: Revocation) => void {
  return (r) => {
    const who = r.role === 'node' ? { node: r.name } : { identity: r.name };
    log.warn({ role: r.role, ...who, peer: r.address, reason: r.reason }, 'revoked connection');
    metrics.connectionRejected('revoked');
    events.audit({ kind: 'revoked', address: r.address, reason: r.reason, ...(r.role === 'node' ? { node: r.name ?? undefined } : { identity: r.name }) });
    emit('revoked', r);
  };
}

/** What {@link CallerSessions} is built from. */
export interface CallerSessionsParts {
  /** The relay's settings: its limits and deadlines. */
  readonly limits: Readonly<Limits> & Omit<CallerLimits, 'memory'>;
  readonly log: Logger;
  readonly auth: Authenticator;
  readonly authFailures: Pick<AuthFailures, 'refusal' | 'failed'>;
  readonly addresses: AddressTable;
  readonly memory: MemoryBudget;
  readonly directory: NodeDirectory;
  readonly presence: Presence;
  readonly observer: CallObserver;
  readonly events: Pick<RelayEvents, 'audit'>;
  /** A reload revoked a caller: the relay's one audit line, metric and `revoked` event. */
  revoked(r: Revocation): void;
}

/** One caller connection: its link, which door it came by, when, and what admitted it. */
interface Session {
  readonly link: CallerLink;
  readonly transport: CallerTransport;
  readonly since: number;
  readonly credential: Credential | undefined;
}

/**
 * Every caller session of the relay, one record each, on every door: WebSocket and msgpack-rpc
 * connections, HTTP gateway requests. Admits callers by their token, opens and ends sessions,
 * rechecks them at each reload of the tokens file, and tells them the relay is going away.
 */
export class CallerSessions implements SessionHub {
  private readonly sessions = new Map<CallerLink, Session>();
  /** Connections (WebSocket and msgpack-rpc) and gateway requests open now. */
  private connections = 0;
  private requests = 0;
  private readonly prefix = randomBytes(4).toString('hex');
  private counter = 0;
  private readonly callerLimits: CallerLimits;
  /** The relay's timer wheel of call deadlines. */
  private readonly deadlines = relayDeadlines();
  /** Set once the relay drains: sessions opened from then on take no calls. */
  private goingAway: string | undefined;
  private streamTimer: NodeJS.Timeout | undefined;

  constructor(private readonly parts: CallerSessionsParts) {
    this.callerLimits = { ...parts.limits, memory: parts.memory };
  }

  /** Starts cancelling streamed bodies that stopped moving; once the relay is built. */
  start(): void {
    this.streamTimer ??= setInterval(() => this.expireIdleStreams(), Math.max(100, Math.min(this.parts.limits.streamIdleTimeout / 2, 5_000)));
    this.streamTimer.unref();
  }

  /** Stops the timers: the idle streams' and every call's deadline. */
  stop(): void {
    clearInterval(this.streamTimer);
    this.deadlines.clear();
  }

  get callersNeedAuth(): boolean {
    return this.parts.auth.callersNeedAuth;
  }

  /** Caller connections open now (WebSocket and msgpack-rpc; not HTTP requests). */
  get connectionCount(): number {
    return this.connections;
  }

  /** HTTP gateway requests being answered. */
  get gatewayCount(): number {
    return this.requests;
  }

  admit(token: string | undefined, address: string, door: AuthDoor): CallerAdmission {
    const { authFailures, auth, log, events } = this.parts;
    const ip = ipOfAddress(address);
    const backedOff = token === undefined ? undefined : authFailures.refusal(ip, door);
    if (backedOff) throw backedOff;
    const verdict = auth.caller(token);
    if (!verdict.ok) {
      if (verdict.wrongToken && authFailures.failed(ip, door, verdict.reason, address)) {
        log.warn({ peer: address, door, reason: verdict.reason }, 'refused caller token');
        events.audit({ kind: 'refused-connection', door, address, reason: verdict.reason });
      }
      throw new TunnelError(ErrorCode.UNAUTHORIZED, verdict.reason);
    }
    return { identity: verdict.identity, credential: verdict.credential };
  }

  open(out: CallerOutput, address: string, identity: string | null, log: Logger, credential?: Credential, door: SessionDoor = 'msgpack-rpc'): CallerLink {
    const link = this.add('', door, out, address, identity, log, credential);
    // A session opened while draining (on the msgpack-rpc port, which has no upgrade to refuse) takes no calls.
    link.goingAway = this.goingAway;
    return link;
  }

  /** Opens the session of one HTTP gateway request; its answers go to `out`. */
  openGateway(address: string, identity: string | null, out: CallerOutput, credential?: Credential): GatewaySession {
    const link = this.add('h', 'http', out, address, identity, this.parts.log.child({ peer: address }), credential);
    return { link, close: () => this.close(link) };
  }

  /** Ends a session, once: its calls are dropped and every node that saw it forgets it. */
  close(link: CallerLink): void {
    const session = this.sessions.get(link);
    if (!session) return;
    this.sessions.delete(link);
    if (session.transport === 'http') this.requests--;
    else this.connections--;
    link.onClose();
  }

  /**
   * Closes one caller from the relay's side: its connection gets `code` and `reason` (an output
   * without `close`, an HTTP request, has its calls in flight answered `error` instead), then the
   * session ends. The one way a revocation and an operator's disconnect end a caller.
   */
  end(link: CallerLink, code: number, error: ErrorCode, reason: string): void {
    const unanswered = link.out.close ? [] : link.inFlightIds;
    link.out.close?.(code, reason);
    this.close(link);
    const wire = new TunnelError(error, reason).toWire();
    for (const id of unanswered) link.out.respond(id, wire, null);
  }

  /** The open session with this id, if any. */
  find(session: string): CallerLink | undefined {
    for (const link of this.sessions.keys()) if (link.session === session) return link;
    return undefined;
  }

  /** After a reload: every session its token no longer admits is closed (4003) and reported. */
  recheck(): void {
    for (const s of this.ordered()) {
      const reason = this.parts.auth.recheckCaller(s.link.identity, s.credential);
      if (!reason) continue;
      this.parts.revoked({ role: 'caller', name: s.link.identity, address: s.link.address, reason });
      this.end(s.link, CloseCode.UNAUTHORIZED, ErrorCode.UNAUTHORIZED, reason);
    }
  }

  /** The relay drains: connections get GOAWAY and take no new calls, nor do sessions opened from now on. */
  goAway(reason: string): void {
    this.goingAway = reason;
    for (const { link, transport } of this.sessions.values()) {
      if (transport === 'http') continue;
      link.goingAway = reason;
      link.out.goaway?.(reason);
    }
  }

  /** Cancels streamed bodies that stopped moving (docs/PROTOCOL.md, "Limits"). */
  expireIdleStreams(now = Date.now()): void {
    for (const s of this.ordered()) s.link.expireIdleStreams(this.parts.limits.streamIdleTimeout, now);
  }

  /** Every caller connection now: WebSocket and msgpack-rpc sessions, then HTTP gateway requests. */
  describe(): CallerConnection[] {
    return this.ordered().map(({ link, transport, since }) => ({
      session: link.session,
      transport,
      address: link.address,
      identity: link.identity,
      inFlight: link.inFlight,
      since,
    }));
  }

  /** Connections first, then gateway requests, each in the order they opened. */
  private ordered(): Session[] {
    const all = [...this.sessions.values()];
    return [...all.filter((s) => s.transport !== 'http'), ...all.filter((s) => s.transport === 'http')];
  }

  /** A caller session with a relay-unique id (`kind` tells gateway sessions apart in logs). */
  private add(
    kind: string,
    transport: CallerTransport,
    out: CallerOutput,
    address: string,
    identity: string | null,
    log: Logger,
    credential: Credential | undefined,
  ): CallerLink {
    const { addresses, limits, directory, presence, observer } = this.parts;
    const session = `${this.prefix}-${kind}${(++this.counter).toString(36)}`;
    const logins = new LoginFailures(addresses, ipOfAddress(address), limits);
    const link = new CallerLink({
      session,
      out,
      address,
      identity,
      directory,
      limits: this.callerLimits,
      deadlines: this.deadlines,
      log,
      presence,
      observer,
      logins,
    });
    this.sessions.set(link, { link, transport, since: Date.now(), credential });
    if (transport === 'http') this.requests++;
    else this.connections++;
    return link;
  }
}

/** The IP of an `ip:port` peer address. */
export function ipOfAddress(address: string): string {
  const i = address.lastIndexOf(':');
  return i > 0 ? address.slice(0, i) : address;
}
