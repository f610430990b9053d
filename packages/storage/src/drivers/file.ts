/**
 * `file:` driver for POSIX mounts: local disk, NFS, Lustre, DAOS (dfuse).
 *
 * Every write goes to a hidden temp file in the target's directory, is fsynced, renamed into place (atomic on
 * every POSIX kind, NFS included, because source and target share a directory) and the directory is fsynced.
 * Keys never escape the root: checkKey refuses `..`, absolute keys and NUL bytes, and the realpath check
 * refuses symlinks that lead out of it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants, read as fsRead, statSync, type BigIntStats, type Dirent } from 'node:fs';
import { copyFile, link, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { addAbortSignal, type Readable } from 'node:stream';
import { LadingError } from '@lading/core';
import { TEMP_PREFIX, checkKey, checkPrefix, isSafeKey } from '../keys.js';
import { detectMount, mountProfile, realpathOrAncestor, type MountKind, type MountProfile } from '../mounts.js';
import type { BlobStore, ListOptions, ObjectStat, ReadOptions, WriteOptions, WriteResult } from '../port.js';
import { ObjectDigest, asBuffer, checkRange, clampRange, emptyStream, mismatch, parseChecksum, rangedStream, toReadable, verifyRead } from '../streams.js';
import type { FileAddress } from '../uri.js';

export interface FileStoreOptions {
  /** Override the detected mount kind (same as `?profile=` in the URI). */
  profile?: MountKind;
}

const errno = (e: unknown): string | undefined => {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
};
const isMissing = (e: unknown) => errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR';

function etagOf(st: BigIntStats): string {
  return `${st.ino}-${st.size}-${st.mtimeNs}`;
}

function toStat(key: string, st: BigIntStats): ObjectStat {
  return { key, size: Number(st.size), etag: etagOf(st), mtime: new Date(Number(st.mtimeMs)), checksum: undefined };
}

/** fsync a directory so a rename in it is durable; some FUSE and network file systems refuse, which is harmless. */
async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (e) {
    if (!['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'EISDIR', 'EBADF', 'EPERM', 'EACCES'].includes(errno(e) ?? '')) throw e;
  } finally {
    await fh?.close();
  }
}

async function writeFully(fh: FileHandle, b: Buffer): Promise<void> {
  for (let off = 0; off < b.length; ) off += (await fh.write(b, off, b.length - off)).bytesWritten;
}

async function readFully(fh: FileHandle, start: number, end: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(end - start);
  for (let off = 0; off < buf.length; ) {
    const { bytesRead } = await fh.read(buf, off, buf.length - off, start + off);
    if (bytesRead === 0) return buf.subarray(0, off); // shrank under us: verifyRead reports the short read
    off += bytesRead;
  }
  return buf;
}

/**
 * Copy the body into the file in `chunk`-sized writes (large and aligned on Lustre / DAOS, whatever sizes the
 * source yields), digesting on the way.
 */
async function writeBody(fh: FileHandle, body: AsyncIterable<unknown>, digest: ObjectDigest, chunk: number): Promise<void> {
  // Pieces smaller than `chunk` are gathered and written in whole chunks (large aligned I/O on Lustre and DAOS);
  // a body smaller than one chunk is written as it is. No chunk-sized staging buffer: allocating one (1 MiB) for
  // every small object made the garbage collector most of the CPU cost of writing small outputs and markers.
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  for await (const c of body) {
    const b = asBuffer(c);
    digest.update(b);
    pending.push(b);
    pendingBytes += b.length;
    if (pendingBytes < chunk) continue;
    const all = pending.length === 1 ? b : Buffer.concat(pending, pendingBytes);
    const whole = pendingBytes - (pendingBytes % chunk);
    await writeFully(fh, whole === all.length ? all : all.subarray(0, whole));
    pending = whole === all.length ? [] : [all.subarray(whole)];
    pendingBytes -= whole;
  }
  if (pendingBytes > 0) await writeFully(fh, pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes));
}

/** The fast copy path cannot be used (the source changed, or its size disagrees): stream instead. */
class StreamInstead extends Error {}

/**
 * sha256 and size of a whole file, two reads in flight (the next one overlaps the hashing of the last).
 * fs.read with a callback: measurably cheaper per call than FileHandle.read.
 */
async function hashFile(fh: FileHandle, chunk: number): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  const size = chunk < 4 * 1024 * 1024 ? 4 * 1024 * 1024 : chunk;
  const bufs = [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)];
  const readAt = (buf: Buffer, pos: number) =>
    new Promise<number>((resolve, reject) => fsRead(fh.fd, buf, 0, buf.length, pos, (err, n) => (err ? reject(err) : resolve(n))));
  let pos = 0;
  let i = 0;
  let pending = readAt(bufs[0]!, 0);
  for (;;) {
    const n = await pending;
    if (n === 0) break;
    const buf = bufs[i]!;
    pos += n;
    i ^= 1;
    pending = readAt(bufs[i]!, pos);
    hash.update(n === buf.length ? buf : buf.subarray(0, n));
  }
  return { size: pos, sha256: hash.digest('hex') };
}

export class FileStore implements BlobStore {
  readonly kind = 'file';
  readonly uri: string;
  private realRoot: Promise<string> | undefined;

  private constructor(readonly root: string, readonly profile: MountProfile, overridden: boolean) {
    this.uri = `file:${root}${overridden ? `?profile=${profile.kind}` : ''}`;
  }

  /** Open a store rooted at a path or parsed `file:` address; the root is created on the first write. */
  static async open(address: FileAddress | string, options: FileStoreOptions = {}): Promise<FileStore> {
    const root = resolve(typeof address === 'string' ? address : address.path);
    const forced = options.profile ?? (typeof address === 'string' ? undefined : address.profile);
    // Detected even when the profile is forced: the file system type under the root still decides `syncStat`.
    const { kind, mount } = await detectMount(root);
    return new FileStore(root, mountProfile(forced ?? kind, mount?.fsType), forced !== undefined);
  }

  private where(op: string): string {
    return `${this.uri} ${op}`;
  }

  private fail(op: string, key: string, e: unknown): Error {
    // Our own errors, aborts and errors of the caller's body stream pass through; only fs errors are translated.
    if (e instanceof LadingError || !(e instanceof Error) || !('syscall' in e)) return e instanceof Error ? e : new Error(String(e));
    const code = errno(e);
    const msg = `${this.where(op)} ${JSON.stringify(key)}: ${(e as Error).message}`;
    if (code === 'ENOENT') return this.notFound(op, key);
    if (code === 'EACCES' || code === 'EPERM') return new LadingError('BACKEND', msg, { hint: 'check file permissions on the store root', cause: e });
    if (code === 'ENOSPC' || code === 'EDQUOT') return new LadingError('BACKEND', msg, { hint: 'the file system is full or over quota', cause: e });
    if (code === 'ENOTDIR' || code === 'EEXIST' || code === 'EISDIR' || code === 'ENOTEMPTY') {
      return new LadingError('CONFLICT', msg, { hint: 'a key cannot be both an object and a prefix of other keys (`a` and `a/b`)', cause: e });
    }
    return new LadingError('BACKEND', msg, { cause: e });
  }

  private notFound(op: string, key: string): LadingError {
    return new LadingError('NOT_FOUND', `${this.where(op)}: no object ${JSON.stringify(key)}`, { hint: `list what exists with \`lading store ls ${this.uri}\`` });
  }

  private async insideRoot(real: string, key: string): Promise<void> {
    const root = await (this.realRoot ??= realpathOrAncestor(this.root));
    if (real !== root && !real.startsWith(root === '/' ? '/' : `${root}/`)) {
      throw new LadingError('UNSAFE_KEY', `key ${JSON.stringify(key)} resolves to ${real}, outside the store root ${root} (through a symlink)`, {
        hint: 'symlinks inside a store may only point inside it; copy the data in instead',
      });
    }
  }

  /**
   * Path of a checked key. `follow`: the object itself is used (read, stat), so its realpath must be inside
   * the root; otherwise only its directory is (write and delete replace or remove the name itself).
   */
  private async pathOf(key: string, follow: boolean): Promise<string> {
    checkKey(key);
    const path = join(this.root, key);
    let real: string;
    try {
      real = await realpathOrAncestor(follow ? path : dirname(path));
    } catch (e) {
      throw this.fail('resolve', key, e);
    }
    await this.insideRoot(real, key);
    return path;
  }

  /** Open an object to read it: NOT_FOUND when it is missing or not a regular file. */
  private async openObject(op: string, key: string, path: string): Promise<{ fh: FileHandle; st: BigIntStats }> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      throw isMissing(e) || errno(e) === 'EISDIR' ? this.notFound(op, key) : this.fail(op, key, e);
    }
    try {
      const st = await fh.stat({ bigint: true });
      if (!st.isFile()) throw this.notFound(op, key);
      return { fh, st };
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw this.fail(op, key, e);
    }
  }

  async stat(key: string): Promise<ObjectStat | undefined> {
    checkKey(key);
    // Existence first: a missing key (the runner's commit-marker check, most of the time) costs one system
    // call instead of resolving every missing parent. Only what exists must prove it is inside the root.
    let st: BigIntStats | undefined;
    try {
      const path = join(this.root, key);
      st = this.profile.syncStat ? statSync(path, { bigint: true, throwIfNoEntry: false }) : await stat(path, { bigint: true });
    } catch (e) {
      if (isMissing(e)) return undefined;
      throw this.fail('stat', key, e);
    }
    if (!st) return undefined;
    await this.pathOf(key, true);
    return st.isFile() ? toStat(key, st) : undefined;
  }

  async read(key: string, options: ReadOptions = {}): Promise<Readable> {
    const range = checkRange(options);
    const { fh, st } = await this.openObject('read', key, await this.pathOf(key, true));
    try {
      const { start, end } = clampRange(range, Number(st.size));
      if (start === end) {
        await fh.close();
        return emptyStream();
      }
      const p = this.profile;
      // Lustre / DAOS: aligned large reads, several in flight for big ranges. Elsewhere the kernel's readahead does it.
      let body: Readable;
      if (p.parallelReadThreshold > 0) {
        const concurrency = end - start >= p.parallelReadThreshold ? p.parallelReads : 1;
        body = rangedStream(start, end, { chunk: p.ioChunkBytes, concurrency }, (s, e) => readFully(fh, s, e));
        body.once('close', () => void fh.close().catch(() => undefined));
      } else {
        body = fh.createReadStream({ start, end: end - 1, highWaterMark: p.ioChunkBytes }); // closes fh when done
      }
      if (options.signal) addAbortSignal(options.signal, body);
      return verifyRead(body, { where: this.where('read'), key, bytes: end - start, mapError: (e) => this.fail('read', key, e) });
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw this.fail('read', key, e);
    }
  }

  async write(key: string, body: Readable | Uint8Array | string, options: WriteOptions = {}): Promise<WriteResult> {
    const expected = options.expectedChecksum === undefined ? undefined : parseChecksum(options.expectedChecksum);
    const path = await this.pathOf(key, false);
    const dir = dirname(path);
    const src = toReadable(body);
    let fh: FileHandle | undefined;
    let tmp: string | undefined;
    try {
      await mkdir(dir, { recursive: true });
      tmp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
      fh = await open(tmp, 'wx', 0o666);
      if (options.signal) addAbortSignal(options.signal, src);
      const digest = new ObjectDigest();
      await writeBody(fh, src, digest, this.profile.ioChunkBytes);
      const { sha256, size } = digest.finish();
      if (expected !== undefined && expected !== sha256) {
        throw mismatch(this.where('write'), key, `the bytes hash to sha256:${sha256}, expected sha256:${expected}`);
      }
      const durable = options.durable !== false;
      if (durable) await fh.sync(); // data on disk before the name points at it, or a crash could expose an empty file
      const st = await fh.stat({ bigint: true });
      await fh.close();
      fh = undefined;
      if (options.ifNoneMatch) {
        await link(tmp, path); // link(2) never replaces: EEXIST when the key exists
        await unlink(tmp);
      } else {
        await rename(tmp, path);
      }
      tmp = undefined;
      if (durable) await syncDir(dir);
      return { key, size, etag: etagOf(st), checksum: `sha256:${sha256}` };
    } catch (e) {
      src.destroy();
      if (options.ifNoneMatch && errno(e) === 'EEXIST') {
        e = new LadingError('CONFLICT', `${this.where('write')}: object ${JSON.stringify(key)} already exists`, { hint: 'write without ifNoneMatch to replace it' });
      }
      throw this.fail('write', key, e);
    } finally {
      await fh?.close().catch(() => undefined);
      if (tmp !== undefined) await unlink(tmp).catch(() => undefined);
    }
  }

  async *list(prefix = '', options: ListOptions = {}): AsyncIterable<ObjectStat> {
    checkPrefix(prefix);
    const slash = prefix.lastIndexOf('/');
    const dirKey = prefix.slice(0, Math.max(slash, 0));
    const dir = dirKey === '' ? this.root : join(this.root, dirKey);
    try {
      await this.insideRoot(await realpathOrAncestor(dir), prefix);
    } catch (e) {
      throw this.fail('list', prefix, e);
    }
    yield* this.walk(dir, dirKey === '' ? '' : `${dirKey}/`, prefix.slice(slash + 1), options.signal);
  }

  /**
   * Depth-first walk, one directory in memory at a time. Directories sort as `name/` so the keys come out in
   * byte order, as S3 and GCS list them (`a-b` before `a/c`).
   */
  private async *walk(dir: string, keyPrefix: string, namePrefix: string, signal: AbortSignal | undefined): AsyncGenerator<ObjectStat> {
    let dirents: Dirent[];
    try {
      dirents = await readdir(dir, { withFileTypes: true });
    } catch (e) {
      if (isMissing(e)) return;
      throw this.fail('list', keyPrefix, e);
    }
    const items = dirents
      .filter((d) => d.name.startsWith(namePrefix) && !d.name.startsWith(TEMP_PREFIX) && (d.isDirectory() || isSafeKey(keyPrefix + d.name)))
      .map((d) => ({ d, sortKey: Buffer.from(d.isDirectory() ? `${d.name}/` : d.name) }))
      .sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));
    const BATCH = 32; // stat a few files at once: each stat is a round trip on NFS and Lustre
    for (let i = 0; i < items.length; i += BATCH) {
      signal?.throwIfAborted();
      const batch = items.slice(i, i + BATCH);
      const stats = await Promise.all(batch.map(({ d }) => (d.isDirectory() ? undefined : this.entryStat(dir, keyPrefix + d.name, d))));
      for (const [j, { d }] of batch.entries()) {
        if (d.isDirectory()) yield* this.walk(join(dir, d.name), `${keyPrefix}${d.name}/`, '', signal);
        else if (stats[j] !== undefined) yield stats[j];
      }
    }
  }

  private async entryStat(dir: string, key: string, d: Dirent): Promise<ObjectStat | undefined> {
    if (!d.isFile() && !d.isSymbolicLink()) return undefined; // sockets, fifos, devices
    const path = join(dir, d.name);
    try {
      if (d.isSymbolicLink()) await this.insideRoot(await realpathOrAncestor(path), key); // skip links leading out
      const st = await stat(path, { bigint: true });
      return st.isFile() ? toStat(key, st) : undefined;
    } catch {
      return undefined; // vanished since readdir, dangling or unsafe link: not an object
    }
  }

  async delete(key: string): Promise<boolean> {
    const path = await this.pathOf(key, false);
    try {
      await unlink(path);
      return true;
    } catch (e) {
      if (isMissing(e) || errno(e) === 'EISDIR') return false;
      throw this.fail('delete', key, e);
    }
  }

  /**
   * The file system's own copy (copy_file_range / reflink through copyFile: no bytes through user space) into a
   * temp file, fsynced and renamed into place. The sha256 is of the source, hashed while the kernel copies and
   * the copy is flushed (the hash and the flush overlap: each alone takes about as long as `cp` + `sync`), as a
   * streamed write's is of the bytes it was given. The source must not change meanwhile: its etag is checked
   * before and after, and the copy's size too; if it changed, or the file system cannot copy, the copy streams.
   */
  async copy(fromKey: string, toKey: string): Promise<WriteResult> {
    checkKey(toKey);
    const from = await this.pathOf(fromKey, true);
    const to = await this.pathOf(toKey, false);
    const { fh: src, st: before } = await this.openObject('copy', fromKey, from);
    const dir = dirname(to);
    let tmp: string | undefined;
    try {
      await mkdir(dir, { recursive: true });
      const temp = (tmp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`));
      const copied = (async () => {
        await copyFile(from, temp, fsConstants.COPYFILE_EXCL);
        const fh = await open(temp, 'r');
        try {
          await fh.sync(); // data on disk before the name points at it
          return await fh.stat({ bigint: true });
        } finally {
          await fh.close();
        }
      })();
      // Both settle before anything is decided: no hash or copy still running behind a fallback or a cleanup.
      const [hashed, flushed] = await Promise.allSettled([hashFile(src, this.profile.ioChunkBytes), copied]);
      if (flushed.status === 'rejected') throw flushed.reason;
      if (hashed.status === 'rejected') throw hashed.reason;
      const digest = hashed.value;
      const st = flushed.value;
      const after = await stat(from, { bigint: true });
      if (etagOf(after) !== etagOf(before) || st.size !== before.size) throw new StreamInstead();
      if (digest.size !== Number(before.size)) throw new StreamInstead();
      await rename(temp, to);
      tmp = undefined;
      await syncDir(dir);
      return { key: toKey, size: digest.size, etag: etagOf(st), checksum: `sha256:${digest.sha256}` };
    } catch (e) {
      if (tmp !== undefined) await unlink(tmp).catch(() => undefined);
      tmp = undefined;
      if (e instanceof StreamInstead || ['EXDEV', 'ENOSYS', 'ENOTSUP', 'EOPNOTSUPP', 'EINVAL'].includes(errno(e) ?? '')) {
        return this.write(toKey, await this.read(fromKey), { sizeHint: Number(before.size) });
      }
      throw this.fail('copy', toKey, e);
    } finally {
      await src.close().catch(() => undefined);
    }
  }

  /**
   * Delete temp files left by writers that died (SIGKILL, power loss) and are older than `olderThanMs`.
   * Live writers keep touching theirs, so a generous age (default a day) never removes one in use.
   */
  async sweepTempFiles(olderThanMs = 24 * 3600_000): Promise<number> {
    let removed = 0;
    const cutoff = Date.now() - olderThanMs;
    const visit = async (dir: string): Promise<void> => {
      const dirents = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const d of dirents) {
        const p = join(dir, d.name);
        if (d.isDirectory()) await visit(p);
        else if (d.isFile() && d.name.startsWith(TEMP_PREFIX)) {
          const st = await stat(p).catch(() => undefined);
          if (st !== undefined && st.mtimeMs < cutoff && (await unlink(p).then(() => true, () => false))) removed++;
        }
      }
    };
    await visit(this.root);
    return removed;
  }

  async close(): Promise<void> {
    // nothing held open between calls
  }
}
