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
  private readonly running = new Set<AbortController>();

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
  track(controller: AbortController): void {
    this.running.add(controller);
  }

  /** @internal */
  untrack(controller: AbortController): void {
    this.running.delete(controller);
  }

  /** Aborts every handler still running for this session. */
  abortAll(reason: Error): void {
    for (const controller of this.running) controller.abort(reason);
    this.running.clear();
  }
}
