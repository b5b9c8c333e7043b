import { MAX_ID } from '../wire/messages.js';

/**
 * A table of calls waiting for an answer, keyed by request id. Ids count up and wrap at 2^32,
 * skipping ids still in use, so a long-lived connection never runs out.
 */
export class PendingTable<T> {
  private readonly entries = new Map<number, T>();
  private next = 1;

  get size(): number {
    return this.entries.size;
  }

  /** Stores `entry` under a fresh id and returns the id. */
  add(entry: T): number {
    if (this.entries.size > MAX_ID) throw new RangeError('no free request ids');
    let id = this.next;
    while (this.entries.has(id)) id = id === MAX_ID ? 1 : id + 1;
    this.next = id === MAX_ID ? 1 : id + 1;
    this.entries.set(id, entry);
    return id;
  }

  get(id: number): T | undefined {
    return this.entries.get(id);
  }

  /** Removes and returns the entry; a late or unknown id returns undefined. */
  take(id: number): T | undefined {
    const entry = this.entries.get(id);
    if (entry !== undefined) this.entries.delete(id);
    return entry;
  }

  /** Removes and returns every entry (the connection is gone). */
  drain(): T[] {
    const all = [...this.entries.values()];
    this.entries.clear();
    return all;
  }

  values(): IterableIterator<T> {
    return this.entries.values();
  }
}
