/**
 * The abort side of one running call. The AbortController behind `signal` is made only when a
 * handler reads `ctx.signal`: most handlers never do, and a controller per call is a measurable
 * share of a node's CPU at high call rates.
 */
export class Cancellation {
  private controller: AbortController | undefined;
  private reason: Error | undefined;

  get aborted(): boolean {
    return this.reason !== undefined;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: Error): void {
    if (this.reason) return;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}
