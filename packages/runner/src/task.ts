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

/** Messages a worker thread sends to the main thread over its MessagePort. */
export type ThreadMessage =
  /** The handler is about to run (its module loaded, stores open): the shard's timeout starts now. */
  | { type: 'begin' }
  /** The last message of a run: everything posted before it (checkpoints) has been delivered. */
  | { type: 'end' }
  | { type: 'checkpoint'; state: unknown }
  | { type: 'progress'; done: number; total?: number | undefined }
  | { type: 'log'; level: 'info' | 'warn' | 'error'; message: string };

export interface ThreadResult {
  outputs: { key: string; size: number; checksum: string }[];
  result: unknown;
}
