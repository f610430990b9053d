import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import { InvalidMessageError, describeZodError, type Consumer, type Queue } from '@lading/core';
import { Piscina } from 'piscina';
import { StoreCache } from './inputs.js';
import { TaskSchema, markerKey, type ThreadMessage, type ThreadResult } from './task.js';
import type { ThreadInput } from './thread.js';

export const DEFAULT_TASK_TOPIC = 'lading.tasks';
/** Extra time a fresh thread gets to load the handler before a shard's timeout starts counting. */
const STARTUP_ALLOWANCE_MS = 30_000;
/** Longest wait for a thread's last messages after its task settled. */
const END_WAIT_MS = 1000;
export const WORKER_GROUP = 'lading.workers';

export interface WorkerOptions {
  queue: Queue;
  /** Task topic. Default `lading.tasks`. */
  topic?: string;
  /** Worker threads (and shards in flight). Default: the cores of this node. */
  threads?: number;
  /** Lease per task; renewed from the main thread every third of it. Default: the topic's. */
  leaseMs?: number;
  /** On close: how long running shards may finish before they are handed back. Default 30 s. */
  graceMs?: number;
  /** How long a thread may ignore an abort before it is terminated. Default 2 s. */
  abortGraceMs?: number;
}

export interface ShardEvent {
  job: string;
  shard: string;
  attempt: number;
}

/** Where the compiled thread entry is: next to this file in dist/, or in dist/ when running from src/ (tests). */
function threadFile(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const sibling = join(here, 'thread.js');
  return existsSync(sibling) ? sibling : join(here, '..', 'dist', 'thread.js');
}

/**
 * A node's worker: takes shard tasks from the queue (group `lading.workers`) and runs their handlers
 * in a Piscina pool of worker threads. Events: `started`, `done`, `skipped` (already committed),
 * `failed`, `released` (handed back unfinished on close), `progress`, `log`.
 */
export class RunnerWorker extends EventEmitter {
  readonly pool: Piscina;
  readonly consumer: Consumer;
  private readonly stores = new StoreCache();
  private closing: Promise<void> | undefined;

  constructor(private readonly options: WorkerOptions) {
    super();
    const threads = Math.max(1, options.threads ?? availableParallelism());
    this.pool = new Piscina({ filename: threadFile(), minThreads: 1, maxThreads: threads, idleTimeout: 30_000, concurrentTasksPerWorker: 1 });
    const topic = options.topic ?? DEFAULT_TASK_TOPIC;
    this.consumer = options.queue.consume(topic, { group: WORKER_GROUP, concurrency: threads, leaseMs: options.leaseMs, graceMs: options.graceMs }, (message, ctx) =>
      this.runTask(message.body, message.attempt, ctx.checkpoint, ctx.signal, (state) => ctx.saveCheckpoint(state as never)),
    );
    this.consumer.on('hospital', (r) => this.emit('hospital', r));
    this.consumer.on('error', (e) => this.emit('error', e));
  }

  get counts() {
    return this.consumer.counts;
  }

  private async runTask(body: unknown, attempt: number, checkpoint: unknown, signal: AbortSignal, save: (state: unknown) => Promise<void>): Promise<void> {
    const parsed = TaskSchema.safeParse(body);
    if (!parsed.success) throw new InvalidMessageError(`not a lading shard task: ${describeZodError(parsed.error)}`);
    const task = parsed.data;
    const event: ShardEvent = { job: task.job, shard: task.shard.id, attempt };
    // Idempotent redelivery: a shard whose commit marker exists is done, whoever did it.
    const output = await this.stores.get(task.output);
    if (await output.stat(markerKey(task.job, task.shard.id))) {
      this.emit('skipped', event);
      return;
    }
    this.emit('started', event);
    const channel = new MessageChannel();
    const kill = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const timeout = () => { timedOut = true; kill.abort(); };
    let ended!: () => void;
    const end = new Promise<void>((resolve) => { ended = resolve; });
    channel.port1.on('message', (m: ThreadMessage) => {
      if (m.type === 'begin') {
        // The timeout counts the handler's run, not the thread's start-up (module loads of a fresh thread).
        if (task.timeoutMs) { clearTimeout(timer); timer = setTimeout(timeout, task.timeoutMs); }
      } else if (m.type === 'end') ended();
      else if (m.type === 'checkpoint') void save(m.state).catch((e: unknown) => this.emit('error', e));
      else if (m.type === 'progress') this.emit('progress', { ...event, done: m.done, total: m.total });
      else this.emit('log', { ...event, level: m.level, message: m.message });
    });
    const onAbort = () => {
      channel.port1.postMessage({ type: 'abort' });
      setTimeout(() => kill.abort(signal.reason), this.options.abortGraceMs ?? 2000).unref();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    // Until the handler begins, allow the thread STARTUP_ALLOWANCE_MS more (a handler module that hangs on import).
    if (task.timeoutMs) timer = setTimeout(timeout, task.timeoutMs + STARTUP_ALLOWANCE_MS);
    try {
      const input: ThreadInput = { task, attempt, checkpoint: checkpoint as ThreadInput['checkpoint'], port: channel.port2 };
      const result = (await this.pool.run(input, { transferList: [channel.port2], signal: kill.signal })) as ThreadResult;
      this.emit('done', { ...event, outputs: result.outputs });
    } catch (e) {
      const error = timedOut ? Object.assign(new Error(`shard ${task.shard.id} timed out after ${task.timeoutMs} ms; its thread was terminated`), { name: 'TimeoutError' }) : e;
      // Aborted because the worker is closing: the consumer hands the task back (not an attempt), so not `failed`.
      const reason: unknown = signal.reason;
      const handedBack = !timedOut && signal.aborted && reason instanceof Error && (reason as { code?: unknown }).code === 'CLOSED';
      this.emit(handedBack ? 'released' : 'failed', { ...event, error });
      throw error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      // Checkpoints posted just before the handler returned or threw may still be in flight on the port:
      // wait for the thread's `end` (unless the thread was terminated) so the retry resumes from the last one.
      // (A ref'd timer: when the thread died, nothing else may be keeping this process alive.)
      if (!kill.signal.aborted) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, END_WAIT_MS);
          void end.then(() => { clearTimeout(t); resolve(); });
        });
      }
      channel.port1.close();
    }
  }

  /** Drain: no new tasks; running shards finish within the grace period or are handed back. */
  close(options: { graceMs?: number } = {}): Promise<void> {
    this.closing ??= (async () => {
      await this.consumer.close(options);
      await this.pool.destroy();
      await this.stores.close();
    })();
    return this.closing;
  }
}

export function startWorker(options: WorkerOptions): RunnerWorker {
  return new RunnerWorker(options);
}
