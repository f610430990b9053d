import { LadingError } from '@lading/core';
import { openStore, type BlobStore, type ObjectStat } from '@lading/storage';
import picomatch from 'picomatch';

/** An object URI split into the store that holds it and the key (or key pattern) inside that store. */
export interface ObjectLocation {
  storeUri: string;
  key: string;
}

const GLOB = /[*?[\]{}]/;

/**
 * Split `s3://bucket/corpus/**\/*.jsonl?endpoint=…` into store `s3://bucket/corpus?endpoint=…` and key
 * pattern `**\/*.jsonl`: the store root is the longest directory prefix without glob characters, so a
 * pattern can never reach outside it.
 */
export function splitObjectUri(uri: string): ObjectLocation {
  const q = uri.indexOf('?');
  const base = q >= 0 ? uri.slice(0, q) : uri;
  const query = q >= 0 ? uri.slice(q) : '';
  const m = /^(s3:\/\/|gs:\/\/|file:\/\/|file:)(.*)$/.exec(base);
  if (!m) throw new LadingError('BAD_URI', `input ${JSON.stringify(uri)} is not a store URI`, { hint: 'inputs look like file:/mnt/lustre/data/*.jsonl, s3://bucket/corpus/**/*.jsonl, gs://bucket/x.bin' });
  const scheme = m[1]!;
  const rest = m[2]!;
  const parts = rest.split('/');
  const bucketParts = scheme === 's3://' || scheme === 'gs://' ? 1 : 0;
  let cut = parts.length - 1; // index of the first part that belongs to the key
  for (let i = bucketParts; i < parts.length; i++) {
    if (GLOB.test(parts[i]!)) { cut = i; break; }
  }
  if (cut < bucketParts) cut = bucketParts;
  const rootParts = parts.slice(0, cut);
  const key = parts.slice(cut).join('/');
  if (!key) throw new LadingError('BAD_URI', `input ${JSON.stringify(uri)} names a directory or bucket, not objects`, { hint: 'add a file name or a pattern, e.g. /data/*.jsonl or s3://bucket/prefix/**' });
  let root = rootParts.join('/');
  if (scheme === 'file:' && root === '') root = '/';
  return { storeUri: `${scheme}${root}${query}`, key };
}

/** Stores opened by URI, shared by everything in one process or thread. */
export class StoreCache {
  private readonly stores = new Map<string, Promise<BlobStore>>();
  constructor(private readonly open: (uri: string) => Promise<BlobStore> = (uri) => openStore(uri)) {}

  get(uri: string): Promise<BlobStore> {
    let s = this.stores.get(uri);
    if (!s) {
      s = this.open(uri);
      s.catch(() => this.stores.delete(uri));
      this.stores.set(uri, s);
    }
    return s;
  }

  async close(): Promise<void> {
    const all = [...this.stores.values()];
    this.stores.clear();
    await Promise.all(all.map(async (s) => (await s.catch(() => undefined))?.close()));
  }
}

export interface InputObject extends ObjectStat {
  storeUri: string;
  /** Full object URI. */
  uri: string;
}

/** Stream the objects an input pattern names, in key order, never holding the whole listing. */
export async function* listInput(pattern: string, stores: StoreCache): AsyncGenerator<InputObject> {
  const { storeUri, key } = splitObjectUri(pattern);
  const store = await stores.get(storeUri);
  const objectUri = (k: string) => {
    const q = storeUri.indexOf('?');
    const base = q >= 0 ? storeUri.slice(0, q) : storeUri;
    return `${base.endsWith('/') ? base : `${base}/`}${k}${q >= 0 ? storeUri.slice(q) : ''}`;
  };
  if (!GLOB.test(key)) {
    const stat = await store.stat(key);
    if (!stat) throw new LadingError('NOT_FOUND', `input ${pattern} does not exist`, { hint: 'check the path; list a store with `lading store ls URI`' });
    yield { ...stat, storeUri, uri: objectUri(key) };
    return;
  }
  const literal = key.slice(0, key.search(GLOB));
  const isMatch = picomatch(key, { dot: false });
  let any = false;
  for await (const stat of store.list(literal)) {
    if (!isMatch(stat.key)) continue;
    any = true;
    yield { ...stat, storeUri, uri: objectUri(stat.key) };
  }
  if (!any) throw new LadingError('NOT_FOUND', `input pattern ${pattern} matches no object`, { hint: 'check the pattern; `lading store ls` shows what is there' });
}
