import type { Logger } from '../../util/logger.js';
import type { Credential } from '../auth.js';
import type { AuthDoor, AuthFailures } from '../auth-failures.js';
import type { CallerLink } from '../caller-link.js';
import type { CallerOutput } from '../contracts.js';
import type { AuditDoor } from '../events.js';
import type { Limits } from '../limits.js';
import type { MemoryBudget } from '../memory.js';

/**
 * What the relay's doors (the WebSocket, the HTTP gateway, the MessagePack-RPC port) need from the
 * rest of the relay. Interfaces only: no door imports relay.ts, and each can be built over fakes.
 */

/** Who a refusal or a cut was about, as its audit record names it. @internal */
export interface Who {
  door: AuditDoor;
  /** The peer's `ip:port`. */
  address?: string | undefined;
  /** The node name a hello claimed. */
  node?: string | undefined;
  /** The caller session, once one is open. */
  session?: string | undefined;
}

/** A caller admitted by its token: what {@link SessionHub.open} needs to re-check it at each reload. */
export interface CallerAdmission {
  identity: string | null;
  credential: Credential;
}

/** A connection closed because a reload of the tokens file no longer admits it (event `revoked`). */
export interface Revocation {
  role: 'node' | 'caller';
  /** The node's name, or the caller's identity (null when anonymous). */
  name: string | null;
  /** The peer's address, `ip:port`. */
  address: string;
  reason: string;
}

/** How a caller session reached the relay (the dashboard's `transport`); the gateway's sessions are opened apart. @internal */
export type SessionDoor = 'websocket' | 'msgpack-rpc';

/** Admits, opens and ends caller sessions, on every door: sessions.ts `CallerSessions`. @internal */
export interface SessionHub {
  /** Callers must present a token now (read at each use: a reload of the tokens file may change it). */
  readonly callersNeedAuth: boolean;
  /**
   * Checks a caller's token and returns its identity (null when anonymous) and what admitted it, or
   * throws a TunnelError with code UNAUTHORIZED; a wrong one counts against its address (auth-failures.ts).
   */
  admit(token: string | undefined, address: string, door: AuthDoor): CallerAdmission;
  /**
   * Starts a caller session, which is one caller connection: requests go to `link.onMessage`,
   * answers come out through `out`. A reload that no longer admits it closes it (4003).
   */
  open(out: CallerOutput, address: string, identity: string | null, log: Logger, credential?: Credential, door?: SessionDoor): CallerLink;
  /** Ends a caller session: its calls are dropped and every node that saw it forgets it. */
  close(link: CallerLink): void;
}

/** Refusals and slow consumers of every door: the metric and the audit record, written in one place (door-events.ts). @internal */
export interface DoorEvents {
  /** A connection refused: counted under `metric` (none: not counted); with `who` and `reason`, also an audit record `refused-connection`. */
  refused(metric: string | undefined, who?: Who, reason?: string): void;
  /** A peer cut because it did not read its answers. */
  slowConsumer(who: Who, reason: string): void;
}

/** Counts connections of every door against the same per-address and total limits (gate.ts). @internal */
export interface SocketAdmission {
  /** Call `release` once the connection closes; a refused one is not counted. */
  admitSocket(ip: string): { release: () => void } | { refused: string };
}

/**
 * What the MessagePack-RPC port is given: the relay, seen through these parts. Only `limits` is
 * public: the published declarations strip the rest, so that a `Relay` (whose parts are internal
 * too) still fits there.
 */
export interface MsgpackRpcHost {
  readonly limits: Readonly<Limits>;
  /** @internal */
  readonly memory: Pick<MemoryBudget, 'add' | 'poke'>;
  /** @internal */
  readonly sessions: SessionHub;
  /** @internal */
  readonly doorEvents: DoorEvents;
  /** @internal */
  readonly gate: SocketAdmission;
  /** @internal */
  readonly authFailures: Pick<AuthFailures, 'refusal' | 'failed'>;
}
