/**
 * Object URIs for `lading store …`: a full URI names one object (`file:/data/x.bin`,
 * `s3://bucket/runs/42/out.bin?endpoint=…`) or, ending in `/`, a prefix (`s3://bucket/runs/42/`, `file:/data/`).
 * Each is split into the store root to open and a key under it:
 *
 * - `file:` — the root is the object's directory (so the mount kind is detected where the bytes are, and
 *   symlinks are checked against that directory); the key is the file name. A prefix is its own root.
 * - `s3://`, `gs://` — the root is the bucket (with the URI's query: endpoint, region, …); the key is the
 *   whole path, percent-decoded. Two URIs in one bucket share one store, so a copy inside it is server-side.
 *
 * Loaded only by the store and cache commands (it pulls in @lading/storage).
 */
import { basename, dirname } from 'node:path';
import { LadingError, parseBytes } from '@lading/core';
import { checkKey, checkPrefix, parseStoreUri } from '@lading/storage';

export type ObjectScheme = 'file' | 's3' | 'gs';

export interface ObjectLocation {
  /** The URI as the user wrote it (for messages). */
  given: string;
  scheme: ObjectScheme;
  /** Store root URI, canonical (what `openStore` gets and `store.uri` reports). */
  storeUri: string;
  /** Key under the root; for a prefix, '' or a string ending in `/`. */
  key: string;
  /** The URI ends in `/` (or names a bucket or the file system root): a prefix, not an object. */
  isPrefix: boolean;
  /** `file:` only: the absolute path the URI names. */
  path?: string;
}

export const URI_HINT =
  'write a full URI: file:./data/x.bin or file:/mnt/lustre/proj/x.bin (local and POSIX mounts), s3://bucket/key?endpoint=http://host:9000, gs://bucket/key; end it with / to name a prefix';

function badUri(uri: string, why: string): LadingError {
  return new LadingError('BAD_URI', `${JSON.stringify(uri)} is not an object URI: ${why}`, { hint: URI_HINT });
}

/**
 * `..` inside a file: path would climb out of the directory the URI names (`file:/data/x/../../etc/passwd`):
 * refused, like `..` in any key. Leading `..` of a relative path (`file:../data/x.bin`) is how a user names
 * a sibling of the working directory, and stays allowed.
 */
function refuseClimbing(uri: string, rest: string): void {
  let path = rest;
  if (path.startsWith('//')) {
    const slash = path.indexOf('/', 2);
    path = slash < 0 ? '' : path.slice(slash);
    try {
      path = decodeURIComponent(path);
    } catch {
      return; // parseStoreUri reports the malformed escape
    }
  }
  const segments = path.split('/');
  const relative = !path.startsWith('/');
  let leading = relative;
  for (const s of segments) {
    if (leading && (s === '..' || s === '.')) continue;
    leading = false;
    if (s === '..') {
      throw new LadingError('UNSAFE_KEY', `${JSON.stringify(uri)} is refused: its \`..\` segment would climb out of the directory it names`, {
        hint: 'write the path without `..` (e.g. file:/data/x.bin); lading never resolves `..` inside a path, so a key cannot escape its root',
      });
    }
  }
}

/** parseStoreUri for the root of an object URI, with errors that name the URI the user wrote. */
function parseRoot(uri: string, options: { cwd?: string }, root: string = uri): ReturnType<typeof parseStoreUri> {
  try {
    return parseStoreUri(root, options);
  } catch (e) {
    const m = /^store URI .* is not valid: ([\s\S]*)$/.exec((e as Error).message);
    if (m && (e as { code?: string }).code === 'BAD_URI') throw badUri(uri, m[1]!);
    throw e;
  }
}

/** Split an object or prefix URI into store root + key. Throws BAD_URI / UNSAFE_KEY (both exit 2). */
export function splitObjectUri(uri: string, cwd: string = process.cwd()): ObjectLocation {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):([^?#]*)(\?[^#]*)?$/.exec(uri);
  if (!m) {
    if (uri.trim() === '') throw badUri(uri, 'it is empty');
    if (!/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(uri)) throw badUri(uri, `it has no scheme (for a local file write file:${uri.startsWith('/') || uri.startsWith('.') ? '' : './'}${uri})`);
    if (uri.includes('#')) throw badUri(uri, 'fragments (`#`) are not allowed');
    throw badUri(uri, 'it cannot be parsed');
  }
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;
  const query = m[3] ?? '';
  if (scheme === 'file') {
    refuseClimbing(uri, rest);
    const address = parseRoot(uri, { cwd });
    if (address.scheme !== 'file') throw badUri(uri, 'expected a file: URI');
    const q = address.profile === undefined ? '' : `?profile=${address.profile}`;
    const isPrefix = rest.endsWith('/') || /(^|\/)\.\.?$/.test(rest) || address.path === '/';
    if (isPrefix) return { given: uri, scheme: 'file', storeUri: `file:${address.path}${q}`, key: '', isPrefix: true, path: address.path };
    const key = basename(address.path);
    checkKey(key);
    return { given: uri, scheme: 'file', storeUri: `file:${dirname(address.path)}${q}`, key, isPrefix: false, path: address.path };
  }
  if (scheme !== 's3' && scheme !== 'gs') {
    throw new LadingError('BAD_URI', `${JSON.stringify(uri)} is not an object URI: unknown scheme \`${scheme}:\` (supported: file:, s3://, gs://)`, { hint: URI_HINT });
  }
  if (!rest.startsWith('//')) throw badUri(uri, `write ${scheme}://bucket/key`);
  const slash = rest.indexOf('/', 2);
  const bucket = slash < 0 ? rest.slice(2) : rest.slice(2, slash);
  const address = parseRoot(uri, {}, `${scheme}://${bucket}${query}`);
  let key: string;
  try {
    key = decodeURIComponent(slash < 0 ? '' : rest.slice(slash + 1));
  } catch {
    throw badUri(uri, 'malformed percent-escape in the key');
  }
  const isPrefix = key === '' || key.endsWith('/');
  if (isPrefix) checkPrefix(key);
  else checkKey(key);
  return { given: uri, scheme, storeUri: address.uri, key, isPrefix };
}

/** The full URI of `key` in the store rooted at `storeUri` (inverse of splitObjectUri). */
export function objectUri(storeUri: string, key: string): string {
  const q = storeUri.indexOf('?');
  const base = q >= 0 ? storeUri.slice(0, q) : storeUri;
  const query = q >= 0 ? storeUri.slice(q) : '';
  const sep = base.endsWith('/') ? '' : '/';
  if (base.startsWith('file:')) return `${base}${sep}${key}${query}`;
  return `${base}${sep}${key.split('/').map(encodeURIComponent).join('/')}${query}`;
}

/** A location as a prefix: `dir` → `dir/` (a non-object name used as a directory). */
export function asPrefix(loc: ObjectLocation): ObjectLocation {
  if (loc.isPrefix) return loc;
  if (loc.scheme === 'file' && loc.path !== undefined) {
    const q = loc.storeUri.indexOf('?');
    return { ...loc, storeUri: `file:${loc.path}${q >= 0 ? loc.storeUri.slice(q) : ''}`, key: '', isPrefix: true };
  }
  return { ...loc, key: `${loc.key}/`, isPrefix: true };
}

/** `--range`: HTTP-style, inclusive: `0-1023`, `1MiB-` (to the end), `-100` (the last 100 bytes). */
export type RangeSpec = { start: number; end: number | undefined } | { suffix: number };

export function parseRange(text: string): RangeSpec {
  const bad = (why: string) =>
    new LadingError('BAD_ARGUMENT', `--range ${JSON.stringify(text)}: ${why}`, {
      hint: 'write FIRST-LAST (inclusive byte offsets, as in HTTP), FIRST- (to the end) or -N (the last N bytes); units allowed: --range 0-1023, --range 1MiB-, --range -100',
    });
  const m = /^\s*([^-\s]*)\s*-\s*([^-\s]*)\s*$/.exec(text);
  if (!m || (m[1] === '' && m[2] === '')) throw bad('expected FIRST-LAST, FIRST- or -N');
  const num = (s: string): number => {
    try {
      const n = parseBytes(s, '--range');
      if (!Number.isSafeInteger(n)) throw new Error('too large');
      return n;
    } catch {
      throw bad(`${JSON.stringify(s)} is not a byte offset`);
    }
  };
  if (m[1] === '') {
    const n = num(m[2]!);
    if (n === 0) throw bad('-0 names no bytes');
    return { suffix: n };
  }
  const start = num(m[1]!);
  if (m[2] === '') return { start, end: undefined };
  const last = num(m[2]!);
  if (last < start) throw bad(`the last byte (${last}) is before the first (${start})`);
  return { start, end: last + 1 };
}
