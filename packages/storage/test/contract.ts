/**
 * The storage contract every BlobStore must pass. Drivers plug in with
 * `describeBlobStoreContract('s3 on s3rver', async () => ({ store, cleanup }))`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlobStore } from '@lading/storage';

export interface ContractTarget {
  store: BlobStore;
  cleanup(): Promise<void>;
}

export interface ContractOptions {
  /** Size of the large-object test (default 40 MiB: multipart on S3 with 16 MiB parts). */
  largeBytes?: number;
  /** Keys in the listing test (default 2500: crosses S3's 1000-key pages twice). */
  manyKeys?: number;
  /** Known gaps of a test server; each relaxes one check and says so in the test name. */
  gaps?: {
    /** Overwrites are not atomic (s3rver writes in place): a torn read must then fail verification, never return mixed bytes. */
    tornOverwrites?: boolean;
    /** Listings are not in byte order (s3rver walks its directories): compare them as sets. */
    unorderedListing?: boolean;
  };
}

const MiB = 1024 * 1024;

export const sha = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export async function collect(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}

/** Hash and count a stream without keeping it. */
export async function digestOf(s: Readable): Promise<{ size: number; checksum: string }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of s) {
    h.update(c as Uint8Array);
    size += (c as Uint8Array).length;
  }
  return { size, checksum: `sha256:${h.digest('hex')}` };
}

export async function expectCode(p: Promise<unknown> | (() => Promise<unknown>), code: string): Promise<Error> {
  const err = await (typeof p === 'function' ? p() : p).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(err, `expected a LadingError ${code}`).toBeInstanceOf(Error);
  expect((err as Error & { code?: string }).code, (err as Error).message).toBe(code);
  return err as Error;
}

export async function keysOf(store: BlobStore, prefix?: string): Promise<string[]> {
  const out: string[] = [];
  for await (const s of store.list(prefix)) out.push(s.key);
  return out;
}

/** Bytes that differ per position (reordered or shifted chunks change the hash), generated on demand. */
export class Pattern {
  private readonly base = randomBytes(MiB + 251);
  constructor(readonly size: number, readonly chunk = MiB) {}
  private chunkAt(i: number): Buffer {
    const len = Math.min(this.chunk, this.size - i * this.chunk);
    const b = Buffer.from(this.base.subarray(i % 251, (i % 251) + len));
    if (len >= 4) b.writeUInt32BE(i, 0);
    return b;
  }
  stream(): Readable {
    const self = this;
    return Readable.from((function* () {
      for (let i = 0; i * self.chunk < self.size; i++) yield self.chunkAt(i);
    })(), { objectMode: false });
  }
  slice(start: number, end: number): Buffer {
    const parts: Buffer[] = [];
    for (let i = Math.floor(start / this.chunk); i * this.chunk < end; i++) {
      const c = this.chunkAt(i);
      const off = i * this.chunk;
      parts.push(c.subarray(Math.max(0, start - off), Math.min(c.length, end - off)));
    }
    return Buffer.concat(parts);
  }
  checksum(start = 0, end = this.size): string {
    const h = createHash('sha256');
    for (let s = start; s < end; s += 8 * MiB) h.update(this.slice(s, Math.min(end, s + 8 * MiB)));
    return `sha256:${h.digest('hex')}`;
  }
}

/** A stream that yields `chunks` with a pause before each, then optionally fails instead of ending. */
export function slowStream(chunks: Buffer[], delayMs: number, failAtEnd?: Error): Readable {
  return Readable.from((async function* () {
    for (const c of chunks) {
      await sleep(delayMs);
      yield c;
    }
    if (failAtEnd) throw failAtEnd;
  })(), { objectMode: false });
}

export const UNSAFE_KEYS = ['../x', '/etc/passwd', 'a/../../b', 'a\0b', 'a\\b', '', 'a//b', './a', 'a/', '..', '.lading-tmp-x'];

export function describeBlobStoreContract(name: string, makeStore: () => Promise<ContractTarget>, options: ContractOptions = {}): void {
  const largeBytes = options.largeBytes ?? 40 * MiB;
  const manyKeys = options.manyKeys ?? 2500;
  const torn = options.gaps?.tornOverwrites === true;
  const unordered = options.gaps?.unorderedListing === true;
  const inOrder = (keys: string[]) => (unordered ? [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))) : keys);
  /** Whole read; with the torn-overwrite gap a CHECKSUM_MISMATCH counts as 'torn' (detected, not delivered). */
  const readOrTorn = async (s: BlobStore, key: string): Promise<Buffer | 'torn'> => {
    try {
      return await collect(await s.read(key));
    } catch (e) {
      if (torn && (e as { code?: unknown }).code === 'CHECKSUM_MISMATCH') return 'torn';
      throw e;
    }
  };

  describe(`BlobStore contract: ${name}`, () => {
    let target: ContractTarget | undefined;
    const store = (): BlobStore => {
      if (!target) throw new Error('store not ready');
      return target.store;
    };
    beforeAll(async () => {
      target = await makeStore();
    });
    afterAll(async () => {
      await target?.store.close();
      await target?.cleanup();
    });

    it('round-trips strings, bytes, streams and empty objects with checksums', async () => {
      const s = store();
      const bytes = randomBytes(100_000);
      const r1 = await s.write('rt/str.txt', 'hello world', { contentType: 'text/plain' });
      expect(r1).toMatchObject({ key: 'rt/str.txt', size: 11, checksum: sha('hello world') });
      expect(r1.etag).not.toBe('');
      const r2 = await s.write('rt/bytes.bin', bytes);
      expect(r2.checksum).toBe(sha(bytes));
      const r3 = await s.write('rt/stream.bin', Readable.from([bytes.subarray(0, 10), bytes.subarray(10)]));
      expect(r3).toMatchObject({ size: bytes.length, checksum: sha(bytes) });
      const r4 = await s.write('rt/empty', new Uint8Array(0));
      expect(r4).toMatchObject({ size: 0, checksum: sha('') });

      expect((await collect(await s.read('rt/str.txt'))).toString()).toBe('hello world');
      expect((await collect(await s.read('rt/bytes.bin'))).equals(bytes)).toBe(true);
      expect((await collect(await s.read('rt/stream.bin'))).equals(bytes)).toBe(true);
      expect((await collect(await s.read('rt/empty'))).length).toBe(0);

      const st = await s.stat('rt/bytes.bin');
      expect(st).toMatchObject({ key: 'rt/bytes.bin', size: bytes.length, etag: r2.etag });
      expect(st?.mtime).toBeInstanceOf(Date);
      expect(Math.abs(Date.now() - (st?.mtime.getTime() ?? 0))).toBeLessThan(10 * 60_000);
      if (st?.checksum !== undefined) expect(st.checksum).toBe(sha(bytes));
    });

    it('gives a new etag when the bytes change', async () => {
      const s = store();
      const a = await s.write('etag/k', 'one');
      const b = await s.write('etag/k', 'two!');
      expect(b.etag).not.toBe(a.etag);
      expect((await s.stat('etag/k'))?.etag).toBe(b.etag);
    });

    it('reads byte ranges: end exclusive, clamped to the object, empty at the edges', async () => {
      const s = store();
      await s.write('range/k', 'hello world');
      const read = async (start?: number, end?: number) =>
        (await collect(await s.read('range/k', { ...(start === undefined ? {} : { start }), ...(end === undefined ? {} : { end }) }))).toString();
      expect(await read(0, 0)).toBe('');
      expect(await read(0, 1)).toBe('h');
      expect(await read(10, 11)).toBe('d');
      expect(await read(6)).toBe('world');
      expect(await read(undefined, 5)).toBe('hello');
      expect(await read(3, 100)).toBe('lo world');
      expect(await read(11)).toBe('');
      expect(await read(20)).toBe('');
      expect(await read(20, 30)).toBe('');
      expect(await read(4, 4)).toBe('');
      await expectCode(() => s.read('range/k', { start: 5, end: 2 }), 'BAD_ARGUMENT');
      await expectCode(() => s.read('range/k', { start: -1 }), 'BAD_ARGUMENT');
      await expectCode(() => s.read('range/k', { start: 1.5 }), 'BAD_ARGUMENT');
    });

    it('stat of a missing key is undefined; read, copy of it are NOT_FOUND', async () => {
      const s = store();
      expect(await s.stat('missing/nope')).toBeUndefined();
      await expectCode(() => s.read('missing/nope'), 'NOT_FOUND');
      await expectCode(() => s.read('missing/nope', { start: 0, end: 0 }), 'NOT_FOUND');
      await expectCode(() => s.read('missing/nope', { start: 2, end: 10 }), 'NOT_FOUND');
      await expectCode(() => s.copy('missing/nope', 'missing/to'), 'NOT_FOUND');
      expect(await s.stat('missing/to')).toBeUndefined();
    });

    it(`is atomic: a reader during a slow streamed write sees the old object or the whole new one${torn ? ' (gap: or a detected torn read)' : ''}`, async () => {
      const s = store();
      const old = Buffer.from('old content');
      const next = randomBytes(3 * MiB);
      await s.write('atomic/k', old);
      const chunks = Array.from({ length: 12 }, (_, i) => next.subarray(i * 256 * 1024, (i + 1) * 256 * 1024));
      let done = false;
      const writing = s.write('atomic/k', slowStream(chunks, 25)).finally(() => { done = true; });
      const seen = new Set<string>();
      while (!done) {
        const b = await readOrTorn(s, 'atomic/k');
        seen.add(b === 'torn' ? 'torn' : b.equals(old) ? 'old' : b.equals(next) ? 'new' : `partial(${b.length})`);
        expect((await keysOf(s, 'atomic/')).sort()).toEqual(['atomic/k']);
        await sleep(5);
      }
      const r = await writing;
      expect(r.checksum).toBe(sha(next));
      seen.add((await collect(await s.read('atomic/k'))).equals(next) ? 'new' : 'bad');
      expect([...seen].filter((x) => x !== 'old' && x !== 'new' && x !== 'torn')).toEqual([]);
      expect(seen.has('old')).toBe(true);
      expect(seen.has('new')).toBe(true);
    });

    it(`concurrent writers of one key leave exactly one of their objects, whole${torn ? ' (gap: or a detected torn object)' : ''}`, async () => {
      const s = store();
      const bodies = Array.from({ length: 4 }, () => randomBytes(MiB + 17));
      await Promise.all(bodies.map((b, i) => s.write('race/k', slowStream([b.subarray(0, 1000), b.subarray(1000)], 5 * i))));
      const got = await readOrTorn(s, 'race/k');
      if (got !== 'torn') expect(bodies.some((b) => b.equals(got))).toBe(true);
      expect(await keysOf(s, 'race/')).toEqual(['race/k']);
    });

    it('an aborted write (the body fails midway) leaves nothing new and the old object intact', async () => {
      const s = store();
      await s.write('abort/old', 'keep me');
      const boom = new Error('source failed');
      const chunks = Array.from({ length: 4 }, () => randomBytes(256 * 1024));
      await expect(s.write('abort/old', slowStream(chunks, 1, boom))).rejects.toThrow('source failed');
      await expect(s.write('abort/new', slowStream(chunks, 1, boom))).rejects.toThrow('source failed');
      expect((await collect(await s.read('abort/old'))).toString()).toBe('keep me');
      expect(await s.stat('abort/new')).toBeUndefined();
      expect(await keysOf(s, 'abort/')).toEqual(['abort/old']);
    });

    it('an aborted write (AbortSignal) leaves nothing', async () => {
      const s = store();
      const ac = new AbortController();
      const chunks = Array.from({ length: 50 }, () => randomBytes(64 * 1024));
      const writing = s.write('signal/k', slowStream(chunks, 10), { signal: ac.signal });
      setTimeout(() => ac.abort(), 100);
      await expect(writing).rejects.toThrow();
      expect(await s.stat('signal/k')).toBeUndefined();
      expect(await keysOf(s, 'signal/')).toEqual([]);
    });

    it('refuses a write whose bytes do not match expectedChecksum, leaving nothing', async () => {
      const s = store();
      await expectCode(() => s.write('cks/new', 'hello', { expectedChecksum: sha('other') }), 'CHECKSUM_MISMATCH');
      await expectCode(() => s.write('cks/new', Readable.from([Buffer.from('hel'), Buffer.from('lo')]), { expectedChecksum: sha('other') }), 'CHECKSUM_MISMATCH');
      expect(await s.stat('cks/new')).toBeUndefined();
      await s.write('cks/old', 'old');
      const err = await expectCode(() => s.write('cks/old', 'new', { expectedChecksum: sha('nope') }), 'CHECKSUM_MISMATCH');
      expect(err.message).toContain('cks/old');
      expect((await collect(await s.read('cks/old'))).toString()).toBe('old');
      expect(await keysOf(s, 'cks/')).toEqual(['cks/old']);
      const ok = await s.write('cks/good', Readable.from([Buffer.from('fine')]), { expectedChecksum: sha('fine') });
      expect(ok.checksum).toBe(sha('fine'));
      await expectCode(() => s.write('cks/bad', 'x', { expectedChecksum: 'md5:abc' }), 'BAD_ARGUMENT');
    });

    it('ifNoneMatch refuses to replace an existing object', async () => {
      const s = store();
      await s.write('inm/k', 'first', { ifNoneMatch: true });
      await expectCode(() => s.write('inm/k', 'second', { ifNoneMatch: true }), 'CONFLICT');
      expect((await collect(await s.read('inm/k'))).toString()).toBe('first');
      expect(await keysOf(s, 'inm/')).toEqual(['inm/k']);
    });

    it(`lists by prefix${unordered ? ' (gap: in any order)' : ' in byte order'}, with stats`, async () => {
      const s = store();
      const keys = ['pfx/b/c', 'pfx-x', 'pfx/a', 'pfx/b-d', 'pfxy', 'pfx/b/e/f', 'other/z'];
      for (const k of keys) await s.write(k, k);
      expect(inOrder(await keysOf(s, 'pfx/'))).toEqual(['pfx/a', 'pfx/b-d', 'pfx/b/c', 'pfx/b/e/f']);
      expect(inOrder(await keysOf(s, 'pfx'))).toEqual(['pfx-x', 'pfx/a', 'pfx/b-d', 'pfx/b/c', 'pfx/b/e/f', 'pfxy']);
      expect(inOrder(await keysOf(s, 'pfx/b'))).toEqual(['pfx/b-d', 'pfx/b/c', 'pfx/b/e/f']);
      expect(inOrder(await keysOf(s, 'pfx/b/'))).toEqual(['pfx/b/c', 'pfx/b/e/f']);
      expect(await keysOf(s, 'nothing-here/')).toEqual([]);
      for await (const st of s.list('pfx/b/')) {
        expect(st.size).toBe(st.key.length);
        expect(st.etag).toBe((await s.stat(st.key))?.etag);
      }
      const all = await keysOf(s);
      for (const k of keys) expect(all).toContain(k);
      expect(inOrder(all)).toEqual([...all].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))));
      for (const bad of ['../', '/abs', 'a/../..', 'a\0']) {
        await expectCode(() => keysOf(s, bad), 'UNSAFE_KEY');
      }
    });

    it(`lists ${manyKeys} keys in order, paginated inside`, async () => {
      const s = store();
      const keys = Array.from({ length: manyKeys }, (_, i) => `many/k${String(i).padStart(5, '0')}`);
      for (let i = 0; i < keys.length; i += 25) await Promise.all(keys.slice(i, i + 25).map((k) => s.write(k, 'x')));
      await s.write('many0', 'neighbour');
      const listed: string[] = [];
      for await (const st of s.list('many/', { pageSize: 1000 })) listed.push(st.key);
      expect(inOrder(listed)).toEqual(keys);
    }, 180_000);

    it('deletes', async () => {
      const s = store();
      await s.write('del/k', 'x');
      expect(await s.delete('del/k')).toBe(true);
      expect(await s.stat('del/k')).toBeUndefined();
      await expectCode(() => s.read('del/k'), 'NOT_FOUND');
      expect(await s.delete('del/k')).toBe(false);
      expect(await s.delete('del/never')).toBe(false);
      expect(await keysOf(s, 'del/')).toEqual([]);
    });

    it('copies, with the checksum of the bytes', async () => {
      const s = store();
      const body = randomBytes(300_000);
      await s.write('copy/src', body);
      await s.write('copy/dst-existing', 'old');
      const r = await s.copy('copy/src', 'copy/dst');
      expect(r).toMatchObject({ key: 'copy/dst', size: body.length, checksum: sha(body) });
      expect((await collect(await s.read('copy/dst'))).equals(body)).toBe(true);
      expect((await collect(await s.read('copy/src'))).equals(body)).toBe(true);
      await s.copy('copy/src', 'copy/dst-existing');
      expect((await collect(await s.read('copy/dst-existing'))).equals(body)).toBe(true);
      // A streamed object (no checksum known up front on some backends) copies with its checksum too.
      await s.write('copy/streamed', Readable.from([body.subarray(0, 5), body.subarray(5)]));
      expect((await s.copy('copy/streamed', 'copy/streamed2')).checksum).toBe(sha(body));
    });

    it('refuses unsafe keys everywhere with UNSAFE_KEY', async () => {
      const s = store();
      await s.write('safe/k', 'x');
      for (const k of UNSAFE_KEYS) {
        await expectCode(() => s.stat(k), 'UNSAFE_KEY');
        await expectCode(() => s.read(k), 'UNSAFE_KEY');
        await expectCode(() => s.write(k, 'x'), 'UNSAFE_KEY');
        await expectCode(() => s.delete(k), 'UNSAFE_KEY');
        await expectCode(() => s.copy('safe/k', k), 'UNSAFE_KEY');
        await expectCode(() => s.copy(k, 'safe/k2'), 'UNSAFE_KEY');
      }
      expect(await s.stat('safe/k2')).toBeUndefined();
    });

    it(`moves a large object (${largeBytes / MiB} MiB) streamed, with checksums and ranged reads`, async () => {
      const s = store();
      const p = new Pattern(largeBytes);
      const want = p.checksum();
      const r = await s.write('large/obj', p.stream());
      expect(r).toMatchObject({ size: largeBytes, checksum: want });
      expect((await s.stat('large/obj'))?.size).toBe(largeBytes);
      expect(await digestOf(await s.read('large/obj'))).toEqual({ size: largeBytes, checksum: want });
      // Ranges across 1, 4, 8 and 16 MiB boundaries, unaligned.
      for (const [a, b] of [[16 * MiB - 100, 16 * MiB + 100], [MiB - 1, 9 * MiB + 3], [largeBytes - 10, largeBytes + 10], [3, largeBytes - 5]] as const) {
        expect(await digestOf(await s.read('large/obj', { start: a, end: b })), `range ${a}-${b}`).toEqual({
          size: Math.min(b, largeBytes) - a,
          checksum: p.checksum(a, Math.min(b, largeBytes)),
        });
      }
      expect((await s.copy('large/obj', 'large/copy')).checksum).toBe(want);
      expect(await digestOf(await s.read('large/copy'))).toEqual({ size: largeBytes, checksum: want });
    }, 120_000);
  });
}
