import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Store, openStore, parseStoreUri, type S3Address, type S3StoreOptions } from '@lading/storage';
import { startS3Server, type S3TestServer } from '../../../test/servers/s3.js';
import { Pattern, collect, describeBlobStoreContract, digestOf, expectCode, keysOf, sha, slowStream } from './contract.js';
import { startFaultyProxy, type FaultyProxy } from './helpers/proxy.js';

const MiB = 1024 * 1024;

describeBlobStoreContract('s3 on s3rver', async () => {
  const server = await startS3Server();
  const store = await openStore(server.uri('contract'), { s3: { credentials: server.credentials } });
  return { store, cleanup: () => server.stop() };
}, { gaps: { tornOverwrites: true, unorderedListing: true } }); // s3rver's, not S3's: see NOTES.md

describe('s3 driver', () => {
  let server: S3TestServer;
  let proxy: FaultyProxy;
  const stores: S3Store[] = [];
  /** A store that talks to s3rver through the faulty proxy. */
  const open = (prefix: string, options: S3StoreOptions = {}): S3Store => {
    const s = new S3Store(parseStoreUri(server.uri(prefix, proxy.endpoint)) as S3Address, { credentials: server.credentials, ...options });
    stores.push(s);
    return s;
  };
  const seen = (pred: (r: FaultyProxy['requests'][number]) => boolean) => proxy.requests.filter(pred).length;

  beforeAll(async () => {
    server = await startS3Server();
    proxy = await startFaultyProxy(server.endpoint);
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await proxy.close();
    await server.stop();
  });

  it('retries 503 SlowDown and 500 InternalError', async () => {
    const s = open('retry');
    proxy.requests.length = 0;
    proxy.failNext(2, 503, 'SlowDown');
    await s.write('k', 'survives throttling');
    expect(seen((r) => r.method === 'PUT')).toBe(3);
    proxy.failNext(2, 500, 'InternalError');
    expect((await collect(await s.read('k'))).toString()).toBe('survives throttling');
    proxy.failNext(1, 503, 'ServiceUnavailable');
    expect(await keysOf(s)).toEqual(['k']);
  });

  it('a multipart upload that cannot reach the server fails with the request\'s error, not lib-storage\'s AbortError', async () => {
    // Nothing listens on the proxy's port once it is closed: take a fresh one and close it at once.
    const dead = await startFaultyProxy(server.endpoint);
    const endpoint = dead.endpoint;
    await dead.close();
    const s = new S3Store(parseStoreUri(server.uri('dead', endpoint)) as S3Address, { credentials: server.credentials, maxAttempts: 1, partSize: 5 * MiB });
    stores.push(s);
    const file = join(server.dir, 'dead-upload.bin');
    await writeFile(file, randomBytes(32 * MiB)); // still being read when the first part fails
    const err = await expectCode(() => s.write('multi', createReadStream(file), { sizeHint: 32 * MiB }), 'BACKEND');
    expect(err.message).toContain('"multi"');
    expect(err.message).toMatch(/ECONNREFUSED/);
  });

  it('gives up after maxAttempts with an error naming the object', async () => {
    const s = open('giveup', { maxAttempts: 2 });
    proxy.failNext(2, 503, 'SlowDown');
    const err = await expectCode(() => s.write('k', 'x'), 'BACKEND');
    expect(err.message).toContain('"k"');
    expect(err.message).toContain('503');
    expect(await s.stat('k')).toBeUndefined();
  });

  it('uploads large objects in parallel multipart parts', async () => {
    const s = open('multipart', { partSize: 5 * MiB });
    const p = new Pattern(12 * MiB + 123);
    proxy.requests.length = 0;
    const r = await s.write('big', p.stream());
    expect(r).toMatchObject({ size: p.size, checksum: p.checksum() });
    expect(seen((r) => r.method === 'POST' && r.url.includes('uploads'))).toBe(1);
    expect(seen((r) => r.method === 'PUT' && r.url.includes('partNumber='))).toBe(3);
    expect(seen((r) => r.method === 'POST' && r.url.includes('uploadId='))).toBe(1);
    expect(await digestOf(await s.read('big'))).toEqual({ size: p.size, checksum: p.checksum() });
    // A streamed multipart object has no sha256 metadata unless the caller knew it up front.
    expect((await s.stat('big'))?.checksum).toBeUndefined();
    await s.write('big2', p.stream(), { expectedChecksum: p.checksum() });
    expect((await s.stat('big2'))?.checksum).toBe(p.checksum());
    // Single-part streamed writes carry it: the hash is known before the only PUT is sent.
    await s.write('small', slowStream([Buffer.from('ab'), Buffer.from('cd')], 1));
    expect((await s.stat('small'))?.checksum).toBe(sha('abcd'));
  });

  it('aborts the multipart upload when the body fails after some parts', async () => {
    const s = open('mpabort', { partSize: 5 * MiB });
    proxy.requests.length = 0;
    const chunks = Array.from({ length: 11 }, () => randomBytes(MiB));
    await expect(s.write('k', slowStream(chunks, 1, new Error('source died')))).rejects.toThrow('source died');
    expect(seen((r) => r.method === 'PUT' && r.url.includes('partNumber='))).toBeGreaterThanOrEqual(1);
    expect(seen((r) => r.method === 'DELETE' && r.url.includes('uploadId='))).toBe(1);
    expect(await s.stat('k')).toBeUndefined();
  });

  it('reads big ranges with parallel ranged GETs pinned to the ETag', async () => {
    const s = open('parallel', { parallelReadThreshold: 4 * MiB, readPartSize: MiB, readConcurrency: 4 });
    const p = new Pattern(12 * MiB + 5);
    await s.write('obj', p.stream(), { expectedChecksum: p.checksum() });
    proxy.requests.length = 0;
    expect(await digestOf(await s.read('obj'))).toEqual({ size: p.size, checksum: p.checksum() });
    const gets = proxy.requests.filter((r) => r.method === 'GET');
    expect(gets.length).toBe(13);
    expect(gets.every((r) => r.headers['range'] !== undefined && r.headers['if-match'] !== undefined)).toBe(true);
    expect(await digestOf(await s.read('obj', { start: MiB + 7, end: 11 * MiB }))).toEqual({ size: 10 * MiB - 7, checksum: p.checksum(MiB + 7, 11 * MiB) });
    // A short known range is one GET without a HEAD.
    proxy.requests.length = 0;
    expect((await collect(await s.read('obj', { start: 10, end: 20 }))).equals(p.slice(10, 20))).toBe(true);
    expect(proxy.requests.map((r) => r.method)).toEqual(['GET']);
  });

  it('fails a read whose object changes mid-way (412 on If-Match) instead of mixing versions', async () => {
    const s = open('changed', { parallelReadThreshold: 2 * MiB, readPartSize: MiB, readConcurrency: 1 });
    await s.write('obj', randomBytes(6 * MiB));
    const stream = await s.read('obj');
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    proxy.failNext(100, 412, 'PreconditionFailed'); // what S3 answers once the ETag no longer matches
    const err = await (async () => { for (;;) { const r = await it.next(); if (r.done) return undefined; } })().catch((e: unknown) => e as Error & { code?: string });
    proxy.failNext(0);
    expect(err?.code).toBe('CONFLICT');
  });

  it('catches bytes corrupted on the way in: CHECKSUM_MISMATCH, nothing left behind', async () => {
    const s = open('corrupt', { partSize: 5 * MiB });
    proxy.corruptUploads = true;
    try {
      const err = await expectCode(() => s.write('small', randomBytes(1000)), 'CHECKSUM_MISMATCH');
      expect(err.message).toContain('small');
      await expectCode(() => s.write('multi', new Pattern(11 * MiB).stream()), 'CHECKSUM_MISMATCH');
    } finally {
      proxy.corruptUploads = false;
    }
    expect(await keysOf(s)).toEqual([]);
  });

  it('still catches corrupted uploads once it has learned the server\'s multipart ETag form (one MD5 pass)', async () => {
    const s = open('form', { partSize: 5 * MiB });
    const p = new Pattern(11 * MiB + 7);
    // The first multipart upload computes both MD5 forms and learns which one this server answers with.
    expect(await s.write('first', p.stream())).toMatchObject({ size: p.size, checksum: p.checksum() });
    expect(await s.write('second', p.stream())).toMatchObject({ size: p.size, checksum: p.checksum() });
    proxy.corruptUploads = true;
    try {
      await expectCode(() => s.write('multi', p.stream()), 'CHECKSUM_MISMATCH');
      await expectCode(() => s.write('single', Readable.from([randomBytes(3000)])), 'CHECKSUM_MISMATCH');
    } finally {
      proxy.corruptUploads = false;
    }
    expect(await keysOf(s)).toEqual(['first', 'second']);
    expect(await digestOf(await s.read('second'))).toEqual({ size: p.size, checksum: p.checksum() });
  });

  it('catches bytes corrupted at rest on a whole read', async () => {
    const s = open('rest');
    const body = randomBytes(5000);
    await s.write('obj', body);
    const file = join(server.dir, server.bucket, 'rest', 'obj._S3rver_object');
    const stored = await readFile(file);
    stored[100] = stored[100]! ^ 0xff;
    await writeFile(file, stored);
    await expect(collect(await s.read('obj'))).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    // A range cannot be checked against the whole-object hash, only for its length.
    expect((await collect(await s.read('obj', { start: 0, end: 50 }))).equals(body.subarray(0, 50))).toBe(true);
  });

  it('paginates listings', async () => {
    const s = open('pages');
    const keys = Array.from({ length: 30 }, (_, i) => `k${String(i).padStart(2, '0')}`);
    await Promise.all(keys.map((k) => s.write(k, k)));
    proxy.requests.length = 0;
    const listed: string[] = [];
    for await (const st of s.list('', { pageSize: 7 })) listed.push(st.key);
    expect(listed).toEqual(keys);
    expect(seen((r) => r.method === 'GET' && r.url.includes('list-type=2'))).toBe(5);
  });

  it('explains a missing bucket', async () => {
    const s = new S3Store(parseStoreUri(`s3://no-such-bucket/x?endpoint=${server.endpoint}`) as S3Address, { credentials: server.credentials });
    stores.push(s);
    const err = await expectCode(() => s.write('k', 'x'), 'BACKEND');
    expect((err as Error & { hint?: string }).hint).toContain('create bucket no-such-bucket');
  });
});
