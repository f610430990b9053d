import type { Command } from 'commander';
import type { HospitalRecord, WorkerIdentity } from '@lading/core';
import type { ShardEvent } from '@lading/runner';
import type { Cli } from '../context.js';
import { ExitCode } from '../errors.js';
import { formatMs } from '../output.js';
import { action, cacheFlags, examples, onStopSignals, positiveInt, withJson } from './shared.js';

interface WorkerOptions {
  threads?: number;
  topic?: string;
  lease?: string;
  grace: string;
  maxIdle?: string;
  /** `--cache` / `--no-cache`: undefined when neither was given. */
  cache?: boolean;
  cacheDir?: string;
  cacheMax?: string;
  /** `--no-batch`: false. */
  batch: boolean;
}

export function registerWorker(program: Command): void {
  const cmd = program
    .command('worker')
    .description('run job shards from the queue in a pool of worker threads until SIGTERM / SIGINT (drain) or --max-idle; start one per node (srun lading worker)')
    .option('-t, --threads <n>', 'worker threads, i.e. shards run at once (default: the cores of this node)', positiveInt)
    .option('--topic <name>', 'task topic to take shards from (a job spec\'s `topic`; default lading.tasks)')
    .option('--lease <duration>', "lease per shard, renewed from the main thread while the shard runs (default: the topic's, 30s)")
    .option('--grace <duration>', 'on SIGTERM / SIGINT: how long running shards may finish before they are handed back', '30s')
    .option('--max-idle <duration>', 'exit 0 once no shard has run for this long, e.g. 10s (for scripts, tests and batch allocations)');
  // --cache before --no-cache: with --no-cache alone commander would default the option to true.
  cacheFlags(cmd, 'shard inputs (on by itself when LADING_CACHE_DIR or the config\'s cache.dir is set)');
  cmd.option('--no-cache', 'read shard inputs straight from their stores, even when a cache directory is configured');
  cmd.option('--no-batch', 'run short shards (< 5 ms) one per thread too, none leased ahead: a process that dies then charges an attempt only to the shards it was running');
  withJson(cmd);
  examples(cmd, [
    'lading worker',
    'lading worker --threads 8 --max-idle 5m',
    'lading worker --cache-dir /local/nvme/$USER/lading --cache-max 200GiB   # inputs read through the node\'s SSD',
    'lading worker --json >> worker-$(hostname).jsonl',
    '',
    '# Slurm: one worker per node, every core of it',
    '# srun --ntasks-per-node=1 lading worker --threads "$SLURM_CPUS_ON_NODE" --max-idle 10m',
  ]);
  action<WorkerOptions>(cmd, runWorker);
}

type StopReason = 'signal' | 'idle';

async function runWorker(cli: Cli, o: WorkerOptions): Promise<void> {
  const { parseDuration, formatBytes } = await import('@lading/core');
  const { DEFAULT_TASK_TOPIC, startWorker } = await import('@lading/runner');
  const { availableParallelism } = await import('node:os');
  const leaseMs = o.lease === undefined ? undefined : parseDuration(o.lease, '--lease');
  const graceMs = parseDuration(o.grace, '--grace');
  const maxIdleMs = o.maxIdle === undefined ? undefined : parseDuration(o.maxIdle, '--max-idle');
  const threads = o.threads ?? availableParallelism();
  const topic = o.topic ?? DEFAULT_TASK_TOPIC;
  const queue = await cli.queue({ store: true });
  const identity = queue.identity;
  const out = cli.out;

  const who = (id: WorkerIdentity) => ({ worker: id.label, host: id.host, pid: id.pid, ...(id.slurm ? { slurm: id.slurm } : {}) });
  const emit = (event: string, text: string, data: Record<string, unknown> = {}): void => {
    const time = new Date().toISOString();
    if (cli.json) out.jsonLine({ time, event, ...who(identity), ...data });
    else out.line(`${time} ${identity.label} ${event.padEnd(8)} ${text}`);
  };

  const cache = await workerCache(cli, o);
  const worker = startWorker({ queue, topic, threads, ...(leaseMs !== undefined ? { leaseMs } : {}), graceMs, ...(cache ? { cache } : {}), ...(o.batch ? {} : { batch: false }) });
  const startedAt = new Map<string, number>();
  const counts = { started: 0, done: 0, failed: 0, skipped: 0, hospital: 0, handedBack: 0 };
  let lastActivity = Date.now();
  const touch = () => (lastActivity = Date.now());
  const key = (e: ShardEvent) => `${e.job}:${e.shard}`;

  worker.on('started', (e: ShardEvent) => {
    touch();
    counts.started++;
    startedAt.set(key(e), Date.now());
    emit('started', `${e.job} shard ${e.shard} (attempt ${e.attempt + 1})`, { job: e.job, shard: e.shard, attempt: e.attempt + 1 });
  });
  worker.on('done', (e: ShardEvent & { outputs: { key: string; size: number }[] }) => {
    touch();
    counts.done++;
    const ms = Date.now() - (startedAt.get(key(e)) ?? Date.now());
    startedAt.delete(key(e));
    const bytes = e.outputs.reduce((n, x) => n + x.size, 0);
    emit('done', `${e.job} shard ${e.shard} in ${(ms / 1000).toFixed(2)}s: ${e.outputs.length} output${e.outputs.length === 1 ? '' : 's'} (${formatBytes(bytes)})`, {
      job: e.job, shard: e.shard, attempt: e.attempt + 1, ms, outputs: e.outputs.map((x) => ({ key: x.key, size: x.size })),
    });
  });
  worker.on('skipped', (e: ShardEvent) => {
    touch();
    counts.skipped++;
    emit('skipped', `${e.job} shard ${e.shard}: already committed, acknowledged without running`, { job: e.job, shard: e.shard, attempt: e.attempt + 1 });
  });
  worker.on('failed', (e: ShardEvent & { error: unknown }) => {
    touch();
    counts.failed++;
    startedAt.delete(key(e));
    const err = e.error instanceof Error ? `${e.error.name}: ${e.error.message}` : String(e.error);
    emit('failed', `${e.job} shard ${e.shard} (attempt ${e.attempt + 1}): ${err}`, { job: e.job, shard: e.shard, attempt: e.attempt + 1, error: err });
  });
  worker.on('released', (e: ShardEvent) => {
    touch();
    counts.handedBack++;
    startedAt.delete(key(e));
    emit('released', `${e.job} shard ${e.shard}: handed back unfinished (the drain grace passed); another worker runs it, not counted as an attempt`, { job: e.job, shard: e.shard, attempt: e.attempt + 1 });
  });
  worker.on('hospital', (r: HospitalRecord) => {
    touch();
    counts.hospital++;
    const job = r.envelope?.headers['lading-job'];
    const last = r.errors.at(-1);
    const err = last ? `${last.name}: ${last.message}` : '';
    emit('hospital', `${r.id} (${r.reason} after ${r.errors.length} attempt${r.errors.length === 1 ? '' : 's'}) -> hospital record ${r.hid}${job ? `; see: lading hospital list --job ${job}` : ''}`, {
      id: r.id, hid: r.hid, reason: r.reason, attempts: r.errors.length, error: err, ...(job ? { job } : {}),
    });
  });
  worker.on('log', (e: ShardEvent & { level: string; message: string }) => {
    touch();
    emit('log', `${e.job} shard ${e.shard} [${e.level}] ${e.message}`, { job: e.job, shard: e.shard, level: e.level, message: e.message });
  });
  worker.on('error', (e: unknown) => out.warn(`worker: ${e instanceof Error ? e.message : String(e)}`));

  emit('ready', `${threads} thread${threads === 1 ? '' : 's'} on topic ${topic} (queue ${cli.config().queue}${leaseMs !== undefined ? `, lease ${formatMs(leaseMs)}` : ''}, grace ${formatMs(graceMs)}${cache ? `, cache ${cache.dir} (${formatBytes(cache.maxBytes)})` : ''}${maxIdleMs !== undefined ? `, exits after ${formatMs(maxIdleMs)} idle` : ''}${o.batch ? '' : ', short shards not batched'})`, {
    topic, threads, queue: cli.config().queue, graceMs, batch: o.batch, ...(cache ? { cache } : {}), ...(leaseMs !== undefined ? { leaseMs } : {}), ...(maxIdleMs !== undefined ? { maxIdleMs } : {}),
  });

  let stop: ((reason: StopReason, signal?: NodeJS.Signals) => void) | undefined;
  const removeSignals = onStopSignals((t) => out.note(t), 'running shards come back after their lease', (sig) => stop?.('signal', sig));

  let idleTimer: NodeJS.Timeout | undefined;
  const { reason, signal } = await new Promise<{ reason: StopReason; signal?: NodeJS.Signals }>((resolve) => {
    stop = (why, sig) => {
      stop = undefined;
      clearInterval(idleTimer);
      resolve({ reason: why, ...(sig ? { signal: sig } : {}) });
    };
    if (maxIdleMs !== undefined) {
      idleTimer = setInterval(() => {
        if (worker.consumer.active > 0) touch();
        else if (Date.now() - lastActivity >= maxIdleMs) stop?.('idle');
      }, Math.max(20, Math.min(250, maxIdleMs / 4)));
    }
  });

  const running = worker.consumer.active;
  if (reason === 'signal') {
    emit('draining', `${signal}: taking no new shards; ${running} running (up to ${formatMs(graceMs)} to finish, then handed back); ${signal} again exits at once`, { signal, running, graceMs });
  }
  const drainStarted = Date.now();
  try {
    await worker.close({ graceMs });
  } finally {
    removeSignals();
  }
  const why = reason === 'idle' ? `idle for ${o.maxIdle}` : `${signal}, drained in ${((Date.now() - drainStarted) / 1000).toFixed(1)}s`;
  emit('stopped', `${why}: ${counts.done} done, ${counts.failed} failed, ${counts.skipped} skipped, ${counts.hospital} to the hospital${counts.handedBack ? `, ${counts.handedBack} handed back` : ''}`, {
    reason, ...(signal ? { signal } : {}), ...counts, exitCode: ExitCode.OK,
  });
}

/**
 * The cache the worker reads inputs through, or undefined: on with --cache / --cache-dir, or when the node
 * configures a cache directory (LADING_CACHE_DIR, config cache.dir); never with --no-cache. Validated here,
 * so a bad budget is a usage error before any thread starts.
 */
async function workerCache(cli: Cli, o: WorkerOptions): Promise<{ dir: string; maxBytes: number } | undefined> {
  if (o.cache === false) return undefined;
  const [{ cacheLocation }, { resolveCacheOptions, DEFAULT_CACHE_MAX }] = await Promise.all([import('./cache.js'), import('@lading/storage')]);
  const w = await cacheLocation(cli, o);
  const configured = o.cacheDir !== undefined || w.source !== 'the per-user default';
  if (o.cache !== true && !configured) return undefined;
  const resolved = resolveCacheOptions({ dir: w.dir, maxBytes: w.maxBytes ?? DEFAULT_CACHE_MAX });
  return { dir: resolved.dir, maxBytes: resolved.maxBytes };
}
