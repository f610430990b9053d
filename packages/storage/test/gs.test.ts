import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { CRC32C, Storage } from '@google-cloud/storage';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isLadingError } from '@lading/core';
import { startGcsServer, type GcsServer } from '../../../test/servers/gcs.js';
import { Crc32c } from '../../../test/servers/gcs/crc32c.js';
import { GcsStore, createGsStore, openGsStore, type GcsStoreOptions } from '../src/drivers/gs.js';
import { openStore } from '../src/open.js';
import { describeBlobStoreContract } from './contract.js';

const BUCKET = 'lading-test';
const MIB = 1024 * 1024;
// Short SDK retry delays (seconds). 1 s is the floor: async-retry (uploads) has a fixed 1 s minTimeout and throws if maxRetryDelay is below it.
const FAST_RETRY = { maxRetries: 3, retryDelayMultiplier: 1.1, maxRetryDelay: 1, totalTimeout: 30 };

let server: GcsServer;
let seq = 0;

function store(extra: Partial<GcsStoreOptions> = {}): GcsStore {
  return new GcsStore({ bucket: BUCKET, prefix: `t${++seq}/`, endpoint: server.endpoint, retry: FAST_RETRY, ...extra });
}

async function text(r: Readable): Promise<string> {
  return (await bytes(r)).toString('utf8');
}

async function bytes(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Deterministic pseudo-random bytes, generated chunk by chunk (never the whole body in memory). */
function* pattern(total: number, chunk = 64 * 1024, seed = 1): Generator<Buffer> {
  let x = seed >>> 0 || 1;
  for (let off = 0; off < total; off += chunk) {
    const n = Math.min(chunk, total - off);
    const b = Buffer.allocUnsafe(n + 3);
    for (let i = 0; i < n; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      b.writeUInt32LE(x, i);
    }
    yield b.subarray(0, n);
  }
}

function sha256Hex(chunks: Iterable<Buffer>): string {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest('hex');
}

async function hashStream(r: Readable): Promise<{ hex: string; n: number }> {
  const h = createHash('sha256');
  let n = 0;
  for await (const c of r) {
    h.update(c as Buffer);
    n += (c as Buffer).length;
  }
  return { hex: h.digest('hex'), n };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return isLadingError(e) ? e.code : `${(e as Error).name}: ${(e as Error).message}`;
  }
  return 'resolved';
}

beforeAll(async () => {
  server = await startGcsServer({ buckets: [BUCKET], rewriteBytesPerCall: MIB });
});

afterAll(async () => {
  await server?.stop();
});

describe('fake GCS server', () => {
  it('computes crc32c like the SDK (independent implementation)', () => {
    const data = Buffer.from('123456789');
    expect(new Crc32c().update(data).value()).toBe(0xe3069283);
    const sdk = new CRC32C();
    sdk.update(data);
    expect(new Crc32c().update(data).base64()).toBe(sdk.toString());
    const big = Buffer.concat([...pattern(3 * MIB + 7)]);
    const sdk2 = new CRC32C();
    sdk2.update(big);
    expect(new Crc32c().update(big.subarray(0, 12345)).update(big.subarray(12345)).base64()).toBe(sdk2.toString());
  });

  it('serves the SDK directly: bucket create/get, save with md5 + crc32c validation, download', async () => {
    const storage = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    await storage.createBucket('other-bucket');
    const [exists] = await storage.bucket('other-bucket').exists();
    expect(exists).toBe(true);
    await expect(storage.createBucket('other-bucket')).rejects.toMatchObject({ code: 409 });
    const f = storage.bucket('other-bucket').file('dir/a b+c.txt');
    await f.save('hello', { resumable: false, validation: 'md5' });
    const [buf] = await f.download({ validation: 'md5' });
    expect(buf.toString()).toBe('hello');
    const [md] = await f.getMetadata();
    expect(md.crc32c).toBe(new Crc32c().update(Buffer.from('hello')).base64());
    expect(md.md5Hash).toBe(createHash('md5').update('hello').digest('base64'));
  });
  it('composes (crc32c, no md5), answers 416 past the end, and rejects a wrong X-Goog-Hash', async () => {
    const storage = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    const b = storage.bucket(BUCKET);
    await b.file('compose/a').save('hello ', { resumable: false });
    await b.file('compose/b').save('world', { resumable: false });
    await b.combine(['compose/a', 'compose/b'], 'compose/ab');
    const [md] = await b.file('compose/ab').getMetadata();
    expect(md).toMatchObject({ size: '11', componentCount: 2, crc32c: new Crc32c().update(Buffer.from('hello world')).base64() });
    expect(md.md5Hash).toBeUndefined();
    const [buf] = await b.file('compose/ab').download(); // crc32c-validated by the SDK
    expect(buf.toString()).toBe('hello world');

    const listing = (await (await fetch(`${server.endpoint}/storage/v1/b/${BUCKET}/o?prefix=compose/&delimiter=/&maxResults=2`)).json()) as { items?: { name: string }[]; nextPageToken?: string };
    expect(listing.items?.map((i) => i.name)).toEqual(['compose/a', 'compose/ab']);
    expect(listing.nextPageToken).toBeTruthy();
    const top = (await (await fetch(`${server.endpoint}/storage/v1/b/${BUCKET}/o?delimiter=/`)).json()) as { items?: unknown[]; prefixes?: string[] };
    expect(top.prefixes).toContain('compose/');
    expect(top.items).toBeUndefined();

    const url = `${server.endpoint}/storage/v1/b/${BUCKET}/o/${encodeURIComponent('compose/ab')}?alt=media`;
    const r416 = await fetch(url, { headers: { Range: 'bytes=11-' } });
    expect(r416.status).toBe(416);
    expect(r416.headers.get('content-range')).toBe('bytes */11');
    const r206 = await fetch(url, { headers: { Range: 'bytes=-5' } });
    expect([r206.status, await r206.text(), r206.headers.get('content-range')]).toEqual([206, 'world', 'bytes 6-10/11']);

    const up = `${server.endpoint}/upload/storage/v1/b/${BUCKET}/o?uploadType=media&name=hashed`;
    const bad = await fetch(up, { method: 'POST', body: 'abc', headers: { 'X-Goog-Hash': `crc32c=${new Crc32c().update(Buffer.from('abd')).base64()}` } });
    expect(bad.status).toBe(400);
    expect((await b.file('hashed').exists())[0]).toBe(false);
    // Resumable: a status query, then "finalize with what you have" (bytes */N).
    const init = await fetch(`${server.endpoint}/upload/storage/v1/b/${BUCKET}/o?uploadType=resumable&name=resumed`, { method: 'POST' });
    const session = init.headers.get('location')!;
    const q0 = await fetch(session, { method: 'PUT', headers: { 'Content-Range': 'bytes */*' } });
    expect([q0.status, q0.headers.get('range')]).toEqual([308, null]);
    const c1 = await fetch(session, { method: 'PUT', body: 'x'.repeat(100), headers: { 'Content-Range': 'bytes 0-99/*' } });
    expect(c1.status).toBe(400); // non-final chunks must be multiples of 256 KiB
    const c2 = await fetch(session, { method: 'PUT', body: Buffer.alloc(256 * 1024, 1), headers: { 'Content-Range': `bytes 0-${256 * 1024 - 1}/*` } });
    expect([c2.status, c2.headers.get('range')]).toEqual([308, `bytes=0-${256 * 1024 - 1}`]);
    const fin = await fetch(session, { method: 'PUT', headers: { 'Content-Range': `bytes */${256 * 1024}` } });
    expect(fin.status).toBe(200);
    expect(((await fin.json()) as { size: string }).size).toBe(String(256 * 1024));
  });
});

describe('gs driver', () => {
  it('has kind gs and a canonical uri; the factory returns a BlobStore', async () => {
    const s = await createGsStore({ bucket: BUCKET, prefix: 'a/b/', endpoint: server.endpoint });
    expect(s.kind).toBe('gs');
    expect(s.uri).toBe(`gs://${BUCKET}/a/b/?endpoint=${encodeURIComponent(server.endpoint)}`);
    expect(new GcsStore({ bucket: BUCKET, prefix: '' }).uri).toBe(`gs://${BUCKET}`);
    await s.close();
    expect(await code(s.stat('x'))).toBe('CLOSED');
    const o = await openGsStore({ bucket: BUCKET, prefix: 'p/', endpoint: server.endpoint, uri: 'gs://lading-test/p?endpoint=x' }, { chunkSize: MIB });
    expect(o.uri).toBe('gs://lading-test/p?endpoint=x');
  });

  it('opens from a gs:// URI through openStore', async () => {
    const s = await openStore(`gs://${BUCKET}/via-uri?endpoint=${encodeURIComponent(server.endpoint)}`);
    expect(s.kind).toBe('gs');
    await s.write('k', 'v');
    expect(await text(await s.read('k'))).toBe('v');
    const direct = new GcsStore({ bucket: BUCKET, prefix: 'via-uri/', endpoint: server.endpoint });
    expect((await direct.stat('k'))!.size).toBe(1);
  });

  it('round-trips a small object with its checksum', async () => {
    const s = store();
    const body = 'hello, lading';
    const sum = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    const w = await s.write('greeting.txt', body, { contentType: 'text/plain', expectedChecksum: sum });
    expect(w).toMatchObject({ key: 'greeting.txt', size: body.length, checksum: sum });
    const st = await s.stat('greeting.txt');
    expect(st).toMatchObject({ key: 'greeting.txt', size: body.length, etag: w.etag, checksum: sum, contentType: 'text/plain' });
    expect(st!.mtime.getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(await text(await s.read('greeting.txt'))).toBe(body);
    // A rewrite changes the version tag.
    const w2 = await s.write('greeting.txt', 'v2');
    expect(w2.etag).not.toBe(w.etag);
    expect((await s.stat('greeting.txt'))!.etag).toBe(w2.etag);
    // Empty objects too.
    await s.write('empty', '');
    expect((await s.stat('empty'))!.size).toBe(0);
    expect((await bytes(await s.read('empty'))).length).toBe(0);
  });

  it('reads byte ranges with an exclusive end', async () => {
    const s = store();
    await s.write('digits', '0123456789');
    expect(await text(await s.read('digits', { start: 2, end: 5 }))).toBe('234');
    expect(await text(await s.read('digits', { start: 7 }))).toBe('789');
    expect(await text(await s.read('digits', { end: 3 }))).toBe('012');
    expect(await text(await s.read('digits', { start: 8, end: 100 }))).toBe('89');
    expect(await text(await s.read('digits', { start: 4, end: 4 }))).toBe('');
    expect(await text(await s.read('digits', { start: 9, end: 10 }))).toBe('9');
    expect(await code(s.read('digits', { start: -1 }))).toBe('BAD_ARGUMENT');
    const ranged = server.log.filter((e) => e.method === 'GET' && e.query.alt === 'media' && e.path.endsWith('/digits'));
    expect(ranged.length).toBeGreaterThanOrEqual(5);
  });

  it('streams a 20 MiB body through a chunked resumable upload, then reads it back verified (serial and parallel)', async () => {
    const s = store({ chunkSize: 1 * MIB, parallelReadThreshold: 4 * MIB, readPartSize: MIB, readConcurrency: 3 });
    const total = 20 * MIB + 12345;
    const expected = sha256Hex(pattern(total));
    const before = server.log.length;
    const w = await s.write('big/blob.bin', Readable.from(pattern(total)), { sizeHint: total });
    expect(w).toMatchObject({ size: total, checksum: `sha256:${expected}` });
    const puts = server.log.slice(before).filter((e) => e.method === 'PUT' && e.query.upload_id !== undefined);
    expect(puts.length).toBe(21); // 20 full chunks of 1 MiB + the tail
    expect(puts.slice(0, -1).every((e) => e.status === 308)).toBe(true);
    expect(puts.at(-1)).toMatchObject({ status: 200, contentRange: `bytes ${20 * MIB}-${total - 1}/${total}` });
    expect((await s.stat('big/blob.bin'))!.checksum).toBe(`sha256:${expected}`);

    // Whole read: parallel ranged GETs (threshold 4 MiB), crc32c + sha256 verified at the end.
    const r1 = await hashStream(await s.read('big/blob.bin'));
    expect(r1).toEqual({ hex: expected, n: total });
    // A large range in parallel, a small one serially.
    const all = Buffer.concat([...pattern(total)]);
    const mid = await bytes(await s.read('big/blob.bin', { start: MIB + 3, end: 9 * MIB + 1 }));
    expect(mid.equals(all.subarray(MIB + 3, 9 * MIB + 1))).toBe(true);
    const small = await bytes(await s.read('big/blob.bin', { start: total - 100 }));
    expect(small.equals(all.subarray(total - 100))).toBe(true);
    // Serial whole read (SDK crc32c validation + our sha256).
    const serial = store({ prefix: s.prefix });
    expect(await hashStream(await serial.read('big/blob.bin'))).toEqual({ hex: expected, n: total });
  });

  it('streamed write with a wrong expectedChecksum leaves the previous object untouched', async () => {
    const s = store({ chunkSize: 256 * 1024 });
    const v1 = await s.write('k', 'version 1');
    const open = server.openUploads();
    const wrong = `sha256:${'0'.repeat(64)}`;
    expect(await code(s.write('k', Readable.from(pattern(MIB + 5)), { expectedChecksum: wrong }))).toBe('CHECKSUM_MISMATCH');
    expect(await code(s.write('fresh', Readable.from(pattern(3000)), { expectedChecksum: wrong }))).toBe('CHECKSUM_MISMATCH');
    expect(await code(s.write('fresh2', 'in memory', { expectedChecksum: wrong }))).toBe('CHECKSUM_MISMATCH');
    expect((await s.stat('k'))!.etag).toBe(v1.etag);
    expect(await text(await s.read('k'))).toBe('version 1');
    expect(await s.stat('fresh')).toBeUndefined();
    expect(await s.stat('fresh2')).toBeUndefined();
    // The resumable sessions were never finalized.
    expect(server.openUploads()).toBeGreaterThan(open);
    // A right expectedChecksum on the streamed path is stored up front (no metadata patch).
    const sum = sha256Hex(pattern(3000));
    const w = await s.write('ok', Readable.from(pattern(3000)), { expectedChecksum: `sha256:${sum}` });
    expect((await s.stat('ok'))!.checksum).toBe(w.checksum);
  });

  it('ifNoneMatch refuses to replace an existing object (simple and resumable paths)', async () => {
    const s = store();
    await s.write('once', 'first', { ifNoneMatch: true });
    expect(await code(s.write('once', 'second', { ifNoneMatch: true }))).toBe('CONFLICT');
    expect(await code(s.write('once', Readable.from(['second']), { ifNoneMatch: true }))).toBe('CONFLICT');
    expect(await text(await s.read('once'))).toBe('first');
  });

  it('aborting a streamed write leaves nothing', async () => {
    const s = store({ chunkSize: 256 * 1024 });
    const ac = new AbortController();
    async function* slow(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(600 * 1024, 1);
      ac.abort();
      await new Promise((r) => setTimeout(r, 20));
      yield Buffer.alloc(600 * 1024, 2);
    }
    const c = await code(s.write('aborted', Readable.from(slow()), { signal: ac.signal }));
    expect(c).toMatch(/AbortError/);
    expect(await s.stat('aborted')).toBeUndefined();
  });

  it('lists by prefix across pages, in key order, skipping foreign names', async () => {
    const s = store();
    const keys = Array.from({ length: 2500 }, (_, i) => `many/${String(i).padStart(5, '0')}`);
    for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => s.write(k, k)));
    await s.write('other/x', 'x');
    // A "directory marker" created by another tool is not a valid key and is not listed.
    const raw = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    await raw.bucket(BUCKET).file(`${s.prefix}many/`).save('', { resumable: false });
    const before = server.log.length;
    const seen: string[] = [];
    for await (const st of s.list('many/', { pageSize: 1000 })) {
      seen.push(st.key);
      if (seen.length === 1) expect(st).toMatchObject({ size: keys[0]!.length, checksum: `sha256:${createHash('sha256').update(keys[0]!).digest('hex')}` });
    }
    expect(seen).toEqual(keys);
    const lists = server.log.slice(before).filter((e) => e.method === 'GET' && e.path === `/storage/v1/b/${BUCKET}/o`);
    expect(lists.length).toBe(3);
    expect(lists.map((e) => e.query.maxResults)).toEqual(['1000', '1000', '1000']);
    expect(lists[0]!.query.pageToken).toBeUndefined();
    expect(lists[1]!.query.pageToken).toBeTruthy();
    const everything: string[] = [];
    for await (const st of s.list()) everything.push(st.key);
    expect(everything.length).toBe(2501);
    expect(everything.at(-1)).toBe('other/x');
    const partial: string[] = [];
    for await (const st of s.list('many/0249')) partial.push(st.key);
    expect(partial).toEqual(keys.slice(2490, 2500));
    // Another prefix does not see these keys.
    const empty: string[] = [];
    for await (const st of store().list()) empty.push(st.key);
    expect(empty).toEqual([]);
  });

  it('deletes (false when nothing was there) and copies server-side, keeping the checksum', async () => {
    const s = store();
    const w = await s.write('src', Readable.from(pattern(3 * MIB)));
    const before = server.log.length;
    const c = await s.copy('src', 'dst/copy');
    expect(c).toMatchObject({ key: 'dst/copy', size: 3 * MIB, checksum: w.checksum });
    expect(c.etag).not.toBe(w.etag);
    const rewrites = server.log.slice(before).filter((e) => e.path.includes('/rewriteTo/'));
    expect(rewrites.length).toBe(3); // 1 MiB per call on the fake server: the SDK follows rewriteToken
    expect(server.log.slice(before).some((e) => e.query.upload_id !== undefined || e.query.alt === 'media')).toBe(false);
    expect(await hashStream(await s.read('dst/copy'))).toEqual({ hex: w.checksum.slice(7), n: 3 * MIB });
    expect(await s.delete('src')).toBe(true);
    expect(await s.delete('src')).toBe(false);
    expect(await s.stat('src')).toBeUndefined();
    expect(await code(s.copy('src', 'again'))).toBe('NOT_FOUND');
  });

  it('records a checksum when copying an object lading did not write', async () => {
    const s = store();
    const raw = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    await raw.bucket(BUCKET).file(`${s.prefix}foreign`).save('foreign bytes', { resumable: false });
    expect((await s.stat('foreign'))!.checksum).toBeUndefined();
    const c = await s.copy('foreign', 'mine');
    expect(c.checksum).toBe(`sha256:${createHash('sha256').update('foreign bytes').digest('hex')}`);
    expect((await s.stat('mine'))!.checksum).toBe(c.checksum);
  });

  it('reports a missing object: stat undefined, read NOT_FOUND', async () => {
    const s = store();
    expect(await s.stat('nope')).toBeUndefined();
    expect(await code(s.read('nope'))).toBe('NOT_FOUND');
    expect(await code(s.read('nope', { start: 3, end: 4 }))).toBe('NOT_FOUND');
    const missingBucket = new GcsStore({ bucket: 'no-such-bucket', prefix: '', endpoint: server.endpoint, retry: FAST_RETRY });
    expect(await missingBucket.stat('x')).toBeUndefined();
    expect(await code(missingBucket.write('x', 'y'))).toBe('NOT_FOUND');
  });

  it('refuses unsafe keys before any request', async () => {
    const s = store();
    const before = server.log.length;
    for (const k of ['../x', 'a/../../b', '/abs', 'a\0b', '', 'a//b', './a']) {
      expect(await code(s.stat(k))).toBe('UNSAFE_KEY');
      expect(await code(s.read(k))).toBe('UNSAFE_KEY');
      expect(await code(s.write(k, 'x'))).toBe('UNSAFE_KEY');
      expect(await code(s.delete(k))).toBe('UNSAFE_KEY');
      expect(await code(s.copy('ok', k))).toBe('UNSAFE_KEY');
    }
    expect(await code((async () => { for await (const _ of s.list('../')) void _; })())).toBe('UNSAFE_KEY');
    expect(() => new GcsStore({ bucket: BUCKET, prefix: '../' })).toThrow(/refused/);
    expect(server.log.length).toBe(before);
  });

  it('detects bytes that do not match the recorded sha256 on read', async () => {
    const s = store();
    const raw = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    await raw.bucket(BUCKET).file(`${s.prefix}tampered`).save('not what was written', { resumable: false, metadata: { metadata: { sha256: createHash('sha256').update('original').digest('hex') } } });
    expect(await code(bytes(await s.read('tampered')))).toBe('CHECKSUM_MISMATCH');
    // A range cannot be checked against a whole-object hash: it is served.
    expect(await text(await s.read('tampered', { start: 0, end: 3 }))).toBe('not');
  });

  it('restarts a read whose stat-pinned generation vanished before the first byte; early destroy stops fetching', async () => {
    const s = store({ parallelReadThreshold: MIB, readPartSize: 256 * 1024, readConcurrency: 2 });
    await s.write('raced', Readable.from(pattern(3 * MIB)));
    // The media GET answers 404 as if a writer had replaced the generation between our stat and our read.
    server.failNext(1, 404, (r) => r.query.alt === 'media' && r.path.endsWith('/raced'));
    expect((await hashStream(await s.read('raced'))).hex).toBe(sha256Hex(pattern(3 * MIB)));
    server.failNext(1, 404, (r) => r.query.alt === 'media' && r.path.endsWith('/raced'));
    expect((await bytes(await s.read('raced', { start: 10, end: 20 }))).length).toBe(10);
    // A consumer that stops after the first chunk: the remaining parts are not all fetched.
    const before = server.log.length;
    const r = await s.read('raced');
    for await (const _ of r) break;
    await new Promise((res) => setTimeout(res, 100));
    const gets = server.log.slice(before).filter((e) => e.query.alt === 'media').length;
    expect(gets).toBeLessThan(12); // 3 MiB / 256 KiB = 12 parts
  });

  it('detects bit rot at rest on whole reads (SDK crc32c, our crc32c on parallel reads, sha256)', async () => {
    const serial = store();
    const parallel = store({ prefix: serial.prefix, parallelReadThreshold: MIB, readPartSize: 256 * 1024 });
    const raw = new Storage({ apiEndpoint: server.endpoint, useAuthWithCustomEndpoint: false, projectId: 'test' });
    // Not written by lading: no sha256, only the object's crc32c can catch it.
    await raw.bucket(BUCKET).file(`${serial.prefix}foreign`).save(Buffer.concat([...pattern(2 * MIB)]), { resumable: false });
    await serial.write('mine', Readable.from(pattern(2 * MIB)));
    await server.corrupt(BUCKET, `${serial.prefix}foreign`, MIB + 5);
    await server.corrupt(BUCKET, `${serial.prefix}mine`, 7);
    for (const s of [serial, parallel]) {
      expect(await code(bytes(await s.read('foreign')))).toBe('CHECKSUM_MISMATCH');
      expect(await code(bytes(await s.read('mine')))).toBe('CHECKSUM_MISMATCH');
    }
  });

  it('retries 503s (metadata, download, simple upload, resumable chunk, list) and gives up with BACKEND', async () => {
    const s = store({ chunkSize: 256 * 1024 });
    await s.write('r', 'retry me');
    server.failNext(1, 503);
    expect((await s.stat('r'))!.size).toBe(8);
    server.failNext(1, 503, (r) => r.query.alt === 'media');
    expect(await text(await s.read('r'))).toBe('retry me');
    server.failNext(1, 503, (r) => r.query.uploadType === 'multipart');
    await s.write('r2', 'simple upload after 503s');
    expect(await text(await s.read('r2'))).toBe('simple upload after 503s');
    // The second data chunk of a resumable upload fails twice; each time the SDK queries the offset and resends.
    // (A 503 on that offset query itself is not survived by SDK 7.x: see NOTES.md.)
    server.failNext(2, 503, (r) => r.method === 'PUT' && r.contentRange?.startsWith(`bytes ${256 * 1024}-`) === true);
    const before = server.log.length;
    const w = await s.write('r3', Readable.from(pattern(MIB + 100)));
    expect(w.checksum).toBe(`sha256:${sha256Hex(pattern(MIB + 100))}`);
    const puts = server.log.slice(before).filter((e) => e.method === 'PUT');
    expect(puts.filter((e) => e.status === 503).length).toBe(2);
    expect(puts.filter((e) => e.contentRange === 'bytes */*').length).toBe(2);
    expect((await hashStream(await s.read('r3'))).hex).toBe(w.checksum.slice(7));
    server.failNext(1, 429, (r) => r.path.endsWith('/o') && r.method === 'GET');
    const keys: string[] = [];
    for await (const st of s.list()) keys.push(st.key);
    expect(keys).toEqual(['r', 'r2', 'r3']);
    // Persistent failure: a clear BACKEND error after the retries.
    const once = store({ prefix: s.prefix, retry: { ...FAST_RETRY, maxRetries: 1 } });
    server.failNext(2, 503);
    expect(await code(once.stat('r'))).toBe('BACKEND');
    expect((await once.stat('r'))!.size).toBe(8);
  });
});

// The storage contract every driver passes, against the same fake server: small chunks and a low parallel-read
// threshold so the 40 MiB object goes through several resumable chunks and parallel ranged GETs.
describeBlobStoreContract('gs on the local GCS JSON API server', async () => ({
  store: store({ chunkSize: 4 * MIB, parallelReadThreshold: 8 * MIB, readPartSize: 4 * MIB }),
  cleanup: async () => undefined,
}));
