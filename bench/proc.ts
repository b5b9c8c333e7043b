/**
 * What /proc says about a process, for bench.ts and for bench/load.ts (which reads the relay's and
 * the node's CPU time at the edges of its measured window).
 */
import { readFileSync } from 'node:fs';

/** Clock ticks per second of utime and stime in /proc/<pid>/stat (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** CPU seconds (user + system, every thread) a process has used so far, from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** CPU seconds (user + system) and peak RSS of a process, from /proc. */
export function procStats(pid: number): { cpu: number; peakRssMB: number; rssMB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { cpu: cpuSeconds(pid), peakRssMB: kb('VmHWM') / 1024, rssMB: kb('VmRSS') / 1024 };
}
