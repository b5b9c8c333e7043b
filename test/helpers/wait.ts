/**
 * Waiting for a condition on a test peer without polling: whoever changes what the condition reads
 * (a message arrived, the socket closed) calls `wake()`, and `until` looks again, bounded by a timeout.
 */
export class Wakeups {
  private waiters: Array<() => void> = [];

  wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves once `pred` holds; after `timeout` ms throws, naming `what` and the peer's `state()`. */
  async until(pred: () => boolean, timeout: number, what: string, state: () => string): Promise<void> {
    const deadline = Date.now() + timeout;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeout} ms waiting for ${what}; ${state()}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

/**
 * Polls `cond` (sync or async) every `every` ms until it holds; after `timeout` ms throws, naming
 * `what` (a function is asked only then, for what it has seen by that time). For conditions nothing
 * can wake (another process's state, an HTTP endpoint).
 */
export async function waitUntil(cond: () => boolean | Promise<boolean>, timeout: number, what: string | (() => string), every = 50): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}
