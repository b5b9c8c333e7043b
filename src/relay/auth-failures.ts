import { ErrorCode, TunnelError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import type { AuditInput } from './events.js';
import type { AddressTable } from './limits.js';

/** Where a credential was presented: the metric's `door` label and the audit record's. */
export type AuthDoor = 'websocket' | 'http' | 'msgpack-rpc' | 'dashboard' | 'admin';

/** What {@link AuthFailures} needs from the relay. */
export interface AuthFailuresHost {
  readonly log: Logger;
  readonly metrics: { authFailed(door: AuthDoor): void; authRefused(door: AuthDoor): void };
  readonly events: { audit(record: AuditInput): void };
}

/**
 * Credential guessing, limited on every door at once. Each door asks {@link refusal} before it
 * checks a presented credential (a node or caller token, `Relay.Auth`, a dashboard or admin token)
 * and tells {@link failed} when one was wrong; the counts live per IP address in the relay's one
 * {@link AddressTable}, so failures on the gateway count against the MessagePack-RPC port and the
 * other way round. After `maxAuthFailuresPerAddress` wrong credentials in `authFailureWindow` the
 * address is backed off: its credentials, right or wrong, are refused unchecked for `authBackoff`,
 * doubling (up to `maxAuthBackoff`) at each wrong one that follows until it stays clean for a window.
 *
 * A burst writes little: the door logs the first failure of a burst from an address (`failed`
 * returns true for it), and this writes one warn line and one audit record when a back-off begins.
 * Refusals during a back-off write nothing; the metrics count everything.
 */
export class AuthFailures {
  constructor(
    private readonly addresses: AddressTable,
    private readonly host: AuthFailuresHost,
  ) {}

  /** Before a presented credential from `ip` is checked: the error to answer instead, while `ip` is backed off. */
  refusal(ip: string, door: AuthDoor): TunnelError | undefined {
    const wait = this.addresses.authBackedOff(ip);
    if (wait === 0) return undefined;
    this.host.metrics.authRefused(door);
    const seconds = Math.ceil(wait / 1_000);
    return new TunnelError(ErrorCode.UNAUTHORIZED, `too many failed authentications from ${ip}; retry in ${seconds} s`, { data: { retryAfter: seconds } });
  }

  /**
   * A credential presented from `ip` (peer `address`) was wrong, for `reason`. Returns true when it is
   * the first of a burst from that address, the one failure the door should log.
   */
  failed(ip: string, door: AuthDoor, reason: string, address = ip): boolean {
    this.host.metrics.authFailed(door);
    const f = this.addresses.authFailed(ip);
    if (f.backoff > 0) {
      const detail = `${f.failures} failed authentications from ${ip}, the last at the ${door} door (${reason}); refusing its credentials for ${Math.ceil(f.backoff / 1_000)} s`;
      this.host.log.warn({ ip, door, failures: f.failures, backoffMs: f.backoff, reason }, 'too many failed authentications from one address; backing off');
      this.host.events.audit({ kind: 'auth-backoff', door, address, reason: detail });
    }
    return f.firstOfBurst;
  }
}

/** The `Retry-After` of an error from {@link AuthFailures.refusal}, seconds, or undefined for another error. */
export function retryAfter(err: TunnelError): number | undefined {
  const data = err.data as { retryAfter?: unknown } | undefined;
  return typeof data?.retryAfter === 'number' ? data.retryAfter : undefined;
}
