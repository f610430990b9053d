import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BroadcastChannel } from 'node:worker_threads';
import { HandBackError, InvalidMessageError, describeZodError, type Consumer, type Queue } from '@lading/core';
import type { CacheOptions } from '@lading/storage';
import { Piscina } from 'piscina';
import { TaskSchema, readTask, type Task, type ThreadMessage, type ThreadResult } from './task.js';
import type { ThreadInput } from './thread.js';

export const DEFAULT_TASK_TOPIC = 'lading.tasks';
/** Extra time a fresh thread gets to load the handler before a shard's timeout starts counting. */
const STARTUP_ALLOWANCE_MS = 30_000;
/** Longest wait for a thread's last messages after its task settled. */
const END_WAIT_MS = 1000;
export const WORKER_GROUP = 'lading.workers';
/**
 * Tasks leased ahead of the threads by default: none. Leasing ahead saves a thread the lease round trip
 * between two shards, but a task leased ahead is charged an attempt when its lease runs out, and if the
 * process dies (a shard that kills it, SIGKILL, OOM) every task it held ahead comes back as a failed
 * attempt without having run: a poison shard would take its innocent neighbours to the hospital with it.
 * On this project's 2-core build machine the round trip it saves did not show in `bench runner`.
 */
const PREFETCH_DEFAULT = 0;

export interface WorkerOptions {
  queue: Queue;
  /** Task topic. Default `lading.tasks`. */
  topic?: string;
  /** Worker threads (shards running at once). Default: the cores of this node. */
  threads?: number;
  /**
   * Tasks leased ahead of the threads, so a thread that finishes a shard starts the next one at once instead
   * of waiting for a lease round trip. Default 0: lease only what the threads can run now. A task leased
   * ahead is handed back untouched when the worker drains, but if the process dies it comes back as a failed
   * attempt (lease expired) without having run.
   */
  prefetch?: number;
  /** Lease per task; renewed from the main thread every third of it. Default: the topic's. */
  leaseMs?: number;
  /** On close: how long running shards may finish before they are handed back. Default 30 s. */
  graceMs?: number;
  /** How long a thread may ignore an abort before it is terminated. Default 2 s. */
  abortGraceMs?: number;
  /** Read shard inputs through this node's block cache (opened in each thread; outputs are never cached). */
  cache?: CacheOptions;
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
 * Piscina's per-task abort signal (aborting it terminates the task's thread), as the EventEmitter-like
 * object Piscina also accepts: an AbortController and an EventTarget listener per task cost more main-thread
 * time than the rest of the hand-off.
 */
class KillSwitch {
  aborted = false;
  reason: unknown;
  private listener: (() => void) | undefined;
  once(_event: 'abort', listener: () => void): void { this.listener = listener; }
  removeListener(_event: 'abort', _listener: () => void): void { this.listener = undefined; }
  off(_event: 'abort', _listener: () => void): void { this.listener = undefined; }
  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const l = this.listener;
    this.listener = undefined;
    l?.();
  }
}

/** Per run: what the main thread knows of a shard running (or about to run) in a thread. */
interface Run {
  event: ShardEvent;
  task: Task;
  /** Messages received from the thread for this run. */
  received: number;
  /** Settle the run once `received` reaches this (the thread's count, known when it returns). */
  want: number;
  begun: boolean;
  ended: boolean;
  arrived: (() => void) | undefined;
  timer: NodeJS.Timeout | undefined;
  timeout: () => void;
  save: (state: unknown) => Promise<void>;
}

/**
 * A node's worker: takes shard tasks from the queue (group `lading.workers`) and runs their handlers
 * in a Piscina pool of worker threads. Events: `started`, `done`, `skipped` (already committed),
 * `failed`, `released` (handed back unfinished on close), `progress`, `log`.
 *
 * Per task the main thread only checks the task's shape, leases and acks it (the consumer), and hands the
 * descriptor to a free thread; the commit-marker check and write happen in the thread. Threads post their
 * messages on their parentPort (one long-lived port per thread, no channel per task), tagged with the run.
 */
export class RunnerWorker extends EventEmitter {
  readonly pool: Piscina;
  readonly consumer: Consumer;
  private readonly runs = new Map<number, Run>();
  private nextRun = 0;
  /** Aborts to threads: `{ abort: run }`. */
  private readonly control: BroadcastChannel;
  private readonly controlName = `lading.runner.${process.pid}.${randomBytes(6).toString('hex')}`;
  /** Free threads, and the tasks (leased ahead) waiting for one. */
  private free: number;
  private readonly waiting: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private draining = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: WorkerOptions) {
    super();
    const threads = Math.max(1, options.threads ?? availableParallelism());
    this.free = threads;
    this.pool = new Piscina({ filename: threadFile(), minThreads: 1, maxThreads: threads, idleTimeout: 30_000, concurrentTasksPerWorker: 1 });
    this.pool.on('message', (m: ThreadMessage) => this.onThreadMessage(m));
    this.control = new BroadcastChannel(this.controlName);
    this.control.unref();
    const prefetch = Math.max(0, Math.floor(options.prefetch ?? PREFETCH_DEFAULT));
    const topic = options.topic ?? DEFAULT_TASK_TOPIC;
    this.consumer = options.queue.consume(topic, { group: WORKER_GROUP, concurrency: threads + prefetch, leaseMs: options.leaseMs, graceMs: options.graceMs }, (message, ctx) =>
      this.runTask(message.body, message.attempt, ctx.checkpoint, ctx.signal, (state) => ctx.saveCheckpoint(state as never)),
    );
    this.consumer.on('hospital', (r) => this.emit('hospital', r));
    this.consumer.on('error', (e) => this.emit('error', e));
  }

  get counts() {
    return this.consumer.counts;
  }

  private onThreadMessage(m: ThreadMessage): void {
    const r = typeof m?.run === 'number' ? this.runs.get(m.run) : undefined;
    if (!r) return;
    r.received++;
    if (m.type === 'begin') {
      r.begun = true;
      this.emit('started', r.event);
      // The timeout counts the handler's run, not the thread's start-up (module loads of a fresh thread).
      if (r.task.timeoutMs) { clearTimeout(r.timer); r.timer = setTimeout(r.timeout, r.task.timeoutMs); }
    } else if (m.type === 'end') r.ended = true;
    else if (m.type === 'checkpoint') void r.save(m.state).catch((e: unknown) => this.emit('error', e));
    else if (m.type === 'progress') this.emit('progress', { ...r.event, done: m.done, total: m.total });
    else this.emit('log', { ...r.event, level: m.level, message: m.message });
    if (r.arrived && (r.ended || r.received >= r.want)) r.arrived();
  }

  /** A free thread for a task: at once, or when one frees up (tasks leased ahead wait here, in lease order). */
  private acquire(signal: AbortSignal): Promise<void> | undefined {
    if (this.free > 0) { this.free--; return undefined; }
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => { signal.removeEventListener('abort', onAbort); resolve(); },
        reject: (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e); },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private releaseThread(): void {
    const next = this.waiting.shift();
    if (next) next.resolve();
    else this.free++;
  }

  private async runTask(body: unknown, attempt: number, checkpoint: unknown, signal: AbortSignal, save: (state: unknown) => Promise<void>): Promise<void> {
    let task = readTask(body);
    if (!task) {
      const parsed = TaskSchema.safeParse(body);
      if (!parsed.success) throw new InvalidMessageError(`not a lading shard task: ${describeZodError(parsed.error)}`);
      task = parsed.data;
    }
    const waited = this.acquire(signal);
    if (waited) await waited;
    try {
      // Draining: a task leased ahead that has not started goes back to the queue untouched.
      if (this.draining) throw new HandBackError('the worker is draining: handed back before it started');
      await this.dispatch(task, attempt, checkpoint, signal, save);
    } finally {
      this.releaseThread();
    }
  }

  private async dispatch(task: Task, attempt: number, checkpoint: unknown, signal: AbortSignal, save: (state: unknown) => Promise<void>): Promise<void> {
    const runId = ++this.nextRun;
    const kill = new KillSwitch();
    let timedOut = false;
    const run: Run = {
      event: { job: task.job, shard: task.shard.id, attempt }, task, received: 0, want: Infinity, begun: false, ended: false,
      arrived: undefined, timer: undefined, timeout: () => { timedOut = true; kill.abort(); }, save,
    };
    const { event } = run;
    this.runs.set(runId, run);
    const onAbort = () => {
      this.control.postMessage({ abort: runId });
      setTimeout(() => kill.abort(signal.reason), this.options.abortGraceMs ?? 2000).unref();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    // Until the handler begins, allow the thread STARTUP_ALLOWANCE_MS more (a handler module that hangs on import).
    if (task.timeoutMs) run.timer = setTimeout(run.timeout, task.timeoutMs + STARTUP_ALLOWANCE_MS);
    /** Wait (at most END_WAIT_MS) until this run's messages — checkpoints above all — have arrived. */
    const arrival = () => (run.ended || run.received >= run.want ? undefined : new Promise<void>((resolve) => {
      // (A ref'd timer: when the thread died, nothing else may be keeping this process alive.)
      const t = setTimeout(resolve, END_WAIT_MS);
      run.arrived = () => { clearTimeout(t); resolve(); };
    }));
    try {
      const input: ThreadInput = { task, run: runId, attempt, checkpoint: checkpoint as ThreadInput['checkpoint'], control: this.controlName };
      if (this.options.cache) input.cache = this.options.cache;
      const result = (await this.pool.run(input, { signal: kill })) as ThreadResult;
      run.want = result.posted;
      const wait = arrival();
      if (wait) await wait;
      if (result.skipped) this.emit('skipped', event);
      else this.emit('done', { ...event, outputs: result.outputs });
    } catch (e) {
      const error = timedOut ? Object.assign(new Error(`shard ${task.shard.id} timed out after ${task.timeoutMs} ms; its thread was terminated`), { name: 'TimeoutError' }) : e;
      // Aborted because the worker is closing: the consumer hands the task back (not an attempt), so not `failed`.
      const reason: unknown = signal.reason;
      const handedBack = !timedOut && signal.aborted && reason instanceof Error && (reason as { code?: unknown }).code === 'CLOSED';
      this.emit(handedBack ? 'released' : 'failed', { ...event, error });
      // Before the consumer settles the delivery (a retry saves the last checkpoint with it): a failed run
      // posted `end` last, so wait for it, unless the thread was terminated.
      clearTimeout(run.timer);
      if (!kill.aborted) {
        const wait = arrival();
        if (wait) await wait;
      }
      throw error;
    } finally {
      clearTimeout(run.timer);
      signal.removeEventListener('abort', onAbort);
      this.runs.delete(runId);
    }
  }

  /**
   * Drain: no new tasks (those leased ahead and not started are handed back at once); running shards
   * finish within the grace period or are handed back.
   */
  close(options: { graceMs?: number } = {}): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      const consumerClosed = this.consumer.close(options); // stops fetching before the hand-backs free slots
      const handBack = new HandBackError('the worker is draining: handed back before it started');
      for (const w of this.waiting.splice(0)) w.reject(handBack);
      await consumerClosed;
      this.control.close();
      await this.pool.destroy();
    })();
    return this.closing;
  }
}

export function startWorker(options: WorkerOptions): RunnerWorker {
  return new RunnerWorker(options);
}
