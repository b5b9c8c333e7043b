// The fake clock of the unit tests: timers and Date are fake, setImmediate stays real, so that
// `settle` can wait for every microtask, nextTick and delivery that is due (in-memory sockets and
// the fake NATS bus deliver on them).
import { afterEach, beforeEach, vi } from 'vitest';

/** Fakes timers and Date around every test of the calling file. */
export function useFakeClock(): void {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });
}

/** Lets every delivery, flush and callback that is due run (they chain on microtasks and nextTicks). */
export const settle = (): Promise<void> => new Promise<void>((resolve) => setImmediate(resolve));

/** Moves the fake clock on by `ms`, `step` at a time, letting what each timer starts run. */
export async function elapse(ms: number, step = 100): Promise<void> {
  for (let done = 0; done < ms; done += step) {
    await vi.advanceTimersByTimeAsync(Math.min(step, ms - done));
    await settle();
  }
}
