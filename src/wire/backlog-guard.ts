/**
 * The slow-consumer rule, one implementation for every peer the relay writes to (a WebSocket
 * connection, a MessagePack-RPC caller, a dashboard stream): a peer whose backlog stays over
 * `maxBacklog` for `timeout` ms, or reaches twice it at once, is cut; over the limit its owner may
 * stop reading from it, and reading resumes once the backlog is back under an eighth of the limit.
 * Readers that acknowledge what they read (the dashboard) are also cut for a frame left
 * unacknowledged for `timeout` ms, or for too many frames unacknowledged.
 */

/** Time and timers, injectable so that the rule is tested without waiting. */
export interface Clock {
  now(): number;
  /** Runs `fn` once after `ms`, without holding the process open; the result cancels it. */
  after(ms: number, fn: () => void): () => void;
}

/** Date.now and an unref'd setTimeout, looked up at each call (so that fake timers apply). */
export const systemClock: Clock = {
  now: () => Date.now(),
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    t.unref();
    return () => clearTimeout(t);
  },
};

/** Why a peer is cut. Each owner words its own reason from it; the guard only decides. */
export type SlowCause =
  /** The backlog reached twice the limit (plus the allowance) at once. */
  | { kind: 'twice'; backlog: number }
  /** The backlog stayed over the limit for the timeout. */
  | { kind: 'overdue'; backlog: number }
  /** The oldest unacknowledged frame has waited `ms` (the timeout or more). */
  | { kind: 'unacknowledged'; backlog: number; ms: number }
  /** More frames than `maxFrames` wait unacknowledged. */
  | { kind: 'frames'; backlog: number; frames: number };

export interface BacklogGuardOptions {
  /** Bytes a peer may have waiting before it counts as not reading; 0 turns the guard off. */
  maxBacklog: number;
  /** ms a backlog may stay over `maxBacklog`, and a frame may stay unacknowledged. */
  timeout: number;
  /** Frames that may wait unacknowledged (default: no limit). */
  maxFrames?: number;
  clock?: Clock;
  /** When the timer is due the guard asks its owner to look again (the owner calls {@link BacklogGuard.check}). */
  recheck(): void;
  /**
   * Over the limit and not paused: the owner may stop reading from the peer, true if it did (then
   * `resume` runs once the backlog is back under an eighth of the limit).
   */
  pause?(backlog: number): boolean;
  resume?(): void;
  /** Over the limit but under the immediate cut, before the time is looked at (a memory budget looks again); may stop the guard. */
  pressure?(backlog: number): void;
}

/** What a reader that acknowledges frames has not acknowledged yet. */
export interface Unacknowledged {
  /** When the oldest frame not acknowledged was sent, ms on the guard's clock; undefined when none waits. */
  oldestAt: number | undefined;
  frames: number;
}

/**
 * A timer that runs later than this after it was due means this process was frozen (a long GC
 * pause, a stopped VM); the grace scales with the timeout so that a short timeout is not fooled by
 * an ordinary busy turn.
 */
export function frozenAfter(timeout: number): number {
  return Math.max(1_000, timeout / 2);
}

/**
 * Timers run this much after the time they wait for, so that the clock has surely reached it when
 * they do: a timer that fires a millisecond early would look again and find nothing due.
 */
const TIMER_SLACK = 10;

/** The slow-consumer state of one peer: call {@link check} whenever its backlog may have changed. */
export class BacklogGuard {
  private readonly o: BacklogGuardOptions;
  private readonly clock: Clock;
  private readonly maxFrames: number;
  /** Since when the backlog is over the limit, ms; 0 while it is not. */
  private overSince = 0;
  /** After a freeze of this process, frames count as waiting from here at the earliest. */
  private freshSince = 0;
  private paused = false;
  private stopped = false;
  private cancelTimer: (() => void) | undefined;
  /** When the armed timer runs, ms; Infinity when none is armed. */
  private timerAt = Infinity;

  constructor(options: BacklogGuardOptions) {
    this.o = options;
    this.clock = options.clock ?? systemClock;
    this.maxFrames = options.maxFrames ?? Infinity;
  }

  /** The owner stopped reading from the peer (through `pause`) and has not resumed. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** Over the limit or paused: the owner should look again as the backlog drains. */
  get engaged(): boolean {
    return this.overSince !== 0 || this.paused;
  }

  /**
   * Applies the rule to the peer's `backlog` now. Returns why the peer must be cut (the guard then
   * stops), or undefined. `allowance` raises the immediate cut above twice the limit (room for one
   * large answer on its way); `unacked` is what an acknowledging reader still owes.
   */
  check(backlog: number, allowance = 0, unacked?: Unacknowledged): SlowCause | undefined {
    const max = this.o.maxBacklog;
    if (max === 0 || this.stopped) return undefined;
    // Under the limit with nothing unacknowledged (most writes) the time is not needed: arm() reads
    // it only for a due time, which needs one of the two.
    const now = backlog > max || unacked !== undefined ? this.clock.now() : 0;
    if (backlog >= 2 * max + allowance) return this.cut({ kind: 'twice', backlog });
    if (backlog > max) {
      this.o.pressure?.(backlog);
      if (this.stopped) return undefined;
      if (this.overSince === 0) this.overSince = now;
      else if (now - this.overSince >= this.o.timeout) return this.cut({ kind: 'overdue', backlog });
      if (!this.paused && this.o.pause?.(backlog)) this.paused = true;
    } else {
      this.overSince = 0;
      if (this.paused && backlog <= max / 8) {
        this.paused = false;
        this.o.resume?.();
      }
    }
    if (unacked?.oldestAt !== undefined) {
      const waited = now - Math.max(unacked.oldestAt, this.freshSince);
      if (waited >= this.o.timeout) return this.cut({ kind: 'unacknowledged', backlog, ms: now - unacked.oldestAt });
    }
    if (unacked && unacked.frames > this.maxFrames) return this.cut({ kind: 'frames', backlog, frames: unacked.frames });
    this.arm(now, unacked?.oldestAt);
    return undefined;
  }

  /** The peer is gone: no more timers, no more decisions. */
  stop(): void {
    this.stopped = true;
    this.disarm();
  }

  private cut(cause: SlowCause): SlowCause {
    this.stop();
    return cause;
  }

  /** Keeps one timer, at the earliest time something becomes due; none when nothing can. */
  private arm(now: number, oldestAt: number | undefined): void {
    let due = this.overSince !== 0 ? this.overSince + this.o.timeout : Infinity;
    if (oldestAt !== undefined) due = Math.min(due, Math.max(oldestAt, this.freshSince) + this.o.timeout);
    if (due === Infinity) return this.disarm();
    const at = due + TIMER_SLACK;
    if (at >= this.timerAt) return;
    this.disarm();
    this.timerAt = at;
    this.cancelTimer = this.clock.after(Math.max(0, at - now), () => this.onTimer(at));
  }

  private disarm(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    this.timerAt = Infinity;
  }

  /**
   * The time is up. A timer that runs far later than it was due means this process was frozen: the
   * socket's reports of what the peer read meanwhile still wait behind this timer, so the peer is
   * given a fresh period instead of being cut for our own stop (as the heartbeat does, heartbeat.ts).
   */
  private onTimer(at: number): void {
    this.cancelTimer = undefined;
    this.timerAt = Infinity;
    if (this.stopped) return;
    const now = this.clock.now();
    if (now - at > frozenAfter(this.o.timeout)) {
      if (this.overSince !== 0) this.overSince = now;
      this.freshSince = now;
      const due = now + this.o.timeout + TIMER_SLACK;
      this.timerAt = due;
      this.cancelTimer = this.clock.after(due - now, () => this.onTimer(due));
      return;
    }
    this.o.recheck();
  }
}
