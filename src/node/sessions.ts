import { ErrorCode, TunnelError } from '../errors.js';
import { Session } from '../rpc/session.js';

/** The node's sessions, one per caller connection that has called it, created on first use. */
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

  /** The relay connection is gone: every session is gone with it (callers log in again). */
  clear(reason: string): void {
    for (const s of this.sessions.values()) s.abortAll(new TunnelError(ErrorCode.CANCELLED, reason));
    this.sessions.clear();
  }
}
