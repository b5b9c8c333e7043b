import type { Cancellation } from './cancellation.js';

/**
 * State that lives as long as one caller connection, kept on the node. `Login` puts a user here;
 * the relay tells the node when the caller disconnects and the session is dropped with its handlers.
 */
export class Session {
  readonly id: string;
  /** The logged-in user, set by a Login method through `login()`. */
  user: string | undefined;
  /** Free-form per-connection state for services. */
  readonly data = new Map<string, unknown>();
  /** Failed Login attempts on this connection. */
  failedLogins = 0;
  private readonly running = new Set<Cancellation>();

  constructor(id: string) {
    this.id = id;
  }

  get loggedIn(): boolean {
    return this.user !== undefined;
  }

  login(user: string): void {
    this.user = user;
  }

  logout(): void {
    this.user = undefined;
  }

  /** @internal */
  track(call: Cancellation): void {
    this.running.add(call);
  }

  /** @internal */
  untrack(call: Cancellation): void {
    this.running.delete(call);
  }

  /** Aborts every handler still running for this session. */
  abortAll(reason: Error): void {
    for (const call of this.running) call.abort(reason);
    this.running.clear();
  }
}
