/**
 * A small local server speaking the subset of the Google Cloud Storage JSON API that
 * @google-cloud/storage 7.x uses for lading's `gs` driver: buckets, object metadata (get / patch),
 * media download with Range, simple (media / multipart) and resumable uploads, listing with page
 * tokens and delimiters, delete, rewrite / copyTo / compose, generation and metageneration
 * preconditions, crc32c and md5Hash on every object (the SDK validates downloads with them).
 *
 * Bodies are streamed to a temp directory, never buffered whole. No framework: node:http only.
 * See ./gcs/NOTES.md for what it does not cover compared with real GCS.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, openSync, type WriteStream } from 'node:fs';
import { mkdtemp, open, rm, truncate, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { once } from 'node:events';
import { Crc32c } from './gcs/crc32c.js';
import { MultipartError, parseMultipartRelated } from './gcs/multipart.js';

export interface GcsServerOptions {
  /** Buckets that exist from the start. */
  buckets?: string[];
  /** When an object is larger, a rewrite answers `done: false` and a token until this many bytes per call were "copied". */
  rewriteBytesPerCall?: number;
}

export interface GcsRequestLogEntry {
  method: string;
  path: string;
  query: Record<string, string>;
  contentRange?: string | undefined;
  status: number;
}

/** What a failNext matcher sees of a request (path is decoded). */
export interface FailMatchRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  contentRange: string | undefined;
}

export interface GcsServer {
  endpoint: string;
  stop(): Promise<void>;
  /** The next `n` requests (that `match`, when given) are answered with `status` and a JSON error body. */
  failNext(n: number, status: number, match?: (req: FailMatchRequest) => boolean): void;
  /** Recent requests (the last 20,000), for assertions such as "several resumable chunks were sent". */
  readonly log: GcsRequestLogEntry[];
  /** Open resumable sessions that were never finalized (e.g. aborted uploads). */
  openUploads(): number;
  /** Bit rot at rest: flip one stored byte of an object without touching its recorded crc32c / md5Hash. */
  corrupt(bucket: string, name: string, offset?: number): Promise<void>;
}

interface Blob {
  path: string;
  /** Live objects sharing this file (a rewrite shares the source's bytes). */
  refs: number;
  size: number;
  crc32c: string;
  md5Hash: string | undefined;
}

interface StoredObject {
  bucket: string;
  name: string;
  blob: Blob;
  generation: string;
  metageneration: number;
  contentType: string;
  metadata: Record<string, string> | undefined;
  cacheControl?: string | undefined;
  contentEncoding?: string | undefined;
  contentDisposition?: string | undefined;
  componentCount?: number | undefined;
  timeCreated: string;
  updated: string;
}

interface Bucket {
  name: string;
  timeCreated: string;
  objects: Map<string, StoredObject>;
  sorted: string[] | undefined;
}

interface UploadSession {
  id: string;
  bucket: string;
  name: string;
  resource: Record<string, unknown>;
  contentType: string | undefined;
  expectedSize: number | undefined;
  preconditions: Record<string, string>;
  path: string;
  received: number;
  busy: boolean;
  done: StoredObject | undefined;
  cancelled: boolean;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string,
    readonly extraHeaders: Record<string, string> = {},
  ) {
    super(message);
  }
}

const MIB = 1024 * 1024;
const CHUNK_GRANULARITY = 256 * 1024;

export async function startGcsServer(options: GcsServerOptions = {}): Promise<GcsServer> {
  const dir = await mkdtemp(join(tmpdir(), 'lading-fake-gcs-'));
  const buckets = new Map<string, Bucket>();
  const uploads = new Map<string, UploadSession>();
  const failures: { remaining: number; status: number; match?: ((r: FailMatchRequest) => boolean) | undefined }[] = [];
  const log: GcsRequestLogEntry[] = [];
  let lastGeneration = 0;
  let blobCounter = 0;

  const now = (): string => new Date().toISOString();
  const nextGeneration = (): string => {
    lastGeneration = Math.max(Date.now() * 1000, lastGeneration + 1);
    return String(lastGeneration);
  };
  const newBlobPath = (): string => join(dir, `blob-${++blobCounter}`);

  const addBucket = (name: string): Bucket => {
    const b: Bucket = { name, timeCreated: now(), objects: new Map(), sorted: undefined };
    buckets.set(name, b);
    return b;
  };
  for (const b of options.buckets ?? []) addBucket(b);

  const getBucket = (name: string): Bucket => {
    const b = buckets.get(name);
    if (!b) throw new HttpError(404, 'The specified bucket does not exist.', 'notFound');
    return b;
  };

  /** Drop one reference; unlink when none is left. An in-flight download keeps its open fd (POSIX). */
  const releaseBlob = (blob: Blob): void => {
    blob.refs = Math.max(0, blob.refs - 1);
    if (blob.refs === 0) void unlink(blob.path).catch(() => undefined);
  };

  const etagOf = (o: StoredObject): string => Buffer.from(`${o.generation}/${o.metageneration}`).toString('base64');

  const resource = (o: StoredObject, origin: string): Record<string, unknown> => {
    const enc = encodeURIComponent(o.name);
    const r: Record<string, unknown> = {
      kind: 'storage#object',
      id: `${o.bucket}/${o.name}/${o.generation}`,
      selfLink: `${origin}/storage/v1/b/${o.bucket}/o/${enc}`,
      mediaLink: `${origin}/download/storage/v1/b/${o.bucket}/o/${enc}?generation=${o.generation}&alt=media`,
      name: o.name,
      bucket: o.bucket,
      generation: o.generation,
      metageneration: String(o.metageneration),
      contentType: o.contentType,
      storageClass: 'STANDARD',
      size: String(o.blob.size),
      crc32c: o.blob.crc32c,
      etag: etagOf(o),
      timeCreated: o.timeCreated,
      updated: o.updated,
      timeStorageClassUpdated: o.timeCreated,
      timeFinalized: o.timeCreated,
    };
    if (o.blob.md5Hash !== undefined) r.md5Hash = o.blob.md5Hash;
    if (o.metadata && Object.keys(o.metadata).length > 0) r.metadata = { ...o.metadata };
    if (o.cacheControl !== undefined) r.cacheControl = o.cacheControl;
    if (o.contentEncoding !== undefined) r.contentEncoding = o.contentEncoding;
    if (o.contentDisposition !== undefined) r.contentDisposition = o.contentDisposition;
    if (o.componentCount !== undefined) r.componentCount = o.componentCount;
    return r;
  };

  const bucketResource = (b: Bucket): Record<string, unknown> => ({
    kind: 'storage#bucket',
    id: b.name,
    name: b.name,
    projectNumber: '1',
    metageneration: '1',
    location: 'US',
    locationType: 'multi-region',
    storageClass: 'STANDARD',
    etag: 'CAE=',
    timeCreated: b.timeCreated,
    updated: b.timeCreated,
  });

  /** Preconditions of the JSON API; `target` is the live object (or undefined). */
  const checkPreconditions = (q: Record<string, string>, target: StoredObject | undefined, prefix = '', notMatchStatus = 412): void => {
    const g = q[`${prefix}ifGenerationMatch`];
    if (g !== undefined) {
      const ok = g === '0' ? target === undefined : target !== undefined && target.generation === g;
      if (!ok) throw new HttpError(412, 'At least one of the pre-conditions you specified did not hold.', 'conditionNotMet');
    }
    const gn = q[`${prefix}ifGenerationNotMatch`];
    if (gn !== undefined && target !== undefined && target.generation === gn) throw new HttpError(notMatchStatus, 'Not modified.', 'notModified');
    const m = q[`${prefix}ifMetagenerationMatch`];
    if (m !== undefined && (target === undefined || String(target.metageneration) !== m)) {
      throw new HttpError(412, 'At least one of the pre-conditions you specified did not hold.', 'conditionNotMet');
    }
    const mn = q[`${prefix}ifMetagenerationNotMatch`];
    if (mn !== undefined && target !== undefined && String(target.metageneration) === mn) throw new HttpError(notMatchStatus, 'Not modified.', 'notModified');
  };

  const lookupObject = (bucket: string, name: string, q: Record<string, string>): StoredObject => {
    const b = getBucket(bucket);
    const o = b.objects.get(name);
    if (!o || (q.generation !== undefined && q.generation !== o.generation)) {
      throw new HttpError(404, `No such object: ${bucket}/${name}`, 'notFound');
    }
    return o;
  };

  /** Make `blob` the live generation of bucket/name, checking preconditions at the moment of commit. */
  const commit = (
    bucket: string,
    name: string,
    blob: Blob,
    meta: { contentType?: unknown; metadata?: unknown; cacheControl?: unknown; contentEncoding?: unknown; contentDisposition?: unknown; componentCount?: number },
    preconditions: Record<string, string>,
  ): StoredObject => {
    validateName(name);
    const b = getBucket(bucket);
    const prev = b.objects.get(name);
    checkPreconditions(preconditions, prev);
    const t = now();
    const o: StoredObject = {
      bucket,
      name,
      blob,
      generation: nextGeneration(),
      metageneration: 1,
      contentType: typeof meta.contentType === 'string' && meta.contentType !== '' ? meta.contentType : 'application/octet-stream',
      metadata: toStringMap(meta.metadata),
      cacheControl: typeof meta.cacheControl === 'string' ? meta.cacheControl : undefined,
      contentEncoding: typeof meta.contentEncoding === 'string' ? meta.contentEncoding : undefined,
      contentDisposition: typeof meta.contentDisposition === 'string' ? meta.contentDisposition : undefined,
      componentCount: meta.componentCount,
      timeCreated: t,
      updated: t,
    };
    blob.refs++;
    b.objects.set(name, o);
    if (!prev) b.sorted = undefined;
    else releaseBlob(prev.blob);
    return o;
  };

  /** Verify client-supplied hashes (metadata fields or X-Goog-Hash) against what was received. */
  const verifyHashes = (blob: Blob, claims: { crc32c?: unknown; md5Hash?: unknown }, header: string | undefined): void => {
    const c: { crc32c?: string; md5?: string } = {};
    if (typeof claims.crc32c === 'string') c.crc32c = claims.crc32c;
    if (typeof claims.md5Hash === 'string') c.md5 = claims.md5Hash;
    for (const pair of (header ?? '').split(',')) {
      const i = pair.indexOf('=');
      if (i <= 0) continue;
      const k = pair.slice(0, i).trim();
      const v = pair.slice(i + 1).trim();
      if (k === 'crc32c') c.crc32c = v;
      if (k === 'md5') c.md5 = v;
    }
    if (c.crc32c !== undefined && c.crc32c !== blob.crc32c) {
      throw new HttpError(400, `Provided CRC32C "${c.crc32c}" doesn't match calculated CRC32C "${blob.crc32c}".`, 'invalid');
    }
    if (c.md5 !== undefined && c.md5 !== blob.md5Hash) {
      throw new HttpError(400, `Provided MD5 hash "${c.md5}" doesn't match calculated MD5 hash "${blob.md5Hash ?? ''}".`, 'invalid');
    }
  };

  /** Stream `source` into a new blob file with crc32c + md5. */
  const writeBlob = async (feed: (write: (chunk: Buffer) => Promise<void>) => Promise<void>): Promise<Blob> => {
    const path = newBlobPath();
    const w = createWriteStream(path);
    const crc = new Crc32c();
    const md5 = createHash('md5');
    let size = 0;
    try {
      await feed(async (chunk) => {
        crc.update(chunk);
        md5.update(chunk);
        size += chunk.length;
        await writeChunk(w, chunk);
      });
      await closeStream(w);
    } catch (e) {
      w.destroy();
      await unlink(path).catch(() => undefined);
      throw e;
    }
    return { path, refs: 0, size, crc32c: crc.base64(), md5Hash: md5.digest('base64') };
  };

  /** Hash an existing file (a finished resumable session). */
  const hashFile = async (path: string): Promise<Blob> => {
    const crc = new Crc32c();
    const md5 = createHash('md5');
    let size = 0;
    for await (const chunk of createReadStream(path, { highWaterMark: MIB })) {
      crc.update(chunk as Buffer);
      md5.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
    return { path, refs: 0, size, crc32c: crc.base64(), md5Hash: md5.digest('base64') };
  };

  const sortedNames = (b: Bucket): string[] => {
    if (!b.sorted) b.sorted = [...b.objects.keys()].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    return b.sorted;
  };

  // ---- handlers --------------------------------------------------------------------------------

  const handleList = (res: ServerResponse, bucket: string, q: Record<string, string>, origin: string): void => {
    const b = getBucket(bucket);
    const prefix = q.prefix ?? '';
    const delimiter = q.delimiter;
    const max = Math.min(Math.max(Number(q.maxResults ?? 1000) || 1000, 1), 1000);
    let after: string | undefined;
    if (q.pageToken) {
      try {
        after = Buffer.from(q.pageToken, 'base64url').toString('utf8');
      } catch {
        throw new HttpError(400, 'Invalid page token.', 'invalid');
      }
    }
    const names = sortedNames(b);
    // binary search for the first name > after (or >= prefix / startOffset)
    const lowerBound = (key: string, strict: boolean): number => {
      const kb = Buffer.from(key);
      let lo = 0;
      let hi = names.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        const c = Buffer.compare(Buffer.from(names[mid]!), kb);
        if (c < 0 || (strict && c === 0)) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    let i = after !== undefined ? lowerBound(after, true) : lowerBound(q.startOffset && q.startOffset > prefix ? q.startOffset : prefix, false);
    const items: Record<string, unknown>[] = [];
    const prefixes: string[] = [];
    let last: string | undefined;
    let more = false;
    for (; i < names.length; i++) {
      const name = names[i]!;
      if (!name.startsWith(prefix)) {
        if (name > prefix) break;
        continue;
      }
      if (q.endOffset && Buffer.compare(Buffer.from(name), Buffer.from(q.endOffset)) >= 0) break;
      if (items.length + prefixes.length >= max) {
        more = true;
        break;
      }
      if (delimiter) {
        const at = name.indexOf(delimiter, prefix.length);
        if (at >= 0) {
          const p = name.slice(0, at + delimiter.length);
          if (prefixes[prefixes.length - 1] !== p) prefixes.push(p);
          // skip the rest of this common prefix
          while (i + 1 < names.length && names[i + 1]!.startsWith(p)) i++;
          last = names[i]!;
          continue;
        }
      }
      const o = b.objects.get(name)!;
      items.push(resource(o, origin));
      last = name;
    }
    const body: Record<string, unknown> = { kind: 'storage#objects' };
    if (items.length > 0) body.items = items;
    if (prefixes.length > 0) body.prefixes = prefixes;
    if (more && last !== undefined) body.nextPageToken = Buffer.from(last).toString('base64url');
    sendJson(res, 200, body);
  };

  const handleDownload = (req: IncomingMessage, res: ServerResponse, o: StoredObject): void => {
    const size = o.blob.size;
    const headers: Record<string, string | number> = {
      'Content-Type': o.contentType,
      'x-goog-hash': o.blob.md5Hash !== undefined ? `crc32c=${o.blob.crc32c},md5=${o.blob.md5Hash}` : `crc32c=${o.blob.crc32c}`,
      'x-goog-generation': o.generation,
      'x-goog-metageneration': String(o.metageneration),
      'x-goog-stored-content-encoding': o.contentEncoding ?? 'identity',
      'x-goog-stored-content-length': size,
      'x-goog-storage-class': 'STANDARD',
      ETag: `"${etagOf(o)}"`,
      'Last-Modified': new Date(o.updated).toUTCString(),
      'Accept-Ranges': 'bytes',
    };
    if (o.componentCount !== undefined) headers['x-goog-component-count'] = o.componentCount;
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    if (range !== undefined) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (!m || (m[1] === '' && m[2] === '')) throw new HttpError(400, `Invalid Range header: ${range}`, 'invalid');
      if (m[1] === '') {
        const n = Number(m[2]);
        start = Math.max(0, size - n);
      } else {
        start = Number(m[1]);
        if (m[2] !== '') end = Math.min(Number(m[2]), size - 1);
        if (m[2] !== '' && Number(m[2]) < start) throw new HttpError(416, 'The requested range cannot be satisfied.', 'requestedRangeNotSatisfiable', { 'Content-Range': `bytes */${size}` });
      }
      if (start >= size || (m[1] === '' && Number(m[2]) === 0)) {
        throw new HttpError(416, 'The requested range cannot be satisfied.', 'requestedRangeNotSatisfiable', { 'Content-Range': `bytes */${size}` });
      }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['Content-Length'] = size === 0 ? 0 : end - start + 1;
    if (size === 0) {
      res.writeHead(status, headers);
      res.end();
      return;
    }
    // Open now, synchronously, so a concurrent overwrite that unlinks the file cannot race us.
    const fd = openSync(o.blob.path, 'r');
    res.writeHead(status, headers);
    const rs = createReadStream('', { fd, start, end, highWaterMark: 256 * 1024 });
    rs.on('error', () => res.destroy());
    res.on('close', () => rs.destroy());
    rs.pipe(res);
  };

  const handlePatch = async (req: IncomingMessage, res: ServerResponse, o: StoredObject, q: Record<string, string>, origin: string): Promise<void> => {
    const body = await readJson(req);
    checkPreconditions(q, o);
    if ('metadata' in body) {
      if (body.metadata === null) o.metadata = undefined;
      else if (typeof body.metadata === 'object') {
        const next: Record<string, string> = { ...(o.metadata ?? {}) };
        for (const [k, v] of Object.entries(body.metadata as Record<string, unknown>)) {
          if (v === null) delete next[k];
          else next[k] = String(v);
        }
        o.metadata = next;
      }
    }
    if (typeof body.contentType === 'string') o.contentType = body.contentType;
    if (typeof body.cacheControl === 'string') o.cacheControl = body.cacheControl;
    if (typeof body.contentDisposition === 'string') o.contentDisposition = body.contentDisposition;
    o.metageneration++;
    o.updated = now();
    sendJson(res, 200, resource(o, origin));
  };

  const rewriteProgress = new Map<string, number>();

  const handleRewrite = async (
    req: IncomingMessage,
    res: ServerResponse,
    src: StoredObject,
    dstBucket: string,
    dstName: string,
    q: Record<string, string>,
    origin: string,
    kind: 'rewriteTo' | 'copyTo',
  ): Promise<void> => {
    const body = await readJson(req);
    getBucket(dstBucket);
    checkPreconditions(q, src, 'ifSource');
    checkPreconditions(q, getBucket(dstBucket).objects.get(dstName));
    const perCall = Math.max(
      q.maxBytesRewrittenPerCall ? Number(q.maxBytesRewrittenPerCall) : Infinity,
      0,
    );
    const limit = Math.min(perCall, options.rewriteBytesPerCall ?? Infinity);
    if (kind === 'rewriteTo' && src.blob.size > limit) {
      const token = q.rewriteToken;
      const done0 = token !== undefined ? (rewriteProgress.get(token) ?? -1) : 0;
      if (done0 < 0) throw new HttpError(400, 'Invalid rewrite token.', 'invalid');
      const done = Math.min(src.blob.size, done0 + limit);
      if (token !== undefined) rewriteProgress.delete(token);
      if (done < src.blob.size) {
        const next = randomUUID();
        rewriteProgress.set(next, done);
        sendJson(res, 200, { kind: 'storage#rewriteResponse', totalBytesRewritten: String(done), objectSize: String(src.blob.size), done: false, rewriteToken: next });
        return;
      }
    }
    // Same bytes: share the blob file (like GCS, a same-location rewrite copies no data).
    const metaSource = body.metadata !== undefined || body.contentType !== undefined ? body : {};
    const o = commit(
      dstBucket,
      dstName,
      src.blob,
      {
        contentType: metaSource.contentType ?? src.contentType,
        metadata: metaSource.metadata !== undefined ? metaSource.metadata : src.metadata,
        cacheControl: src.cacheControl,
        contentEncoding: src.contentEncoding,
        contentDisposition: src.contentDisposition,
        ...(src.componentCount !== undefined ? { componentCount: src.componentCount } : {}),
      },
      q,
    );
    const r = resource(o, origin);
    if (kind === 'copyTo') sendJson(res, 200, r);
    else sendJson(res, 200, { kind: 'storage#rewriteResponse', totalBytesRewritten: String(src.blob.size), objectSize: String(src.blob.size), done: true, resource: r });
  };

  const handleCompose = async (req: IncomingMessage, res: ServerResponse, bucket: string, name: string, q: Record<string, string>, origin: string): Promise<void> => {
    const body = await readJson(req);
    const b = getBucket(bucket);
    const sources = Array.isArray(body.sourceObjects) ? (body.sourceObjects as Record<string, unknown>[]) : [];
    if (sources.length === 0 || sources.length > 32) throw new HttpError(400, 'The number of source components provided must be between 1 and 32.', 'invalid');
    const objs = sources.map((s) => {
      const o = b.objects.get(String(s.name));
      const gen = s.generation !== undefined ? String(s.generation) : undefined;
      if (!o || (gen !== undefined && gen !== o.generation)) throw new HttpError(404, `No such object: ${bucket}/${String(s.name)}`, 'notFound');
      const pre = s.objectPreconditions as Record<string, unknown> | undefined;
      if (pre?.ifGenerationMatch !== undefined && String(pre.ifGenerationMatch) !== o.generation) {
        throw new HttpError(412, 'At least one of the pre-conditions you specified did not hold.', 'conditionNotMet');
      }
      return o;
    });
    const componentCount = objs.reduce((n, o) => n + (o.componentCount ?? 1), 0);
    if (componentCount > 1024) throw new HttpError(400, 'The composite object would have more than 1024 components.', 'invalid');
    const blob = await writeBlob(async (write) => {
      for (const o of objs) {
        for await (const chunk of createReadStream(o.blob.path, { highWaterMark: MIB })) await write(chunk as Buffer);
      }
    });
    blob.md5Hash = undefined; // composite objects have no MD5
    const dest = (body.destination ?? {}) as Record<string, unknown>;
    const o = commit(bucket, name, blob, { contentType: dest.contentType ?? objs[0]!.contentType, metadata: dest.metadata, componentCount }, q);
    sendJson(res, 200, resource(o, origin));
  };

  const handleSimpleUpload = async (req: IncomingMessage, res: ServerResponse, bucket: string, q: Record<string, string>, origin: string): Promise<void> => {
    getBucket(bucket);
    if (q.uploadType === 'media') {
      const name = q.name;
      if (!name) throw new HttpError(400, 'Required parameter: name', 'required');
      checkPreconditions(q, getBucket(bucket).objects.get(name));
      const blob = await writeBlob(async (write) => {
        for await (const chunk of req) await write(chunk as Buffer);
      });
      try {
        verifyHashes(blob, {}, header(req, 'x-goog-hash'));
        const o = commit(bucket, name, blob, { contentType: header(req, 'content-type') }, q);
        sendJson(res, 200, resource(o, origin));
      } catch (e) {
        releaseBlob(blob);
        throw e;
      }
      return;
    }
    // multipart
    const ct = header(req, 'content-type') ?? '';
    const m = /boundary=("?)([^";]+)\1/i.exec(ct);
    if (!/^multipart\/related/i.test(ct) || !m) throw new HttpError(400, 'Multipart upload needs Content-Type multipart/related with a boundary.', 'invalid');
    let parsed: Awaited<ReturnType<typeof parseMultipartRelated>> | undefined;
    const blob = await writeBlob(async (write) => {
      try {
        parsed = await parseMultipartRelated(req, m[2]!, write);
      } catch (e) {
        if (e instanceof MultipartError) throw new HttpError(400, e.message, 'invalid');
        throw e;
      }
    });
    try {
      const meta = parsed!.metadata;
      const name = q.name ?? (typeof meta.name === 'string' ? meta.name : undefined);
      if (!name) throw new HttpError(400, 'Required parameter: name', 'required');
      verifyHashes(blob, meta, header(req, 'x-goog-hash'));
      const o = commit(bucket, name, blob, { ...meta, contentType: meta.contentType ?? parsed!.mediaContentType }, q);
      sendJson(res, 200, resource(o, origin));
    } catch (e) {
      releaseBlob(blob);
      throw e;
    }
  };

  const handleResumableStart = async (req: IncomingMessage, res: ServerResponse, bucket: string, q: Record<string, string>, origin: string): Promise<void> => {
    getBucket(bucket);
    const body = await readJson(req);
    const name = q.name ?? (typeof body.name === 'string' ? body.name : undefined);
    if (!name) throw new HttpError(400, 'Required parameter: name', 'required');
    validateName(name);
    const preconditions: Record<string, string> = {};
    for (const k of ['ifGenerationMatch', 'ifGenerationNotMatch', 'ifMetagenerationMatch', 'ifMetagenerationNotMatch']) {
      if (q[k] !== undefined) preconditions[k] = q[k]!;
    }
    checkPreconditions(preconditions, getBucket(bucket).objects.get(name));
    const lenHeader = header(req, 'x-upload-content-length');
    const id = randomUUID().replace(/-/g, '');
    const s: UploadSession = {
      id,
      bucket,
      name,
      resource: body,
      contentType: header(req, 'x-upload-content-type') ?? (typeof body.contentType === 'string' ? body.contentType : undefined),
      expectedSize: lenHeader !== undefined ? Number(lenHeader) : undefined,
      preconditions,
      path: newBlobPath(),
      received: 0,
      busy: false,
      done: undefined,
      cancelled: false,
    };
    await closeStream(createWriteStream(s.path));
    uploads.set(id, s);
    const location = `${origin}/upload/storage/v1/b/${encodeURIComponent(bucket)}/o?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${id}`;
    res.writeHead(200, { Location: location, 'X-GUploader-UploadID': id, 'Content-Length': 0 });
    res.end();
  };

  const incomplete = (res: ServerResponse, s: UploadSession): void => {
    const h: Record<string, string | number> = { 'Content-Length': 0, 'X-GUploader-UploadID': s.id };
    if (s.received > 0) h.Range = `bytes=0-${s.received - 1}`;
    res.writeHead(308, h);
    res.end();
  };

  const finalize = async (req: IncomingMessage, res: ServerResponse, s: UploadSession, origin: string): Promise<void> => {
    if (s.expectedSize !== undefined && s.expectedSize !== s.received) {
      throw new HttpError(400, `Upload of ${s.received} bytes does not match X-Upload-Content-Length ${s.expectedSize}.`, 'invalid');
    }
    const blob = await hashFile(s.path);
    verifyHashes(blob, s.resource, header(req, 'x-goog-hash'));
    const o = commit(s.bucket, s.name, blob, { ...s.resource, contentType: s.contentType }, s.preconditions);
    s.done = o;
    sendJson(res, 200, resource(o, origin));
  };

  const handleResumablePut = async (req: IncomingMessage, res: ServerResponse, id: string, origin: string): Promise<void> => {
    const s = uploads.get(id);
    if (!s) {
      await drain(req);
      throw new HttpError(404, 'No such upload session.', 'notFound');
    }
    if (s.cancelled) {
      await drain(req);
      throw new HttpError(499, 'Upload was cancelled.', 'clientClosedRequest');
    }
    if (s.done) {
      await drain(req);
      sendJson(res, 200, resource(s.done, origin));
      return;
    }
    if (s.busy) {
      await drain(req);
      throw new HttpError(503, 'Another request is writing to this upload session.', 'backendError');
    }
    const cr = header(req, 'content-range');
    // Parse Content-Range: "bytes a-b/T", "bytes a-b/*", "bytes a-*/T|*", "bytes */T|*"; absent = whole object in one go.
    let first: number | undefined;
    let last: number | undefined;
    let total: number | '*' = '*';
    let streaming = false;
    if (cr === undefined) {
      first = 0;
      streaming = true;
    } else {
      const m = /^bytes (?:(\d+)-(\d+|\*)|\*)\/(\d+|\*)$/.exec(cr.trim());
      if (!m) {
        await drain(req);
        throw new HttpError(400, `Invalid Content-Range: ${cr}`, 'invalid');
      }
      total = m[3] === '*' ? '*' : Number(m[3]);
      if (m[1] !== undefined) {
        first = Number(m[1]);
        if (m[2] === '*') streaming = true;
        else last = Number(m[2]);
      }
    }
    if (first === undefined) {
      // status query, or "finalize with what you have"
      await drain(req);
      if (total !== '*' && total === s.received) {
        await finalize(req, res, s, origin);
        return;
      }
      incomplete(res, s);
      return;
    }
    if (first > s.received) {
      await drain(req);
      throw new HttpError(400, `Chunk starts at ${first} but only ${s.received} bytes were persisted.`, 'invalid');
    }
    if (last !== undefined) {
      const len = last - first + 1;
      const isFinal = total !== '*' && last + 1 === total;
      if (len <= 0) {
        await drain(req);
        throw new HttpError(400, `Invalid Content-Range: ${cr}`, 'invalid');
      }
      if (!isFinal && len % CHUNK_GRANULARITY !== 0) {
        await drain(req);
        throw new HttpError(400, `Non-final chunk of ${len} bytes is not a multiple of 256 KiB.`, 'invalid');
      }
      const cl = header(req, 'content-length');
      if (cl !== undefined && Number(cl) !== len) {
        await drain(req);
        throw new HttpError(400, `Content-Length ${cl} does not match Content-Range ${cr}.`, 'invalid');
      }
    }
    // Append the body (skipping bytes the server already has).
    s.busy = true;
    const before = s.received;
    let skip = s.received - first;
    let got = 0;
    let completed = false;
    const w = createWriteStream(s.path, { flags: 'a' });
    try {
      for await (const raw of req) {
        let chunk = raw as Buffer;
        got += chunk.length;
        if (skip > 0) {
          const n = Math.min(skip, chunk.length);
          chunk = chunk.subarray(n);
          skip -= n;
        }
        if (chunk.length > 0) {
          await writeChunk(w, chunk);
          s.received += chunk.length;
        }
      }
      completed = true;
      await closeStream(w);
    } catch {
      w.destroy();
    } finally {
      s.busy = false;
    }
    if (!completed || (last !== undefined && got !== last - first + 1)) {
      // An interrupted chunk with a known range is dropped whole; a streamed one keeps what arrived (GCS persists it).
      if (last !== undefined) {
        s.received = before;
        await truncate(s.path, before).catch(() => undefined);
      }
      if (!res.destroyed) incomplete(res, s);
      return;
    }
    const finalNow = streaming ? total === '*' || total === s.received : total !== '*' && total === s.received;
    if (total !== '*' && s.received > total) throw new HttpError(400, `Received ${s.received} bytes, more than the declared ${total}.`, 'invalid');
    if (finalNow) {
      await finalize(req, res, s, origin);
      return;
    }
    incomplete(res, s);
  };

  // ---- routing -----------------------------------------------------------------------------------

  const route = async (req: IncomingMessage, res: ServerResponse, method: string, segs: string[], q: Record<string, string>, origin: string): Promise<void> => {
    const [a, b0, c] = segs;
    // Upload endpoints
    if (a === 'upload' && b0 === 'storage' && c === 'v1' && segs[3] === 'b' && segs[5] === 'o' && segs.length === 6) {
      const bucket = segs[4]!;
      if (q.upload_id !== undefined) {
        if (method === 'DELETE') {
          const s = uploads.get(q.upload_id);
          if (!s) throw new HttpError(404, 'No such upload session.', 'notFound');
          s.cancelled = true;
          await unlink(s.path).catch(() => undefined);
          res.writeHead(499, { 'Content-Length': 0 });
          res.end();
          return;
        }
        if (method === 'PUT' || method === 'POST') return handleResumablePut(req, res, q.upload_id, origin);
      }
      if (method === 'POST' && q.uploadType === 'resumable') return handleResumableStart(req, res, bucket, q, origin);
      if (method === 'POST' && (q.uploadType === 'multipart' || q.uploadType === 'media')) return handleSimpleUpload(req, res, bucket, q, origin);
      await drain(req);
      throw new HttpError(400, `Unsupported upload request: ${method} uploadType=${q.uploadType ?? ''}`, 'invalid');
    }
    // Download endpoint used by mediaLink
    if (a === 'download' && b0 === 'storage' && c === 'v1' && segs[3] === 'b' && segs[5] === 'o' && segs.length === 7 && method === 'GET') {
      const o = lookupObject(segs[4]!, segs[6]!, q);
      checkPreconditions(q, o, '', 304);
      return handleDownload(req, res, o);
    }
    if (a !== 'storage' || b0 !== 'v1' || c !== 'b') {
      await drain(req);
      throw new HttpError(404, `Not Found: ${method} /${segs.join('/')}`, 'notFound');
    }
    const rest = segs.slice(3);
    if (rest.length === 0) {
      if (method === 'POST') {
        const body = await readJson(req);
        const name = typeof body.name === 'string' ? body.name : '';
        if (!/^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/.test(name)) throw new HttpError(400, `Invalid bucket name: '${name}'`, 'invalid');
        if (buckets.has(name)) throw new HttpError(409, 'Your previous request to create the named bucket succeeded and you already own it.', 'conflict');
        sendJson(res, 200, bucketResource(addBucket(name)));
        return;
      }
      if (method === 'GET') {
        sendJson(res, 200, { kind: 'storage#buckets', items: [...buckets.values()].map(bucketResource) });
        return;
      }
    }
    const bucket = rest[0]!;
    if (rest.length === 1) {
      if (method === 'GET') {
        sendJson(res, 200, bucketResource(getBucket(bucket)));
        return;
      }
      if (method === 'DELETE') {
        const bk = getBucket(bucket);
        if (bk.objects.size > 0) throw new HttpError(409, 'The bucket you tried to delete is not empty.', 'conflict');
        buckets.delete(bucket);
        res.writeHead(204);
        res.end();
        return;
      }
    }
    if (rest[1] === 'o') {
      if (rest.length === 2 && method === 'GET') return handleList(res, bucket, q, origin);
      const name = rest[2];
      if (name !== undefined && rest.length === 3) {
        if (method === 'GET') {
          const o = lookupObject(bucket, name, q);
          checkPreconditions(q, o, '', 304);
          if (q.alt === 'media') return handleDownload(req, res, o);
          sendJson(res, 200, resource(o, origin));
          return;
        }
        if (method === 'PATCH' || method === 'PUT') return handlePatch(req, res, lookupObject(bucket, name, q), q, origin);
        if (method === 'DELETE') {
          const o = lookupObject(bucket, name, q);
          checkPreconditions(q, o);
          const bk = getBucket(bucket);
          bk.objects.delete(name);
          bk.sorted = undefined;
          releaseBlob(o.blob);
          res.writeHead(204);
          res.end();
          return;
        }
      }
      if (name !== undefined && rest.length === 4 && rest[3] === 'compose' && method === 'POST') return handleCompose(req, res, bucket, name, q, origin);
      if (name !== undefined && rest.length === 8 && (rest[3] === 'rewriteTo' || rest[3] === 'copyTo') && rest[4] === 'b' && rest[6] === 'o' && method === 'POST') {
        const src = lookupObject(bucket, name, { ...(q.sourceGeneration !== undefined ? { generation: q.sourceGeneration } : {}) });
        return handleRewrite(req, res, src, rest[5]!, rest[7]!, q, origin, rest[3]);
      }
    }
    await drain(req);
    throw new HttpError(404, `Not Found: ${method} /${segs.join('/')}`, 'notFound');
  };

  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'http://x');
    const origin = `http://${req.headers.host ?? '127.0.0.1'}`;
    const q: Record<string, string> = {};
    for (const [k, v] of url.searchParams) q[k] = v;
    const rawSegs = url.pathname.split('/').filter((s) => s !== '');
    let segs: string[];
    try {
      segs = rawSegs.map((s) => decodeURIComponent(s));
    } catch {
      sendError(res, new HttpError(400, 'Invalid URL encoding.', 'invalid'));
      return;
    }
    const path = '/' + segs.join('/');
    const entry: GcsRequestLogEntry = { method, path, query: q, contentRange: header(req, 'content-range'), status: 0 };
    log.push(entry);
    if (log.length > 20_000) log.splice(0, log.length - 20_000);
    res.on('finish', () => {
      entry.status = res.statusCode;
    });

    const rule = failures.find((f) => f.remaining > 0 && (f.match === undefined || f.match({ method, path, query: q, contentRange: entry.contentRange })));
    if (rule) {
      rule.remaining--;
      if (rule.remaining === 0) failures.splice(failures.indexOf(rule), 1);
      void drain(req).then(() => sendError(res, new HttpError(rule.status, `Injected failure (${rule.status}).`, rule.status === 429 ? 'rateLimitExceeded' : 'backendError')));
      return;
    }
    route(req, res, method, segs, q, origin).catch((e: unknown) => {
      if (e instanceof HttpError) {
        if (!req.complete) void drain(req).then(() => sendError(res, e));
        else sendError(res, e);
        return;
      }
      sendError(res, new HttpError(500, e instanceof Error ? e.message : String(e), 'backendError'));
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    log,
    failNext(n, status, match) {
      failures.push({ remaining: n, status, match });
    },
    openUploads() {
      let n = 0;
      for (const s of uploads.values()) if (!s.done && !s.cancelled) n++;
      return n;
    },
    async corrupt(bucket, name, offset = 0) {
      const o = getBucket(bucket).objects.get(name);
      if (!o || offset >= o.blob.size) throw new Error(`corrupt: no byte ${offset} in ${bucket}/${name}`);
      const fh = await open(o.blob.path, 'r+');
      try {
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, offset);
        b[0] = b[0]! ^ 0xff;
        await fh.write(b, 0, 1, offset);
      } finally {
        await fh.close();
      }
    },
    async stop() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// ---- helpers -------------------------------------------------------------------------------------

function validateName(name: string): void {
  const bytes = Buffer.byteLength(name);
  if (bytes === 0 || bytes > 1024) throw new HttpError(400, 'Object name must be 1-1024 bytes of UTF-8.', 'invalid');
  if (name === '.' || name === '..' || /[\r\n]/.test(name) || name.startsWith('.well-known/acme-challenge/')) {
    throw new HttpError(400, `Invalid object name: ${JSON.stringify(name)}`, 'invalid');
  }
}

function toStringMap(v: unknown): Record<string, string> | undefined {
  if (v === null || v === undefined || typeof v !== 'object') return undefined;
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (x !== null && x !== undefined) out[k] = String(x);
  return out;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MIB) throw new HttpError(400, 'JSON body too large.', 'invalid');
    parts.push(c as Buffer);
  }
  const text = Buffer.concat(parts).toString('utf8').trim();
  if (text === '') return {};
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  } catch {
    throw new HttpError(400, 'Request body is not valid JSON.', 'parseError');
  }
}

async function drain(req: Readable & { complete?: boolean }): Promise<void> {
  if (req.readableEnded) return;
  await new Promise<void>((resolve) => {
    req.on('end', resolve);
    req.on('error', () => resolve());
    req.on('close', () => resolve());
    req.resume();
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=UTF-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(res: ServerResponse, e: HttpError): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = { error: { code: e.status, message: e.message, errors: [{ message: e.message, domain: 'global', reason: e.reason }] } };
  const text = JSON.stringify(body);
  res.writeHead(e.status, { ...e.extraHeaders, 'Content-Type': 'application/json; charset=UTF-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function writeChunk(w: WriteStream, chunk: Buffer): Promise<void> {
  if (w.errored) throw w.errored;
  if (!w.write(chunk)) await once(w, 'drain');
}

function closeStream(w: WriteStream): Promise<void> {
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.end(() => resolve());
  });
}

