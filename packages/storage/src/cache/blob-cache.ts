/**
 * The cache directory: block files, atomic fills, cross-process fill locks, LRU eviction by bytes.
 *
 * The file system is the index — there is no database or manifest to corrupt when processes crash or run
 * concurrently:
 *
 *     <root>/CACHEDIR.TAG
 *     <root>/blocks/<h:2>/<h>/meta.json                     h = sha256(store uri, key): which object (for prefix/pin)
 *     <root>/blocks/<h:2>/<h>/<v>-<blockSize>-<index>.blk   v = sha256(etag, size): which version of it
 *     <root>/locks/<h>-<v>-<blockSize>-<index>.lock         one fill at a time per block, across processes
 *     <root>/locks/evict.lock                               one evictor at a time
 *     <root>/tmp/fill-<pid>-<random>                        fills in flight
 *
 * A block file is the bytes [index·blockSize, min(size, (index+1)·blockSize)) of exactly one object version;
 * it is written to tmp/, fsynced and renamed into place, so it is whole or absent. A SIGKILL mid-fill leaves a
 * temp file (swept later by pid / age) and a lock (taken over once its pid is dead or it goes stale).
 * Recency is the block file's mtime, bumped on every hit; eviction lists block files oldest first.
 * A reader holds an open descriptor on the block it is streaming: eviction may unlink the name, and POSIX
 * keeps the bytes until the descriptor is closed, so a block is never pulled from under a reader.
 * The cache is write-through only: it never holds the sole copy of anything, so eviction cannot lose data.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, rmdir, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { LadingError, formatBytes, parseBytes } from '@lading/core';
import { detectMountKind } from '../mounts.js';
import type { ObjectStat } from '../port.js';
import { asBuffer, mismatch } from '../streams.js';
import { LockFile, errnoOf, pidAlive, sweepLock } from './lock.js';
import { resolveCacheOptions, type CacheOptions, type ResolvedCacheOptions } from './options.js';

/** One object version as the cache sees it. */
export interface ObjectRef {
  uri: string;
  key: string;
  etag: string;
  size: number;
  pinned: boolean;
  /** sha256(uri, key) */
  id: string;
  /** sha256(etag, size) */
  version: string;
  dir: string;
}

export interface BlockRef {
  index: number;
  /** Byte range of the object, end exclusive. */
  start: number;
  end: number;
  path: string;
  lockPath: string;
}

/** Where a fill gets its bytes, and how it checks the object did not change meanwhile. */
export interface BlockSource {
  read(start: number, end: number): Promise<Readable>;
  /** Throws StaleVersionError when the object is no longer the version being filled. */
  verify(): Promise<void>;
}

/** The object changed (new etag / size) between the stat that planned a read and a block fetch. */
export class StaleVersionError extends Error {
  override readonly name = 'StaleVersionError';
}

export interface CacheStats {
  dir: string;
  maxBytes: number;
  blockSize: number;
  /** Bytes in block files now (all processes). */
  bytes: number;
  blocks: number;
  objects: number;
  pinnedBytes: number;
  /** Fill temp files present (fills in flight, or debris of killed processes until swept). */
  tempFiles: number;
  /** Counters of this process since the cache was opened. */
  hits: number;
  misses: number;
  backendBytes: number;
  evictions: number;
  evictedBytes: number;
  bypassReads: number;
}

export interface EvictOptions {
  /** Remove every block (pinned too). */
  all?: boolean;
  /** Remove every block of objects whose key starts with this (pinned too). */
  prefix?: string;
  /** Limit `all` / `prefix` to objects of this store URI. */
  store?: string;
  /** Remove least-recently-used unpinned blocks until at most this many bytes remain. */
  toBytes?: number | string;
}

export interface EvictResult {
  blocks: number;
  bytes: number;
}

interface BlockEntry {
  path: string;
  dir: string;
  size: number;
  mtimeMs: number;
}

interface Meta {
  v: 1;
  uri: string;
  key: string;
  pinned: boolean;
}

interface ScanResult {
  blocks: BlockEntry[];
  bytes: number;
  objects: number;
  tempFiles: number;
}

const BLOCK_EXT = '.blk';
const META = 'meta.json';
const TAG = 'Signature: 8a477f597d28d172789f06886806bc55\n# This file marks a lading cache directory (https://bford.info/cachedir/).\n';
const MAX_OPEN_ATTEMPTS = 5;

const sha = (...parts: string[]): string => createHash('sha256').update(parts.join('\n')).digest('hex');

async function writeFully(fh: FileHandle, b: Buffer): Promise<void> {
  for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
}

async function readdirOrEmpty(path: string): Promise<Dirent[]> {
  try {
    return await readdir(path, { withFileTypes: true });
  } catch (e) {
    if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') return [];
    throw e;
  }
}

async function unlinkIfExists(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return false;
    throw e;
  }
}

/** Pid of a `fill-<pid>-<random>` temp file name. */
function tempPid(name: string): number | undefined {
  const m = /^fill-(\d+)-/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/**
 * One cache directory with its budget. Share one BlobCache between all stores of a process (it holds the
 * in-flight fill map); processes share the directory through the file system alone.
 */
export class BlobCache {
  readonly dir: string;
  readonly options: ResolvedCacheOptions;
  private readonly blocksDir: string;
  private readonly locksDir: string;
  private readonly tmpDir: string;
  /** In-process single flight: block path → fill. */
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly metaKnown = new Set<string>();
  private readonly versionsSwept = new Set<string>();
  private readonly metaCache = new Map<string, Meta | null>();
  private usedEstimate = 0;
  private pinnedEstimate = 0;
  private lastScan = 0;
  private evicting: Promise<void> | undefined;
  private readonly counters = { hits: 0, misses: 0, backendBytes: 0, evictions: 0, evictedBytes: 0, bypassReads: 0 };

  private constructor(options: ResolvedCacheOptions) {
    this.options = options;
    this.dir = options.dir;
    this.blocksDir = join(this.dir, 'blocks');
    this.locksDir = join(this.dir, 'locks');
    this.tmpDir = join(this.dir, 'tmp');
  }

  /**
   * Open (creating with mode 0700) a cache directory. Refuses a directory owned by another user and one on
   * NFS (lock files are unreliable there). Sweeps debris of killed processes and measures the usage.
   */
  static async open(options: CacheOptions = {}): Promise<BlobCache> {
    const cache = new BlobCache(resolveCacheOptions(options));
    await cache.init();
    return cache;
  }

  private async init(): Promise<void> {
    const dir = this.dir;
    const hint = 'point --cache-dir / LADING_CACHE_DIR at a directory of your own on a local disk (NVMe / SSD), e.g. /nvme/$USER/lading';
    if ((await detectMountKind(dir)) === 'nfs') {
      throw new LadingError('BAD_CONFIG', `cache directory ${dir} is on NFS: the cache's lock files and LRU need a local file system`, { hint });
    }
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new LadingError('BAD_CONFIG', `cannot create cache directory ${dir}: ${(e as Error).message}`, { hint, cause: e });
    }
    const st = await stat(dir);
    if (!st.isDirectory()) throw new LadingError('BAD_CONFIG', `cache directory ${dir} is not a directory`, { hint });
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid) {
      throw new LadingError('UNSAFE_LOCATION', `cache directory ${dir} belongs to uid ${st.uid}, not to you (uid ${uid})`, {
        hint: `a cache shared between users lets one user feed another stale or foreign bytes; ${hint}`,
      });
    }
    for (const d of [this.blocksDir, this.locksDir, this.tmpDir]) await mkdir(d, { recursive: true, mode: 0o700 });
    await writeFile(join(dir, 'CACHEDIR.TAG'), TAG, { flag: 'wx', mode: 0o600 }).catch((e: unknown) => {
      if (errnoOf(e) !== 'EEXIST') throw e;
    });
    await this.sweep();
    await this.rescan();
  }

  // ---- addressing ---------------------------------------------------------------------------------------

  objectRef(uri: string, st: ObjectStat): ObjectRef {
    const id = sha(uri, st.key).slice(0, 32);
    const version = sha(st.etag, String(st.size)).slice(0, 16);
    return {
      uri,
      key: st.key,
      etag: st.etag,
      size: st.size,
      pinned: this.options.isPinned(st.key),
      id,
      version,
      dir: join(this.blocksDir, id.slice(0, 2), id),
    };
  }

  blockRef(obj: ObjectRef, index: number): BlockRef {
    const bs = this.options.blockSize;
    const name = `${obj.version}-${bs.toString(36)}-${index}`;
    return {
      index,
      start: index * bs,
      end: Math.min(obj.size, (index + 1) * bs),
      path: join(obj.dir, name + BLOCK_EXT),
      lockPath: join(this.locksDir, `${obj.id}-${name}.lock`),
    };
  }

  // ---- reading blocks -----------------------------------------------------------------------------------

  /**
   * An open descriptor on the block, filling it first when absent. `fetched` is true when this call's fill
   * fetched from the backend (a miss); otherwise the block was served from the cache (a hit).
   */
  async openBlock(obj: ObjectRef, b: BlockRef, src: BlockSource): Promise<{ fh: FileHandle; fetched: boolean }> {
    let fetched = false;
    for (let attempt = 0; attempt < MAX_OPEN_ATTEMPTS; attempt++) {
      const fh = await this.tryOpen(b);
      if (fh) return { fh, fetched };
      fetched = (await this.fill(obj, b, src)) || fetched;
    }
    throw new LadingError(
      'BAD_CONFIG',
      `cache ${this.dir}: block ${b.index} of ${JSON.stringify(obj.key)} was evicted ${MAX_OPEN_ATTEMPTS} times before it could be read: the working set of the concurrent reads does not fit in the ${formatBytes(this.options.maxBytes)} budget`,
      { hint: 'raise --cache-max, lower the block size, or run fewer readers on this node' },
    );
  }

  /** Count a block served from the cache (the caller decides: a block it fetched itself is a miss). */
  countHit(): void {
    this.counters.hits++;
  }

  /** Count a read streamed from the backend uncached (noCache, maxObjectBytes). */
  countBypassRead(): void {
    this.counters.bypassReads++;
  }

  countBackendBytes(bytes: number): void {
    this.counters.backendBytes += bytes;
  }

  private async tryOpen(b: BlockRef): Promise<FileHandle | undefined> {
    let fh: FileHandle;
    try {
      fh = await open(b.path, 'r');
    } catch (e) {
      if (errnoOf(e) === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const st = await fh.stat();
      if (st.size !== b.end - b.start) {
        // Cannot happen with rename-into-place fills; if something else wrote here, drop it and refetch.
        await fh.close();
        await unlinkIfExists(b.path);
        return undefined;
      }
      const now = new Date();
      await fh.utimes(now, now); // LRU: recency is the mtime
      return fh;
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Make sure the block exists: one fetch per block for all readers in this process (in-flight map) and on
   * this node (lock file). True when this call fetched it from the backend.
   */
  async fill(obj: ObjectRef, b: BlockRef, src: BlockSource): Promise<boolean> {
    const running = this.inflight.get(b.path);
    if (running) {
      await running;
      return false;
    }
    let fetched = false;
    const p = this.fillAcrossProcesses(obj, b, src).then((f) => {
      fetched = f;
    });
    this.inflight.set(b.path, p);
    try {
      await p;
    } finally {
      this.inflight.delete(b.path);
    }
    if (fetched) await this.afterFill(obj, b.end - b.start);
    return fetched;
  }

  private async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch (e) {
      if (errnoOf(e) === 'ENOENT') return false;
      throw e;
    }
  }

  private async fillAcrossProcesses(obj: ObjectRef, b: BlockRef, src: BlockSource): Promise<boolean> {
    let delay = this.options.pollMs;
    for (;;) {
      if (await this.exists(b.path)) return false;
      const lock = await LockFile.tryAcquire(b.lockPath, this.options.lockStaleMs);
      if (lock) {
        try {
          if (await this.exists(b.path)) return false; // filled while we were getting the lock
          await this.fetchInto(obj, b, src);
          return true;
        } finally {
          await lock.release().catch(() => undefined);
        }
      }
      // Another process is filling it: wait for the block, or for its lock to go away or go stale.
      await sleep(delay);
      delay = Math.min(Math.ceil(delay * 1.5), 200);
    }
  }

  private async fetchInto(obj: ObjectRef, b: BlockRef, src: BlockSource): Promise<void> {
    const tmp = join(this.tmpDir, `fill-${process.pid}-${randomBytes(6).toString('hex')}`);
    let fh: FileHandle | undefined;
    try {
      fh = await open(tmp, 'wx', 0o600);
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT') throw e;
      await mkdir(this.tmpDir, { recursive: true, mode: 0o700 });
      fh = await open(tmp, 'wx', 0o600);
    }
    let published = false;
    try {
      const want = b.end - b.start;
      const body = await src.read(b.start, b.end);
      let n = 0;
      try {
        for await (const chunk of body) {
          const buf = asBuffer(chunk);
          n += buf.length;
          this.counters.backendBytes += buf.length;
          if (n > want) throw mismatch(`cache fill ${obj.uri}`, obj.key, `block ${b.index}: received more than the expected ${want} bytes`);
          await writeFully(fh, buf);
        }
      } finally {
        body.destroy();
      }
      if (n !== want) throw mismatch(`cache fill ${obj.uri}`, obj.key, `block ${b.index}: received ${n} bytes, expected ${want} (truncated)`);
      await fh.sync();
      // Recency from the same clock as hits (the kernel's write mtime is coarse and can lag by a tick).
      const now = new Date();
      await fh.utimes(now, now);
      await fh.close();
      fh = undefined;
      await src.verify(); // the bytes are of the version the block is named after
      await this.publish(obj, b, tmp);
      published = true;
      this.counters.misses++;
    } finally {
      await fh?.close().catch(() => undefined);
      if (!published) await unlinkIfExists(tmp).catch(() => undefined);
    }
  }

  private async publish(obj: ObjectRef, b: BlockRef, tmp: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        if (!this.metaKnown.has(obj.dir)) {
          await mkdir(obj.dir, { recursive: true, mode: 0o700 });
          await this.writeMeta(obj.dir, { v: 1, uri: obj.uri, key: obj.key, pinned: obj.pinned });
          this.metaKnown.add(obj.dir);
        }
        await rename(tmp, b.path);
        break;
      } catch (e) {
        // An evictor removed the (empty) object directory between our mkdir and rename: make it again.
        if (errnoOf(e) !== 'ENOENT' || attempt >= 3) throw e;
        this.metaKnown.delete(obj.dir);
      }
    }
    // First fill of this version here: drop blocks of older versions of the object (changed behind our back).
    const seen = `${obj.dir}/${obj.version}`;
    if (!this.versionsSwept.has(seen)) {
      this.versionsSwept.add(seen);
      for (const d of await readdirOrEmpty(obj.dir)) {
        if (d.name.endsWith(BLOCK_EXT) && !d.name.startsWith(`${obj.version}-`)) {
          const size = await stat(join(obj.dir, d.name)).then((s) => s.size, () => 0);
          if (await unlinkIfExists(join(obj.dir, d.name)).catch(() => false)) this.usedEstimate -= size;
        }
      }
    }
  }

  private async writeMeta(dir: string, meta: Meta): Promise<void> {
    const path = join(dir, META);
    if (await this.exists(path)) return;
    const tmp = join(dir, `.meta-${process.pid}-${randomBytes(4).toString('hex')}`);
    await writeFile(tmp, JSON.stringify(meta), { mode: 0o600 });
    await rename(tmp, path);
    this.metaCache.set(dir, meta);
  }

  private async readMeta(dir: string): Promise<Meta | undefined> {
    const cached = this.metaCache.get(dir);
    if (cached !== undefined) return cached ?? undefined;
    try {
      const m = JSON.parse(await readFile(join(dir, META), 'utf8')) as Partial<Meta>;
      if (typeof m.uri === 'string' && typeof m.key === 'string') {
        const meta: Meta = { v: 1, uri: m.uri, key: m.key, pinned: m.pinned === true };
        this.metaCache.set(dir, meta);
        return meta;
      }
    } catch {
      // missing or unreadable: the object is unknown (never pinned, matched only by `all`)
    }
    return undefined;
  }

  /** Drop every cached block of one object (all versions), e.g. after a write through the layer. */
  async invalidate(uri: string, key: string): Promise<number> {
    const id = sha(uri, key).slice(0, 32);
    const dir = join(this.blocksDir, id.slice(0, 2), id);
    let n = 0;
    for (const d of await readdirOrEmpty(dir)) {
      if (!d.name.endsWith(BLOCK_EXT)) continue;
      const p = join(dir, d.name);
      const size = await stat(p).then((s) => s.size, () => 0);
      if (await unlinkIfExists(p)) {
        n++;
        this.usedEstimate -= size;
      }
    }
    for (const v of [...this.versionsSwept]) if (v.startsWith(`${dir}/`)) this.versionsSwept.delete(v);
    return n;
  }

  // ---- accounting and eviction --------------------------------------------------------------------------

  /** Bytes of unpinned blocks a read can use (for the working-set check). */
  get availableBytes(): number {
    return this.options.maxBytes - this.pinnedEstimate;
  }

  private async afterFill(obj: ObjectRef, bytes: number): Promise<void> {
    this.usedEstimate += bytes;
    if (obj.pinned) this.pinnedEstimate += bytes;
    if (this.usedEstimate > this.options.maxBytes || Date.now() - this.lastScan > this.options.rescanMs) await this.enforceBudget();
  }

  /** Evict least-recently-used blocks down to the low-water mark when over budget. One evictor per node at a time. */
  async enforceBudget(): Promise<void> {
    if (this.evicting) return this.evicting;
    this.evicting = (async () => {
      const lock = await LockFile.tryAcquire(join(this.locksDir, 'evict.lock'), this.options.lockStaleMs);
      if (!lock) return; // another process is evicting right now
      try {
        const scan = await this.rescan();
        if (scan.bytes > this.options.maxBytes) {
          await this.evictLru(scan, Math.floor(this.options.maxBytes * this.options.evictToRatio));
        }
      } finally {
        await lock.release().catch(() => undefined);
      }
    })().finally(() => {
      this.evicting = undefined;
    });
    return this.evicting;
  }

  private async isPinnedDir(dir: string): Promise<boolean> {
    const meta = await this.readMeta(dir);
    return meta !== undefined && (meta.pinned || this.options.isPinned(meta.key));
  }

  private async evictLru(scan: ScanResult, target: number): Promise<EvictResult> {
    const order = [...scan.blocks].sort((a, b) => a.mtimeMs - b.mtimeMs || (a.path < b.path ? -1 : 1));
    let used = scan.bytes;
    const removed: BlockEntry[] = [];
    const pinned = new Map<string, boolean>();
    for (const e of order) {
      if (used <= target) break;
      let p = pinned.get(e.dir);
      if (p === undefined) pinned.set(e.dir, (p = await this.isPinnedDir(e.dir)));
      if (p) continue;
      if (await unlinkIfExists(e.path)) removed.push(e);
      used -= e.size;
    }
    return this.afterRemoval(scan, removed);
  }

  private async afterRemoval(scan: ScanResult, removed: BlockEntry[]): Promise<EvictResult> {
    const bytes = removed.reduce((s, e) => s + e.size, 0);
    this.counters.evictions += removed.length;
    this.counters.evictedBytes += bytes;
    this.usedEstimate = scan.bytes - bytes;
    // Object directories left without blocks go too (meta and all); a fill racing in keeps (or restores) them.
    const left = new Map<string, number>();
    for (const e of scan.blocks) left.set(e.dir, (left.get(e.dir) ?? 0) + 1);
    for (const e of removed) left.set(e.dir, (left.get(e.dir) ?? 1) - 1);
    for (const [dir, n] of left) if (n <= 0) await this.removeObjectDir(dir);
    return { blocks: removed.length, bytes };
  }

  private async removeObjectDir(dir: string): Promise<void> {
    const meta = await this.readMeta(dir);
    await unlinkIfExists(join(dir, META)).catch(() => undefined);
    try {
      await rmdir(dir);
      this.metaCache.delete(dir);
      this.metaKnown.delete(dir);
    } catch (e) {
      // A fill put a block here meanwhile: give the directory its meta back.
      if ((errnoOf(e) === 'ENOTEMPTY' || errnoOf(e) === 'EEXIST') && meta) {
        const tmp = join(dir, `.meta-${process.pid}-${randomBytes(4).toString('hex')}`);
        await writeFile(tmp, JSON.stringify(meta), { mode: 0o600 }).then(() => rename(tmp, join(dir, META))).catch(() => undefined);
      }
    }
  }

  /** List every block file (the index is the file system). */
  private async scan(): Promise<ScanResult> {
    const blocks: BlockEntry[] = [];
    let objects = 0;
    for (const shard of await readdirOrEmpty(this.blocksDir)) {
      if (!shard.isDirectory()) continue;
      for (const obj of await readdirOrEmpty(join(this.blocksDir, shard.name))) {
        if (!obj.isDirectory()) continue;
        const dir = join(this.blocksDir, shard.name, obj.name);
        const files = (await readdirOrEmpty(dir)).filter((d) => d.isFile() && d.name.endsWith(BLOCK_EXT));
        if (files.length > 0) objects++;
        const stats = await Promise.all(files.map((f) => stat(join(dir, f.name)).catch(() => undefined)));
        files.forEach((f, i) => {
          const s = stats[i];
          if (s) blocks.push({ path: join(dir, f.name), dir, size: s.size, mtimeMs: s.mtimeMs });
        });
      }
    }
    const tempFiles = (await readdirOrEmpty(this.tmpDir)).length;
    return { blocks, bytes: blocks.reduce((s, e) => s + e.size, 0), objects, tempFiles };
  }

  private async rescan(): Promise<ScanResult> {
    const scan = await this.scan();
    this.usedEstimate = scan.bytes;
    let pinnedBytes = 0;
    const pinned = new Map<string, boolean>();
    for (const e of scan.blocks) {
      let p = pinned.get(e.dir);
      if (p === undefined) pinned.set(e.dir, (p = await this.isPinnedDir(e.dir)));
      if (p) pinnedBytes += e.size;
    }
    this.pinnedEstimate = pinnedBytes;
    this.lastScan = Date.now();
    return scan;
  }

  /**
   * Remove fill temp files of dead processes (or older than tempMaxAgeMs) and stale lock files.
   * Returns how many temp files were removed.
   */
  async sweep(): Promise<number> {
    let removed = 0;
    const now = Date.now();
    for (const d of await readdirOrEmpty(this.tmpDir)) {
      const p = join(this.tmpDir, d.name);
      const pid = tempPid(d.name);
      const age = await stat(p).then((s) => now - s.mtimeMs, () => undefined);
      if (age === undefined) continue;
      if ((pid !== undefined && !pidAlive(pid)) || pid === undefined || age > this.options.tempMaxAgeMs) {
        if (await unlinkIfExists(p).catch(() => false)) removed++;
      }
    }
    for (const d of await readdirOrEmpty(this.locksDir)) {
      const p = join(this.locksDir, d.name);
      if (d.name.endsWith('.lock')) await sweepLock(p, this.options.lockStaleMs).catch(() => false);
      else if (d.name.includes('.lock.stale-')) {
        const age = await stat(p).then((s) => now - s.mtimeMs, () => 0);
        if (age > this.options.lockStaleMs) await unlinkIfExists(p).catch(() => false);
      }
    }
    return removed;
  }

  /** Usage (scanned now, all processes) and this process's counters. */
  async stats(): Promise<CacheStats> {
    const scan = await this.rescan();
    return {
      dir: this.dir,
      maxBytes: this.options.maxBytes,
      blockSize: this.options.blockSize,
      bytes: scan.bytes,
      blocks: scan.blocks.length,
      objects: scan.objects,
      pinnedBytes: this.pinnedEstimate,
      tempFiles: scan.tempFiles,
      ...this.counters,
    };
  }

  /**
   * Explicit eviction (`lading cache evict`): everything, by key prefix (optionally of one store), or
   * least-recently-used unpinned blocks down to `toBytes`. Safe while readers and other processes run.
   */
  async evict(options: EvictOptions = {}): Promise<EvictResult> {
    const lock = await this.waitLock(join(this.locksDir, 'evict.lock'));
    try {
      const scan = await this.rescan();
      let result: EvictResult;
      if (options.all === true || options.prefix !== undefined) {
        const removed: BlockEntry[] = [];
        const match = new Map<string, boolean>();
        for (const e of scan.blocks) {
          let m = match.get(e.dir);
          if (m === undefined) {
            const meta = await this.readMeta(e.dir);
            m =
              (options.store === undefined || meta?.uri === options.store) &&
              (options.prefix === undefined || (meta !== undefined && meta.key.startsWith(options.prefix))) &&
              (options.store === undefined && options.prefix === undefined ? true : meta !== undefined);
            match.set(e.dir, m);
          }
          if (m && (await unlinkIfExists(e.path))) removed.push(e);
        }
        result = await this.afterRemoval(scan, removed);
      } else if (options.toBytes !== undefined) {
        result = await this.evictLru(scan, parseBytes(options.toBytes, 'evict toBytes'));
      } else {
        throw new LadingError('BAD_ARGUMENT', 'cache evict: say what to evict', { hint: 'pass { all: true }, { prefix: "data/" } or { toBytes: "100GiB" }' });
      }
      if (options.all === true && options.store === undefined) await this.sweep();
      await this.rescan();
      return result;
    } finally {
      await lock.release().catch(() => undefined);
    }
  }

  private async waitLock(path: string): Promise<LockFile> {
    for (let delay = this.options.pollMs; ; delay = Math.min(delay * 2, 200)) {
      const lock = await LockFile.tryAcquire(path, this.options.lockStaleMs);
      if (lock) return lock;
      await sleep(delay);
    }
  }

  /** Wait for this process's fills and eviction to settle (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.inflight.size > 0 || this.evicting) {
      await Promise.allSettled([...this.inflight.values(), this.evicting]);
    }
  }
}
