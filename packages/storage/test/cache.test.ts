import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { homedir, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  CachedStore,
  FileStore,
  defaultCacheDir,
  openCache,
  openStore,
  withCache,
  type BlobStore,
  type CacheOptions,
  type ListOptions,
  type ObjectStat,
  type ReadOptions,
  type WriteOptions,
  type WriteResult,
} from '@lading/storage';
import { startS3Server } from '../../../test/servers/s3.js';
import { LockFile, lockState } from '../src/cache/lock.js';
import { Pattern, collect, describeBlobStoreContract, digestOf, expectCode } from './contract.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Counts what reaches the backend; can slow reads down to widen race windows. */
class CountingStore implements BlobStore {
  reads: { key: string; start: number; end: number | undefined }[] = [];
  stats = 0;
  delayMs = 0;
  constructor(readonly inner: BlobStore) {}
  get uri(): string {
    return this.inner.uri;
  }
  get kind(): string {
    return this.inner.kind;
  }
  stat(key: string): Promise<ObjectStat | undefined> {
    this.stats++;
    return this.inner.stat(key);
  }
  async read(key: string, options?: ReadOptions): Promise<Readable> {
    this.reads.push({ key, start: options?.start ?? 0, end: options?.end });
    if (this.delayMs > 0) await sleep(this.delayMs);
    return this.inner.read(key, options);
  }
  write(key: string, body: Readable | Uint8Array | string, options?: WriteOptions): Promise<WriteResult> {
    return this.inner.write(key, body, options);
  }
  list(prefix?: string, options?: ListOptions): AsyncIterable<ObjectStat> {
    return this.inner.list(prefix, options);
  }
  delete(key: string): Promise<boolean> {
    return this.inner.delete(key);
  }
  copy(fromKey: string, toKey: string): Promise<WriteResult> {
    return this.inner.copy(fromKey, toKey);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  readsOf(key: string): [number, number | undefined][] {
    return this.reads.filter((r) => r.key === key).map((r) => [r.start, r.end]);
  }
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function tmp(prefix = 'lading-cache-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

interface Setup {
  dir: string;
  cacheDir: string;
  backend: FileStore;
  counting: CountingStore;
  store: CachedStore;
}

async function setup(options: CacheOptions = {}): Promise<Setup> {
  const dir = await tmp();
  const backend = await FileStore.open(join(dir, 'store'));
  const counting = new CountingStore(backend);
  const cacheDir = join(dir, 'cache');
  const store = await withCache(counting, { dir: cacheDir, ...options });
  cleanups.unshift(() => store.close());
  return { dir, cacheDir, backend, counting, store };
}

async function files(dir: string, pred: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (pred(e.name)) out.push(relative(dir, p));
    }
  };
  await walk(dir);
  return out.sort();
}
const blockFiles = (cacheDir: string) => files(cacheDir, (n) => n.endsWith('.blk'));

const read = async (s: BlobStore, key: string, options?: ReadOptions) => collect(await s.read(key, options));

// ---- the storage contract, through the cache ---------------------------------------------------------------

const cachedFile = (options: CacheOptions) => async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lading-cache-contract-'));
  const store = await withCache(await FileStore.open(join(dir, 'store')), { dir: join(dir, 'cache'), ...options });
  return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
};
describeBlobStoreContract('cache(file)', cachedFile({ maxBytes: '256MiB' }));
// Small blocks and a budget smaller than the large object: eviction runs during the contract's reads.
describeBlobStoreContract('cache(file) 256KiB blocks, 4MiB budget', cachedFile({ maxBytes: '4MiB', blockSize: '256KiB', maxObjectBytes: '1GiB' }));

describeBlobStoreContract('cache(s3) on s3rver, 4MiB blocks', async () => {
  const server = await startS3Server();
  const dir = await mkdtemp(join(tmpdir(), 'lading-cache-contract-'));
  const inner = await openStore(server.uri('contract'), { s3: { credentials: server.credentials } });
  const store = await withCache(inner, { dir, maxBytes: '64MiB', blockSize: '4MiB', maxObjectBytes: '1GiB' });
  expect(store.kind).toBe('cache(s3)');
  return { store, cleanup: async () => { await server.stop(); await rm(dir, { recursive: true, force: true }); } };
}, { gaps: { tornOverwrites: true, unorderedListing: true } }); // s3rver's gaps, as in s3.test.ts

// ---- cache behaviour -----------------------------------------------------------------------------------------

describe('cache layer', () => {
  it('names itself after the store it wraps', async () => {
    const { store, backend } = await setup();
    expect(store.kind).toBe('cache(file)');
    expect(store.uri).toBe(backend.uri);
  });

  it('reads through: misses fetch each block once, then every block is a hit', async () => {
    const { store, counting, cacheDir } = await setup({ blockSize: '1MiB', maxBytes: '64MiB' });
    const body = randomBytes(3 * MiB + 5);
    await store.write('obj', body);
    expect((await read(store, 'obj')).equals(body)).toBe(true);
    expect(counting.readsOf('obj')).toEqual([[0, MiB], [MiB, 2 * MiB], [2 * MiB, 3 * MiB], [3 * MiB, 3 * MiB + 5]]);
    let st = await store.stats();
    expect(st).toMatchObject({ misses: 4, hits: 0, blocks: 4, bytes: body.length, backendBytes: body.length });
    counting.reads = [];
    expect((await read(store, 'obj')).equals(body)).toBe(true);
    expect((await read(store, 'obj', { start: MiB - 3, end: MiB + 3 })).equals(body.subarray(MiB - 3, MiB + 3))).toBe(true);
    expect(counting.reads).toEqual([]);
    st = await store.stats();
    expect(st).toMatchObject({ misses: 4, hits: 6, backendBytes: body.length });
    expect((await blockFiles(cacheDir)).length).toBe(4);
  });

  it('small objects are one block; empty objects need no block', async () => {
    const { store, counting, cacheDir } = await setup();
    await store.write('small', 'hello');
    await store.write('empty', '');
    expect((await read(store, 'small')).toString()).toBe('hello');
    expect((await read(store, 'small', { start: 1, end: 3 })).toString()).toBe('el');
    expect((await read(store, 'empty')).length).toBe(0);
    expect(counting.readsOf('small')).toEqual([[0, 5]]);
    expect(counting.readsOf('empty')).toEqual([]);
    expect((await blockFiles(cacheDir)).length).toBe(1);
  });

  it('a ranged read of a huge object fetches and caches only the blocks it touches', async () => {
    const { store, backend, counting } = await setup({ blockSize: '1MiB', maxBytes: '1GiB', maxObjectBytes: '1GiB' });
    const p = new Pattern(96 * MiB);
    await backend.write('huge', p.stream());
    const a = 10 * MiB + 5;
    const b = 12 * MiB + 3;
    expect(await digestOf(await store.read('huge', { start: a, end: b }))).toEqual({ size: b - a, checksum: p.checksum(a, b) });
    expect(counting.readsOf('huge')).toEqual([[10 * MiB, 11 * MiB], [11 * MiB, 12 * MiB], [12 * MiB, 13 * MiB]]);
    expect(await store.stats()).toMatchObject({ blocks: 3, bytes: 3 * MiB, backendBytes: 3 * MiB });
    // The last, short block of the object.
    counting.reads = [];
    expect((await read(store, 'huge', { start: 96 * MiB - 10 })).equals(p.slice(96 * MiB - 10, 96 * MiB))).toBe(true);
    expect(counting.readsOf('huge')).toEqual([[95 * MiB, 96 * MiB]]);
  });

  it('keeps memory bounded: streams a 64 MiB object in chunks, never a whole block', async () => {
    const { store, backend } = await setup({ blockSize: '16MiB', maxBytes: '1GiB' });
    const p = new Pattern(64 * MiB);
    await backend.write('big', p.stream());
    for (let pass = 0; pass < 2; pass++) {
      let largest = 0;
      const h = createHash('sha256');
      for await (const c of await store.read('big')) {
        largest = Math.max(largest, (c as Buffer).length);
        h.update(c as Buffer);
      }
      expect(`sha256:${h.digest('hex')}`).toBe(p.checksum());
      expect(largest).toBeLessThanOrEqual(MiB);
    }
  });

  it('validates by etag and size: an object changed behind its back is refetched, never served stale', async () => {
    const { store, backend, counting, cacheDir } = await setup();
    await backend.write('k', 'version one');
    expect((await read(store, 'k')).toString()).toBe('version one');
    await backend.write('k', 'version two'); // same size, new etag, written directly to the backend
    expect((await read(store, 'k')).toString()).toBe('version two');
    await backend.write('k', 'v3');
    expect((await read(store, 'k')).toString()).toBe('v3');
    expect(counting.readsOf('k').length).toBe(3);
    // Blocks of the old versions were dropped when the new one was filled.
    expect((await blockFiles(cacheDir)).length).toBe(1);
    await backend.delete('k');
    await expectCode(() => store.read('k'), 'NOT_FOUND');
  });

  it('stats the backend once per read (a hit costs one stat); statTtlMs skips even that', async () => {
    const a = await setup();
    await a.store.write('k', 'abc');
    await read(a.store, 'k');
    a.counting.stats = 0;
    await read(a.store, 'k');
    await read(a.store, 'k', { start: 1 });
    expect(a.counting.stats).toBe(2);

    const b = await setup({ statTtlMs: 60_000 });
    await b.store.write('k', 'abc');
    await read(b.store, 'k');
    b.counting.stats = 0;
    await read(b.store, 'k');
    await read(b.store, 'k');
    expect(b.counting.stats).toBe(0);
    await b.store.write('k', 'new bytes'); // a write through the layer forgets the remembered stat
    expect((await read(b.store, 'k')).toString()).toBe('new bytes');
  });

  it('a change in the middle of a read is an error (CONFLICT), never a mix of versions', async () => {
    const { store, backend } = await setup({ blockSize: '64KiB', readahead: 0 });
    const one = randomBytes(256 * KiB);
    await backend.write('k', one);
    const s = await store.read('k');
    const it = s[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    await backend.write('k', randomBytes(256 * KiB));
    const err = await (async () => {
      for (let r = await it.next(); r.done !== true; r = await it.next());
    })().then(() => undefined, (e: unknown) => e as Error & { code?: string });
    expect(err?.code).toBe('CONFLICT');
    // And the next read gets the new version whole.
    expect((await read(store, 'k')).length).toBe(256 * KiB);
  });

  it('write, delete and copy go to the backend and drop the cached blocks of the object', async () => {
    const { store, backend, cacheDir } = await setup();
    await store.write('a', 'first');
    await store.write('b', 'other');
    await read(store, 'a');
    await read(store, 'b');
    expect((await blockFiles(cacheDir)).length).toBe(2);
    await store.write('a', 'second');
    expect((await blockFiles(cacheDir)).length).toBe(1);
    expect((await collect(await backend.read('a'))).toString()).toBe('second');
    expect((await read(store, 'a')).toString()).toBe('second');
    await store.copy('a', 'b');
    expect((await read(store, 'b')).toString()).toBe('second');
    expect(await store.delete('b')).toBe(true);
    expect(await backend.stat('b')).toBeUndefined();
    await expectCode(() => store.read('b'), 'NOT_FOUND');
    expect((await blockFiles(cacheDir)).length).toBe(1); // only `a`
  });

  it('one backend fetch per block for many concurrent readers in one process', async () => {
    const { store, counting, backend } = await setup({ blockSize: '256KiB', readahead: 2 });
    counting.delayMs = 50;
    const body = randomBytes(MiB + 100);
    await backend.write('hot', body);
    const results = await Promise.all(Array.from({ length: 12 }, () => read(store, 'hot')));
    for (const r of results) expect(r.equals(body)).toBe(true);
    const reads = counting.readsOf('hot');
    expect(reads.length).toBe(5);
    expect(new Set(reads.map((r) => r[0])).size).toBe(5);
    expect((await store.stats()).misses).toBe(5);
  });

  it('evicts least-recently-used blocks when over budget', async () => {
    const { store, counting, backend } = await setup({ blockSize: '4KiB', maxBytes: '16KiB', evictToRatio: 1, readahead: 0 });
    for (const k of ['a', 'b', 'c', 'd', 'e']) await backend.write(k, Buffer.alloc(4 * KiB, k));
    for (const k of ['a', 'b', 'c', 'd']) {
      await read(store, k);
      await sleep(15);
    }
    await read(store, 'a'); // a is now the most recently used
    await sleep(15);
    await read(store, 'e'); // 5 blocks > budget of 4: the least recently used (b) goes
    const st = await store.stats();
    expect(st).toMatchObject({ blocks: 4, bytes: 16 * KiB, evictions: 1 });
    counting.reads = [];
    for (const k of ['a', 'c', 'd', 'e']) expect((await read(store, k)).equals(Buffer.alloc(4 * KiB, k))).toBe(true);
    expect(counting.reads).toEqual([]);
    expect((await read(store, 'b')).equals(Buffer.alloc(4 * KiB, 'b'))).toBe(true);
    expect(counting.readsOf('b').length).toBe(1);
  });

  it('evicts down to the low-water mark (evictToRatio) so it does not rescan on every fill', async () => {
    const { store, backend } = await setup({ blockSize: '4KiB', maxBytes: '40KiB', readahead: 0 });
    for (let i = 0; i < 11; i++) await backend.write(`k${i}`, Buffer.alloc(4 * KiB, i));
    for (let i = 0; i < 11; i++) await read(store, `k${i}`);
    const st = await store.stats();
    expect(st.bytes).toBeLessThanOrEqual(36 * KiB);
    expect(st.evictions).toBe(2);
  });

  it('pinned objects survive budget eviction', async () => {
    const { store, counting, backend } = await setup({ blockSize: '4KiB', maxBytes: '16KiB', evictToRatio: 1, readahead: 0, pin: ['keep/**'] });
    await backend.write('keep/x', Buffer.alloc(4 * KiB, 'x'));
    await read(store, 'keep/x');
    await sleep(15);
    for (let i = 0; i < 6; i++) {
      await backend.write(`n${i}`, Buffer.alloc(4 * KiB, i));
      await read(store, `n${i}`);
      await sleep(5);
    }
    counting.reads = [];
    await read(store, 'keep/x');
    expect(counting.readsOf('keep/x')).toEqual([]);
    const st = await store.stats();
    expect(st.pinnedBytes).toBe(4 * KiB);
    expect(st.bytes).toBeLessThanOrEqual(16 * KiB);
  });

  it('noCache globs always bypass the cache', async () => {
    const { store, counting, cacheDir } = await setup({ noCache: ['scratch/**', '*.tmp'] });
    await store.write('scratch/a', 'bypass me');
    await store.write('x.tmp', 'me too');
    for (let i = 0; i < 2; i++) {
      expect((await read(store, 'scratch/a')).toString()).toBe('bypass me');
      expect((await read(store, 'x.tmp', { start: 3 })).toString()).toBe('too');
    }
    expect(counting.readsOf('scratch/a').length).toBe(2);
    expect(counting.readsOf('x.tmp').length).toBe(2);
    expect(await blockFiles(cacheDir)).toEqual([]);
    expect((await store.stats()).bypassReads).toBe(4);
  });

  it('objects larger than maxObjectBytes are streamed uncached, so one huge object cannot flush the cache', async () => {
    const { store, counting, cacheDir } = await setup({ blockSize: '4KiB', maxBytes: '64KiB', readahead: 0 });
    // default maxObjectBytes: a quarter of the budget = 16KiB
    await store.write('fits', Buffer.alloc(16 * KiB, 1));
    await store.write('huge', Buffer.alloc(16 * KiB + 1, 2));
    await read(store, 'fits');
    expect((await read(store, 'huge')).equals(Buffer.alloc(16 * KiB + 1, 2))).toBe(true);
    await read(store, 'huge', { start: 5, end: 10 });
    expect(counting.readsOf('huge')).toEqual([[0, 16 * KiB + 1], [5, 10]]);
    expect((await blockFiles(cacheDir)).length).toBe(4); // only `fits`
    const s2 = await setup({ blockSize: '4KiB', maxBytes: '64KiB', maxObjectBytes: '1KiB' });
    await s2.store.write('k', Buffer.alloc(2 * KiB));
    await read(s2.store, 'k');
    expect(await blockFiles(s2.cacheDir)).toEqual([]);
  });

  it('fails fast with BAD_CONFIG when the budget is smaller than one block, or pins leave no room for a read', async () => {
    const dir = await tmp();
    const err = await expectCode(() => openCache({ dir, maxBytes: '4MiB', blockSize: '8MiB' }), 'BAD_CONFIG');
    expect(err.message).toContain('smaller than one block');
    expect((err as Error & { hint?: string }).hint).toContain('--cache-max');
    await expectCode(() => openCache({ dir, maxBytes: 'lots' }), 'BAD_CONFIG');
    await expectCode(() => openCache({ dir, maxBytes: '1GiB', evictToRatio: 2 }), 'BAD_CONFIG');

    const { store, backend } = await setup({ blockSize: '4KiB', maxBytes: '16KiB', maxObjectBytes: '16KiB', readahead: 0, pin: ['pinned/**'] });
    await backend.write('pinned/all', Buffer.alloc(16 * KiB));
    await read(store, 'pinned/all');
    await backend.write('other', 'x');
    const e2 = await expectCode(() => store.read('other'), 'BAD_CONFIG');
    expect(e2.message).toContain('pinned objects take');
    expect((await read(store, 'pinned/all')).length).toBe(16 * KiB); // pinned hits still work
  });

  it('survives restarts: a new cache on the same directory serves warm blocks with only the validating stat', async () => {
    const { store, backend, cacheDir } = await setup({ blockSize: '64KiB' });
    const body = randomBytes(300 * KiB);
    await backend.write('warm', body);
    await read(store, 'warm');
    await store.close();
    const counting = new CountingStore(await FileStore.open(backend.root));
    const again = await withCache(counting, { dir: cacheDir, blockSize: '64KiB' });
    cleanups.unshift(() => again.close());
    expect((await read(again, 'warm')).equals(body)).toBe(true);
    expect(counting.reads).toEqual([]);
    expect(counting.stats).toBe(1);
    expect(await again.stats()).toMatchObject({ hits: 5, misses: 0, blocks: 5 });
  });

  it('fills atomically: a block is whole or absent, temp files are swept by pid and by age', async () => {
    const { store, backend, cacheDir } = await setup({ blockSize: '64KiB' });
    await backend.write('k', randomBytes(100 * KiB));
    await read(store, 'k');
    expect(await files(join(cacheDir, 'tmp'), () => true)).toEqual([]);
    expect(await files(join(cacheDir, 'locks'), () => true)).toEqual([]);
    // Debris: one temp of a dead pid, one old temp of a live pid, one fresh temp of a live pid (a fill in flight).
    const t = join(cacheDir, 'tmp');
    await writeFile(join(t, 'fill-999999999-dead'), 'x');
    await writeFile(join(t, `fill-${process.pid}-old`), 'x');
    const old = new Date(Date.now() - 2 * 3600_000);
    await utimes(join(t, `fill-${process.pid}-old`), old, old);
    await writeFile(join(t, `fill-${process.pid}-fresh`), 'x');
    const c = await openCache({ dir: cacheDir, blockSize: '64KiB' });
    expect(await files(t, () => true)).toEqual([`fill-${process.pid}-fresh`]);
    expect((await c.stats()).tempFiles).toBe(1);
  });

  it('stats() and evict() work on a cache directory opened without any backend', async () => {
    const { store, backend, cacheDir } = await setup({ blockSize: '4KiB', pin: ['p/**'] });
    for (const k of ['data/a', 'data/b', 'other/c', 'p/d']) {
      await backend.write(k, Buffer.alloc(6 * KiB, k));
      await read(store, k);
      await sleep(10);
    }
    const c = await openCache({ dir: cacheDir, blockSize: '4KiB' });
    expect(await c.stats()).toMatchObject({ blocks: 8, bytes: 24 * KiB, objects: 4, pinnedBytes: 6 * KiB, hits: 0, misses: 0 });
    expect(await c.evict({ prefix: 'data/' })).toEqual({ blocks: 4, bytes: 12 * KiB });
    expect(await c.stats()).toMatchObject({ blocks: 4, objects: 2 });
    expect(await c.evict({ toBytes: 0 })).toEqual({ blocks: 2, bytes: 6 * KiB }); // LRU, pinned kept
    expect(await c.stats()).toMatchObject({ blocks: 2, bytes: 6 * KiB });
    expect(await c.evict({ all: true })).toEqual({ blocks: 2, bytes: 6 * KiB });
    expect(await c.stats()).toMatchObject({ blocks: 0, bytes: 0, objects: 0 });
    expect(await files(join(cacheDir, 'blocks'), () => true)).toEqual([]);
    await expectCode(() => c.evict({}), 'BAD_ARGUMENT');
    // The store still reads (refills) after its blocks went away.
    expect((await read(store, 'data/a')).equals(Buffer.alloc(6 * KiB, 'data/a'))).toBe(true);
    // A store's evict is scoped to its own objects.
    const other = await withCache(new CountingStore(await FileStore.open(join(backend.root, '..', 'store2'))), c);
    await other.write('data/a', 'y');
    await read(other, 'data/a');
    expect(await store.evict({ all: true })).toEqual({ blocks: 2, bytes: 6 * KiB });
    expect((await c.stats()).blocks).toBe(1);
  });

  it('verifies whole reads against a known checksum, and drops a damaged cached copy', async () => {
    const { backend, cacheDir } = await setup();
    const body = randomBytes(10_000);
    await backend.write('k', body);
    // A backend that knows checksums (as S3 / GCS do for objects lading wrote).
    const checksummed = new CountingStore(backend);
    checksummed.stat = async (key: string) => {
      checksummed.stats++;
      const st = await backend.stat(key);
      return st && { ...st, checksum: `sha256:${createHash('sha256').update(body).digest('hex')}` };
    };
    const store = await withCache(checksummed, { dir: cacheDir });
    cleanups.unshift(() => store.close());
    expect((await read(store, 'k')).equals(body)).toBe(true);
    const [block] = await blockFiles(cacheDir);
    const damaged = Buffer.from(body);
    damaged[5000] = (damaged[5000] ?? 0) ^ 0xff;
    await writeFile(join(cacheDir, block ?? 'missing'), damaged); // bit rot on the cache disk
    const err = await expectCode(async () => read(store, 'k'), 'CHECKSUM_MISMATCH');
    expect(err.message).toContain('"k"');
    await sleep(50);
    expect(await blockFiles(cacheDir)).toEqual([]);
    expect((await read(store, 'k')).equals(body)).toBe(true);
    expect(checksummed.readsOf('k').length).toBe(2);
  });

  it('a failing cache disk (full, read-only) does not fail reads: they go to the backend', async () => {
    const { store, backend, counting } = await setup({ blockSize: '64KiB' });
    const body = randomBytes(200 * KiB);
    await backend.write('k', body);
    const cache = store.cache;
    const orig = cache.openBlock.bind(cache);
    let failing = (i: number): boolean => i === 1;
    cache.openBlock = async (obj, b, src) => {
      if (failing(b.index)) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return orig(obj, b, src);
    };
    expect((await read(store, 'k')).equals(body)).toBe(true); // block 1 from memory, the rest cached
    expect(counting.readsOf('k').map((r) => r[0])).toEqual([0, 64 * KiB, 128 * KiB, 192 * KiB]);
    failing = () => true;
    counting.reads = [];
    expect((await read(store, 'k', { start: 10, end: 150 * KiB })).equals(body.subarray(10, 150 * KiB))).toBe(true);
    expect(counting.readsOf('k')).toEqual([[10, 150 * KiB]]); // streamed uncached
  });

  it('an aborted read stops and releases its block files', async () => {
    const { store, backend } = await setup({ blockSize: '64KiB' });
    await backend.write('k', randomBytes(MiB));
    await read(store, 'k');
    const ac = new AbortController();
    const s = await store.read('k', { signal: ac.signal });
    const it = s[Symbol.asyncIterator]();
    await it.next();
    ac.abort();
    await expect(it.next()).rejects.toThrow(/abort/i);
    await sleep(20);
    expect(s.destroyed).toBe(true);
    // Closing a file handle is asynchronous: on a loaded machine it may land after 20 ms. Wait for it
    // (up to 2 s), then require that no block file is left open.
    const openBlocks = async (): Promise<string[] | undefined> => {
      const fds = await readdir('/proc/self/fd').catch(() => undefined);
      if (!fds) return undefined;
      const open = await Promise.all(fds.map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')));
      return open.filter((p) => p.endsWith('.blk'));
    };
    let open = await openBlocks();
    for (let i = 0; i < 100 && open !== undefined && open.length > 0; i++) {
      await sleep(20);
      open = await openBlocks();
    }
    if (open !== undefined) expect(open).toEqual([]);
  });

  it('two caches on one directory share fills through the lock; a slow fill keeps its lock fresh', async () => {
    const dir = await tmp();
    const backend = await FileStore.open(join(dir, 'store'));
    await backend.write('slow', randomBytes(100_000));
    const a = new CountingStore(backend);
    const b = new CountingStore(backend);
    a.delayMs = 1000; // longer than lockStaleMs: only the heartbeat keeps b from taking over
    const opts = { dir: join(dir, 'cache'), lockStaleMs: 300 };
    const ca = await withCache(a, await openCache(opts)); // separate BlobCache instances: no shared in-flight map
    const cb = await withCache(b, await openCache(opts));
    const ra = read(ca, 'slow');
    await sleep(100);
    const rb = read(cb, 'slow');
    const [x, y] = await Promise.all([ra, rb]);
    expect(x.equals(y)).toBe(true);
    expect(a.reads.length + b.reads.length).toBe(1);
  });

  it('uses a per-user default root: LADING_CACHE_DIR, else $XDG_CACHE_HOME/lading, else ~/.cache/lading', async () => {
    expect(defaultCacheDir({ LADING_CACHE_DIR: '/nvme/me/lading', XDG_CACHE_HOME: '/x' })).toBe('/nvme/me/lading');
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/home/me/.cache' })).toBe('/home/me/.cache/lading');
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'relative' })).toBe(join(homedir(), '.cache', 'lading'));
    expect(defaultCacheDir({})).toBe(join(homedir(), '.cache', 'lading'));
    expect(defaultCacheDir({}).startsWith('/tmp')).toBe(false);
    const dir = await tmp();
    const c = await openCache({ env: { LADING_CACHE_DIR: join(dir, 'deep', 'lading') } });
    expect(c.dir).toBe(join(dir, 'deep', 'lading'));
    expect((await stat(c.dir)).mode & 0o777).toBe(0o700);
    for (const sub of ['blocks', 'locks', 'tmp']) expect((await stat(join(c.dir, sub))).mode & 0o777).toBe(0o700);
    expect(await readFile(join(c.dir, 'CACHEDIR.TAG'), 'utf8')).toContain('Signature: 8a477f597d28d172789f06886806bc55');
  });

  it.runIf(process.getuid?.() === 0)('refuses a cache directory that belongs to another user', async () => {
    const dir = join(await tmp(), 'theirs');
    await mkdir(dir);
    await chown(dir, 65534, 65534);
    const err = await expectCode(() => openCache({ dir }), 'UNSAFE_LOCATION');
    expect(err.message).toContain('belongs to uid 65534');
  });
});

describe('cache lock files', () => {
  it('one holder at a time; stale when the pid is dead or it stopped refreshing; release only removes its own', async () => {
    const dir = await tmp();
    const path = join(dir, 'locks', 'x.lock');
    const l1 = await LockFile.tryAcquire(path, 1000);
    expect(l1).toBeDefined();
    expect(await LockFile.tryAcquire(path, 1000)).toBeUndefined();
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid, host: hostname() });
    await l1?.release();
    // Dead holder on this host.
    await writeFile(path, JSON.stringify({ pid: 999_999_999, host: hostname(), token: 't', time: Date.now() }));
    const l2 = await LockFile.tryAcquire(path, 60_000);
    expect(l2).toBeDefined();
    await l2?.release();
    // Live holder (this pid) that stopped refreshing long ago.
    await writeFile(path, JSON.stringify({ pid: process.pid, host: hostname(), token: 'old', time: 0 }));
    const old = new Date(Date.now() - 120_000);
    await utimes(path, old, old);
    expect((await lockState(path, 60_000)).kind).toBe('stale');
    const l3 = await LockFile.tryAcquire(path, 60_000);
    expect(l3).toBeDefined();
    // Someone broke l3 as stale and holds the lock now: l3's release must leave theirs alone.
    await writeFile(path, JSON.stringify({ pid: process.pid, host: hostname(), token: 'theirs', time: Date.now() }));
    await l3?.release();
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ token: 'theirs' });
    // A lock on another host is judged by age only.
    await writeFile(path, JSON.stringify({ pid: 1, host: 'elsewhere', token: 'e', time: Date.now() }));
    expect((await lockState(path, 60_000)).kind).toBe('held');
  });
});

// ---- several processes on one node ---------------------------------------------------------------------------

describe('cache layer across processes', () => {
  const dist = (p: string) => pathToFileURL(fileURLToPath(new URL(`../dist/${p}`, import.meta.url))).href;
  /** A child that reads one object through a cache, over a file store whose reads are logged to a shared file. */
  const script = `
    import { appendFileSync, existsSync } from 'node:fs';
    import { createHash } from 'node:crypto';
    import { Readable } from 'node:stream';
    import { setTimeout as sleep } from 'node:timers/promises';
    import { FileStore } from ${JSON.stringify(dist('drivers/file.js'))};
    import { withCache } from ${JSON.stringify(dist('cache/index.js'))};
    const [storeDir, cacheDir, log, go, key, mode] = process.argv.slice(1);
    const inner = await FileStore.open(storeDir);
    const logged = {
      uri: inner.uri, kind: inner.kind,
      stat: (k) => inner.stat(k),
      async read(k, o = {}) {
        appendFileSync(log, JSON.stringify({ pid: process.pid, key: k, start: o.start ?? 0, end: o.end }) + '\\n');
        if (mode === 'hang') {
          // Deliver the first 64 KiB of the block, then stall forever: the fill is in progress.
          const first = await inner.read(k, { start: o.start, end: (o.start ?? 0) + 65536 });
          const chunks = [];
          for await (const c of first) chunks.push(c);
          const out = new Readable({ read() {} });
          out.push(Buffer.concat(chunks));
          console.log('filling');
          return out;
        }
        await sleep(Number(process.env.DELAY_MS ?? 0));
        return inner.read(k, o);
      },
      write: (...a) => inner.write(...a), list: (...a) => inner.list(...a), delete: (k) => inner.delete(k),
      copy: (a, b) => inner.copy(a, b), close: () => inner.close(),
    };
    const store = await withCache(logged, { dir: cacheDir, maxBytes: '64MiB', blockSize: '1MiB', readahead: 1 });
    while (go && !existsSync(go)) await sleep(2);
    const h = createHash('sha256');
    for await (const c of await store.read(key)) h.update(c);
    const st = await store.stats();
    console.log(JSON.stringify({ sha: 'sha256:' + h.digest('hex'), misses: st.misses, hits: st.hits }));
    await store.close();
  `;

  const run = (args: string[], env: Record<string, string> = {}) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, exited, out: () => out, err: () => err };
  };
  const logLines = async (log: string) =>
    (await readFile(log, 'utf8').catch(() => '')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pid: number; key: string; start: number; end: number });

  let dir: string;
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('three processes reading the same cold object fetch each block from the backend exactly once', async () => {
    dir = await mkdtemp(join(tmpdir(), 'lading-cache-mp-'));
    const storeDir = join(dir, 'store');
    const p = new Pattern(4 * MiB + 12_345);
    const backend = await FileStore.open(storeDir);
    await backend.write('shared/obj', p.stream());
    const log = join(dir, 'reads.log');
    const go = join(dir, 'go');
    const kids = Array.from({ length: 3 }, () => run([storeDir, join(dir, 'cache'), log, go, 'shared/obj'], { DELAY_MS: '150' }));
    await sleep(1500); // let all three start and wait at the barrier
    await writeFile(go, '');
    const codes = await Promise.all(kids.map((k) => k.exited));
    expect(codes, kids.map((k) => k.err()).join('\n')).toEqual([0, 0, 0]);
    const results = kids.map((k) => JSON.parse(k.out().trim().split('\n').pop() ?? '{}') as { sha: string; misses: number; hits: number });
    for (const r of results) expect(r.sha).toBe(p.checksum());
    const lines = await logLines(log);
    expect(lines.map((l) => l.start).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4].map((i) => i * MiB));
    expect(results.reduce((s, r) => s + r.misses, 0)).toBe(5);
    expect(results.reduce((s, r) => s + r.hits + r.misses, 0)).toBe(15);
  }, 60_000);

  it('a fill killed with SIGKILL leaves no corrupt block; the next reader takes over the lock and the temp is swept', async () => {
    dir ??= await mkdtemp(join(tmpdir(), 'lading-cache-mp-'));
    const storeDir = join(dir, 'store-kill');
    const cacheDir = join(dir, 'cache-kill');
    const body = randomBytes(3 * MiB);
    const backend = await FileStore.open(storeDir);
    await backend.write('victim', body);
    const log = join(dir, 'kill.log');
    const kid = run([storeDir, cacheDir, log, '', 'victim', 'hang']);
    // Wait until the fill's temp file holds data, then kill without a chance to clean up.
    let temp: string | undefined;
    for (let i = 0; i < 300 && temp === undefined; i++) {
      await sleep(20);
      for (const n of await readdir(join(cacheDir, 'tmp')).catch(() => [])) {
        if ((await stat(join(cacheDir, 'tmp', n)).catch(() => undefined))?.size) temp = n;
      }
    }
    expect(temp, kid.err()).toBeDefined();
    kid.child.kill('SIGKILL');
    await kid.exited;
    expect(await blockFiles(cacheDir)).toEqual([]); // nothing half-written is visible as a block
    expect((await readdir(join(cacheDir, 'locks'))).length).toBe(1); // the dead filler's lock
    expect(await readdir(join(cacheDir, 'tmp'))).toEqual([temp]);

    // A reader in this process: sweeps the dead pid's temp, takes over its lock, fills and serves whole bytes.
    const counting = new CountingStore(backend);
    const store = await withCache(counting, { dir: cacheDir, maxBytes: '64MiB', blockSize: '1MiB' });
    cleanups.unshift(() => store.close());
    expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
    expect((await read(store, 'victim')).equals(body)).toBe(true);
    expect(counting.reads.length).toBe(3);
    expect(await readdir(join(cacheDir, 'locks'))).toEqual([]);
    expect((await blockFiles(cacheDir)).length).toBe(3);
  }, 60_000);

  it('a reader waiting on a live filler in another process uses its block instead of fetching', async () => {
    dir ??= await mkdtemp(join(tmpdir(), 'lading-cache-mp-'));
    const storeDir = join(dir, 'store-wait');
    const cacheDir = join(dir, 'cache-wait');
    const body = randomBytes(MiB);
    const backend = await FileStore.open(storeDir);
    await backend.write('w', body);
    const log = join(dir, 'wait.log');
    const kid = run([storeDir, cacheDir, log, '', 'w'], { DELAY_MS: '800' });
    for (let i = 0; i < 300 && (await logLines(log)).length === 0; i++) await sleep(20);
    const counting = new CountingStore(backend);
    const store = await withCache(counting, { dir: cacheDir, maxBytes: '64MiB', blockSize: '1MiB' });
    cleanups.unshift(() => store.close());
    expect((await read(store, 'w')).equals(body)).toBe(true);
    expect(await kid.exited).toBe(0);
    expect(counting.reads).toEqual([]);
    expect((await logLines(log)).length).toBe(1);
  }, 60_000);
});
