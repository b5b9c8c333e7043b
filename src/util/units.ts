/** Parses a duration for a flag: a bare number is milliseconds; `ms`, `s`, `m`, `h` suffixes. */
export function parseDuration(value: unknown, flag: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value;
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value) : null;
  if (!m) throw new Error(`--${flag} must be a duration such as 500ms, 30s, 5m or a number of milliseconds; got "${String(value)}"`);
  const n = Number(m[1]);
  const unit = m[2] ?? 'ms';
  return Math.round(n * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[unit]!);
}

/** Parses a size for a flag: a bare number is bytes; `KiB`, `MiB`, `GiB` (and `KB`, `MB`, `GB` = powers of 1000). */
export function parseSize(value: unknown, flag: string): number {
  if (typeof value === 'number' && Number.isInteger(value) && value > 0) return value;
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$/.exec(value) : null;
  if (!m) throw new Error(`--${flag} must be a size such as 16MiB, 512KiB or a number of bytes; got "${String(value)}"`);
  const factor: Record<string, number> = {
    B: 1,
    KiB: 1024,
    MiB: 1024 ** 2,
    GiB: 1024 ** 3,
    KB: 1e3,
    MB: 1e6,
    GB: 1e9,
    k: 1024,
    K: 1024,
    M: 1024 ** 2,
    G: 1024 ** 3,
  };
  return Math.round(Number(m[1]) * factor[m[2] ?? 'B']!);
}
