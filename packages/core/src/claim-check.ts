import type { Readable } from 'node:stream';

/**
 * What the claim check needs from storage. @lading/storage's BlobStore satisfies it; core does not import
 * storage so that the queue works with no store at all (bodies must then fit inline).
 */
export interface PayloadStore {
  readonly uri: string;
  write(key: string, body: Uint8Array | string, options?: { contentType?: string; expectedChecksum?: string }): Promise<{ key: string; size: number; checksum: string }>;
  read(key: string): Promise<Readable>;
  stat(key: string): Promise<{ size: number } | undefined>;
  delete(key: string): Promise<boolean>;
}
