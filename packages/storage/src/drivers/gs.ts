/**
 * `gs://bucket/prefix` driver on @google-cloud/storage 7.x.
 *
 * - writes: small in-memory bodies go in one multipart request with their sha256 known up front; streams
 *   go through a chunked resumable upload (bounded memory: one chunk buffered per upload, each chunk
 *   retried on its own). The sha256 is computed while streaming; a mismatch with `expectedChecksum`
 *   fails the source stream before the SDK sends the last chunk, so the session is never finalized and
 *   nothing becomes visible (GCS objects appear atomically at finalization). The crc32c of the upload is
 *   checked by the SDK against the server's.
 * - reads: pinned to the generation seen by the stat that precedes them, so an overwrite mid-read is an
 *   error, never a torn object. Whole-object reads are verified (crc32c always, sha256 when lading wrote
 *   it); large ranges are fetched as parallel ranged GETs, reassembled in order, memory bounded.
 * - the version tag (`etag`) is the object generation: it changes when the bytes change, not when only
 *   metadata does.
 */
import { createHash } from 'node:crypto';
import { PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Storage, IdempotencyStrategy, CRC32C, type Bucket, type File, type FileMetadata, type StorageOptions } from '@google-cloud/storage';
import { LadingError } from '@lading/core';
import type { BlobStore, ListOptions, ObjectStat, ReadOptions, WriteOptions, WriteResult } from '../port.js';
import { checkKey, checkPrefix, isSafeKey } from '../keys.js';
import { checkRange, clampRange, DigestStream, emptyStream, mismatch, parseChecksum, rangedStream } from '../streams.js';
import type { GsAddress } from '../uri.js';

export interface GcsStoreOptions {
  bucket: string;
  /** '' or a key prefix ending in `/`. */
  prefix: string;
  /** Custom JSON API endpoint (a local test server, a private endpoint), e.g. `http://127.0.0.1:4443`. */
  endpoint?: string | undefined;
  projectId?: string | undefined;
  /** Canonical store URI; derived from bucket / prefix / endpoint when omitted. */
  uri?: string | undefined;
  /** Authenticate against a custom endpoint too (default: only when no endpoint is given). */
  authWithEndpoint?: boolean | undefined;
  /** Resumable upload chunk size; a multiple of 256 KiB. Default 8 MiB. Memory per upload ≈ this. */
  chunkSize?: number | undefined;
  /** In-memory bodies up to this size go in one request. Default 8 MiB. */
  simpleUploadMax?: number | undefined;
  /** Reads of at least this many bytes use parallel ranged GETs. Default 64 MiB. */
  parallelReadThreshold?: number | undefined;
  /** Part size for parallel reads. Default 8 MiB. */
  readPartSize?: number | undefined;
  /** Parallel ranged GETs in flight per read. Default 4 (memory ≈ (n + 1) × part size). */
  readConcurrency?: number | undefined;
  /** SDK retry tuning (seconds for delays, as the SDK takes them). */
  retry?: { maxRetries?: number; retryDelayMultiplier?: number; maxRetryDelay?: number; totalTimeout?: number; autoRetry?: boolean } | undefined;
  /** A ready Storage client (tests, custom auth); the options above that configure the client are then ignored. */
  storage?: Storage | undefined;
}

const MIB = 1024 * 1024;
const SHA256_RE = /^[0-9a-f]{64}$/;
const CHECKSUM_HINT = 'the bytes changed in transit or at rest; retry the transfer, and if it keeps failing, re-create the object from its source';

interface ApiErrorLike {
  code?: unknown;
  message?: unknown;
}

function statusOf(e: unknown): number | undefined {
  if (e === null || typeof e !== 'object') return undefined;
  const code = (e as ApiErrorLike).code;
  if (typeof code === 'number') return code;
  if (typeof code === 'string' && /^\d{3}$/.test(code)) return Number(code);
  const resp = (e as { response?: { status?: unknown } }).response;
  return typeof resp?.status === 'number' ? resp.status : undefined;
}

function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  if (r instanceof Error) return r;
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  return e;
}

export class GcsStore implements BlobStore {
  readonly uri: string;
  readonly kind = 'gs';
  readonly bucketName: string;
  readonly prefix: string;
  private readonly storage: Storage;
  private readonly bucket: Bucket;
  private readonly chunkSize: number;
  private readonly simpleUploadMax: number;
  private readonly parallelReadThreshold: number;
  private readonly readPartSize: number;
  private readonly readConcurrency: number;
  private closed = false;

  constructor(options: GcsStoreOptions) {
    if (options.prefix !== '') checkPrefix(options.prefix);
    if (options.prefix !== '' && !options.prefix.endsWith('/')) {
      throw new LadingError('BAD_ARGUMENT', `gs prefix ${JSON.stringify(options.prefix)} must be '' or end with '/'`);
    }
    this.bucketName = options.bucket;
    this.prefix = options.prefix;
    this.uri = options.uri ?? defaultUri(options);
    this.chunkSize = options.chunkSize ?? 8 * MIB;
    if (this.chunkSize <= 0 || this.chunkSize % (256 * 1024) !== 0) {
      throw new LadingError('BAD_ARGUMENT', `gs chunkSize ${this.chunkSize} must be a positive multiple of 256 KiB`);
    }
    this.simpleUploadMax = options.simpleUploadMax ?? 8 * MIB;
    this.parallelReadThreshold = options.parallelReadThreshold ?? 64 * MIB;
    this.readPartSize = options.readPartSize ?? 8 * MIB;
    this.readConcurrency = Math.max(1, options.readConcurrency ?? 4);
    this.storage = options.storage ?? new Storage(clientOptions(options));
    this.bucket = this.storage.bucket(options.bucket);
  }

  // ---- stat / read ---------------------------------------------------------------------------------

  async stat(key: string): Promise<ObjectStat | undefined> {
    this.open();
    checkKey(key);
    const md = await this.metadata(key);
    return md === undefined ? undefined : this.toStat(key, md);
  }

  async read(key: string, options: ReadOptions = {}): Promise<Readable> {
    this.open();
    checkKey(key);
    const { signal } = options;
    if (signal?.aborted) throw abortError(signal);
    const range = checkRange(options);
    // stat, then read that generation. If a writer replaces the object in between, the pinned generation is
    // gone (404 before any byte): start over with the new one, so the reader gets one whole version.
    for (let attempt = 1; ; attempt++) {
      const md = await this.metadata(key);
      if (md === undefined) throw this.notFound(key);
      const size = Number(md.size ?? 0);
      const { start, end } = clampRange(range, size);
      if (end <= start) return emptyStream();
      const file = this.bucket.file(this.name(key), { generation: String(md.generation) });
      const whole = start === 0 && end === size;
      const parallel = end - start >= this.parallelReadThreshold;
      let body: Readable;
      if (parallel) {
        body = rangedStream(start, end, { chunk: this.readPartSize, concurrency: this.readConcurrency }, (s, e, partSignal) => this.fetchPart(key, file, s, e, partSignal));
      } else {
        body = whole
          ? file.createReadStream({ validation: 'crc32c' })
          : file.createReadStream({ start, end: end - 1, validation: false });
      }
      // Wait for the first bytes (or the end, or an error) before handing the stream out.
      const it = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      let first: IteratorResult<Buffer>;
      try {
        first = await it.next();
      } catch (e) {
        body.destroy();
        if (statusOf(e) === 404 && attempt < 5 && !signal?.aborted) continue;
        if (signal?.aborted) throw abortError(signal);
        throw this.mapError(e, 'read', key);
      }
      const rest: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => it };
      const joined = Readable.from(
        (async function* () {
          if (first.done) return;
          yield first.value;
          yield* rest;
        })(),
        { objectMode: false, highWaterMark: 1 },
      );
      const verify = new ReadVerifier({
        where: this.uri,
        key,
        expectedLength: end - start,
        sha256: whole ? sha256Of(md) : undefined,
        // The SDK checks crc32c itself on whole single-stream reads; parallel whole reads are checked here.
        crc32c: whole && parallel && typeof md.crc32c === 'string' ? md.crc32c : undefined,
      });
      // `out` stays outside the pipeline so that the consumer sees our mapped error, not the SDK's raw one.
      const out = new PassThrough({ highWaterMark: MIB });
      const onAbort = (): void => {
        joined.destroy(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      pipeline(joined, verify)
        .catch((e: unknown) => {
          if (out.destroyed) return;
          out.destroy(
            statusOf(e) === 404
              ? new LadingError('NOT_FOUND', `${this.describe(key)} was replaced or deleted while being read`, { hint: 'read it again', cause: e })
              : this.mapError(e, 'read', key),
          );
        })
        .finally(() => signal?.removeEventListener('abort', onAbort));
      verify.pipe(out);
      out.once('close', () => {
        if (!verify.readableEnded) verify.destroy(); // the consumer stopped early: stop fetching
      });
      return out;
    }
  }

  private async fetchPart(key: string, file: File, s: number, e: number, signal: AbortSignal): Promise<Buffer> {
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw abortError(signal);
      try {
        const chunks: Buffer[] = [];
        let n = 0;
        const rs = file.createReadStream({ start: s, end: e - 1, validation: false });
        const onAbort = (): void => {
          rs.destroy(abortError(signal));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        try {
          for await (const c of rs) {
            chunks.push(c as Buffer);
            n += (c as Buffer).length;
          }
        } finally {
          signal.removeEventListener('abort', onAbort);
        }
        if (n !== e - s) throw new LadingError('BACKEND', `short ranged read of ${this.describe(key)}: bytes ${s}-${e - 1} gave ${n} bytes`);
        return Buffer.concat(chunks, n);
      } catch (err) {
        const status = statusOf(err);
        if (signal.aborted || attempt >= 3 || status === 404 || status === 412 || (status !== undefined && status < 500 && status !== 429)) throw err;
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  }

  // ---- write -----------------------------------------------------------------------------------------

  async write(key: string, body: Readable | Uint8Array | string, options: WriteOptions = {}): Promise<WriteResult> {
    this.open();
    checkKey(key);
    const { signal } = options;
    if (signal?.aborted) throw abortError(signal);
    const expected = options.expectedChecksum !== undefined ? parseChecksum(options.expectedChecksum) : undefined;
    const file = this.bucket.file(this.name(key));
    const contentType = options.contentType ?? 'application/octet-stream';
    const preconditionOpts = options.ifNoneMatch ? { ifGenerationMatch: 0 } : undefined;

    if (typeof body === 'string' || body instanceof Uint8Array) {
      const buf = typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
      if (buf.length <= this.simpleUploadMax) {
        const hex = createHash('sha256').update(buf).digest('hex');
        if (expected !== undefined && hex !== expected) throw this.mismatch(key, expected, hex);
        try {
          await file.save(buf, {
            resumable: false,
            validation: 'crc32c',
            metadata: { contentType, metadata: { sha256: hex } },
            ...(preconditionOpts ? { preconditionOpts } : {}),
            ...(signal ? { signal } : {}),
          });
        } catch (e) {
          if (signal?.aborted) throw abortError(signal);
          throw this.mapError(e, 'write', key);
        }
        return this.written(key, file.metadata, buf.length, hex);
      }
      body = Readable.from([buf]);
    }

    // Streamed: chunked resumable upload, sha256 + byte count computed on the way.
    const hasher = new DigestStream({ where: this.uri, key, expectedSha256: expected });
    const sink = file.createWriteStream({
      resumable: true,
      chunkSize: this.chunkSize,
      validation: 'crc32c',
      metadata: { contentType, ...(expected !== undefined ? { metadata: { sha256: expected } } : {}) },
      ...(preconditionOpts ? { preconditionOpts } : {}),
    });
    // An error of the caller's body is the caller's: it is rethrown as is, not wrapped as a backend error.
    let sourceError: unknown;
    body.once('error', (e) => {
      sourceError = e;
    });
    try {
      await pipeline(body, hasher, sink, ...(signal ? [{ signal }] : []));
    } catch (e) {
      if (e instanceof LadingError) throw e;
      if (sourceError !== undefined && e === sourceError) throw e;
      if (signal?.aborted) throw abortError(signal);
      throw this.mapError(e, 'write', key);
    }
    const md = file.metadata;
    const digest = hasher.result;
    if (digest === undefined) throw new LadingError('BACKEND', `write ${this.describe(key)}: the upload ended before its body did`);
    const hex = digest.sha256;
    if (Number(md.size) !== digest.size) {
      await this.deleteGeneration(file, md.generation);
      throw new LadingError('CHECKSUM_MISMATCH', `${this.describe(key)}: the server stored ${String(md.size)} bytes but ${digest.size} were sent; the object was removed`, { hint: CHECKSUM_HINT });
    }
    if (expected === undefined) {
      // The checksum is only known now; attach it to this very generation (never to a newer one).
      try {
        const [updated] = await file.setMetadata({ metadata: { sha256: hex } }, { ifGenerationMatch: md.generation });
        return this.written(key, updated, digest.size, hex);
      } catch (e) {
        // 412: already replaced by a newer write; our write still happened. Anything else: the object is
        // complete and verified by crc32c, only its recorded sha256 is missing.
        if (statusOf(e) !== 412 && statusOf(e) !== 404) throw this.mapError(e, 'write', key);
      }
    }
    return this.written(key, md, digest.size, hex);
  }

  // ---- list / delete / copy --------------------------------------------------------------------------

  async *list(prefix = '', options: ListOptions = {}): AsyncIterable<ObjectStat> {
    this.open();
    checkPrefix(prefix);
    const maxResults = Math.min(Math.max(1, options.pageSize ?? 1000), 1000);
    let pageToken: string | undefined;
    do {
      if (options.signal?.aborted) throw abortError(options.signal);
      let files: File[];
      let next: { pageToken?: string } | null | undefined;
      try {
        [files, next] = (await this.bucket.getFiles({ prefix: this.prefix + prefix, autoPaginate: false, maxResults, ...(pageToken ? { pageToken } : {}) })) as unknown as [File[], { pageToken?: string } | null];
      } catch (e) {
        throw this.mapError(e, 'list', prefix);
      }
      for (const f of files) {
        const key = f.name.slice(this.prefix.length);
        if (!isSafeKey(key)) continue; // "dir/" markers and other foreign names
        yield this.toStat(key, f.metadata);
      }
      pageToken = next?.pageToken;
    } while (pageToken);
  }

  async delete(key: string): Promise<boolean> {
    this.open();
    checkKey(key);
    try {
      await this.bucket.file(this.name(key)).delete();
      return true;
    } catch (e) {
      if (statusOf(e) === 404) return false;
      throw this.mapError(e, 'delete', key);
    }
  }

  async copy(fromKey: string, toKey: string): Promise<WriteResult> {
    this.open();
    checkKey(fromKey);
    checkKey(toKey);
    const src = this.bucket.file(this.name(fromKey));
    const dst = this.bucket.file(this.name(toKey));
    let md: FileMetadata;
    try {
      const [, resp] = await src.copy(dst);
      md = ((resp as { resource?: FileMetadata } | undefined)?.resource ?? dst.metadata) as FileMetadata;
    } catch (e) {
      if (statusOf(e) === 404) throw this.notFound(fromKey);
      throw this.mapError(e, 'copy', `${fromKey} -> ${toKey}`);
    }
    let hex = sha256Of(md);
    if (hex === undefined) {
      // Not written by lading: hash the copy once (streamed) and record it.
      const h = createHash('sha256');
      for await (const c of await this.read(toKey)) h.update(c as Buffer);
      hex = h.digest('hex');
      try {
        const [updated] = await dst.setMetadata({ metadata: { sha256: hex } }, { ifGenerationMatch: md.generation });
        md = updated;
      } catch {
        /* the copy stands; only the recorded checksum is missing */
      }
    }
    return this.written(toKey, md, Number(md.size ?? 0), hex);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  // ---- helpers ---------------------------------------------------------------------------------------

  private open(): void {
    if (this.closed) throw new LadingError('CLOSED', `store ${this.uri} is closed`, { hint: 'open the store again' });
  }

  private name(key: string): string {
    return this.prefix + key;
  }

  private describe(key: string): string {
    return `gs://${this.bucketName}/${this.prefix}${key}`;
  }

  private async metadata(key: string): Promise<FileMetadata | undefined> {
    try {
      const [md] = await this.bucket.file(this.name(key)).getMetadata();
      return md;
    } catch (e) {
      if (statusOf(e) === 404) return undefined;
      throw this.mapError(e, 'stat', key);
    }
  }

  private toStat(key: string, md: FileMetadata): ObjectStat {
    const hex = sha256Of(md);
    return {
      key,
      size: Number(md.size ?? 0),
      etag: String(md.generation),
      mtime: new Date(String(md.timeCreated ?? md.updated ?? 0)),
      checksum: hex !== undefined ? `sha256:${hex}` : undefined,
      contentType: md.contentType,
    };
  }

  private written(key: string, md: FileMetadata, size: number, hex: string): WriteResult {
    return { key, size, etag: String(md.generation), checksum: `sha256:${hex}` };
  }

  private async deleteGeneration(file: File, generation: string | number | undefined): Promise<void> {
    try {
      await file.delete(generation !== undefined ? { ifGenerationMatch: generation } : {});
    } catch {
      /* already replaced or gone */
    }
  }

  private notFound(key: string): LadingError {
    return new LadingError('NOT_FOUND', `${this.describe(key)} does not exist`, { hint: `list what is there with \`lading store ls ${this.uri}\`` });
  }

  private mismatch(key: string, expected: string, got: string): LadingError {
    return mismatch(this.uri, key, `the bytes hash to sha256:${got}, expected sha256:${expected}; nothing was written`);
  }

  private mapError(e: unknown, op: string, key: string): Error {
    if (e instanceof LadingError) return e;
    if (e instanceof Error && e.name === 'AbortError') return e;
    const status = statusOf(e);
    const msg = e instanceof Error ? e.message : String(e);
    const what = this.describe(key);
    if (status === 404) return new LadingError('NOT_FOUND', `${op} ${what}: ${msg}`, { hint: `check that bucket ${this.bucketName} and the object exist`, cause: e });
    if (status === 412) return new LadingError('CONFLICT', `${op} ${what}: the object already exists (or changed meanwhile)`, { hint: 'write to another key, or delete the object first', cause: e });
    if (status === 401 || status === 403) {
      return new LadingError('BACKEND', `${op} ${what}: permission denied (${status}): ${msg}`, { hint: 'check the credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`) and the bucket IAM roles', cause: e });
    }
    const sdkCode = e !== null && typeof e === 'object' ? (e as ApiErrorLike).code : undefined;
    if (sdkCode === 'CONTENT_DOWNLOAD_MISMATCH' || sdkCode === 'FILE_NO_UPLOAD' || sdkCode === 'FILE_NO_UPLOAD_DELETE' || (/crc32c|md5|checksum|mismatch/i.test(msg) && (status === undefined || status === 400))) {
      return new LadingError('CHECKSUM_MISMATCH', `${op} ${what}: ${msg}`, { hint: CHECKSUM_HINT, cause: e });
    }
    return new LadingError('BACKEND', `${op} ${what} failed${status !== undefined ? ` (${status})` : ''}: ${msg}`, { hint: 'a transient GCS error is retried by the client; if this persists, check the endpoint and network', cause: e });
  }
}

function sha256Of(md: FileMetadata): string | undefined {
  const v = md.metadata?.sha256;
  return typeof v === 'string' && SHA256_RE.test(v) ? v : undefined;
}

function defaultUri(o: GcsStoreOptions): string {
  const base = `gs://${o.bucket}${o.prefix ? `/${o.prefix.split('/').map(encodeURIComponent).join('/')}` : ''}`;
  return o.endpoint ? `${base}?${new URLSearchParams({ endpoint: o.endpoint }).toString()}` : base;
}

function clientOptions(o: GcsStoreOptions): StorageOptions {
  const r = o.retry ?? {};
  const opts: StorageOptions = {
    retryOptions: {
      autoRetry: r.autoRetry ?? true,
      ...(r.maxRetries !== undefined ? { maxRetries: r.maxRetries } : {}),
      ...(r.retryDelayMultiplier !== undefined ? { retryDelayMultiplier: r.retryDelayMultiplier } : {}),
      // async-retry (used by uploads) has a fixed 1 s minTimeout and throws when maxRetryDelay is below it.
      ...(r.maxRetryDelay !== undefined ? { maxRetryDelay: Math.max(1, r.maxRetryDelay) } : {}),
      ...(r.totalTimeout !== undefined ? { totalTimeout: r.totalTimeout } : {}),
      // lading's writes replace a whole object with bytes it can resend: safe to retry without preconditions.
      idempotencyStrategy: IdempotencyStrategy.RetryAlways,
    },
  };
  if (o.projectId !== undefined) opts.projectId = o.projectId;
  if (o.endpoint !== undefined) {
    opts.apiEndpoint = o.endpoint.replace(/\/+$/, '');
    opts.useAuthWithCustomEndpoint = o.authWithEndpoint ?? false;
    if (opts.projectId === undefined) opts.projectId = 'lading-local';
  }
  return opts;
}

/** Checks length always, and sha256 / crc32c of whole-object reads, failing the stream at its end. */
class ReadVerifier extends Transform {
  private n = 0;
  private readonly sha = createHash('sha256');
  private readonly crc: CRC32C | undefined;

  constructor(private readonly o: { where: string; key: string; expectedLength: number; sha256: string | undefined; crc32c: string | undefined }) {
    super({ highWaterMark: MIB });
    this.crc = o.crc32c !== undefined ? new CRC32C() : undefined;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.n += chunk.length;
    if (this.n > this.o.expectedLength) {
      cb(mismatch(this.o.where, this.o.key, `received more than the expected ${this.o.expectedLength} bytes`));
      return;
    }
    if (this.o.sha256 !== undefined) this.sha.update(chunk);
    this.crc?.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    const { where, key } = this.o;
    if (this.n !== this.o.expectedLength) {
      cb(mismatch(where, key, `received ${this.n} bytes, expected ${this.o.expectedLength} (truncated)`));
      return;
    }
    if (this.o.sha256 !== undefined) {
      const got = this.sha.digest('hex');
      if (got !== this.o.sha256) {
        cb(mismatch(where, key, `the bytes hash to sha256:${got}, stored checksum is sha256:${this.o.sha256}`));
        return;
      }
    }
    if (this.crc !== undefined && this.o.crc32c !== undefined && !this.crc.validate(this.o.crc32c)) {
      cb(mismatch(where, key, `crc32c of the bytes is ${this.crc.toString()}, the object's is ${this.o.crc32c}`));
      return;
    }
    cb();
  }
}

type GsClientOptions = Omit<GcsStoreOptions, 'bucket' | 'prefix' | 'endpoint' | 'uri'>;

/** Factory used by open.ts for `gs://bucket/prefix?endpoint=` URIs (a parsed GsAddress). */
export async function openGsStore(address: Pick<GsAddress, 'bucket' | 'prefix' | 'endpoint'> & { uri?: string | undefined }, options: GsClientOptions | Record<string, unknown> = {}): Promise<GcsStore> {
  return new GcsStore({ ...(options as GsClientOptions), bucket: address.bucket, prefix: address.prefix, endpoint: address.endpoint, uri: address.uri });
}

/** Same, from plain fields. */
export async function createGsStore(opts: { bucket: string; prefix: string; endpoint?: string | undefined; projectId?: string | undefined; uri?: string | undefined } & Partial<GsClientOptions>): Promise<BlobStore> {
  return new GcsStore(opts);
}
