import { ErrorCode, TunnelError } from '../errors.js';
import { Session } from '../rpc/session.js';

/**
 * The node's sessions, one per caller connection that has called it, created on first use. A node
 * with several tunnels has one table for all of them: session ids are unique across a cluster, and a
 * caller's calls may reach the node through either relay.
 */
export class SessionTable {
  private readonly sessions = new Map<string, Session>();

  get(id: string): Session {
    let s = this.sessions.get(id);
    if (!s) {
      s = new Session(id);
      this.sessions.set(id, s);
    }
    return s;
  }

  has(id: string): boolean {
    return this.sessions.has(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  /** The caller disconnected: abort its running handlers and forget its state. */
  close(id: string): boolean {
    const s = this.sessions.get(id);
    if (!s) return false;
    s.abortAll(new TunnelError(ErrorCode.CANCELLED, 'caller disconnected'));
    this.sessions.delete(id);
    return true;
  }

  /**
   * No relay connection is left (or the node stops): every session is gone (callers log in again).
   * Returns how many there were.
   */
  clear(reason: string): number {
    const had = this.sessions.size;
    for (const s of this.sessions.values()) s.abortAll(new TunnelError(ErrorCode.CANCELLED, reason));
    this.sessions.clear();
    return had;
  }
}
