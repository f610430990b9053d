/** Cache configuration: defaults, validation and the per-user default root. */
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { LadingError, formatBytes, parseBytes } from '@lading/core';
import picomatch from 'picomatch';

const MiB = 1024 * 1024;

export const DEFAULT_BLOCK_BYTES = 8 * MiB;
export const DEFAULT_CACHE_MAX = '10GiB';

export interface CacheOptions {
  /** Cache root. Default: `LADING_CACHE_DIR`, else `$XDG_CACHE_HOME/lading`, else `~/.cache/lading` (created 0700). */
  dir?: string;
  /** Byte budget of the block files, e.g. `200GiB`. Default 10GiB. */
  maxBytes?: number | string;
  /** Block size: a ranged read fetches and caches only the blocks it touches. Default 8MiB. */
  blockSize?: number | string;
  /** Objects larger than this are streamed from the backend, uncached. Default: a quarter of `maxBytes`. */
  maxObjectBytes?: number | string;
  /** Key globs (picomatch) whose blocks budget eviction never removes (explicit `evict({ all | prefix })` still does). */
  pin?: string[];
  /** Key globs that always bypass the cache. */
  noCache?: string[];
  /** Reuse a backend stat for this long (ms) before validating again. Default 0: every read validates. */
  statTtlMs?: number;
  /** Blocks filled ahead of a sequential reader. Default 1 (lowered when the budget holds fewer blocks). */
  readahead?: number;
  /** Budget eviction removes least-recently-used blocks until usage is at most this fraction of `maxBytes`. Default 0.9. */
  evictToRatio?: number;
  /** A fill lock whose holder stopped refreshing it this long ago (or whose pid is dead) is taken over. Default 30s. */
  lockStaleMs?: number;
  /** Temp files of fills older than this (or whose pid is dead) are removed. Default 1h. */
  tempMaxAgeMs?: number;
  /** How often a process waiting on another's fill looks again (ms). Default 20. */
  pollMs?: number;
  /** Re-scan the directory (to account for other processes' fills) at least this often while filling. Default 30s. */
  rescanMs?: number;
  /** Chunk size of reads from block files. Default 1MiB. */
  chunkBytes?: number | string;
  /** Environment for the default root (tests). Default process.env. */
  env?: Record<string, string | undefined>;
}

export interface ResolvedCacheOptions {
  dir: string;
  maxBytes: number;
  blockSize: number;
  maxObjectBytes: number;
  pin: string[];
  noCache: string[];
  statTtlMs: number;
  readahead: number;
  evictToRatio: number;
  lockStaleMs: number;
  tempMaxAgeMs: number;
  pollMs: number;
  rescanMs: number;
  chunkBytes: number;
  isPinned: (key: string) => boolean;
  isNoCache: (key: string) => boolean;
}

/** The per-user default cache root: `LADING_CACHE_DIR`, else `$XDG_CACHE_HOME/lading`, else `~/.cache/lading`. Never a shared /tmp path. */
export function defaultCacheDir(env: Record<string, string | undefined> = process.env): string {
  const explicit = env['LADING_CACHE_DIR'];
  if (explicit !== undefined && explicit !== '') return resolve(explicit);
  const xdg = env['XDG_CACHE_HOME'];
  // The XDG spec says relative XDG_* paths are invalid and must be ignored.
  if (xdg !== undefined && xdg !== '' && isAbsolute(xdg)) return join(xdg, 'lading');
  return join(homedir(), '.cache', 'lading');
}

function bad(message: string, hint: string): LadingError {
  return new LadingError('BAD_CONFIG', message, { hint });
}

function positiveInt(value: number | undefined, name: string, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < min) throw bad(`cache option ${name}=${value} is not valid`, `${name} is a number ≥ ${min}`);
  return value;
}

function matcher(globs: string[] | undefined, name: string): (key: string) => boolean {
  if (globs === undefined || globs.length === 0) return () => false;
  if (!Array.isArray(globs) || globs.some((g) => typeof g !== 'string' || g === '')) {
    throw bad(`cache option ${name} must be a list of key globs`, `e.g. ${name}: ["datasets/val/**", "*.idx"]`);
  }
  return picomatch(globs, { dot: true });
}

export function resolveCacheOptions(options: CacheOptions = {}): ResolvedCacheOptions {
  const size = (v: number | string | undefined, name: string, fallback: number | string): number => {
    try {
      return parseBytes(v ?? fallback, name);
    } catch (e) {
      throw bad((e as Error).message, 'write a number of bytes or a number with a unit, e.g. 8MiB, 200GiB');
    }
  };
  const dir = resolve(options.dir ?? defaultCacheDir(options.env));
  const maxBytes = size(options.maxBytes, 'cache maxBytes', DEFAULT_CACHE_MAX);
  const blockSize = size(options.blockSize, 'cache blockSize', DEFAULT_BLOCK_BYTES);
  if (blockSize < 1) throw bad('cache blockSize must be at least 1 byte', 'the default is 8MiB; large objects are read in blocks of this size');
  if (maxBytes < blockSize) {
    throw bad(
      `cache budget ${formatBytes(maxBytes)} (${maxBytes} bytes) is smaller than one block (${formatBytes(blockSize)}): nothing could ever be cached`,
      `raise --cache-max (e.g. 200GiB) or lower the block size below ${formatBytes(maxBytes)}`,
    );
  }
  const maxObjectBytes = options.maxObjectBytes === undefined ? Math.floor(maxBytes / 4) : size(options.maxObjectBytes, 'cache maxObjectBytes', 0);
  const evictToRatio = positiveInt(options.evictToRatio, 'evictToRatio', 0.9);
  if (evictToRatio <= 0 || evictToRatio > 1) throw bad(`cache option evictToRatio=${evictToRatio} is not valid`, 'a fraction in (0, 1], e.g. 0.9');
  const blocksInBudget = Math.floor(maxBytes / blockSize);
  const readahead = Math.max(0, Math.min(Math.floor(positiveInt(options.readahead, 'readahead', 1)), blocksInBudget - 1));
  const chunkBytes = Math.max(4096, Math.min(size(options.chunkBytes, 'cache chunkBytes', MiB), blockSize));
  return {
    dir,
    maxBytes,
    blockSize,
    maxObjectBytes,
    pin: options.pin ?? [],
    noCache: options.noCache ?? [],
    statTtlMs: positiveInt(options.statTtlMs, 'statTtlMs', 0),
    readahead,
    evictToRatio,
    lockStaleMs: positiveInt(options.lockStaleMs, 'lockStaleMs', 30_000, 100),
    tempMaxAgeMs: positiveInt(options.tempMaxAgeMs, 'tempMaxAgeMs', 3_600_000),
    pollMs: positiveInt(options.pollMs, 'pollMs', 20, 1),
    rescanMs: positiveInt(options.rescanMs, 'rescanMs', 30_000),
    chunkBytes: Math.min(chunkBytes, blockSize),
    isPinned: matcher(options.pin, 'pin'),
    isNoCache: matcher(options.noCache, 'noCache'),
  };
}
