import v8 from 'node:v8';

/**
 * Garbage-collection tuning for the relay and node processes (the CLIs; the library leaves the
 * process it is embedded in alone).
 *
 * Large payloads allocate buffers far faster than they allocate JavaScript objects: a 16 MiB echo
 * moves ~100 MiB of socket, frame and chunk buffers through each process. With a heap of ~10 MiB,
 * V8 then starts an incremental mark-compact every 20-40 ms (about four per 16 MiB call, measured
 * with --trace-gc), and that marking was half of each process's CPU time. Atomic mark-compacts,
 * started only when the old generation reaches its limit, cost one or two per call instead.
 *
 * Incremental marking exists to keep pauses short on large heaps: an atomic mark-compact of a
 * 100 MB heap (a relay with 4,000 nodes) paused 40-45 ms here, against 13 ms incrementally. So it
 * is turned off only while the heap is small (under {@link SMALL_HEAP}, where an atomic pause is
 * about as short) and back on above {@link LARGE_HEAP}; the heap is looked at once a second.
 *
 * Whoever starts node with an explicit `--incremental-marking` or `--no-incremental-marking`
 * keeps that choice: nothing is changed then.
 */
export const SMALL_HEAP = 32 * 1024 * 1024;
export const LARGE_HEAP = 48 * 1024 * 1024;

/** Whether incremental marking should be on for a heap of `used` bytes, given whether it is on now. */
export function wantIncremental(used: number, on: boolean): boolean {
  if (on) return used > SMALL_HEAP;
  return used > LARGE_HEAP;
}

/** Starts the tuning; returns a function that stops it (and leaves the last setting). */
export function tuneGarbageCollection(): () => void {
  if (process.execArgv.some((a) => /^--(no-)?incremental[-_]marking$/.test(a))) return () => {};
  let on = true;
  const apply = () => {
    const want = wantIncremental(v8.getHeapStatistics().used_heap_size, on);
    if (want === on) return;
    v8.setFlagsFromString(want ? '--incremental-marking' : '--no-incremental-marking');
    on = want;
  };
  apply();
  const timer = setInterval(apply, 1_000);
  timer.unref();
  return () => clearInterval(timer);
}
