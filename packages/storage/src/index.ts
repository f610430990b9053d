export * from './port.js';
export * from './keys.js';
export * from './mounts.js';
export * from './uri.js';
export { parseChecksum, type DigestResult } from './streams.js';
export { FileStore, type FileStoreOptions } from './drivers/file.js';
export { S3Store, type S3StoreOptions } from './drivers/s3.js';
export { openStore, type OpenStoreOptions } from './open.js';
export * from './cache/index.js';
