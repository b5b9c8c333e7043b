import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Proc } from './processes.js';

const PROBE = fileURLToPath(new URL('../fixtures/memory-probe.mjs', import.meta.url));

/** Environment for a process whose memory a test measures (see fixtures/memory-probe.mjs). */
export const PROBE_ENV = { NODE_OPTIONS: `--expose-gc --import ${PROBE}` };

export interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

/** The process's memory after a full garbage collection; it must run with {@link PROBE_ENV}. */
export async function memoryAfterGc(proc: Proc): Promise<Memory> {
  const from = proc.logs.length;
  proc.kill('SIGUSR2');
  const line = await proc.waitForMsg('memory', 10_000, from);
  return { rss: line.rss as number, heapUsed: line.heapUsed as number, external: line.external as number };
}

/** Starts a new peak: the kernel's high-water mark of resident memory is reset to the current RSS. */
export function resetPeak(proc: Proc): void {
  writeFileSync(`/proc/${proc.child.pid}/clear_refs`, '5');
}

/** The largest resident memory of the process since {@link resetPeak}, bytes (the kernel's VmHWM). */
export function peakRss(proc: Proc): number {
  const status = readFileSync(`/proc/${proc.child.pid}/status`, 'utf8');
  const kb = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (!kb) throw new Error('no VmHWM in /proc status');
  return Number(kb[1]) * 1024;
}

export const MiB = 1024 * 1024;
