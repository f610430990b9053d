export { CachedStore, openCache, withCache } from './store.js';
export { BlobCache, type CacheStats, type EvictOptions, type EvictResult } from './blob-cache.js';
export { defaultCacheDir, resolveCacheOptions, DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_MAX, type CacheOptions, type ResolvedCacheOptions } from './options.js';
