/**
 * `s3://bucket/prefix` driver on @aws-sdk/client-s3 + @aws-sdk/lib-storage, for AWS and on-prem S3
 * (MinIO, Ceph RGW, appliances with an S3 front).
 *
 * End-to-end integrity does not rely on the SDK's flexible checksums (off: many on-prem servers mishandle
 * them, and s3rver stores aws-chunked framing as data). Instead lading computes sha256 while streaming and
 * stores it as `x-amz-meta-sha256` when it is known before the object is committed, checks the returned
 * ETag against its own MD5s (plain or multipart form), and verifies length and sha256 on whole reads.
 */
import { createHash } from 'node:crypto';
import { pipeline, type Readable } from 'node:stream';
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
  type GetObjectCommandOutput,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { LadingError } from '@lading/core';
import { checkKey, checkPrefix, isSafeKey } from '../keys.js';
import type { BlobStore, ListOptions, ObjectStat, ReadOptions, WriteOptions, WriteResult } from '../port.js';
import { DigestStream, checkRange, clampRange, emptyStream, mismatch, parseChecksum, rangedStream, sliceStream, toReadable, verifyRead } from '../streams.js';
import type { S3Address } from '../uri.js';

const MiB = 1024 * 1024;
const MAX_PARTS = 10_000;
const MIN_PART = 5 * MiB; // S3 minimum for all parts but the last
const MAX_SINGLE_COPY = 5 * 1024 * MiB;

export interface S3StoreOptions {
  /** Default: the standard AWS chain (env, shared config/credentials files, SSO, IMDS / container roles). */
  credentials?: S3ClientConfig['credentials'];
  /** Attempts per request, retries on 5xx, throttling and network errors with backoff. Default 5. */
  maxAttempts?: number;
  /** Multipart part size; raised for huge `sizeHint`s to stay under 10,000 parts. Default 16 MiB. */
  partSize?: number;
  /** Parts uploaded in parallel (memory: about queueSize × partSize). Default 4. */
  queueSize?: number;
  /** Reads longer than this use parallel ranged GETs. Default 64 MiB. */
  parallelReadThreshold?: number;
  /** Size of each parallel ranged GET. Default 8 MiB. */
  readPartSize?: number;
  /** Ranged GETs in flight for one read. Default 4. */
  readConcurrency?: number;
  /** Compare the server's ETag with the MD5 of what was sent (skipped for SSE-KMS / SSE-C, whose ETags are not MD5s). Default true. */
  verifyEtag?: boolean;
  /** Extra S3Client settings, applied last. */
  clientConfig?: S3ClientConfig;
}

interface SdkError {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

const unquote = (etag: string | undefined): string => (etag ?? '').replace(/"/g, '');
const sha256Of = (meta: Record<string, string> | undefined): string | undefined => {
  const v = meta?.['sha256'];
  return v !== undefined && /^[0-9a-f]{64}$/.test(v) ? `sha256:${v}` : undefined;
};

export class S3Store implements BlobStore {
  readonly kind = 's3';
  readonly uri: string;
  readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly o: Required<Omit<S3StoreOptions, 'credentials' | 'clientConfig'>>;
  /** The ETag form of this server's multipart objects, once one was seen (then only that MD5 is computed). */
  private multipartEtag: 'parts' | 'whole' | undefined;

  constructor(address: S3Address, options: S3StoreOptions = {}) {
    this.uri = address.uri;
    this.bucket = address.bucket;
    this.prefix = address.prefix;
    this.o = {
      maxAttempts: options.maxAttempts ?? 5,
      partSize: Math.max(options.partSize ?? 16 * MiB, MIN_PART),
      queueSize: options.queueSize ?? 4,
      parallelReadThreshold: options.parallelReadThreshold ?? 64 * MiB,
      readPartSize: options.readPartSize ?? 8 * MiB,
      readConcurrency: options.readConcurrency ?? 4,
      verifyEtag: options.verifyEtag ?? true,
    };
    const env = process.env;
    // The SDK warns on every process start under Node < 22 that its releases after January 2027 will need
    // Node 22. lading pins its SDK versions and supports Node 20 (README), so the warning only says what a
    // user cannot act on; it is printed into CLI output and job logs. Set the variable to "false" to see it.
    env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
    this.client = new S3Client({
      // Without a region the SDK's own chain (AWS_REGION, ~/.aws/config) decides; custom endpoints rarely care.
      region: address.region ?? env['AWS_REGION'] ?? env['AWS_DEFAULT_REGION'] ?? (address.endpoint ? 'us-east-1' : undefined),
      endpoint: address.endpoint,
      forcePathStyle: address.forcePathStyle ?? address.endpoint !== undefined,
      followRegionRedirects: true,
      maxAttempts: this.o.maxAttempts,
      retryMode: 'standard',
      // Our own sha256 / MD5 checks replace the SDK's CRC trailers, which many S3-compatible servers store as data.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      ...options.clientConfig,
    });
  }

  private where(op: string): string {
    return `${this.uri} ${op}`;
  }

  private full(key: string): string {
    return this.prefix + checkKey(key);
  }

  private fail(op: string, key: string, e: unknown): Error {
    if (e instanceof LadingError) return e;
    const err = (e ?? {}) as SdkError;
    if (err.name === 'AbortError') return e as Error;
    const name = err.name ?? err.Code ?? 'Error';
    const status = err.$metadata?.httpStatusCode;
    const msg = `${this.where(op)} ${JSON.stringify(key)}: ${name}${status ? ` (HTTP ${status})` : ''}: ${err.message ?? String(e)}`;
    if (name === 'NoSuchBucket') return new LadingError('BACKEND', msg, { hint: `create bucket ${this.bucket} or fix the store URI`, cause: e });
    if (name === 'NoSuchKey' || name === 'NotFound' || status === 404) {
      return new LadingError('NOT_FOUND', `${this.where(op)}: no object ${JSON.stringify(key)}`, { hint: `list what exists with \`lading store ls ${this.uri}\``, cause: e });
    }
    if (name === 'PreconditionFailed' || status === 412) return new LadingError('CONFLICT', msg, { hint: 'the object exists or changed meanwhile; retry', cause: e });
    if (name === 'CredentialsProviderError' || name === 'AccessDenied' || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || status === 403) {
      return new LadingError('BACKEND', msg, { hint: 'check credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role', cause: e });
    }
    if (/region/i.test(String(err.message))) return new LadingError('BACKEND', msg, { hint: 'add ?region=<region> to the URI or set AWS_REGION', cause: e });
    return new LadingError('BACKEND', msg, { cause: e });
  }

  async stat(key: string): Promise<ObjectStat | undefined> {
    const Key = this.full(key);
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      return { key, size: r.ContentLength ?? 0, etag: unquote(r.ETag), mtime: r.LastModified ?? new Date(0), checksum: sha256Of(r.Metadata), contentType: r.ContentType };
    } catch (e) {
      const err = e as SdkError;
      if (err.name === 'NotFound' || err.name === 'NoSuchKey' || err.$metadata?.httpStatusCode === 404) return undefined;
      throw this.fail('stat', key, e);
    }
  }

  private async mustStat(op: string, key: string): Promise<ObjectStat> {
    const st = await this.stat(key);
    if (st === undefined) throw this.fail(op, key, { name: 'NotFound', message: 'no such object' });
    return st;
  }

  private async get(key: string, start: number, end: number | undefined, ifMatch: string | undefined, signal?: AbortSignal): Promise<GetObjectCommandOutput> {
    const Range = start === 0 && end === undefined ? undefined : `bytes=${start}-${end === undefined ? '' : end - 1}`;
    const cmd = new GetObjectCommand({ Bucket: this.bucket, Key: this.full(key), Range, IfMatch: ifMatch === undefined ? undefined : `"${ifMatch}"` });
    return this.client.send(cmd, signal ? { abortSignal: signal } : {});
  }

  async read(key: string, options: ReadOptions = {}): Promise<Readable> {
    const range = checkRange(options);
    this.full(key);
    // Errors surfacing later in the stream (a part's GET failing, a reset socket) get the same translation.
    const mapError = (e: unknown) => this.fail('read', key, e);
    try {
      // A short range we know the length of: one GET, no HEAD. Past-the-end ranges come back as 416: empty.
      if (range.end !== undefined && range.end - range.start <= this.o.parallelReadThreshold) {
        if (range.end === range.start) return (await this.mustStat('read', key), emptyStream());
        let r: GetObjectCommandOutput;
        try {
          r = await this.get(key, range.start, range.end, undefined, options.signal);
        } catch (e) {
          if ((e as SdkError).name === 'InvalidRange' || (e as SdkError).$metadata?.httpStatusCode === 416) return emptyStream();
          throw e;
        }
        // Content-Range says what was sent; no Content-Range means the server ignored Range and sent it all.
        const cr = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(r.ContentRange ?? '');
        const sentFrom = cr ? Number(cr[1]) : 0;
        const sent = r.ContentLength ?? 0;
        const total = cr ? Number(cr[3]) : sent;
        const want = Math.max(0, Math.min(range.end, total) - range.start);
        let body = r.Body as Readable;
        if (sentFrom > range.start) throw new LadingError('BACKEND', `${this.where('read')} ${JSON.stringify(key)}: server answered range ${r.ContentRange} for bytes=${range.start}-${range.end - 1}`);
        if (sentFrom !== range.start || sent !== want) body = sliceStream(body, range.start - sentFrom, want);
        const whole = range.start === 0 && want === total;
        return verifyRead(body, { where: this.where('read'), key, bytes: want, sha256: whole ? sha256Of(r.Metadata)?.slice(7) : undefined, mapError });
      }
      // Otherwise HEAD first: size decides between one GET and parallel ranged GETs, and every GET is pinned
      // to the ETag so an object replaced mid-read fails (412) instead of mixing two versions.
      const head = await this.mustStat('read', key);
      const { start, end } = clampRange(range, head.size);
      if (start === end) return emptyStream();
      const whole = start === 0 && end === head.size;
      let body: Readable;
      if (end - start > this.o.parallelReadThreshold) {
        body = rangedStream(start, end, { chunk: this.o.readPartSize, concurrency: this.o.readConcurrency }, async (s, e, signal) => {
          const r = await this.get(key, s, e, head.etag, signal).catch((err: unknown) => { throw mapError(err); });
          const bytes = await (r.Body as Readable & { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray();
          const from = Number(/^bytes (\d+)-/.exec(r.ContentRange ?? '')?.[1] ?? 0);
          if (from > s || bytes.length < e - from) throw mismatch(this.where('read'), key, `range ${s}-${e - 1} came back as ${r.ContentRange ?? 'the whole object'}`);
          return bytes.subarray(s - from, e - from); // tolerate servers that send more than asked
        });
      } else {
        body = (await this.get(key, start, whole ? undefined : end, head.etag, options.signal)).Body as Readable;
      }
      return verifyRead(body, { where: this.where('read'), key, bytes: end - start, sha256: whole ? head.checksum?.slice(7) : undefined, mapError });
    } catch (e) {
      throw this.fail('read', key, e);
    }
  }

  private partSizeFor(sizeHint: number | undefined): number {
    const needed = sizeHint === undefined ? 0 : Math.ceil(sizeHint / (MAX_PARTS - 1) / MiB) * MiB;
    return Math.max(this.o.partSize, needed);
  }

  async write(key: string, body: Readable | Uint8Array | string, options: WriteOptions = {}): Promise<WriteResult> {
    const Key = this.full(key);
    const expected = options.expectedChecksum === undefined ? undefined : parseChecksum(options.expectedChecksum);
    const where = this.where('write');
    // If-None-Match: * is honoured by AWS and recent MinIO; the HEAD catches servers that ignore it (racy there).
    if (options.ifNoneMatch && (await this.stat(key)) !== undefined) {
      throw new LadingError('CONFLICT', `${where}: object ${JSON.stringify(key)} already exists`, { hint: 'write without ifNoneMatch to replace it' });
    }
    // sha256 metadata must be in the first request. Known up front: in-memory bodies, expectedChecksum. For a
    // stream it is filled in when the stream ends, which is still before a single-part PUT is sent (lib-storage
    // buffers the only part); a multipart object started earlier goes without it.
    // An in-memory body is hashed once, here, and checked against `expected` before any request; the upload's
    // digest then computes only the MD5s.
    let known: string | undefined;
    if (typeof body === 'string' || body instanceof Uint8Array) {
      known = createHash('sha256').update(body).digest('hex');
      if (expected !== undefined && expected !== known) throw mismatch(where, key, `the bytes hash to sha256:${known}, expected sha256:${expected}`);
    }
    const Metadata: Record<string, string> = {};
    const upFront = known ?? expected;
    if (upFront !== undefined) Metadata['sha256'] = upFront;
    const partSize = this.partSizeFor(options.sizeHint);
    const digest = new DigestStream({
      where, key, expectedSha256: expected, knownSha256: known, partSize: this.o.verifyEtag ? partSize : undefined, etagForm: this.multipartEtag ?? 'both',
      onDigest: (r) => { Metadata['sha256'] ??= r.sha256; },
    });
    const src = toReadable(body);
    const upload = new Upload({
      client: this.client,
      queueSize: this.o.queueSize,
      partSize,
      leavePartsOnError: false,
      params: { Bucket: this.bucket, Key, Body: pipeline(src, digest, () => undefined), ContentType: options.contentType, Metadata, IfNoneMatch: options.ifNoneMatch ? '*' : undefined },
    });
    const onAbort = () => void upload.abort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      options.signal?.throwIfAborted();
      const r = await upload.done();
      const d = digest.result;
      if (d === undefined) throw new LadingError('BACKEND', `${where} ${JSON.stringify(key)}: upload finished before the body ended`);
      const etag = unquote(r.ETag).toLowerCase();
      const sse = (r as { ServerSideEncryption?: string }).ServerSideEncryption ?? '';
      const md5Etag = /^[0-9a-f]{32}(-\d+)?$/.test(etag) && !sse.startsWith('aws:kms') && !(r as { SSECustomerAlgorithm?: string }).SSECustomerAlgorithm;
      if (this.o.verifyEtag && md5Etag && etag !== d.md5 && etag !== d.multipartMd5) {
        // The server stored something else than what we sent (e.g. chunk framing): do not leave it behind.
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key })).catch(() => undefined);
        throw mismatch(where, key, `server ETag ${etag} is not the MD5 of the ${d.size} bytes sent (${[d.md5, d.multipartMd5].filter(Boolean).join(' or ')})`);
      }
      if (this.multipartEtag === undefined && this.o.verifyEtag && md5Etag && d.size > partSize) {
        this.multipartEtag = etag === d.multipartMd5 ? 'parts' : 'whole';
      }
      return { key, size: d.size, etag: unquote(r.ETag), checksum: `sha256:${d.sha256}` };
    } catch (e) {
      // The first cause wins: lib-storage reports a failed AbortMultipartUpload (405 on some servers) over the
      // body's own error or our checksum mismatch.
      // lib-storage stops reading the body by destroying it with an AbortError when a part fails: that is a
      // consequence, not the cause (unless the caller aborted), so it never hides the request's own error.
      const isAbort = (x: unknown) => x instanceof Error && (x.name === 'AbortError' || (x as { code?: unknown }).code === 'ABORT_ERR');
      const aborted = options.signal?.aborted === true;
      const cause: unknown = [digest.errored, src.errored, e].find((x) => x != null && (aborted || !isAbort(x))) ?? e;
      src.destroy();
      throw this.fail('write', key, cause);
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  async *list(prefix = '', options: ListOptions = {}): AsyncIterable<ObjectStat> {
    checkPrefix(prefix);
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token, MaxKeys: options.pageSize }),
          options.signal ? { abortSignal: options.signal } : {},
        );
      } catch (e) {
        throw this.fail('list', prefix, e);
      }
      for (const o of page.Contents ?? []) {
        const key = (o.Key ?? '').slice(this.prefix.length);
        if (!isSafeKey(key)) continue; // `dir/` markers and names lading cannot address
        yield { key, size: o.Size ?? 0, etag: unquote(o.ETag), mtime: o.LastModified ?? new Date(0), checksum: undefined };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(key: string): Promise<boolean> {
    const Key = this.full(key);
    // DeleteObject answers 204 whether or not the key existed; HEAD tells the caller which.
    if ((await this.stat(key)) === undefined) return false;
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
      return true;
    } catch (e) {
      throw this.fail('delete', key, e);
    }
  }

  async copy(fromKey: string, toKey: string): Promise<WriteResult> {
    const from = this.full(fromKey);
    const Key = this.full(toKey);
    const head = await this.mustStat('copy', fromKey);
    // Server-side when the checksum travels with it (metadata is copied); otherwise stream through to compute it.
    if (head.checksum === undefined || head.size > MAX_SINGLE_COPY) {
      return this.write(toKey, await this.read(fromKey), { sizeHint: head.size, contentType: head.contentType });
    }
    try {
      const r = await this.client.send(new CopyObjectCommand({
        Bucket: this.bucket,
        Key,
        CopySource: `${this.bucket}/${from.split('/').map(encodeURIComponent).join('/')}`,
        CopySourceIfMatch: `"${head.etag}"`,
        MetadataDirective: 'COPY',
      }));
      return { key: toKey, size: head.size, etag: unquote(r.CopyObjectResult?.ETag), checksum: head.checksum };
    } catch (e) {
      throw this.fail('copy', fromKey, e);
    }
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
