import { LadingError } from '@lading/core';

/** Every driver writes in-flight objects under this name prefix; such names are never valid keys and never listed. */
export const TEMP_PREFIX = '.lading-tmp-';

const HINT = 'keys are relative `/`-separated paths such as `runs/42/out.bin`: no leading `/`, no `.` or `..` segments, no empty segments, no backslashes or control characters';
/** S3 and GCS both cap keys at 1024 UTF-8 bytes; POSIX caps one name at 255. */
const MAX_KEY_BYTES = 1024;
const MAX_SEGMENT_BYTES = 255;

function unsafe(what: string, value: string, why: string): LadingError {
  return new LadingError('UNSAFE_KEY', `${what} ${JSON.stringify(value)} is refused: ${why}`, { hint: HINT });
}

/** The reason a key (or a list prefix, with `partial` true) is unsafe, or undefined when it is fine. */
function problem(key: string, partial: boolean): string | undefined {
  if (typeof key !== 'string') return 'it is not a string';
  if (!partial && key.length === 0) return 'it is empty';
  if (key.includes('\0')) return 'it contains a NUL byte';
  if (/[\x01-\x1f\x7f]/.test(key)) return 'it contains a control character';
  if (key.includes('\\')) return 'it contains a backslash';
  if (key.startsWith('/')) return 'it is absolute (starts with `/`)';
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) return `it is longer than ${MAX_KEY_BYTES} bytes`;
  const segments = key.split('/');
  // A list prefix may end with `/` (a "directory") or with a partial name; a key may do neither.
  if (partial && segments.length > 1 && segments[segments.length - 1] === '') segments.pop();
  for (const s of segments) {
    if (s === '..') return 'it has a `..` segment, which would escape the store root';
    if (s === '.') return 'it has a `.` segment';
    if (s === '' && !(partial && key === '')) return 'it has an empty segment (`//` or a trailing `/`)';
    if (s.startsWith(TEMP_PREFIX)) return `\`${TEMP_PREFIX}*\` names are reserved for in-flight writes`;
    if (Buffer.byteLength(s) > MAX_SEGMENT_BYTES) return `a segment is longer than ${MAX_SEGMENT_BYTES} bytes`;
  }
  return undefined;
}

/** Throws UNSAFE_KEY unless `key` is a relative path that stays under the store root. */
export function checkKey(key: string): string {
  const why = problem(key, false);
  if (why !== undefined) throw unsafe('key', String(key), why);
  return key;
}

/** Like checkKey for list prefixes: '' (everything), `dir/`, or a partial name `dir/fil`. */
export function checkPrefix(prefix: string): string {
  const why = problem(prefix, true);
  if (why !== undefined) throw unsafe('prefix', String(prefix), why);
  return prefix;
}

/** True when `key` would pass checkKey (used to skip foreign objects, such as `dir/` markers, when listing). */
export function isSafeKey(key: string): boolean {
  return problem(key, false) === undefined;
}
