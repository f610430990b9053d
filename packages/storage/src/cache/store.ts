/**
 * `CachedStore`: a read-through, block-granular cache layer over any BlobStore (a layer in the OpenDAL sense).
 *
 * - read: one stat of the backend (or a fresh one within `statTtlMs`) names the object version (etag, size);
 *   the blocks the range touches are served from block files of that version, each filled on a miss by one
 *   backend ranged read (one per node: in-process single flight + lock files across processes). After a fill
 *   the object is stat'ed again, so bytes of a version that changed meanwhile are never kept or served.
 * - write / delete / copy go to the backend (write-through) and drop the object's cached blocks.
 * - stat / list pass through.
 * Memory per reader: one chunk (default 1 MiB) in flight; blocks are never buffered whole.
 */
import { read as fsRead } from 'node:fs';
import { Readable, Transform, addAbortSignal } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';
import { LadingError, formatBytes } from '@lading/core';
import { checkKey } from '../keys.js';
import type { BlobStore, ListOptions, ObjectStat, ReadOptions, WriteOptions, WriteResult } from '../port.js';
import { asBuffer, checkRange, clampRange, emptyStream, mismatch, parseChecksum, verifyRead } from '../streams.js';
import { BlobCache, StaleVersionError, type BlockSource, type CacheStats, type EvictOptions, type EvictResult, type ObjectRef } from './blob-cache.js';
import type { CacheOptions } from './options.js';

const MAX_STALE_RETRIES = 3;
const STAT_MEMO_MAX = 10_000;

function changedError(uri: string, key: string): LadingError {
  return new LadingError('CONFLICT', `${uri}: object ${JSON.stringify(key)} changed while it was being read`, {
    hint: 'another writer replaced it mid-read; read it again to get the new version whole',
  });
}

type Opened = { fh: FileHandle; fetched: boolean };

const DISK_ERRORS = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'ENOTDIR']);

/** An error of the cache's own disk (not of the backend, whose errors are LadingErrors): reads then bypass the cache. */
function isCacheDiskError(e: unknown): boolean {
  if (e instanceof LadingError || e instanceof StaleVersionError) return false;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && DISK_ERRORS.has(code);
}

/** Streams [start, end) of one object version from its block files, filling missing blocks as it goes. */
class BlockStream extends Readable {
  private pos: number;
  private fh: FileHandle | undefined;
  private fhIndex = -1;
  private readonly ahead = new Map<number, Promise<Opened>>();
  /** A block served from memory because the cache disk failed. */
  private direct: { index: number; buf: Buffer } | undefined;
  private readonly lastIndex: number;

  constructor(
    private readonly cache: BlobCache,
    private readonly obj: ObjectRef,
    private readonly src: BlockSource,
    start: number,
    private readonly end: number,
    first: { fh: FileHandle; index: number },
  ) {
    // Two chunks: the next read from the block file overlaps the consumer working on the previous one.
    super({ highWaterMark: 2 * cache.options.chunkBytes });
    this.pos = start;
    this.fh = first.fh;
    this.fhIndex = first.index;
    this.lastIndex = Math.floor((end - 1) / cache.options.blockSize);
    this.prefetch(first.index);
  }

  override _read(): void {
    this.next().then(
      (chunk) => {
        if (!this.destroyed) this.push(chunk);
      },
      (e: unknown) => this.destroy(e instanceof Error ? e : new Error(String(e))),
    );
  }

  private async next(): Promise<Buffer | null> {
    if (this.pos >= this.end) {
      await this.closeBlock();
      return null;
    }
    const bs = this.cache.options.blockSize;
    const index = Math.floor(this.pos / bs);
    if (this.fhIndex !== index) {
      await this.closeBlock();
      await this.openIndex(index);
    }
    const blockEnd = Math.min((index + 1) * bs, this.obj.size);
    const direct = this.direct;
    if (direct !== undefined && direct.index === index) {
      const n = Math.min(this.cache.options.chunkBytes, blockEnd - this.pos, this.end - this.pos);
      const at = this.pos - index * bs;
      this.pos += n;
      return direct.buf.subarray(at, at + n);
    }
    const fh = this.fh;
    if (fh === undefined || this.destroyed) return null;
    const n = Math.min(this.cache.options.chunkBytes, blockEnd - this.pos, this.end - this.pos);
    const buf = Buffer.allocUnsafe(n);
    const at = this.pos - index * bs;
    for (let off = 0; off < n; ) {
      // fs.read on the descriptor: the callback API is measurably cheaper per call than FileHandle.read.
      const bytesRead = await new Promise<number>((resolve, reject) => {
        fsRead(fh.fd, buf, off, n - off, at + off, (err, got) => (err ? reject(err) : resolve(got)));
      });
      if (bytesRead === 0) throw new LadingError('BACKEND', `cache block ${index} of ${JSON.stringify(this.obj.key)} is shorter than expected`, { hint: 'run `lading cache evict --all` and report this' });
      off += bytesRead;
    }
    this.pos += n;
    return buf;
  }

  private async openIndex(index: number): Promise<void> {
    if (this.destroyed) return; // _destroy closed everything; open nothing new
    this.prefetch(index);
    const pending = this.ahead.get(index) ?? this.open(index);
    this.ahead.delete(index);
    let opened: Opened;
    try {
      opened = await pending;
    } catch (e) {
      if (!isCacheDiskError(e)) throw e instanceof StaleVersionError ? changedError(this.obj.uri, this.obj.key) : e;
      // The cache disk failed (full, read-only, I/O error): serve this block straight from the backend.
      this.direct = { index, buf: await this.fetchDirect(index) };
      this.fhIndex = index;
      return;
    }
    if (this.destroyed) {
      await opened.fh.close().catch(() => undefined);
      return;
    }
    if (!opened.fetched) this.cache.countHit();
    this.fh = opened.fh;
    this.fhIndex = index;
  }

  /** One block from the backend into memory (bounded: one block), checked to be of the version being read. */
  private async fetchDirect(index: number): Promise<Buffer> {
    const b = this.cache.blockRef(this.obj, index);
    const parts: Buffer[] = [];
    for await (const c of await this.src.read(b.start, b.end)) parts.push(asBuffer(c));
    const buf = Buffer.concat(parts);
    this.cache.countBackendBytes(buf.length);
    if (buf.length !== b.end - b.start) throw mismatch(`cache ${this.obj.uri}`, this.obj.key, `block ${index}: received ${buf.length} bytes, expected ${b.end - b.start}`);
    try {
      await this.src.verify();
    } catch (e) {
      throw e instanceof StaleVersionError ? changedError(this.obj.uri, this.obj.key) : e;
    }
    return buf;
  }

  private open(index: number): Promise<Opened> {
    return this.cache.openBlock(this.obj, this.cache.blockRef(this.obj, index), this.src);
  }

  /**
   * Open the next `readahead` blocks ahead of the reader: a missing one is filled in the background (on disk,
   * not in memory), a present one is opened (and touched) early, so moving to it costs nothing.
   */
  private prefetch(index: number): void {
    if (this.destroyed) return;
    const last = Math.min(this.lastIndex, index + this.cache.options.readahead);
    for (let i = index + 1; i <= last; i++) {
      if (this.ahead.has(i)) continue;
      const p = this.open(i);
      p.catch(() => undefined); // awaited when the reader gets there; no unhandled rejection meanwhile
      this.ahead.set(i, p);
    }
  }

  private async closeBlock(): Promise<void> {
    this.direct = undefined;
    const fh = this.fh;
    this.fh = undefined;
    this.fhIndex = -1;
    await fh?.close();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    const ahead = [...this.ahead.values()];
    this.ahead.clear();
    for (const p of ahead) p.then((o) => o.fh.close(), () => undefined).catch(() => undefined);
    this.closeBlock().then(
      () => cb(err),
      () => cb(err),
    );
  }
}

export class CachedStore implements BlobStore {
  readonly kind: string;
  readonly uri: string;
  private readonly statMemo = new Map<string, { stat: ObjectStat; at: number }>();

  /** Wrap `inner`; `cache` may be shared by several stores. `ownsCache` is informational (close() never deletes data). */
  constructor(readonly inner: BlobStore, readonly cache: BlobCache) {
    this.kind = `cache(${inner.kind})`;
    this.uri = inner.uri;
  }

  private where(op: string): string {
    return `${this.uri} ${op}`;
  }

  stat(key: string): Promise<ObjectStat | undefined> {
    return this.freshStat(key);
  }

  private async freshStat(key: string): Promise<ObjectStat | undefined> {
    const st = await this.inner.stat(key);
    if (this.cache.options.statTtlMs > 0) {
      if (st === undefined) this.statMemo.delete(key);
      else {
        if (this.statMemo.size >= STAT_MEMO_MAX) {
          const oldest = this.statMemo.keys().next();
          if (oldest.done !== true) this.statMemo.delete(oldest.value);
        }
        this.statMemo.set(key, { stat: st, at: Date.now() });
      }
    }
    return st;
  }

  private async statForRead(key: string, fresh: boolean): Promise<ObjectStat | undefined> {
    const ttl = this.cache.options.statTtlMs;
    if (ttl > 0 && !fresh) {
      const m = this.statMemo.get(key);
      if (m && Date.now() - m.at < ttl) return m.stat;
    }
    return this.freshStat(key);
  }

  private bypass(key: string, st: ObjectStat): boolean {
    const o = this.cache.options;
    return o.isNoCache(key) || st.size > o.maxObjectBytes;
  }

  async read(key: string, options: ReadOptions = {}): Promise<Readable> {
    checkKey(key);
    const range = checkRange(options);
    for (let attempt = 0; ; attempt++) {
      const st = await this.statForRead(key, attempt > 0);
      if (st === undefined) {
        throw new LadingError('NOT_FOUND', `${this.where('read')}: no object ${JSON.stringify(key)}`, { hint: `list what exists with \`lading store ls ${this.uri}\`` });
      }
      const { start, end } = clampRange(range, st.size);
      if (this.bypass(key, st)) return this.readThrough(key, start, end, options.signal);
      if (start === end) return emptyStream();
      const o = this.cache.options;
      if (!this.cache.options.isPinned(key) && this.cache.availableBytes < o.blockSize) {
        throw new LadingError(
          'BAD_CONFIG',
          `cache ${this.cache.dir}: pinned objects take ${formatBytes(o.maxBytes - this.cache.availableBytes)} of the ${formatBytes(o.maxBytes)} budget, leaving less than one ${formatBytes(o.blockSize)} block for reading ${JSON.stringify(key)}`,
          { hint: 'raise --cache-max, pin fewer objects, or evict pinned ones with `lading cache evict --prefix`' },
        );
      }
      const obj = this.cache.objectRef(this.uri, st);
      const src = this.source(obj);
      const index = Math.floor(start / o.blockSize);
      let first: { fh: FileHandle; fetched: boolean };
      try {
        first = await this.cache.openBlock(obj, this.cache.blockRef(obj, index), src);
      } catch (e) {
        if (e instanceof StaleVersionError) {
          this.statMemo.delete(key);
          if (attempt < MAX_STALE_RETRIES) continue;
          throw changedError(this.uri, key);
        }
        // A full / read-only / failing cache disk must not fail reads: stream this one from the backend.
        if (isCacheDiskError(e)) return this.readThrough(key, start, end, options.signal);
        throw e;
      }
      if (!first.fetched) this.cache.countHit();
      let out: Readable = new BlockStream(this.cache, obj, src, start, end, { fh: first.fh, index });
      if (start === 0 && end === st.size && st.checksum !== undefined) {
        // Whole-object read of an object with a known checksum: verify end to end, and drop a bad copy.
        out = verifyRead(out, { where: this.where('read'), key, bytes: end - start, sha256: parseChecksum(st.checksum) });
        out.once('error', (e: unknown) => {
          if ((e as { code?: unknown }).code === 'CHECKSUM_MISMATCH') void this.cache.invalidate(this.uri, key).catch(() => undefined);
        });
      }
      if (options.signal) addAbortSignal(options.signal, out);
      return out;
    }
  }

  /** Ranged reads of one object version for fills; verify() re-stats so a changed object is never cached under the old name. */
  private source(obj: ObjectRef): BlockSource {
    return {
      read: (start, end) => this.inner.read(obj.key, { start, end }),
      verify: async () => {
        const now = await this.inner.stat(obj.key);
        if (now === undefined || now.etag !== obj.etag || now.size !== obj.size) throw new StaleVersionError(`${obj.key} changed`);
      },
    };
  }

  private async readThrough(key: string, start: number, end: number, signal: AbortSignal | undefined): Promise<Readable> {
    this.cache.countBypassRead();
    const body = await this.inner.read(key, { start, end, ...(signal ? { signal } : {}) });
    const cache = this.cache;
    const counted = new Transform({
      transform(chunk: unknown, _enc, cb) {
        const b = asBuffer(chunk);
        cache.countBackendBytes(b.length);
        cb(null, b);
      },
    });
    body.once('error', (e) => counted.destroy(e));
    counted.once('close', () => body.destroy());
    return body.pipe(counted);
  }

  async write(key: string, body: Readable | Uint8Array | string, options?: WriteOptions): Promise<WriteResult> {
    try {
      return await this.inner.write(key, body, options);
    } finally {
      await this.dropCached(key);
    }
  }

  async delete(key: string): Promise<boolean> {
    try {
      return await this.inner.delete(key);
    } finally {
      await this.dropCached(key);
    }
  }

  async copy(fromKey: string, toKey: string): Promise<WriteResult> {
    try {
      return await this.inner.copy(fromKey, toKey);
    } finally {
      await this.dropCached(toKey);
    }
  }

  list(prefix?: string, options?: ListOptions): AsyncIterable<ObjectStat> {
    return this.inner.list(prefix, options);
  }

  private async dropCached(key: string): Promise<void> {
    this.statMemo.delete(key);
    // Invalid keys never reached the backend and have nothing cached.
    try {
      checkKey(key);
    } catch {
      return;
    }
    await this.cache.invalidate(this.uri, key);
  }

  /** Usage of the cache directory and this process's counters. */
  stats(): Promise<CacheStats> {
    return this.cache.stats();
  }

  /** Evict from the cache; `all` and `prefix` are limited to this store's objects. */
  evict(options: EvictOptions = {}): Promise<EvictResult> {
    const scoped = options.all === true || options.prefix !== undefined ? { ...options, store: this.uri } : options;
    return this.cache.evict(scoped);
  }

  async close(): Promise<void> {
    await this.cache.idle().catch(() => undefined);
    await this.inner.close();
  }
}

/** Open (create) a cache directory: for wrapping stores, or alone for `stats()` / `evict()` without any backend. */
export function openCache(options: CacheOptions = {}): Promise<BlobCache> {
  return BlobCache.open(options);
}

/** Wrap a store in the cache layer: `withCache(await openStore(uri), { dir: '/nvme/lading', maxBytes: '200GiB' })`. */
export async function withCache(store: BlobStore, options: CacheOptions | BlobCache = {}): Promise<CachedStore> {
  const cache = options instanceof BlobCache ? options : await BlobCache.open(options);
  return new CachedStore(store, cache);
}
