import { resolve } from 'node:path';
import { LadingError } from '@lading/core';
import { checkPrefix } from './keys.js';
import { MOUNT_KINDS, type MountKind } from './mounts.js';

export interface FileAddress {
  scheme: 'file';
  /** Absolute path of the store root. */
  path: string;
  /** `?profile=` override; undefined means detect from the mount. */
  profile: MountKind | undefined;
  uri: string;
}

export interface BucketAddress {
  bucket: string;
  /** '' or a key prefix ending in `/`. */
  prefix: string;
  /** Custom endpoint (on-prem S3, a local GCS server), `http(s)://host:port`. */
  endpoint: string | undefined;
  uri: string;
}

export interface S3Address extends BucketAddress {
  scheme: 's3';
  region: string | undefined;
  /** Default: true when an endpoint is given (MinIO, Ceph RGW, appliances rarely have wildcard DNS). */
  forcePathStyle: boolean | undefined;
}

export interface GsAddress extends BucketAddress {
  scheme: 'gs';
}

export type StoreAddress = FileAddress | S3Address | GsAddress;

const HINT = 'valid store URIs: file:./data, file:/mnt/lustre/proj?profile=lustre, file:///scratch/run, '
  + 's3://bucket/prefix, s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&forcePathStyle=true, '
  + 'gs://bucket/prefix';

function bad(uri: string, why: string): LadingError {
  return new LadingError('BAD_URI', `store URI ${JSON.stringify(uri)} is not valid: ${why}`, { hint: HINT });
}

function params(uri: string, query: string, allowed: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, value] of new URLSearchParams(query)) {
    if (!allowed.includes(name)) {
      throw bad(uri, `unknown parameter \`${name}\`${allowed.length ? ` (known: ${allowed.join(', ')})` : ''}`);
    }
    if (out.has(name)) throw bad(uri, `parameter \`${name}\` is given twice`);
    out.set(name, value);
  }
  return out;
}

function decode(uri: string, s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw bad(uri, `malformed percent-escape in ${JSON.stringify(s)}`);
  }
}

function parseFile(uri: string, rest: string, query: string, cwd: string): FileAddress {
  let path: string;
  if (rest.startsWith('//')) {
    // file://host/path: only the empty host (file:///abs) or localhost name this machine.
    const slash = rest.indexOf('/', 2);
    const host = slash < 0 ? rest.slice(2) : rest.slice(2, slash);
    if (host !== '' && host !== 'localhost') throw bad(uri, `file URIs cannot name a host (${JSON.stringify(host)}); write file:///abs/path or file:./rel/path`);
    path = decode(uri, slash < 0 ? '' : rest.slice(slash));
  } else {
    path = rest; // file:./rel and file:/abs are plain paths, taken literally
  }
  if (path === '') throw bad(uri, 'the path is empty');
  if (path.includes('\0')) throw bad(uri, 'the path contains a NUL byte');
  const p = params(uri, query, ['profile']);
  const profile = p.get('profile');
  if (profile !== undefined && !MOUNT_KINDS.includes(profile as MountKind)) {
    throw bad(uri, `profile must be one of ${MOUNT_KINDS.join(', ')}, not ${JSON.stringify(profile)}`);
  }
  const abs = resolve(cwd, path);
  return { scheme: 'file', path: abs, profile: profile as MountKind | undefined, uri: `file:${abs}${profile ? `?profile=${profile}` : ''}` };
}

/** S3 and GCS bucket names: 3-63 lowercase letters, digits, `.`, `-`, `_`, starting and ending alphanumeric. */
const BUCKET = /^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$/;

function parseBucket(uri: string, scheme: 's3' | 'gs', rest: string, query: string): S3Address | GsAddress {
  if (!rest.startsWith('//')) throw bad(uri, `write ${scheme}://bucket/prefix`);
  const slash = rest.indexOf('/', 2);
  const bucket = slash < 0 ? rest.slice(2) : rest.slice(2, slash);
  if (bucket === '') throw bad(uri, 'the bucket name is missing');
  if (!BUCKET.test(bucket)) throw bad(uri, `${JSON.stringify(bucket)} is not a valid bucket name (3-63 lowercase letters, digits, dots, hyphens)`);
  let prefix = decode(uri, slash < 0 ? '' : rest.slice(slash + 1));
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
  try {
    checkPrefix(prefix);
  } catch (e) {
    throw bad(uri, `the prefix ${JSON.stringify(prefix)} is unsafe: ${(e as Error).message}`);
  }
  const p = params(uri, query, scheme === 's3' ? ['endpoint', 'region', 'forcePathStyle'] : ['endpoint']);
  const endpoint = p.get('endpoint');
  if (endpoint !== undefined) {
    let u: URL | undefined;
    try {
      u = new URL(endpoint);
    } catch {
      u = undefined;
    }
    if (u === undefined || (u.protocol !== 'http:' && u.protocol !== 'https:')) throw bad(uri, `endpoint ${JSON.stringify(endpoint)} is not an http(s) URL`);
  }
  const base = `${scheme}://${bucket}${prefix ? `/${prefix.split('/').map(encodeURIComponent).join('/')}` : ''}`;
  const canonical = p.size ? `${base}?${new URLSearchParams([...p]).toString()}` : base;
  if (scheme === 'gs') return { scheme, bucket, prefix, endpoint, uri: canonical };
  const fps = p.get('forcePathStyle');
  if (fps !== undefined && fps !== 'true' && fps !== 'false') throw bad(uri, 'forcePathStyle must be true or false');
  const region = p.get('region');
  if (region === '') throw bad(uri, 'region is empty');
  return { scheme, bucket, prefix, endpoint, region, forcePathStyle: fps === undefined ? undefined : fps === 'true', uri: canonical };
}

/**
 * Parse a store URI: `file:./rel`, `file:/abs`, `file:///abs` (with `?profile=local|nfs|lustre|daos`),
 * `s3://bucket/prefix?endpoint=&region=&forcePathStyle=`, `gs://bucket/prefix?endpoint=`.
 * Relative file paths resolve against `cwd` (default: process.cwd()). Throws BAD_URI.
 */
export function parseStoreUri(uri: string, options: { cwd?: string } = {}): StoreAddress {
  if (typeof uri !== 'string' || uri.trim() === '') throw bad(String(uri), 'it is empty');
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):([^?#]*)(?:\?([^#]*))?$/.exec(uri);
  if (!m) {
    throw bad(uri, uri.includes('#') ? 'fragments (`#`) are not allowed' : 'it has no scheme (file:, s3:// or gs://)');
  }
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;
  const query = m[3] ?? '';
  switch (scheme) {
    case 'file':
      return parseFile(uri, rest, query, options.cwd ?? process.cwd());
    case 's3':
    case 'gs':
      return parseBucket(uri, scheme, rest, query);
    default:
      throw bad(uri, `unknown scheme \`${scheme}:\` (supported: file:, s3://, gs://)`);
  }
}
