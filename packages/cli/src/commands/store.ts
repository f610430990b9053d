import type { Command } from 'commander';
import type { Readable } from 'node:stream';
import type { BlobStore, ObjectStat } from '@lading/storage';
import type { Cli } from '../context.js';
import type { ObjectLocation } from '../object-uri.js';
import { action, cacheFlags, examples, positiveInt, withJson } from './shared.js';

/**
 * `lading store ls|stat|cp|cat|rm`: any object in any store, named by its full URI. Everything streams:
 * listings are printed as they arrive (never held whole), copies move through bounded buffers.
 */

interface LsOptions {
  recursive?: boolean;
  human?: boolean;
}
interface StatOptions {
  checksum?: boolean;
}
/** `--cache`, `--cache-dir`, `--cache-max`: read the source through this node's local read-through cache. */
interface CacheFlags {
  cache?: boolean;
  cacheDir?: string;
  cacheMax?: string;
}
interface CpOptions extends CacheFlags {
  verify?: boolean;
  recursive?: boolean;
  parallel: number;
}
interface CatOptions extends CacheFlags {
  range?: string;
}
interface RmOptions {
  recursive?: boolean;
  yes?: boolean;
  force?: boolean;
}

const URI_ARG = 'object URI (file:/data/x.bin, s3://bucket/key?endpoint=…, gs://bucket/key); end with / for a prefix';

export function registerStore(program: Command): void {
  const store = program.command('store').description('list, inspect, copy, print and delete objects in any store (file:, s3://, gs://), by full URI');
  examples(store, [
    'lading store ls s3://bucket/datasets/ --recursive',
    'lading store cp file:/mnt/lustre/proj/shard-0001.bin s3://bucket/shards/',
    'lading store cat s3://bucket/logs/run-42.txt --range 0-1023',
  ]);

  const ls = store
    .command('ls')
    .description('list the objects under a prefix (streamed as they arrive; without --recursive, deeper keys are summarised as DIR/ lines). Without a URI: the configured store')
    .argument('[uri]', 'prefix or object URI (default: the configured store, --store / LADING_STORE)')
    .option('-r, --recursive', 'list every object under the prefix, at any depth')
    .option('--human', 'sizes as KiB / MiB / GiB');
  withJson(ls);
  examples(ls, [
    'lading store ls file:/mnt/lustre/proj/inputs/',
    "lading store ls 's3://bucket/runs/?endpoint=http://10.0.0.5:9000' --recursive",
    'lading store ls gs://bucket/corpus/ --recursive --json > objects.jsonl   # one JSON object per line',
  ]);
  action<LsOptions, [string | undefined]>(ls, list);

  const stat = store
    .command('stat')
    .description('show one object: size, etag (version), modification time, sha256 checksum (when the backend stores one, or with --checksum)')
    .argument('<uri>', URI_ARG)
    .option('--checksum', 'compute the sha256 by reading the object when the backend does not store one');
  withJson(stat);
  examples(stat, ['lading store stat s3://bucket/shards/shard-0001.bin', 'lading store stat file:./data/x.bin --checksum --json']);
  action<StatOptions, [string]>(stat, statObject);

  const cp = store
    .command('cp')
    .description('copy an object from any store to any store, streamed (bounded memory, parallel parts), checksums verified end to end; a progress bar on a terminal')
    .argument('<src>', 'source object URI (a prefix with --recursive)')
    .argument('<dst>', 'destination object URI, or a prefix ending in / (or an existing directory) to copy into under the source name')
    .option('--verify', 're-read the destination after the copy and check it hashes to what was written')
    .option('-r, --recursive', 'copy every object under the source prefix to the destination prefix')
    .option('--parallel <n>', 'with --recursive: objects copied at once', positiveInt, 4);
  cacheFlags(cp, 'the source');
  withJson(cp);
  examples(cp, [
    'lading store cp file:/mnt/lustre/proj/big.bin s3://bucket/inputs/big.bin',
    "lading store cp 's3://bucket/out/result.parquet?endpoint=http://10.0.0.5:9000' file:./results/",
    'lading store cp gs://bucket/corpus/ file:/scratch/corpus/ --recursive --parallel 8',
  ]);
  action<CpOptions, [string, string]>(cp, copy);

  const cat = store
    .command('cat')
    .description('write an object (or a byte range of it) to stdout')
    .argument('<uri>', URI_ARG)
    .option('--range <first-last>', 'bytes FIRST to LAST inclusive (as in HTTP), FIRST- to the end, or -N for the last N; units allowed (1MiB-2MiB)');
  cacheFlags(cat, 'the object');
  cat.option('--json', 'errors as JSON on stderr (the bytes themselves are written as they are)');
  examples(cat, [
    'lading store cat s3://bucket/logs/run-42.txt',
    'lading store cat file:/data/big.bin --range 0-1023 | xxd | head',
    'lading store cat file:/data/log.txt --range -4KiB',
    'lading store cat s3://bucket/datasets/val.idx --cache > /dev/null   # warm this node\'s cache',
  ]);
  action<CatOptions, [string]>(cat, catObject);

  const rm = store
    .command('rm')
    .description('delete an object, or with --recursive --yes every object under a prefix')
    .argument('<uri>', URI_ARG)
    .option('-r, --recursive', 'delete every object under the prefix (needs --yes)')
    .option('-y, --yes', 'confirm a recursive delete')
    .option('-f, --force', 'no error when the object does not exist');
  withJson(rm);
  examples(rm, ['lading store rm s3://bucket/tmp/x.bin', 'lading store rm file:/scratch/run-41/ --recursive --yes']);
  action<RmOptions, [string]>(rm, remove);
}

// ---- helpers ------------------------------------------------------------------------------------

type Storage = typeof import('@lading/storage');
type Core = typeof import('@lading/core');
type Uris = typeof import('../object-uri.js');

interface Kit {
  core: Core;
  storage: Storage;
  uris: Uris;
  /** Open (once per root) the store of a location; closed with the Cli. */
  open(storeUri: string): Promise<BlobStore>;
  /** The store to read sources from: `open`, wrapped in the local cache with --cache. */
  openSource(storeUri: string): Promise<BlobStore>;
  split(uri: string): ObjectLocation;
}

async function kit(cli: Cli, flags: CacheFlags = {}): Promise<Kit> {
  const [core, storage, uris] = await Promise.all([import('@lading/core'), import('@lading/storage'), import('../object-uri.js')]);
  const opened = new Map<string, Promise<BlobStore>>();
  const cached = new Map<string, Promise<BlobStore>>();
  let cache: Promise<import('@lading/storage').BlobCache> | undefined;
  const useCache = flags.cache === true || flags.cacheDir !== undefined;
  cli.onClose(async () => {
    // Fills finish (or fail) before the backends close; the wrappers own nothing else.
    await (await cache?.catch(() => undefined))?.idle().catch(() => undefined);
    for (const p of opened.values()) await (await p.catch(() => undefined))?.close();
  });
  const open = (storeUri: string): Promise<BlobStore> => {
    let p = opened.get(storeUri);
    if (p === undefined) {
      p = storage.openStore(storeUri, { cwd: cli.cwd });
      opened.set(storeUri, p);
    }
    return p;
  };
  return {
    core,
    storage,
    uris,
    open,
    openSource(storeUri) {
      if (!useCache) return open(storeUri);
      let p = cached.get(storeUri);
      if (p === undefined) {
        p = (async () => {
          cache ??= (async () => {
            const { cacheLocation } = await import('./cache.js');
            const w = await cacheLocation(cli, flags);
            return storage.openCache({ dir: w.dir, ...(w.maxBytes !== undefined ? { maxBytes: w.maxBytes } : {}) });
          })();
          // The cache first: a bad budget or directory must reject here, not linger unhandled while the store opens.
          const c = await cache;
          return new storage.CachedStore(await open(storeUri), c);
        })();
        cached.set(storeUri, p);
      }
      return p;
    },
    split: (uri) => uris.splitObjectUri(uri, cli.cwd),
  };
}

/** Write to stdout honouring backpressure, so a huge listing into a slow pipe is never buffered whole. */
function writeOut(text: string): Promise<void> | undefined {
  if (process.stdout.write(text)) return undefined;
  return new Promise((resolve) => process.stdout.once('drain', resolve));
}

function notFound(k: Kit, loc: ObjectLocation, what = 'no such object'): Error {
  return new k.core.LadingError('NOT_FOUND', `${loc.given}: ${what}`, { hint: `list what is there with \`lading store ls ${parentOf(loc.given)}\`` });
}

function parentOf(uri: string): string {
  const q = uri.indexOf('?');
  const base = q >= 0 ? uri.slice(0, q) : uri;
  if (/^file:[^/]*$/.test(base)) return 'file:./';
  const cut = base.replace(/\/+$/, '').lastIndexOf('/');
  const parent = cut >= 0 ? base.slice(0, cut + 1) : base;
  return `${/^s3:|^gs:/.test(parent) && parent.split('/').length <= 3 ? base : parent}${q >= 0 ? uri.slice(q) : ''}`;
}

async function mustStat(k: Kit, store: BlobStore, loc: ObjectLocation): Promise<ObjectStat> {
  if (loc.isPrefix) {
    throw new k.core.LadingError('BAD_ARGUMENT', `${loc.given} names a prefix (it ends with /), not an object`, { hint: 'name one object, or list the prefix with `lading store ls`' });
  }
  const st = await store.stat(loc.key);
  if (st === undefined) throw await missing(k, loc);
  return st;
}

/** NOT_FOUND for a missing object; for a `file:` path that is a directory, say so (it is a prefix). */
async function missing(k: Kit, loc: ObjectLocation, what?: string): Promise<Error> {
  if (loc.scheme === 'file' && loc.path !== undefined) {
    const { stat } = await import('node:fs/promises');
    if ((await stat(loc.path).catch(() => undefined))?.isDirectory()) {
      return new k.core.LadingError('BAD_ARGUMENT', `${loc.given} is a directory (a prefix), not an object`, { hint: `list it with \`lading store ls ${loc.given}/\`, or name a file in it` });
    }
  }
  return notFound(k, loc, what);
}

function statJson(uri: string, st: ObjectStat): Record<string, unknown> {
  return { uri, size: st.size, etag: st.etag, mtime: st.mtime.toISOString(), checksum: st.checksum ?? null, contentType: st.contentType ?? null };
}

function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Bytes → a bar on stderr when a person watches (stdout and stderr are terminals, no --json) and the object is big. */
interface ByteProgress {
  add(n: number): void;
  stop(): void;
}

async function byteProgress(cli: Cli, total: number, label: string, formatBytes: (n: number) => string): Promise<ByteProgress> {
  if (!cli.out.interactive || total < 1) return { add() {}, stop() {} };
  const { default: cliProgress } = await import('cli-progress');
  const t0 = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {done} / {size} | {rate} | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  let done = 0;
  const payload = () => ({ done: formatBytes(done), size: formatBytes(total), rate: `${formatBytes(Math.round(done / Math.max(0.001, (Date.now() - t0) / 1000)))}/s` });
  bar.start(total, 0, payload());
  return {
    add(n) {
      done += n;
      bar.update(done, payload());
    },
    stop() {
      bar.update(done, payload());
      bar.stop();
    },
  };
}

/** A pass-through that reports the bytes flowing by (progress), errors of the source travel on. */
async function counted(source: Readable, onBytes: (n: number) => void): Promise<Readable> {
  const { Transform, pipeline } = await import('node:stream');
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
  return pipeline(source, t, () => undefined);
}

/** Abort long work on SIGINT / SIGTERM: temp files and multipart uploads are cleaned up, nothing half-written stays. */
function interruptible(cli: Cli): AbortController {
  const ac = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => ac.abort(new Error(`interrupted by ${sig}`));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  cli.onClose(() => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  });
  return ac;
}

function interrupted(k: Kit, dst: string): Error {
  return new k.core.LadingError('CLOSED', `interrupted: the copy to ${dst} was abandoned and nothing was left behind`, { hint: 'run the copy again; it starts over' });
}

/** Run `fn` over items from an async iterable with at most `n` at once (the iterable is pulled lazily). */
async function forEachLimit<T>(items: AsyncIterable<T>, n: number, fn: (item: T) => Promise<void>): Promise<void> {
  const running = new Set<Promise<void>>();
  let failure: unknown;
  for await (const item of items) {
    if (failure !== undefined) break;
    const p: Promise<void> = fn(item).then(
      () => void running.delete(p),
      (e: unknown) => {
        running.delete(p);
        failure ??= e;
      },
    );
    running.add(p);
    if (running.size >= n) await Promise.race(running);
  }
  await Promise.all(running);
  if (failure !== undefined) throw failure;
}

// ---- ls -----------------------------------------------------------------------------------------

async function list(cli: Cli, o: LsOptions, uri: string | undefined): Promise<void> {
  const k = await kit(cli);
  let target = uri;
  if (target === undefined) {
    const configured = cli.config().store;
    if (configured === undefined) throw new k.core.LadingError('BAD_ARGUMENT', 'no URI given and no store configured (--no-store / LADING_STORE=none)', { hint: 'name what to list: lading store ls file:./data/ or s3://bucket/prefix/' });
    target = configured.replace(/^([^?]*?)\/*(\?|$)/, '$1/$2');
  }
  let loc = k.split(target);
  let store = await k.open(loc.storeUri);
  const size = (n: number) => (o.human ? k.core.formatBytes(n) : String(n));
  const line = (st: ObjectStat, name: string) =>
    cli.json
      ? `${JSON.stringify({ name, ...statJson(k.uris.objectUri(store.uri, st.key), st) })}\n`
      : `${size(st.size).padStart(o.human ? 10 : 14)}  ${isoSeconds(st.mtime)}  ${name}\n`;

  if (!loc.isPrefix) {
    // An object is listed as itself; otherwise the name is taken as a directory (`dir` = `dir/`).
    const st = await store.stat(loc.key);
    if (st !== undefined) {
      await writeOut(line(st, loc.key.split('/').pop() ?? loc.key));
      return;
    }
    loc = k.uris.asPrefix(loc);
    store = await k.open(loc.storeUri);
  }
  const prefix = loc.key;
  const dirs = new Set<string>();
  let objects = 0;
  for await (const st of store.list(prefix)) {
    const rel = st.key.slice(prefix.length);
    const slash = rel.indexOf('/');
    if (!o.recursive && slash >= 0) {
      const dir = rel.slice(0, slash + 1);
      if (dirs.has(dir)) continue;
      dirs.add(dir); // only the distinct first-level names are remembered, never the listing
      const pending = cli.json
        ? writeOut(`${JSON.stringify({ name: dir, uri: k.uris.objectUri(store.uri, prefix + dir), prefix: true })}\n`)
        : writeOut(`${'DIR'.padStart(o.human ? 10 : 14)}  ${' '.repeat(20)}  ${dir}\n`);
      if (pending) await pending;
      objects++;
      continue;
    }
    objects++;
    const pending = writeOut(line(st, rel));
    if (pending) await pending;
  }
  if (objects === 0) {
    if (uri !== undefined && !k.split(uri).isPrefix) throw notFound(k, k.split(uri), 'no such object or prefix');
    cli.out.note(`nothing under ${loc.given}`);
  }
}

// ---- stat ---------------------------------------------------------------------------------------

async function statObject(cli: Cli, o: StatOptions, uri: string): Promise<void> {
  const k = await kit(cli);
  const loc = k.split(uri);
  const store = await k.open(loc.storeUri);
  const st = await mustStat(k, store, loc);
  let checksum = st.checksum;
  let computed = false;
  if (checksum === undefined && o.checksum) {
    const { createHash } = await import('node:crypto');
    const hash = createHash('sha256');
    const bar = await byteProgress(cli, st.size, 'sha256', k.core.formatBytes);
    try {
      for await (const chunk of await store.read(loc.key)) {
        hash.update(chunk as Buffer);
        bar.add((chunk as Buffer).length);
      }
    } finally {
      bar.stop();
    }
    checksum = `sha256:${hash.digest('hex')}`;
    computed = true;
  }
  const full = k.uris.objectUri(store.uri, st.key);
  if (cli.json) {
    cli.out.result({ ...statJson(full, st), checksum: checksum ?? null, checksumComputed: computed, store: store.uri, key: st.key });
    return;
  }
  const rows: [string, string][] = [
    ['uri', full],
    ['size', `${st.size} (${k.core.formatBytes(st.size)})`],
    ['etag', st.etag],
    ['mtime', st.mtime.toISOString()],
    ['checksum', checksum === undefined ? 'unknown: the backend stores none (--checksum computes it)' : `${checksum}${computed ? ' (computed)' : ''}`],
  ];
  if (st.contentType) rows.push(['type', st.contentType]);
  for (const [name, value] of rows) cli.out.line(`${name.padEnd(9)} ${value}`);
}

// ---- cp -----------------------------------------------------------------------------------------

interface CopyResult {
  src: string;
  dst: string;
  size: number;
  checksum: string;
  /** Checks that passed: `length` always; `source-checksum` when the source stored one; `reread` with --verify; `server-side`. */
  verified: string[];
  seconds: number;
}

async function copy(cli: Cli, o: CpOptions, srcUri: string, dstUri: string): Promise<void> {
  const k = await kit(cli, o);
  let src = k.split(srcUri);
  let dst = k.split(dstUri);
  const ac = interruptible(cli);

  const srcStore = await k.openSource(src.storeUri);
  let srcStat: ObjectStat | undefined;
  if (!src.isPrefix) srcStat = await srcStore.stat(src.key);
  if (srcStat === undefined) {
    if (!o.recursive) {
      if (src.isPrefix) throw new k.core.LadingError('BAD_ARGUMENT', `${src.given} names a prefix, not an object`, { hint: 'add --recursive to copy everything under it' });
      throw await missing(k, src);
    }
    src = k.uris.asPrefix(src);
    await copyTree(cli, k, o, src, k.uris.asPrefix(dst), ac);
    return;
  }
  dst = await intoDirectory(k, dst, src.key.split('/').pop() ?? src.key);
  const result = await copyOne(cli, k, src, srcStat, dst, o.verify === true, ac.signal, true);
  if (cli.json) cli.out.result(result);
  else {
    const rate = result.seconds > 0 ? `, ${k.core.formatBytes(Math.round(result.size / result.seconds))}/s` : '';
    cli.out.line(`copied ${result.src} → ${result.dst} (${k.core.formatBytes(result.size)} in ${result.seconds.toFixed(1)} s${rate}, ${result.checksum}, verified: ${result.verified.join(', ')})`);
  }
}

/** A destination prefix, or an existing local directory, receives the object under its own name. */
async function intoDirectory(k: Kit, dst: ObjectLocation, name: string): Promise<ObjectLocation> {
  if (!dst.isPrefix && dst.scheme === 'file' && dst.path !== undefined) {
    const { stat } = await import('node:fs/promises');
    const st = await stat(dst.path).catch(() => undefined);
    if (st?.isDirectory()) dst = k.uris.asPrefix(dst);
  }
  if (!dst.isPrefix) return dst;
  return { ...dst, key: dst.key + name, isPrefix: false, given: k.uris.objectUri(dst.storeUri, dst.key + name) };
}

async function copyOne(cli: Cli, k: Kit, src: ObjectLocation, st: ObjectStat, dst: ObjectLocation, verify: boolean, signal: AbortSignal, progress: boolean): Promise<CopyResult> {
  const { LadingError, formatBytes } = k.core;
  const srcStore = await k.openSource(src.storeUri);
  const dstStore = await k.open(dst.storeUri);
  const dstFull = k.uris.objectUri(dstStore.uri, dst.key);
  if (srcStore.uri === dstStore.uri && src.key === dst.key) {
    throw new LadingError('BAD_ARGUMENT', `source and destination are the same object (${dstFull})`, { hint: 'name a different destination' });
  }
  const t0 = performance.now();
  const verified = ['length'];
  let written: { size: number; checksum: string };
  let kernel: { size: number; checksum: string } | undefined;
  if (srcStore === dstStore && st.checksum !== undefined) {
    // Same store and a known checksum: let the backend copy (S3 CopyObject; the checksum travels with it).
    written = await dstStore.copy(src.key, dst.key);
    verified.push('server-side');
  } else if (!(progress && cli.out.interactive) && srcStore.kind === 'file' && dstStore.kind === 'file' && (kernel = await kernelCopy(k, srcStore, src.key, dstStore, dst.key)) !== undefined) {
    written = kernel;
  } else {
    const bar = progress ? await byteProgress(cli, st.size, 'copying', formatBytes) : undefined;
    try {
      const body = await srcStore.read(src.key, { signal });
      written = await dstStore.write(dst.key, bar ? await counted(body, (n) => bar.add(n)) : body, {
        sizeHint: st.size,
        signal,
        ...(st.checksum !== undefined ? { expectedChecksum: st.checksum } : {}),
        ...(st.contentType !== undefined ? { contentType: st.contentType } : {}),
      });
    } catch (e) {
      if (signal.aborted) throw interrupted(k, dstFull);
      throw e;
    } finally {
      bar?.stop();
    }
  }
  if (st.checksum !== undefined) {
    if (written.checksum !== st.checksum) throw new LadingError('CHECKSUM_MISMATCH', `${dstFull}: written bytes hash to ${written.checksum}, the source stores ${st.checksum}`, { hint: 'retry the copy; if it persists, check both backends' });
    verified.push('source-checksum');
  }
  if (written.size !== st.size) {
    throw new LadingError('CHECKSUM_MISMATCH', `${dstFull}: ${written.size} bytes written, the source has ${st.size} (did it change during the copy?)`, { hint: 'retry the copy' });
  }
  if (verify) {
    const { createHash } = await import('node:crypto');
    const hash = createHash('sha256');
    let n = 0;
    for await (const chunk of await dstStore.read(dst.key, { signal })) {
      hash.update(chunk as Buffer);
      n += (chunk as Buffer).length;
    }
    const got = `sha256:${hash.digest('hex')}`;
    if (got !== written.checksum || n !== written.size) {
      await dstStore.delete(dst.key).catch(() => undefined);
      throw new LadingError('CHECKSUM_MISMATCH', `${dstFull}: reading it back gives ${n} bytes hashing to ${got}, but ${written.size} bytes hashing to ${written.checksum} were written; the bad copy was deleted`, { hint: 'retry the copy; if it persists, the destination backend corrupts data' });
    }
    verified.push('reread');
  }
  return { src: k.uris.objectUri(srcStore.uri, src.key), dst: dstFull, size: written.size, checksum: written.checksum, verified, seconds: (performance.now() - t0) / 1000 };
}

/**
 * file: → file: without a progress bar to feed: the file system's own copy (copy_file_range), through a
 * FileStore rooted at the two paths' common directory, which hashes the copy as it is flushed. Undefined when
 * that cannot be used (names a store key may not have, a symlink leading elsewhere): the caller streams.
 */
async function kernelCopy(k: Kit, srcStore: BlobStore, srcKey: string, dstStore: BlobStore, dstKey: string): Promise<{ size: number; checksum: string } | undefined> {
  const srcRoot = (srcStore as { root?: unknown }).root;
  const dstRoot = (dstStore as { root?: unknown }).root;
  if (typeof srcRoot !== 'string' || typeof dstRoot !== 'string') return undefined;
  const { dirname, join, relative, sep } = await import('node:path');
  const srcPath = join(srcRoot, srcKey);
  const dstPath = join(dstRoot, dstKey);
  const a = dirname(srcPath).split(sep);
  const b = dirname(dstPath).split(sep);
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  const root = a.slice(0, n).join(sep) || sep;
  const from = relative(root, srcPath).split(sep).join('/');
  const to = relative(root, dstPath).split(sep).join('/');
  if (!k.storage.isSafeKey(from) || !k.storage.isSafeKey(to)) return undefined;
  const store = await k.storage.FileStore.open(root);
  try {
    return await store.copy(from, to);
  } catch (e) {
    if (k.core.isLadingError(e) && e.code === 'UNSAFE_KEY') return undefined;
    throw e;
  } finally {
    await store.close();
  }
}

async function copyTree(cli: Cli, k: Kit, o: CpOptions, src: ObjectLocation, dst: ObjectLocation, ac: AbortController): Promise<void> {
  const srcStore = await k.openSource(src.storeUri);
  const t0 = performance.now();
  let copied = 0;
  let bytes = 0;
  await forEachLimit(srcStore.list(src.key), o.parallel, async (st) => {
    const rel = st.key.slice(src.key.length);
    const r = await copyOne(cli, k, { ...src, key: st.key, isPrefix: false, given: k.uris.objectUri(srcStore.uri, st.key) }, st, { ...dst, key: dst.key + rel, isPrefix: false }, o.verify === true, ac.signal, false);
    copied++;
    bytes += r.size;
    if (cli.json) cli.out.jsonLine(r);
    else cli.out.line(`copied ${r.src} → ${r.dst} (${k.core.formatBytes(r.size)})`);
  });
  if (copied === 0) throw notFound(k, src, 'no such object or prefix');
  const seconds = (performance.now() - t0) / 1000;
  if (cli.json) cli.out.jsonLine({ copied, bytes, seconds });
  else cli.out.line(`copied ${copied} object${copied === 1 ? '' : 's'} (${k.core.formatBytes(bytes)} in ${seconds.toFixed(1)} s)`);
}

// ---- cat ----------------------------------------------------------------------------------------

async function catObject(cli: Cli, o: CatOptions, uri: string): Promise<void> {
  const k = await kit(cli, o);
  const loc = k.split(uri);
  const store = await k.openSource(loc.storeUri);
  const range = o.range === undefined ? undefined : k.uris.parseRange(o.range);
  let start = 0;
  let end: number | undefined;
  if (range !== undefined && 'suffix' in range) {
    const st = await mustStat(k, store, loc);
    start = Math.max(0, st.size - range.suffix);
  } else if (range !== undefined) {
    ({ start, end } = range);
    if (start > 0) {
      // A range that starts past the end names no bytes: say so rather than print nothing (HTTP answers 416).
      const st = await mustStat(k, store, loc);
      if (start >= st.size) {
        throw new k.core.LadingError('BAD_ARGUMENT', `--range ${o.range}: ${loc.given} has ${st.size} bytes, so byte ${start} is past its end`, { hint: `ask for bytes 0-${Math.max(0, st.size - 1)} or fewer, or -N for the last N` });
      }
    }
  }
  if (loc.isPrefix) await mustStat(k, store, loc); // a clear error for a prefix
  let body: Readable;
  try {
    body = await store.read(loc.key, { start, ...(end !== undefined ? { end } : {}) });
  } catch (e) {
    if (k.core.isLadingError(e) && e.code === 'NOT_FOUND') throw await missing(k, loc);
    throw e;
  }
  const { pipeline } = await import('node:stream/promises');
  await pipeline(body, process.stdout, { end: false });
}

// ---- rm -----------------------------------------------------------------------------------------

async function remove(cli: Cli, o: RmOptions, uri: string): Promise<void> {
  const k = await kit(cli);
  const { LadingError, formatBytes } = k.core;
  let loc = k.split(uri);
  let store = await k.open(loc.storeUri);
  if (!o.recursive) {
    if (loc.isPrefix) throw new LadingError('BAD_ARGUMENT', `${loc.given} names a prefix; deleting everything under it needs --recursive --yes`, { hint: `lading store rm ${loc.given} --recursive --yes` });
    const st = await store.stat(loc.key);
    if (st === undefined) {
      if (o.force) {
        if (cli.json) cli.out.result({ deleted: 0, bytes: 0 });
        else cli.out.note(`nothing to delete: ${loc.given} does not exist`);
        return;
      }
      throw await missing(k, loc);
    }
    await store.delete(loc.key);
    if (cli.json) cli.out.result({ deleted: 1, bytes: st.size, uri: k.uris.objectUri(store.uri, st.key) });
    else cli.out.line(`deleted ${k.uris.objectUri(store.uri, st.key)} (${formatBytes(st.size)})`);
    return;
  }
  if (!o.yes) {
    throw new LadingError('BAD_ARGUMENT', `refusing to delete everything under ${loc.given} without --yes`, { hint: `check what would go with \`lading store ls ${loc.given} --recursive\`, then add --yes` });
  }
  if (!loc.isPrefix) {
    const st = await store.stat(loc.key);
    if (st !== undefined) {
      // `rm -r` of one object deletes that object.
      await store.delete(loc.key);
      if (cli.json) cli.out.result({ deleted: 1, bytes: st.size });
      else cli.out.line(`deleted 1 object (${formatBytes(st.size)})`);
      return;
    }
    loc = k.uris.asPrefix(loc);
    store = await k.open(loc.storeUri);
  }
  if (loc.scheme === 'file' && loc.path === '/') {
    throw new LadingError('UNSAFE_LOCATION', 'refusing to delete everything under the file system root /', { hint: 'name a directory of your data, e.g. file:/scratch/run-41/' });
  }
  let deleted = 0;
  let bytes = 0;
  await forEachLimit(store.list(loc.key), 8, async (st) => {
    if (await store.delete(st.key)) {
      deleted++;
      bytes += st.size;
    }
  });
  if (loc.scheme === 'file' && loc.path !== undefined) await pruneEmptyDirs(loc.path);
  if (deleted === 0 && !o.force) throw notFound(k, loc, 'no such object or prefix');
  if (cli.json) cli.out.result({ deleted, bytes });
  else cli.out.line(`deleted ${deleted} object${deleted === 1 ? '' : 's'} (${formatBytes(bytes)}) under ${loc.given}`);
}

/** After a recursive delete in a file store: remove the directories left empty (never a file). */
async function pruneEmptyDirs(dir: string): Promise<void> {
  const { readdir, rmdir } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const visit = async (d: string): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true }).catch(() => []);
    for (const e of entries) if (e.isDirectory()) await visit(join(d, e.name));
    await rmdir(d).catch(() => undefined); // ENOTEMPTY: something else lives here; keep it
  };
  await visit(dir);
}
