/** Stream helpers shared by the drivers: body normalisation, digests, read verification, ranges, parallel reads. */
import { createHash, type Hash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { LadingError } from '@lading/core';
import type { ReadOptions } from './port.js';

export function toReadable(body: Readable | Uint8Array | string): Readable {
  if (typeof body === 'string') return Readable.from([Buffer.from(body, 'utf8')], { objectMode: false });
  if (body instanceof Uint8Array) return Readable.from([body], { objectMode: false });
  return body;
}

export function asBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  throw new LadingError('BAD_ARGUMENT', `a write body yielded a ${typeof chunk}, not bytes`, { hint: 'write a byte stream, a Uint8Array or a string' });
}

/** `sha256:<hex>` → `<hex>`; BAD_ARGUMENT when malformed. */
export function parseChecksum(value: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(String(value).toLowerCase());
  if (!m) {
    throw new LadingError('BAD_ARGUMENT', `checksum ${JSON.stringify(value)} is not of the form sha256:<64 hex digits>`, {
      hint: 'pass expectedChecksum as returned in WriteResult.checksum, e.g. sha256:e3b0c442…',
    });
  }
  return m[1]!;
}

export function mismatch(where: string, key: string, what: string): LadingError {
  return new LadingError('CHECKSUM_MISMATCH', `${where}: object ${JSON.stringify(key)} failed verification: ${what}`, {
    hint: 'the bytes were corrupted or changed in transit; nothing was kept. Retry; if it persists, check the storage backend and the network',
  });
}

export interface DigestResult {
  size: number;
  /** hex */
  sha256: string;
  /**
   * When asked for: hex MD5 of the whole object (only when it is one part: the ETag of a single PUT), and the
   * S3 multipart form `md5(md5(part1)…md5(partN))-N`.
   */
  md5?: string;
  multipartMd5?: string;
}

/**
 * Which MD5s an ETag check needs. A single PUT's ETag is the MD5 of the object; a multipart object's is
 * `md5(md5(part1)…md5(partN))-N` on AWS, MinIO and Ceph, but the MD5 of the whole object on some servers
 * (s3rver). `both` until a store has seen which form its server uses, then only that one: MD5 is the slowest
 * hash here (≈ 550 MiB/s against sha256's ≈ 1 200 MiB/s with SHA-NI), so a second pass costs real throughput.
 */
export type EtagForm = 'both' | 'parts' | 'whole';

/** Running digests of an object's bytes: sha256 always; MD5s when the backend's ETag is to be checked too. */
export class ObjectDigest {
  size = 0;
  private readonly sha: Hash | undefined;
  private readonly md5: Hash | undefined;
  private part: Hash | undefined;
  private partBytes = 0;
  private readonly partDigests: Buffer[] = [];
  private readonly partSize: number | undefined;

  /**
   * `partSize`: compute MD5s for ETag checks with parts of this size (as lib-storage cuts them). `knownSha256`:
   * the sha256 of an in-memory body, hashed by the caller already; not hashed a second time.
   */
  constructor(partSize?: number, form: EtagForm = 'both', private readonly knownSha256?: string) {
    this.sha = knownSha256 === undefined ? createHash('sha256') : undefined;
    this.md5 = partSize !== undefined && form !== 'parts' ? createHash('md5') : undefined;
    this.partSize = form === 'whole' ? undefined : partSize;
  }

  update(b: Buffer): void {
    this.size += b.length;
    this.sha?.update(b);
    this.md5?.update(b);
    const partSize = this.partSize;
    if (partSize === undefined) return;
    let rest = b;
    while (rest.length > 0) {
      const n = Math.min(rest.length, partSize - this.partBytes);
      (this.part ??= createHash('md5')).update(n === rest.length ? rest : rest.subarray(0, n));
      this.partBytes += n;
      rest = rest.subarray(n);
      if (this.partBytes === partSize) {
        this.partDigests.push(this.part.digest());
        this.part = undefined;
        this.partBytes = 0;
      }
    }
  }

  finish(): DigestResult {
    const out: DigestResult = { size: this.size, sha256: this.knownSha256 ?? this.sha!.digest('hex') };
    if (this.md5 !== undefined) out.md5 = this.md5.digest('hex');
    if (this.partSize !== undefined) {
      if (this.part !== undefined) this.partDigests.push(this.part.digest());
      const n = this.partDigests.length;
      // One part (or none: an empty object) is the whole object, sent as a single PUT.
      if (n <= 1) out.md5 ??= n === 0 ? createHash('md5').digest('hex') : this.partDigests[0]!.toString('hex');
      out.multipartMd5 = `${createHash('md5').update(Buffer.concat(this.partDigests)).digest('hex')}-${n}`;
    }
    return out;
  }
}

/**
 * Pass-through that digests what flows by. With `expectedSha256` it fails in flush — before the consumer sees
 * the end of the stream — so an upload fed from it is aborted instead of completed.
 */
export class DigestStream extends Transform {
  readonly digest: ObjectDigest;
  result: DigestResult | undefined;
  constructor(private readonly opts: { where: string; key: string; expectedSha256?: string | undefined; knownSha256?: string | undefined; partSize?: number | undefined; etagForm?: EtagForm; onDigest?: (r: DigestResult) => void }) {
    super();
    this.digest = new ObjectDigest(opts.partSize, opts.etagForm, opts.knownSha256);
  }
  override _transform(chunk: unknown, _enc: BufferEncoding, cb: TransformCallback): void {
    const b = asBuffer(chunk);
    this.digest.update(b);
    cb(null, b);
  }
  override _flush(cb: TransformCallback): void {
    const r = (this.result = this.digest.finish());
    const want = this.opts.expectedSha256;
    if (want !== undefined && want !== r.sha256) {
      cb(mismatch(this.opts.where, this.opts.key, `the bytes hash to sha256:${r.sha256}, expected sha256:${want}`));
      return;
    }
    this.opts.onDigest?.(r);
    cb();
  }
}

/** Verifies a read: exactly `bytes` bytes arrive and, for whole-object reads, they hash to `sha256`. */
export function verifyRead(
  source: Readable,
  opts: { where: string; key: string; bytes: number; sha256?: string | undefined; mapError?: (e: unknown) => Error },
): Readable {
  const hash = opts.sha256 === undefined ? undefined : createHash('sha256');
  let seen = 0;
  const check = new Transform({
    transform(chunk: unknown, _enc, cb) {
      const b = asBuffer(chunk);
      seen += b.length;
      hash?.update(b);
      if (seen > opts.bytes) cb(mismatch(opts.where, opts.key, `received more than the expected ${opts.bytes} bytes`));
      else cb(null, b);
    },
    flush(cb) {
      if (seen !== opts.bytes) return cb(mismatch(opts.where, opts.key, `received ${seen} bytes, expected ${opts.bytes} (truncated)`));
      const got = hash?.digest('hex');
      if (got !== undefined && got !== opts.sha256) return cb(mismatch(opts.where, opts.key, `the bytes hash to sha256:${got}, stored checksum is sha256:${opts.sha256}`));
      cb();
    },
  });
  // Errors of the source travel to the consumer; destroying the result stops the source.
  source.once('error', (e) => check.destroy(opts.mapError ? opts.mapError(e) : e));
  check.once('close', () => source.destroy());
  return source.pipe(check);
}

/**
 * Bytes [skip, skip + take) of `source`, for servers that answer a Range with more than was asked
 * (s3rver treats `bytes=0-0` as open-ended; some fronts ignore Range and send the whole object).
 */
export function sliceStream(source: Readable, skip: number, take: number): Readable {
  let pos = 0;
  const out = new Transform({
    transform(chunk: unknown, _enc, cb) {
      const b = asBuffer(chunk);
      const from = Math.max(0, skip - pos);
      const to = Math.min(b.length, skip + take - pos);
      pos += b.length;
      if (to > from) this.push(b.subarray(from, to));
      if (pos >= skip + take) {
        this.push(null);
        source.unpipe(out);
        source.destroy();
      }
      cb();
    },
  });
  source.once('error', (e) => out.destroy(e));
  return source.pipe(out);
}

/** Validated range from ReadOptions; `end` undefined means "to the end of the object". */
export function checkRange(options: ReadOptions | undefined): { start: number; end: number | undefined } {
  const start = options?.start ?? 0;
  const end = options?.end;
  const ok = (n: number) => Number.isSafeInteger(n) && n >= 0;
  if (!ok(start) || (end !== undefined && (!ok(end) || end < start))) {
    throw new LadingError('BAD_ARGUMENT', `read range start=${start} end=${end} is not valid`, {
      hint: 'start and end are byte offsets (integers ≥ 0), start inclusive, end exclusive, start ≤ end',
    });
  }
  return { start, end };
}

/** Clamp a checked range to an object of `size` bytes: ranges past the end are cut (possibly to empty). */
export function clampRange(r: { start: number; end: number | undefined }, size: number): { start: number; end: number } {
  const end = Math.min(r.end ?? size, size);
  return { start: Math.min(r.start, end), end };
}

export function emptyStream(): Readable {
  return Readable.from([], { objectMode: false });
}

/**
 * Read [start, end) as chunks aligned to multiples of `chunk` (the first one may be short), with up to
 * `concurrency` fetches in flight, yielded in order. Memory: at most concurrency + 1 chunks.
 */
export function rangedStream(
  start: number,
  end: number,
  opts: { chunk: number; concurrency: number },
  fetch: (start: number, end: number, signal: AbortSignal) => Promise<Uint8Array>,
): Readable {
  const ac = new AbortController();
  async function* chunks(): AsyncGenerator<Uint8Array> {
    const inflight: Promise<Uint8Array>[] = [];
    let next = start;
    const launch = () => {
      const s = next;
      const e = Math.min(end, (Math.floor(s / opts.chunk) + 1) * opts.chunk);
      next = e;
      const p = fetch(s, e, ac.signal);
      p.catch(() => undefined); // awaited below in order; avoid unhandled rejections for later parts
      inflight.push(p);
    };
    try {
      while (next < end && inflight.length < opts.concurrency) launch();
      for (let p = inflight.shift(); p !== undefined; p = inflight.shift()) {
        const buf = await p;
        if (next < end) launch();
        yield buf;
      }
    } finally {
      ac.abort(); // the consumer stopped early or a part failed: cancel the rest
    }
  }
  return Readable.from(chunks(), { objectMode: false, highWaterMark: 1 });
}
