import type { BlobStore } from '@lading/storage';
import type { Job, JobStatus } from '@lading/runner';
import type { Cli } from '../context.js';
import { ExitCode, requestExit, type LadingErrorLike } from '../errors.js';
import { ago, formatMs, plural } from '../output.js';

/**
 * What the runner commands (submit, worker, status, wait) share: the store that holds job records, the
 * wait loop, and how a job's status is printed. Loaded only when one of them runs.
 */

/** The configured store (flags > env > config > default), where `.lading/jobs/<id>.json` records live. */
export async function openJobStore(cli: Cli): Promise<BlobStore> {
  const config = cli.config();
  if (config.store === undefined) {
    const { LadingError } = await import('@lading/core');
    throw new LadingError('BAD_CONFIG', 'jobs are recorded in the store, and no store is configured (--no-store or LADING_STORE=none)', {
      hint: 'give one with --store (default file:./.lading/store) or LADING_STORE; submit, status and wait must use the same store',
    });
  }
  const { openStore } = await import('@lading/storage');
  const store = await openStore(config.store, { cwd: cli.cwd });
  cli.onClose(() => store.close());
  return store;
}

/** Open the queue and the job store, then one job by id (NOT_FOUND, exit 2, when the store has no such job). */
export async function openJob(cli: Cli, id: string): Promise<Job> {
  const { Job } = await import('@lading/runner');
  const store = await openJobStore(cli);
  const queue = await cli.queue({ store: true });
  return Job.open(id, queue, store);
}

/** The global flags a follow-up command needs to find the same queue and store, e.g. ` --queue sqlite:x.db`. */
export function sameBackendFlags(cli: Cli): string {
  const config = cli.config();
  const parts: string[] = [];
  if (config.sources.queue === 'flag') parts.push(`--queue ${shellQuote(config.queue)}`);
  if (config.sources.store === 'flag' && config.store !== undefined) parts.push(`--store ${shellQuote(config.store)}`);
  return parts.length ? ` ${parts.join(' ')}` : '';
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Throughput over a sliding window of samples (shards per second), and the ETA it gives. */
export class Rate {
  private readonly samples: { at: number; done: number }[] = [];
  constructor(private readonly windowMs = 30_000) {}

  add(done: number, at = Date.now()): void {
    this.samples.push({ at, done });
    while (this.samples.length > 2 && at - this.samples[1]!.at >= this.windowMs) this.samples.shift();
  }

  /** Shards per second between the oldest sample in the window and the newest; undefined with fewer than two. */
  get perSecond(): number | undefined {
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (!first || !last || last.at - first.at < 200) return undefined;
    return ((last.done - first.done) * 1000) / (last.at - first.at);
  }

  etaSeconds(left: number): number | undefined {
    const r = this.perSecond;
    if (left <= 0) return 0;
    return r && r > 0 ? left / r : undefined;
  }
}

/** The status of a job as printed with --json: the SDK's counts, plus the record's facts and a state. */
export function statusJson(job: Job, s: JobStatus, rate?: Rate): Record<string, unknown> {
  const perSecond = rate?.perSecond;
  const eta = rate?.etaSeconds(s.total - s.done - s.hospital);
  return {
    id: s.id,
    name: s.name ?? null,
    state: stateOf(s),
    total: s.total,
    queued: s.queued,
    retrying: s.retrying,
    running: s.running,
    done: s.done,
    hospital: s.hospital,
    finished: s.finished,
    ok: s.ok,
    throughput: perSecond === undefined ? null : round(perSecond, 3),
    etaSeconds: eta === undefined || s.finished ? null : Math.round(eta),
    topic: job.record.topic,
    output: job.record.output,
    inputs: job.record.inputs,
    bytes: job.record.bytes,
    submittedAt: job.record.submittedAt,
  };
}

export type JobState = 'queued' | 'running' | 'done' | 'failed';

/** queued: nothing started yet; running; done: finished, nothing in the hospital; failed: finished with shards in it. */
export function stateOf(s: JobStatus): JobState {
  if (s.finished) return s.hospital > 0 ? 'failed' : 'done';
  if (s.done === 0 && s.running === 0 && s.retrying === 0 && s.hospital === 0) return 'queued';
  return 'running';
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export function formatRate(perSecond: number | undefined): string {
  if (perSecond === undefined) return '–';
  if (perSecond >= 10) return `${perSecond.toFixed(0)} shards/s`;
  if (perSecond >= 0.1) return `${perSecond.toFixed(2)} shards/s`;
  return `${(perSecond * 60).toFixed(2)} shards/min`;
}

export function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function percent(n: number, total: number): string {
  return total > 0 ? `${Math.floor((n * 100) / total)}%` : '100%';
}

/** One line: `done 10/42 (23%), running 2, queued 30, retrying 0, hospital 0, 3.2 shards/s, ETA 10s`. */
export function statusLine(s: JobStatus, rate?: Rate): string {
  const parts = [`done ${s.done}/${s.total} (${percent(s.done, s.total)})`, `running ${s.running}`, `queued ${s.queued}`, `retrying ${s.retrying}`, `hospital ${s.hospital}`];
  if (rate && !s.finished) parts.push(formatRate(rate.perSecond), `ETA ${formatEta(rate.etaSeconds(s.total - s.done - s.hospital))}`);
  return parts.join(', ');
}

/** The block `lading status <id>` prints (also redrawn by --watch). */
export function statusBlock(job: Job, s: JobStatus, rate?: Rate, now = Date.now()): string[] {
  const r = job.record;
  const state = stateOf(s);
  const stateText = state === 'failed' ? `finished with ${plural(s.hospital, 'shard')} in the hospital` : state === 'done' ? 'finished' : state;
  const lines = [
    `job ${r.id}${r.name ? ` (${r.name})` : ''}: ${stateText}`,
    `  total      ${s.total}`,
    `  done       ${s.done} (${percent(s.done, s.total)})`,
    `  running    ${s.running}`,
    `  queued     ${s.queued}`,
    `  retrying   ${s.retrying}`,
    `  hospital   ${s.hospital}`,
  ];
  if (rate) lines.push(`  throughput ${formatRate(rate.perSecond)}`, `  eta        ${s.finished ? '–' : formatEta(rate.etaSeconds(s.total - s.done - s.hospital))}`);
  lines.push(`  topic      ${r.topic}`, `  output     ${r.output}`, `  submitted  ${r.submittedAt} (${ago(Date.parse(r.submittedAt), now)})`);
  return lines;
}

/** A LadingError-shaped error with a code of its own (exit 1: not a user mistake). */
export function timeoutError(message: string, hint: string): LadingErrorLike {
  return Object.assign(new Error(message), { name: 'LadingError', code: 'TIMEOUT', hint });
}

export interface WaitOptions {
  timeoutMs?: number | undefined;
  pollMs?: number;
  /** Merged into the --json result (submit --wait prints one JSON document, not two). */
  extra?: Record<string, unknown>;
}

/**
 * Wait until the job is finished: a progress bar on a TTY, a line now and then otherwise. Prints the
 * result; exit 3 when shards are in the hospital, exit 1 (a TIMEOUT error) when --timeout passes first.
 */
export async function waitForJob(cli: Cli, job: Job, options: WaitOptions = {}): Promise<JobStatus> {
  const out = cli.out;
  const started = Date.now();
  const deadline = options.timeoutMs === undefined ? Infinity : started + options.timeoutMs;
  const pollMs = options.pollMs ?? 250;
  const rate = new Rate();
  const progress = await out.progress(job.record.shards, `job ${job.id}`);
  let shown = 0;
  let lastLine = 0;
  let lastText = '';
  let s: JobStatus;
  try {
    for (;;) {
      s = await job.status();
      rate.add(s.done);
      const settled = s.done + s.hospital;
      if (settled > shown) {
        progress.increment(settled - shown);
        shown = settled;
      }
      if (s.finished) break;
      if (!out.interactive && !cli.json && Date.now() - lastLine >= 10_000) {
        const text = statusLine(s, rate);
        if (text !== lastText) out.note(`job ${job.id}: ${text}`);
        lastText = text;
        lastLine = Date.now();
      }
      if (Date.now() >= deadline) {
        progress.stop();
        if (cli.json) {
          const status = { ...statusJson(job, s, rate), timedOut: true };
          out.result(options.extra ? { ...options.extra, status } : status);
        }
        throw timeoutError(`job ${job.id} did not finish within ${formatMs(options.timeoutMs!)}: ${statusLine(s)}`, `the job goes on; wait again (lading wait ${job.id}${sameBackendFlags(cli)}), check that workers run (lading worker), or see lading status ${job.id}`);
      }
      await new Promise((r) => setTimeout(r, Math.max(10, Math.min(pollMs, deadline - Date.now()))));
    }
  } finally {
    progress.stop();
  }
  reportFinished(cli, job, s, Date.now() - started, options.extra);
  return s;
}

/** The result of a finished job; exit 3 and the hospital hint when shards are in the hospital. */
export function reportFinished(cli: Cli, job: Job, s: JobStatus, waitedMs: number, extra?: Record<string, unknown>): void {
  const out = cli.out;
  const flags = sameBackendFlags(cli);
  if (s.hospital > 0) requestExit(ExitCode.HOSPITAL);
  if (cli.json) {
    const status = { ...statusJson(job, s), waitedMs, ...(s.hospital > 0 ? { next: [`lading hospital list --job ${job.id}${flags}`, `lading hospital retry --job ${job.id}${flags}`] } : {}) };
    out.result(extra ? { ...extra, status } : status);
    return;
  }
  const took = waitedMs >= 1000 ? `${(waitedMs / 1000).toFixed(1)}s` : `${waitedMs}ms`;
  if (s.hospital === 0) {
    out.line(`job ${job.id} finished: ${plural(s.done, 'shard')} done, none in the hospital (waited ${took})`);
    out.line(`outputs: ${job.record.output}`);
    return;
  }
  out.line(`job ${job.id} finished with ${plural(s.hospital, 'shard')} in the hospital: ${s.done} of ${s.total} done (waited ${took})`);
  out.line(`see:   lading hospital list --job ${job.id}${flags}`);
  out.line(`then:  fix the handler or the data, and lading hospital retry --job ${job.id}${flags}`);
}
