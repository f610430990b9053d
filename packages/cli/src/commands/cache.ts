import type { Command } from 'commander';
import type { Cli } from '../context.js';
import { action, examples, withJson } from './shared.js';

/** `lading cache stats|evict`: the local read-through cache directory of this node (per user by default). */

interface CacheDirOptions {
  cacheDir?: string;
  cacheMax?: string;
}
interface EvictOptions extends CacheDirOptions {
  all?: boolean;
  prefix?: string;
  to?: string;
}

function cacheOptions(cmd: Command): Command {
  return cmd
    .option('--cache-dir <dir>', 'cache directory (env LADING_CACHE_DIR, config cache.dir; default $XDG_CACHE_HOME/lading or ~/.cache/lading)')
    .option('--cache-max <size>', 'byte budget of the cache, e.g. 200GiB (config cache.max; default 10GiB)');
}

export function registerCache(program: Command): void {
  const cache = program.command('cache').description("inspect and evict this node's local read-through cache (blocks of objects read from file:, s3:// and gs:// stores)");
  examples(cache, ['lading cache stats', 'lading cache evict --to 50GiB']);

  const stats = cacheOptions(cache.command('stats').description('show the cache directory, its budget and usage (bytes, blocks, objects, pinned bytes)'));
  withJson(stats);
  examples(stats, ['lading cache stats', 'lading cache stats --cache-dir /nvme/$USER/lading --json']);
  action<CacheDirOptions>(stats, showStats);

  const evict = cacheOptions(
    cache
      .command('evict')
      .description('remove cached blocks: all of them, those of objects under a key prefix, or the least recently used down to a size; with --store URI, --all and --prefix only touch that store\'s objects. The cache only holds copies: nothing is lost')
      .option('--all', 'remove every cached block (pinned ones too)')
      .option('--prefix <key-prefix>', 'remove the blocks of objects whose key starts with this (pinned ones too)')
      .option('--to <size>', 'remove least-recently-used unpinned blocks until at most this much is cached, e.g. 10GiB'),
  );
  withJson(evict);
  examples(evict, ['lading cache evict --all', 'lading cache evict --prefix datasets/val/ --store s3://bucket', 'lading cache evict --to 10GiB']);
  action<EvictOptions>(evict, evictCache);
}

interface Where {
  dir: string;
  source: string;
  maxBytes: number | string | undefined;
  exists: boolean;
}

/** The cache directory and budget this invocation uses: flag, env, config file, per-user default. */
export async function cacheLocation(cli: Cli, o: CacheDirOptions): Promise<Where> {
  return where(cli, o);
}

async function where(cli: Cli, o: CacheDirOptions): Promise<Where> {
  const [{ loadConfig }, { defaultCacheDir }, { existsSync }] = await Promise.all([import('../config.js'), import('@lading/storage'), import('node:fs')]);
  const config = loadConfig({ flags: { queue: cli.options.queue, store: cli.options.store, config: cli.options.config, cacheDir: o.cacheDir }, env: cli.env, cwd: cli.cwd });
  const dir = config.cacheDir ?? defaultCacheDir(cli.env);
  const source = { flag: '--cache-dir', env: 'LADING_CACHE_DIR', config: `cache.dir in ${config.file ?? 'the config file'}`, default: 'the per-user default' }[config.sources.cacheDir];
  return { dir, source, maxBytes: o.cacheMax ?? config.cacheMax, exists: existsSync(dir) };
}

async function showStats(cli: Cli, o: CacheDirOptions): Promise<void> {
  const [{ openCache, DEFAULT_CACHE_MAX, DEFAULT_BLOCK_BYTES }, { formatBytes, parseBytes }] = await Promise.all([import('@lading/storage'), import('@lading/core')]);
  const w = await where(cli, o);
  let s: { maxBytes: number; blockSize: number; bytes: number; blocks: number; objects: number; pinnedBytes: number; tempFiles: number };
  if (w.exists) {
    const cache = await openCache({ dir: w.dir, ...(w.maxBytes !== undefined ? { maxBytes: w.maxBytes } : {}) });
    s = await cache.stats();
  } else {
    // Never create the directory just to say it is empty.
    s = { maxBytes: parseBytes(w.maxBytes ?? DEFAULT_CACHE_MAX, '--cache-max'), blockSize: DEFAULT_BLOCK_BYTES, bytes: 0, blocks: 0, objects: 0, pinnedBytes: 0, tempFiles: 0 };
  }
  const used = s.maxBytes > 0 ? (100 * s.bytes) / s.maxBytes : 0;
  if (cli.json) {
    cli.out.result({ dir: w.dir, source: w.source, exists: w.exists, maxBytes: s.maxBytes, blockSize: s.blockSize, bytes: s.bytes, usedPercent: Number(used.toFixed(2)), blocks: s.blocks, objects: s.objects, pinnedBytes: s.pinnedBytes, tempFiles: s.tempFiles });
    return;
  }
  cli.out.line(`cache dir   ${w.dir} (from ${w.source})${w.exists ? '' : ' — does not exist yet'}`);
  cli.out.line(`budget      ${formatBytes(s.maxBytes)}`);
  cli.out.line(`used        ${formatBytes(s.bytes)} (${used.toFixed(1)}%): ${s.blocks} block${s.blocks === 1 ? '' : 's'} of ${s.objects} object${s.objects === 1 ? '' : 's'}`);
  cli.out.line(`pinned      ${formatBytes(s.pinnedBytes)}`);
  if (s.tempFiles > 0) cli.out.line(`temp files  ${s.tempFiles} (fills in flight, or debris of killed processes; swept when stale)`);
}

async function evictCache(cli: Cli, o: EvictOptions): Promise<void> {
  const [{ openCache, parseStoreUri }, { LadingError, formatBytes, parseBytes }] = await Promise.all([import('@lading/storage'), import('@lading/core')]);
  const chosen = [o.all ? '--all' : undefined, o.prefix !== undefined ? '--prefix' : undefined, o.to !== undefined ? '--to' : undefined].filter((x) => x !== undefined);
  const hint = 'choose one: --all, --prefix KEY-PREFIX (optionally with --store URI) or --to SIZE (e.g. --to 10GiB)';
  if (chosen.length === 0) throw new LadingError('BAD_ARGUMENT', 'cache evict: say what to evict', { hint });
  if (chosen.length > 1) throw new LadingError('BAD_ARGUMENT', `cache evict: ${chosen.join(' and ')} cannot be combined`, { hint });
  // The global --store names the store whose objects --all / --prefix are limited to (only when given as a flag).
  const storeFlag = typeof cli.options.store === 'string' ? cli.options.store : undefined;
  if (storeFlag !== undefined && o.to !== undefined) throw new LadingError('BAD_ARGUMENT', 'cache evict: --store limits --all or --prefix, not --to', { hint });
  const toBytes = o.to === undefined ? undefined : parseBytes(o.to, '--to');
  const store = storeFlag === undefined ? undefined : parseStoreUri(storeFlag, { cwd: cli.cwd }).uri;
  const w = await where(cli, o);
  let result = { blocks: 0, bytes: 0 };
  let remaining = 0;
  if (w.exists) {
    const cache = await openCache({ dir: w.dir, ...(w.maxBytes !== undefined ? { maxBytes: w.maxBytes } : {}) });
    result = await cache.evict({ ...(o.all ? { all: true } : {}), ...(o.prefix !== undefined ? { prefix: o.prefix } : {}), ...(store !== undefined ? { store } : {}), ...(toBytes !== undefined ? { toBytes } : {}) });
    remaining = (await cache.stats()).bytes;
  }
  if (cli.json) {
    cli.out.result({ dir: w.dir, evictedBlocks: result.blocks, evictedBytes: result.bytes, remainingBytes: remaining });
    return;
  }
  cli.out.line(`evicted ${result.blocks} block${result.blocks === 1 ? '' : 's'} (${formatBytes(result.bytes)}) from ${w.dir}; ${formatBytes(remaining)} remain cached`);
}
