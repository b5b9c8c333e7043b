import type { Logger } from '../util/logger.js';
import type { Session } from './session.js';

/** Who is calling, as the relay saw it. */
export interface CallerInfo {
  /** Remote address of the caller's connection at the relay, `ip:port`. */
  address: string;
  /** Identity proven to the relay (token name), or null when the relay asked for none. */
  identity: string | null;
}

/** The last argument of every handler. */
export interface CallContext {
  /** Per-caller-connection state (Login lives here). */
  session: Session;
  caller: CallerInfo;
  /** Name of the node running the handler. */
  node: string;
  /** `Service.Method` being called. */
  method: string;
  /** Aborted when the caller cancels or disconnects, at the deadline, or when the node shuts down. */
  signal: AbortSignal;
  /** Epoch milliseconds after which nobody waits for the answer. */
  deadline: number;
  log: Logger;
}
