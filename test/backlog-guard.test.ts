import { describe, expect, it } from 'vitest';
import { BacklogGuard, frozenAfter, type BacklogGuardOptions, type Clock, type SlowCause, type Unacknowledged } from '../src/wire/backlog-guard.js';

/**
 * The slow-consumer rule held in the hand: a clock the test moves, whose timers run only when it
 * does. `freeze` moves the time on with no timer running, as a process stopped by the OS would see.
 */
class TestClock implements Clock {
  t = 1_000_000;
  private timers: Array<{ at: number; fn: () => void; live: boolean }> = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return () => {
      timer.live = false;
    };
  }

  /** Timers armed and not yet run or cancelled. */
  get armed(): number {
    return this.timers.filter((t) => t.live).length;
  }

  /** Moves the time on by `ms`, running each timer that comes due at its time, in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (let n = 0; n < 1_000; n++) {
      const next = this.timers.filter((t) => t.live && t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      this.t = Math.max(this.t, next.at);
      next.live = false;
      next.fn();
    }
    this.t = end;
  }

  /** This process stops for `ms`: the time jumps, no timer runs meanwhile. */
  freeze(ms: number): void {
    this.t += ms;
  }
}

const MAX = 64 * 1024;
const TIMEOUT = 1_000;

interface Harness {
  clock: TestClock;
  backlog: number;
  unacked: Unacknowledged | undefined;
  rechecks: number;
  cuts: SlowCause[];
  pauses: number;
  resumes: number;
  guard: BacklogGuard;
  check(backlog?: number): SlowCause | undefined;
}

/** A guard over a peer whose backlog the test sets; each timer recheck applies the rule to it, as an owner does. */
function guarded(options: Partial<BacklogGuardOptions> = {}): Harness {
  const clock = new TestClock();
  const h: Harness = {
    clock,
    backlog: 0,
    unacked: undefined as Unacknowledged | undefined,
    rechecks: 0,
    cuts: [] as SlowCause[],
    pauses: 0,
    resumes: 0,
    guard: undefined as unknown as BacklogGuard,
    /** What the owner does on every change of the backlog. */
    check(backlog = h.backlog): SlowCause | undefined {
      h.backlog = backlog;
      const cause = h.guard.check(backlog, 0, h.unacked);
      if (cause) h.cuts.push(cause);
      return cause;
    },
  };
  h.guard = new BacklogGuard({
    maxBacklog: MAX,
    timeout: TIMEOUT,
    clock,
    recheck: () => {
      h.rechecks++;
      h.check();
    },
    pause: () => {
      h.pauses++;
      return true;
    },
    resume: () => void h.resumes++,
    ...options,
  });
  return h;
}

describe('BacklogGuard', () => {
  it('does nothing with maxBacklog 0', () => {
    const h = guarded({ maxBacklog: 0 });
    expect(h.check(1 << 30)).toBeUndefined();
    expect(h.clock.armed).toBe(0);
    expect(h.pauses).toBe(0);
  });

  it('a backlog at or under the limit arms nothing and pauses nothing', () => {
    const h = guarded();
    expect(h.check(MAX)).toBeUndefined();
    expect(h.clock.armed).toBe(0);
    expect(h.guard.engaged).toBe(false);
    h.clock.advance(10 * TIMEOUT);
    expect(h.cuts).toEqual([]);
  });

  it('a backlog at twice the limit is cut at once, and the guard then stops', () => {
    const h = guarded();
    expect(h.check(2 * MAX - 1)).toBeUndefined();
    expect(h.check(2 * MAX)).toEqual({ kind: 'twice', backlog: 2 * MAX });
    expect(h.clock.armed).toBe(0);
    expect(h.check(3 * MAX)).toBeUndefined();
    expect(h.cuts).toHaveLength(1);
  });

  it('an allowance raises the immediate cut above twice the limit', () => {
    const h = guarded();
    expect(h.guard.check(2 * MAX + 99, 100)).toBeUndefined();
    expect(h.guard.check(2 * MAX + 100, 100)).toMatchObject({ kind: 'twice' });
  });

  it('a backlog over the limit for the timeout is cut when the timer runs', () => {
    const h = guarded();
    h.check(MAX + 1);
    expect(h.guard.engaged).toBe(true);
    expect(h.clock.armed).toBe(1);
    h.clock.advance(TIMEOUT - 1);
    expect(h.cuts).toEqual([]);
    h.clock.advance(20);
    expect(h.rechecks).toBe(1);
    expect(h.cuts).toEqual([{ kind: 'overdue', backlog: MAX + 1 }]);
    expect(h.clock.armed).toBe(0);
  });

  it('a write once the timeout has passed cuts without waiting for the timer', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.clock.freeze(TIMEOUT);
    expect(h.check(MAX + 2)).toEqual({ kind: 'overdue', backlog: MAX + 2 });
    expect(h.rechecks).toBe(0);
  });

  it('back under the limit stops the clock: a later excess starts a new period', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.clock.advance(TIMEOUT - 100);
    h.check(MAX);
    expect(h.clock.armed).toBe(0);
    h.clock.advance(50);
    h.check(MAX + 1);
    h.clock.advance(TIMEOUT - 1);
    expect(h.cuts).toEqual([]);
    h.clock.advance(20);
    expect(h.cuts).toHaveLength(1);
  });

  it('over the limit pauses once; reading resumes only back under an eighth of the limit', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.check(MAX + 2);
    expect(h.pauses).toBe(1);
    expect(h.guard.isPaused).toBe(true);
    h.check(MAX / 8 + 1);
    expect(h.resumes).toBe(0);
    expect(h.guard.engaged).toBe(true); // paused, though no longer over
    expect(h.clock.armed).toBe(0); // under the limit: no clock runs while it drains
    h.check(MAX / 8);
    expect(h.resumes).toBe(1);
    expect(h.guard.isPaused).toBe(false);
    expect(h.guard.engaged).toBe(false);
  });

  it('an owner that does not pause (pause answers false) is asked again on the next excess', () => {
    let willing = false;
    let asked = 0;
    const h = guarded({
      pause: () => {
        asked++;
        return willing;
      },
    });
    h.check(MAX + 1);
    expect(h.guard.isPaused).toBe(false);
    willing = true;
    h.check(MAX + 2);
    h.check(MAX + 3);
    expect(asked).toBe(2);
    expect(h.guard.isPaused).toBe(true);
  });

  it('pressure runs over the limit, not at the immediate cut; pressure that stops the guard means no cut', () => {
    const seen: number[] = [];
    const h = guarded({ pressure: (b) => void seen.push(b) });
    h.check(MAX + 1);
    h.check(2 * MAX);
    expect(seen).toEqual([MAX + 1]);
    const s = guarded({ pressure: () => s.guard.stop() });
    expect(s.check(MAX + 1)).toBeUndefined();
    s.clock.advance(10 * TIMEOUT);
    expect(s.rechecks).toBe(0);
    expect(s.pauses).toBe(0);
  });

  it('after a freeze of this process the overdue timer gives a fresh period instead of cutting', () => {
    const h = guarded();
    h.check(MAX + 1);
    // The process stops for a minute; then the overdue timer runs first, long after it was due.
    h.clock.freeze(60_000);
    h.clock.advance(0);
    expect(h.rechecks).toBe(0);
    expect(h.cuts).toEqual([]);
    // The socket's report comes next: still over, but its period started anew.
    expect(h.check()).toBeUndefined();
    h.clock.advance(TIMEOUT - 1);
    expect(h.cuts).toEqual([]);
    h.clock.advance(20);
    expect(h.cuts).toEqual([{ kind: 'overdue', backlog: MAX + 1 }]);
  });

  it('after a freeze, a peer that read meanwhile and is under the limit stays', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.clock.freeze(60_000);
    h.clock.advance(0);
    h.check(0);
    h.clock.advance(10 * TIMEOUT);
    expect(h.cuts).toEqual([]);
    expect(h.resumes).toBe(1);
  });

  it('a timer late by less than the freeze grace is not a freeze: the peer is cut', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.clock.freeze(TIMEOUT + 10 + frozenAfter(TIMEOUT));
    h.clock.advance(0);
    expect(h.cuts).toEqual([{ kind: 'overdue', backlog: MAX + 1 }]);
  });

  it('the freeze grace is at least 1 s, and half of a long timeout', () => {
    expect(frozenAfter(100)).toBe(1_000);
    expect(frozenAfter(10_000)).toBe(5_000);
  });

  it('a frame left unacknowledged for the timeout is cut, however small the backlog', () => {
    const h = guarded();
    const sentAt = h.clock.now();
    h.unacked = { oldestAt: sentAt, frames: 1 };
    h.check(100);
    h.clock.advance(TIMEOUT - 1);
    expect(h.cuts).toEqual([]);
    h.clock.advance(20);
    // Timers run 10 ms after what they wait for, so that the clock has surely reached it.
    expect(h.cuts).toEqual([{ kind: 'unacknowledged', backlog: 100, ms: TIMEOUT + 10 }]);
    expect(h.clock.now() - sentAt).toBe(TIMEOUT + 19);
  });

  it('a reader that acknowledges within the timeout stays, each new oldest frame getting its own time', () => {
    const h = guarded();
    for (let i = 0; i < 10; i++) {
      h.unacked = { oldestAt: h.clock.now(), frames: 1 };
      h.check(100);
      h.clock.advance(TIMEOUT - 100);
    }
    h.unacked = { oldestAt: undefined, frames: 0 };
    h.check(0);
    expect(h.clock.armed).toBe(0);
    h.clock.advance(10 * TIMEOUT);
    expect(h.cuts).toEqual([]);
  });

  it('the earlier of the two clocks wakes the guard: an old frame before a recent excess', () => {
    const h = guarded();
    h.unacked = { oldestAt: h.clock.now(), frames: 1 };
    h.check(100);
    h.clock.advance(TIMEOUT / 2);
    h.check(MAX + 1); // over since now: due later than the frame
    h.clock.advance(TIMEOUT / 2 + 20);
    expect(h.cuts).toEqual([{ kind: 'unacknowledged', backlog: MAX + 1, ms: TIMEOUT + 10 }]);
  });

  it('after a freeze, an unacknowledged frame is given a fresh period too', () => {
    const h = guarded();
    const sentAt = h.clock.now();
    h.unacked = { oldestAt: sentAt, frames: 1 };
    h.check(100);
    h.clock.freeze(60_000);
    h.clock.advance(0);
    expect(h.cuts).toEqual([]);
    expect(h.check()).toBeUndefined();
    h.clock.advance(TIMEOUT - 1);
    expect(h.cuts).toEqual([]);
    h.clock.advance(20);
    // Cut when the fresh period ends; the reason gives the frame's whole age.
    expect(h.cuts).toEqual([{ kind: 'unacknowledged', backlog: 100, ms: 60_000 + TIMEOUT + 10 }]);
  });

  it('more frames unacknowledged than maxFrames are cut at once', () => {
    const h = guarded({ maxFrames: 3 });
    h.unacked = { oldestAt: h.clock.now(), frames: 3 };
    expect(h.check(10)).toBeUndefined();
    h.unacked = { oldestAt: h.clock.now(), frames: 4 };
    expect(h.check(10)).toEqual({ kind: 'frames', backlog: 10, frames: 4 });
  });

  it('stop cancels the timer: a stopped guard neither rechecks nor cuts', () => {
    const h = guarded();
    h.check(MAX + 1);
    h.guard.stop();
    expect(h.clock.armed).toBe(0);
    h.clock.advance(10 * TIMEOUT);
    expect(h.rechecks).toBe(0);
    expect(h.check(4 * MAX)).toBeUndefined();
  });
});
