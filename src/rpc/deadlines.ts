/** Something with a deadline; the wheel keeps its slot on it so that removal needs no lookup. */
export interface Expiring {
  /** @internal slot in the wheel, 0 when not scheduled */
  deadlineSlot: number;
}

/**
 * One timer for many deadlines. Calls are bucketed by deadline into slots of `resolution` ms, and a
 * single timer walks the slots while any call is waiting (and for one tick after the last one
 * left). Adding and removing a call costs a Set operation instead of a timer object per call;
 * deadlines fire up to `resolution` ms late.
 */
export class DeadlineWheel<T extends Expiring> {
  private readonly slots = new Map<number, Set<T>>();
  private size = 0;
  private checkedUpTo = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly onExpire: (entry: T) => void,
    private readonly resolution = 10,
  ) {}

  get pending(): number {
    return this.size;
  }

  add(entry: T, timeoutMs: number): void {
    const slot = Math.ceil((Date.now() + timeoutMs) / this.resolution);
    let set = this.slots.get(slot);
    if (!set) {
      set = new Set();
      this.slots.set(slot, set);
    }
    set.add(entry);
    entry.deadlineSlot = slot;
    this.size++;
    if (this.timer === undefined) {
      this.checkedUpTo = Math.floor(Date.now() / this.resolution);
      this.timer = setInterval(this.tick, this.resolution);
    }
  }

  remove(entry: T): void {
    const slot = entry.deadlineSlot;
    if (slot === 0) return;
    entry.deadlineSlot = 0;
    const set = this.slots.get(slot);
    if (!set?.delete(entry)) return;
    if (set.size === 0) this.slots.delete(slot);
    // The timer stops at its next tick if nothing was added meanwhile: one call at a time would
    // otherwise start and stop an interval per call.
    this.size--;
  }

  /** Forgets every entry without expiring it. */
  clear(): void {
    for (const set of this.slots.values()) for (const e of set) e.deadlineSlot = 0;
    this.slots.clear();
    this.size = 0;
    this.stop();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private readonly tick = (): void => {
    const now = Math.floor(Date.now() / this.resolution);
    for (let slot = this.checkedUpTo + 1; slot <= now; slot++) {
      const set = this.slots.get(slot);
      if (!set) continue;
      this.slots.delete(slot);
      for (const entry of set) {
        entry.deadlineSlot = 0;
        this.size--;
        this.onExpire(entry);
      }
    }
    this.checkedUpTo = now;
    if (this.size === 0) this.stop();
  };
}
