import { z } from 'zod';

export const ShardDescriptorSchema = z.object({
  id: z.string().min(1),
  index: z.number().int().nonnegative(),
  input: z.string().min(1),
  storeUri: z.string().min(1),
  key: z.string().min(1),
  start: z.number().int().nonnegative(),
  end: z.number().int().nonnegative(),
  objectSize: z.number().int().nonnegative(),
  etag: z.string(),
  align: z.enum(['none', 'newline']),
});

/** The small message one shard travels as: descriptors only, never file bytes. */
export const TaskSchema = z.object({
  kind: z.literal('lading.shard'),
  job: z.string().min(1),
  jobName: z.string().optional(),
  shard: ShardDescriptorSchema,
  /** Module URL or package name exporting the handler. */
  handler: z.string().min(1),
  /** Store URI prefix for outputs. */
  output: z.string().min(1),
  params: z.record(z.string(), z.json()).default({}),
  timeoutMs: z.number().positive().optional(),
});
export type Task = z.infer<typeof TaskSchema>;

/** Where a shard's commit marker lives in the output store: written after its outputs, checked before a run. */
export function markerKey(job: string, shardId: string): string {
  return `_lading/${job}/done/${shardId}.json`;
}

const isStr = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The task in a delivered body, checked by hand: the hot path of the worker, where zod's parse costs more
 * than the rest of a no-op shard's main-thread work. It accepts exactly what TaskSchema accepts, except that
 * `params` is only checked to be an object: a delivered body was parsed from JSON, so every value in it is
 * JSON already. Returns undefined for anything else; the caller then asks TaskSchema (which also words the
 * error). The result holds only the task's fields, so nothing else crosses into a worker thread.
 */
export function readTask(body: unknown): Task | undefined {
  if (!isRecord(body) || body.kind !== 'lading.shard') return undefined;
  const { job, jobName, shard: s, handler, output, params, timeoutMs } = body;
  if (!isStr(job) || !isStr(handler) || !isStr(output) || !isRecord(s)) return undefined;
  if (jobName !== undefined && typeof jobName !== 'string') return undefined;
  if (params !== undefined && !isRecord(params)) return undefined;
  if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && Number.isFinite(timeoutMs) && timeoutMs > 0)) return undefined;
  if (!isStr(s.id) || !isCount(s.index) || !isStr(s.input) || !isStr(s.storeUri) || !isStr(s.key) || !isCount(s.start) || !isCount(s.end)
    || !isCount(s.objectSize) || typeof s.etag !== 'string' || (s.align !== 'none' && s.align !== 'newline')) return undefined;
  const shard = { id: s.id, index: s.index, input: s.input, storeUri: s.storeUri, key: s.key, start: s.start, end: s.end, objectSize: s.objectSize, etag: s.etag, align: s.align as 'none' | 'newline' };
  const task: Task = { kind: 'lading.shard', job, shard, handler, output, params: (params ?? {}) as Task['params'] };
  if (jobName !== undefined) task.jobName = jobName;
  if (timeoutMs !== undefined) task.timeoutMs = timeoutMs;
  return task;
}

/**
 * Messages a worker thread sends to the main thread (over the thread's parentPort, surfacing as the pool's
 * `message` event), tagged with the run they belong to. A run's messages arrive in the order posted, so its
 * `done` or `failed` comes after every checkpoint it posted.
 */
export type ThreadMessage = { run: number } & (
  /** The handler is about to run (its module loaded, stores open, no commit marker): the shard has started. */
  | { type: 'begin' }
  /** The run's end: the shard succeeded (or was `skipped`: its commit marker was there already). `ms`: the run's time in the thread. */
  | { type: 'done'; skipped?: boolean; outputs: ShardOutput[]; ms: number }
  /** The run's end: the shard failed with `error`. */
  | { type: 'failed'; error: unknown; ms: number }
  /** Several runs' ends (`done` or `failed`) in one message (`run` is 0): a chunk's results travel together. */
  | { type: 'results'; list: ThreadMessage[] }
  | { type: 'checkpoint'; state: unknown }
  | { type: 'progress'; done: number; total?: number | undefined }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string }
);

/** Claim slots shared by the RunnerWorker and its threads (see ThreadInput.slots): a run's is `slots[run & SLOT_MASK]`. */
export const SLOT_COUNT = 1 << 16;
export const SLOT_MASK = SLOT_COUNT - 1;

export interface ShardOutput {
  key: string;
  size: number;
  checksum: string;
}
