import { LadingError } from './errors.js';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
};

/** Parse a byte size: `65536`, `64KiB`, `200GiB`, `1.5GB`. */
export function parseBytes(input: string | number, what = 'size'): number {
  if (typeof input === 'number') {
    if (Number.isFinite(input) && input >= 0) return Math.floor(input);
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(input);
    const unit = m?.[2]?.toLowerCase();
    if (m && unit !== undefined && unit in SIZE_UNITS) return Math.floor(Number(m[1]) * SIZE_UNITS[unit]!);
  }
  throw new LadingError('BAD_ARGUMENT', `${what} ${JSON.stringify(input)} is not a byte size`, {
    hint: 'write a number of bytes or a number with a unit, e.g. 65536, 64KiB, 200GiB, 1.5GB',
  });
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };

/** Parse a duration: `250ms`, `30s`, `5m`, `2h`, `7d`, or a number of milliseconds. */
export function parseDuration(input: string | number, what = 'duration'): number {
  if (typeof input === 'number') {
    if (Number.isFinite(input) && input >= 0) return input;
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(input);
    if (m) return Number(m[1]) * DURATION_UNITS[m[2] ?? 'ms']!;
  }
  throw new LadingError('BAD_ARGUMENT', `${what} ${JSON.stringify(input)} is not a duration`, {
    hint: 'write milliseconds or a number with a unit: 250ms, 30s, 5m, 2h, 7d',
  });
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
