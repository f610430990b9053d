import { LadingError } from '@lading/core';
import { FileStore, type FileStoreOptions } from './drivers/file.js';
import { S3Store, type S3StoreOptions } from './drivers/s3.js';
import type { BlobStore } from './port.js';
import { parseStoreUri, type GsAddress } from './uri.js';

export interface OpenStoreOptions {
  /** Base for relative `file:` paths. Default: process.cwd(). */
  cwd?: string;
  file?: FileStoreOptions;
  s3?: S3StoreOptions;
  /** Passed to the gs driver's `openGsStore(address, options)`. */
  gs?: Record<string, unknown>;
}

/** Shape the gs driver module (./drivers/gs.js) exports. */
interface GsDriverModule {
  openGsStore(address: GsAddress, options?: Record<string, unknown>): Promise<BlobStore>;
}

// TODO(gs): replace with a static import once drivers/gs.ts exists; a variable specifier keeps this compiling until then.
const GS_DRIVER = './drivers/gs.js';

async function openGs(address: GsAddress, options: Record<string, unknown> | undefined): Promise<BlobStore> {
  let mod: Partial<GsDriverModule>;
  try {
    mod = (await import(GS_DRIVER)) as Partial<GsDriverModule>;
  } catch (e) {
    throw new LadingError('UNSUPPORTED', `store URI ${address.uri}: the gs driver is not available in this build`, { hint: 'use a file: or s3:// store', cause: e });
  }
  if (typeof mod.openGsStore !== 'function') throw new LadingError('UNSUPPORTED', `store URI ${address.uri}: the gs driver does not export openGsStore`);
  return mod.openGsStore(address, options);
}

/** Open a store by URI: `file:…`, `s3://bucket/prefix?…`, `gs://bucket/prefix?…`. Throws BAD_URI for bad URIs. */
export async function openStore(uri: string, options: OpenStoreOptions = {}): Promise<BlobStore> {
  const address = parseStoreUri(uri, options.cwd === undefined ? {} : { cwd: options.cwd });
  switch (address.scheme) {
    case 'file':
      return FileStore.open(address, options.file);
    case 's3':
      return new S3Store(address, options.s3);
    case 'gs':
      return openGs(address, options.gs);
  }
}
