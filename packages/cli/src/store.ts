import type { PayloadStore } from '@lading/core';

/**
 * Open the claim-check store a URI names (`file:…`, `s3://…`, `gs://…`) through @lading/storage.
 * @lading/storage pulls in the cloud SDKs, so it is only loaded by commands that move message bodies.
 *
 * `required` is false for the default store: if the storage package cannot be loaded, the CLI works on
 * without a store (bodies must then fit inline) instead of failing every command.
 */
export async function openConfiguredStore(uri: string, options: { required: boolean; cwd?: string }): Promise<PayloadStore | undefined> {
  let storage: typeof import('@lading/storage');
  try {
    storage = await import('@lading/storage');
  } catch (e) {
    if (!options.required) return undefined;
    const { LadingError } = await import('@lading/core');
    throw new LadingError('UNSUPPORTED', `store ${uri}: the storage package could not be loaded (${(e as Error).message})`, { hint: 'reinstall lading (pnpm install), or run without a store: --no-store', cause: e });
  }
  if (typeof storage.openStore !== 'function') {
    if (!options.required) return undefined;
    const { LadingError } = await import('@lading/core');
    throw new LadingError('UNSUPPORTED', `store ${uri}: this build of @lading/storage has no openStore`, { hint: 'run without a store: --no-store' });
  }
  return storage.openStore(uri, options.cwd === undefined ? {} : { cwd: options.cwd });
}

/** Close a store opened by openConfiguredStore (BlobStore has close(); the PayloadStore port does not require it). */
export async function closeStore(store: PayloadStore | undefined): Promise<void> {
  const closable = store as (PayloadStore & { close?: () => Promise<void> }) | undefined;
  if (closable && typeof closable.close === 'function') await closable.close();
}

/**
 * A store that loads @lading/storage only when a payload actually moves (a body over the inline limit is
 * published, or a claim check is read). Publishing small messages never pays for the storage layer.
 */
export class LazyStore implements PayloadStore {
  private opened: Promise<PayloadStore | undefined> | undefined;
  private real: PayloadStore | undefined;

  constructor(
    private readonly configuredUri: string,
    private readonly options: { required: boolean; cwd?: string },
  ) {}

  /** The store's canonical URI once opened (the queue reads it only after a call has opened it). */
  get uri(): string {
    return this.real?.uri ?? this.configuredUri;
  }

  async open(): Promise<PayloadStore> {
    this.opened ??= openConfiguredStore(this.configuredUri, this.options).then((s) => (this.real = s));
    const store = await this.opened;
    if (!store) {
      const { LadingError } = await import('@lading/core');
      throw new LadingError('UNSUPPORTED', `store ${this.configuredUri} cannot be opened: the storage package is not available in this build`, { hint: 'run with --no-store (bodies must then fit inline)' });
    }
    return store;
  }

  async write(key: string, body: Uint8Array | string, options?: { contentType?: string; expectedChecksum?: string }): Promise<{ key: string; size: number; checksum: string }> {
    return (await this.open()).write(key, body, options);
  }

  async read(key: string) {
    return (await this.open()).read(key);
  }

  async stat(key: string): Promise<{ size: number } | undefined> {
    return (await this.open()).stat(key);
  }

  async delete(key: string): Promise<boolean> {
    return (await this.open()).delete(key);
  }

  async close(): Promise<void> {
    if (this.opened) await closeStore(await this.opened.catch(() => undefined));
  }
}
