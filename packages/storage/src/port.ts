import type { Readable } from 'node:stream';

/**
 * The one port every storage backend implements (file, s3, gs) and every layer wraps (cache, retry).
 * Keys are `/`-separated relative paths under the store's root; drivers refuse keys that would escape it.
 */
export interface ObjectStat {
  key: string;
  size: number;
  /** Backend version tag: S3/GCS ETag or generation, or `size-mtimeNs` for POSIX files. Changes when the bytes change. */
  etag: string;
  mtime: Date;
  /** `sha256:<hex>` when the backend knows it (written by lading, or stored as metadata). */
  checksum?: string | undefined;
  contentType?: string | undefined;
}

export interface ReadOptions {
  /** First byte, inclusive. Default 0. */
  start?: number;
  /** Last byte, exclusive. Default: end of object. */
  end?: number;
  signal?: AbortSignal;
}

export interface WriteOptions {
  contentType?: string;
  /** When given, the write fails (and leaves nothing behind) if the bytes do not hash to it. `sha256:<hex>`. */
  expectedChecksum?: string;
  /** Size hint for choosing part sizes; not required. */
  sizeHint?: number;
  /** Fail with CONFLICT instead of replacing an existing object. */
  ifNoneMatch?: boolean;
  /**
   * Default true: on a file store the object (its bytes and its name) is flushed to disk before the write
   * resolves. false: still atomic (readers see the whole object or none), but a crash of the machine soon after
   * may lose it or leave it empty: for objects whose loss only means work done again (the runner's commit
   * markers, written after their outputs were flushed). Object stores ignore it (a PUT is durable when it returns).
   */
  durable?: boolean;
  signal?: AbortSignal;
}

export interface WriteResult {
  key: string;
  size: number;
  etag: string;
  /** `sha256:<hex>` of the bytes written, computed while streaming. */
  checksum: string;
}

export interface ListOptions {
  /** Page size hint for paginated backends. */
  pageSize?: number;
  signal?: AbortSignal;
}

export interface BlobStore {
  /** Canonical URI of the store root, e.g. `file:/mnt/lustre/proj`, `s3://bucket/prefix`. */
  readonly uri: string;
  /** Backend kind: `file`, `s3`, `gs`, or a layer name wrapping one (`cache(s3)`). */
  readonly kind: string;

  /** Stat one object; `undefined` when it does not exist. */
  stat(key: string): Promise<ObjectStat | undefined>;
  /** Stream a byte range. Throws LadingError NOT_FOUND for a missing key. */
  read(key: string, options?: ReadOptions): Promise<Readable>;
  /** Atomic streaming write: readers see the old object or the whole new one, never a part. */
  write(key: string, body: Readable | Uint8Array | string, options?: WriteOptions): Promise<WriteResult>;
  /** Stream stats of all objects whose key starts with `prefix`, in key order where the backend gives one, paginated inside. */
  list(prefix?: string, options?: ListOptions): AsyncIterable<ObjectStat>;
  /** Delete; `false` when there was nothing to delete. */
  delete(key: string): Promise<boolean>;
  /** Server-side copy when the backend has one, streamed otherwise. */
  copy(fromKey: string, toKey: string): Promise<WriteResult>;
  close(): Promise<void>;
}
