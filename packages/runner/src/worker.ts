import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BroadcastChannel } from 'node:worker_threads';
import { HandBackError, InvalidMessageError, describeZodError, type Consumer, type HandlerContext, type Queue } from '@lading/core';
import type { CacheOptions } from '@lading/storage';
import { Piscina } from 'piscina';
import { SLOT_COUNT, SLOT_MASK, TaskSchema, readTask, type Task, type ThreadMessage } from './task.js';
import type { ThreadInput, ThreadTask } from './thread.js';

export const DEFAULT_TASK_TOPIC = 'lading.tasks';
/** Extra time a fresh thread gets to load the handler before a shard's timeout starts counting. */
const STARTUP_ALLOWANCE_MS = 30_000;
/** Longest wait for a shard's result after its thread returned or died. */
const END_WAIT_MS = 1000;
/** How long a dead thread's results still in flight may take to arrive. */
const LOST_WAIT_MS = 50;
export const WORKER_GROUP = 'lading.workers';
/**
 * Tasks leased ahead of the threads by default, beyond what batching of short shards leases (below): none.
 * Leasing ahead saves a thread the lease round trip between two shards, but a task leased ahead is charged an
 * attempt when its lease runs out, and if the process dies (a shard that kills it, SIGKILL, OOM) every task it
 * held ahead comes back as a failed attempt without having run: a poison shard would take its innocent
 * neighbours to the hospital with it. For long shards the round trip it saves is nothing.
 */
const PREFETCH_DEFAULT = 0;
/**
 * Batching of short shards (see `WorkerOptions.batch`). A shard counts as short while the moving average of
 * the shards' run time in the threads stays below `shortMs` (after `BATCH_MIN_SAMPLES` shards ran).
 */
const BATCH_DEFAULTS = { shortMs: 5, aheadMs: 40, chunkMs: 10, maxAheadPerThread: 64, maxChunk: 64 };
const BATCH_MIN_SAMPLES = 8;
/** Weight of the newest shard in the moving average of run times. */
const EWMA_ALPHA = 0.2;
/** How often the begins of chunked shards are looked at while chunks run (they are also read with each result). */
const BEGIN_POLL_MS = 5;

export interface BatchOptions {
  /** Shards whose average run time (in the thread) is below this are batched. Default 5 ms. */
  shortMs?: number;
  /** Lease short shards ahead of the threads up to about this much work per thread. Default 40 ms. */
  aheadMs?: number;
  /**
   * Hand a thread short shards in chunks of about this much work (one pool.run); their results travel back
   * together, each waiting at most twice this. Default 10 ms.
   */
  chunkMs?: number;
  /** At most this many shards leased ahead per thread. Default 64 (for shards under ~0.6 ms; above, `aheadMs` bounds it). */
  maxAheadPerThread?: number;
  /** At most this many shards per chunk. Default 64. Larger chunks mean fewer pool.run calls and fewer, larger SQLite commits. */
  maxChunk?: number;
}

export interface WorkerOptions {
  queue: Queue;
  /** Task topic. Default `lading.tasks`. */
  topic?: string;
  /** Worker threads (shards running at once). Default: the cores of this node. */
  threads?: number;
  /**
   * Tasks leased ahead of the threads, so a thread that finishes a shard starts the next one at once instead
   * of waiting for a lease round trip. Default 0: lease only what the threads can run now (short shards are
   * leased ahead anyway, see `batch`). A task leased ahead is handed back untouched when the worker drains,
   * but if the process dies it comes back as a failed attempt (lease expired) without having run.
   */
  prefetch?: number;
  /**
   * Short shards (a few ms each) move in batches, like multiprocessing.Pool's chunksize or Celery's prefetch
   * multiplier: while the shards' average run time is below `shortMs`, the worker leases up to `aheadMs` of
   * work per thread ahead of its threads (at most `maxAheadPerThread` shards per thread) and hands each thread
   * several shards per pool.run (a chunk of about `chunkMs`); their results come back together, so acks and
   * leases share SQLite commits. Each shard keeps its own begin, outputs, commit marker, failure, timeout and
   * ack; a thread left idle takes the shards not started from a chunk stuck behind a shard that turned out
   * long. Long shards run exactly as with `batch: false`: one per thread, none leased ahead (but `prefetch`).
   * The costs: if the process dies, the shards it had leased ahead or in its threads' chunks (at most
   * threads × `maxAheadPerThread`, about `aheadMs` of work per thread) come back as a failed attempt (lease
   * expired) without having run; a short shard's ack waits up to 2 × `chunkMs` for its chunk-mates; and if
   * a thread dies in a chunk (timeout, process.exit), the chunk-mates that finished in the last 2 × `chunkMs`
   * before (their results had not left the thread) run again (skipped if they committed), not as an attempt.
   * Default on; `false` turns it off.
   */
  batch?: boolean | BatchOptions;
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

/** One pool.run: the shards handed to one thread at once. */
interface Chunk {
  tasks: Pending[];
  /** Terminates the chunk's thread. */
  kill: KillSwitch;
  /** The pool.run settled (the thread is free again, or dead). */
  over: boolean;
  /** Shards of the chunk not settled yet. */
  open: number;
  /** After a normal return: fails shards whose result never arrived. */
  straggler: NodeJS.Timeout | undefined;
  /** A chunk of shards that all have a timeout cannot take longer than their sum (plus a start-up allowance). */
  deadline: NodeJS.Timeout | undefined;
  /** When it was handed to its thread (performance.now()). */
  since: number;
}

/** What the main thread knows of one leased shard task: waiting for a thread, or handed to one. */
interface Pending {
  /** The current run id (a new one each time the task is handed to a thread): tags its messages, names its claim slot. */
  run: number;
  event: ShardEvent;
  task: Task;
  attempt: number;
  checkpoint: unknown;
  /** The consumer gave the task up (lease lost, or closed past its grace), with this reason. */
  aborted: boolean;
  abortReason: unknown;
  /** The consumer's context of the delivery (saveCheckpoint). */
  ctx: HandlerContext;
  resolve: () => void;
  reject: (e: unknown) => void;
  chunk: Chunk | undefined;
  begun: boolean;
  settled: boolean;
  timedOut: boolean;
  timer: NodeJS.Timeout | undefined;
}

const handBackError = () => new HandBackError('the worker is draining: handed back before it started');

/**
 * A node's worker: takes shard tasks from the queue (group `lading.workers`) and runs their handlers
 * in a Piscina pool of worker threads. Events: `started`, `done`, `skipped` (already committed),
 * `failed`, `released` (handed back unfinished on close), `progress`, `log`.
 *
 * Per task the main thread only checks the task's shape, leases and acks it (the consumer), and hands the
 * descriptor to a free thread; the commit-marker check and write happen in the thread. Threads post their
 * messages on their parentPort (one long-lived port per thread, no channel per task), tagged with the run;
 * a shard's `done` or `failed` message settles it. Short shards go to a thread several at a time (a chunk,
 * one pool.run) and are leased ahead (see `WorkerOptions.batch`).
 */
export class RunnerWorker extends EventEmitter {
  readonly pool: Piscina;
  readonly consumer: Consumer;
  private readonly threads: number;
  private readonly prefetch: number;
  private readonly batch: Required<BatchOptions> | undefined;
  /** Tasks handed to a thread, by run id. */
  private readonly runs = new Map<number, Pending>();
  private nextRun = 0;
  private readonly slots = new Int32Array(new SharedArrayBuffer(4 * SLOT_COUNT));
  /** Begins of chunked shards (see ThreadInput.begun), and the timer that reads them while chunks run. */
  private readonly begunSlots = new Int32Array(new SharedArrayBuffer(4 * SLOT_COUNT));
  private beginPoll: NodeJS.Timeout | undefined;
  /** Aborts to threads: `{ abort: run }`. */
  private readonly control: BroadcastChannel;
  private readonly controlName = `lading.runner.${process.pid}.${randomBytes(6).toString('hex')}`;
  /** Free threads, and the tasks (leased ahead) waiting for one, in lease order. */
  private free: number;
  private ready: Pending[] = [];
  private pumpScheduled = false;
  private stealTimer: NodeJS.Timeout | undefined;
  /** Chunks in the threads. */
  private readonly chunks = new Set<Chunk>();
  /** Moving average of the shards' run time in the threads (ms), and how many shards it has seen. */
  private ewmaMs = 0;
  private samples = 0;
  /** Shards are short: batched (chunks, leased ahead). */
  private short = false;
  private concurrency: number;
  private draining = false;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: WorkerOptions) {
    super();
    const threads = Math.max(1, options.threads ?? availableParallelism());
    this.threads = threads;
    this.free = threads;
    this.batch = options.batch === false ? undefined : { ...BATCH_DEFAULTS, ...(options.batch === true ? {} : options.batch) };
    this.pool = new Piscina({ filename: threadFile(), minThreads: 1, maxThreads: threads, idleTimeout: 30_000, concurrentTasksPerWorker: 1 });
    this.pool.on('message', (m: ThreadMessage) => this.onThreadMessage(m));
    this.control = new BroadcastChannel(this.controlName);
    this.control.unref();
    this.prefetch = Math.max(0, Math.floor(options.prefetch ?? PREFETCH_DEFAULT));
    this.concurrency = threads + this.prefetch;
    const topic = options.topic ?? DEFAULT_TASK_TOPIC;
    this.consumer = options.queue.consume(topic, { group: WORKER_GROUP, concurrency: this.concurrency, leaseMs: options.leaseMs, graceMs: options.graceMs }, (message, ctx) =>
      this.runTask(message.body, message.attempt, ctx),
    );
    this.consumer.on('hospital', (r) => this.emit('hospital', r));
    this.consumer.on('error', (e) => this.emit('error', e));
  }

  get counts() {
    return this.consumer.counts;
  }

  private onThreadMessage(m: ThreadMessage): void {
    if (m?.type === 'results') {
      for (const r of m.list) this.onThreadMessage(r);
      return;
    }
    const p = typeof m?.run === 'number' ? this.runs.get(m.run) : undefined;
    if (!p || p.settled) return;
    if (p.chunk && p.chunk.tasks.length > 1 && !p.begun) this.readBegins(p.chunk); // its `started` before its end
    switch (m.type) {
      case 'done':
        this.observe(m.ms);
        this.settle(p);
        if (m.skipped) this.emit('skipped', p.event);
        else if (this.listenerCount('done') > 0) this.emit('done', { ...p.event, outputs: m.outputs });
        p.resolve();
        break;
      case 'failed':
        this.observe(m.ms);
        this.fail(p, m.error);
        break;
      case 'begin':
        this.begin(p);
        break;
      case 'checkpoint':
        void p.ctx.saveCheckpoint(m.state as never).catch((e: unknown) => this.emit('error', e));
        break;
      case 'progress':
        this.emit('progress', { ...p.event, done: m.done, total: m.total });
        break;
      default:
        this.emit('log', { ...p.event, level: m.level, message: m.message });
    }
  }

  /** A shard's handler started in its thread. */
  private begin(p: Pending): void {
    p.begun = true;
    this.emit('started', p.event);
    // The timeout counts the handler's run, not the thread's start-up (module loads of a fresh thread).
    if (p.task.timeoutMs) { clearTimeout(p.timer); p.timer = setTimeout(() => this.timeout(p), p.task.timeoutMs); }
  }

  /** The begins a chunk's thread stored since last looked at, in the chunk's order. */
  private readBegins(chunk: Chunk): void {
    for (const p of chunk.tasks) {
      if (!p.begun && !p.settled && p.chunk === chunk && Atomics.load(this.begunSlots, p.run & SLOT_MASK) === p.run) this.begin(p);
    }
  }

  /** While chunks run, read their begins every BEGIN_POLL_MS (a shard may run long, and its timeout starts at its begin). */
  private pollBegins(): void {
    if (this.beginPoll) return;
    this.beginPoll = setInterval(() => {
      let any = false;
      for (const c of this.chunks) {
        if (c.over || c.tasks.length < 2) continue;
        any = true;
        this.readBegins(c);
      }
      if (!any) { clearInterval(this.beginPoll); this.beginPoll = undefined; }
    }, BEGIN_POLL_MS);
    this.beginPoll.unref();
  }

  /** A shard's run time (in its thread): short shards are batched, long ones are not. */
  private observe(ms: number): void {
    const b = this.batch;
    if (!b) return;
    this.ewmaMs = this.samples === 0 ? ms : this.ewmaMs + EWMA_ALPHA * (ms - this.ewmaMs);
    this.samples++;
    // Hysteresis: batching starts below shortMs and stops above twice that.
    const short = this.samples >= BATCH_MIN_SAMPLES && (this.short ? this.ewmaMs < 2 * b.shortMs : this.ewmaMs < b.shortMs);
    this.short = short;
    let ahead = this.prefetch;
    if (short) ahead = Math.max(ahead, this.threads * Math.min(b.maxAheadPerThread, Math.floor(b.aheadMs / Math.max(this.ewmaMs, 0.001))));
    const concurrency = this.threads + ahead;
    if (concurrency !== this.concurrency && !this.draining) {
      this.concurrency = concurrency;
      this.consumer.setConcurrency(concurrency);
    }
  }

  /** Shards per pool.run: one, or for short shards about `chunkMs` of work, split evenly between the threads. */
  private chunkSize(): number {
    const b = this.batch;
    if (!b || !this.short) return 1;
    const byTime = Math.max(1, Math.floor(b.chunkMs / Math.max(this.ewmaMs, 0.001)));
    return Math.max(1, Math.min(b.maxChunk, byTime, Math.ceil(this.ready.length / Math.max(1, this.free))));
  }

  private runTask(body: unknown, attempt: number, ctx: HandlerContext): Promise<void> {
    let task = readTask(body);
    if (!task) {
      const parsed = TaskSchema.safeParse(body);
      if (!parsed.success) throw new InvalidMessageError(`not a lading shard task: ${describeZodError(parsed.error)}`);
      task = parsed.data;
    }
    // Draining: a task leased (ahead) that has not started goes back to the queue untouched.
    if (this.draining) throw handBackError();
    const t = task;
    return new Promise<void>((resolve, reject) => {
      const p: Pending = {
        run: 0, event: { job: t.job, shard: t.shard.id, attempt }, task: t, attempt, checkpoint: ctx.checkpoint, aborted: false, abortReason: undefined,
        ctx, resolve, reject, chunk: undefined, begun: false, settled: false, timedOut: false, timer: undefined,
      };
      // A callback, not ctx.signal: an AbortSignal and its listener cost ~9 µs of main-thread time per task.
      // (Not removed on settle: the listener goes with the delivery, and `aborted` ignores a settled task.)
      ctx.onAbort((reason) => {
        p.aborted = true;
        p.abortReason = reason;
        this.aborted(p);
      });
      this.ready.push(p);
      // After the current turn: every delivery of one fetch is then ready, and goes out in as few chunks as fit.
      if (!this.pumpScheduled) {
        this.pumpScheduled = true;
        queueMicrotask(() => { this.pumpScheduled = false; this.pump(); });
      }
    });
  }

  /** Hand ready tasks to free threads. */
  private pump(): void {
    while (this.free > 0 && this.ready.length > 0 && !this.draining) {
      const n = this.chunkSize();
      this.dispatch(n === 1 ? [this.ready.shift()!] : this.ready.splice(0, n));
    }
    if (this.free > 0 && this.ready.length === 0 && !this.stealTimer && !this.draining && this.batch) {
      for (const c of this.chunks) {
        if (c.over || c.open < 2) continue;
        // A thread is idle while shards wait in another's chunk: if that chunk is still at it after twice its
        // planned length (a shard in it turned out long), its shards not started go to the idle thread.
        this.stealTimer = setTimeout(() => { this.stealTimer = undefined; this.steal(); }, 2 * this.batch.chunkMs);
        this.stealTimer.unref();
        break;
      }
    }
  }

  private steal(): void {
    if (this.free === 0 || this.ready.length > 0 || this.draining) return;
    const late = performance.now() - 2 * this.batch!.chunkMs;
    for (const c of this.chunks) {
      if (c.over || c.since > late) continue;
      // From the tail: the thread takes its shards in order, so the ones after the last it started are free.
      const taken: Pending[] = [];
      for (let i = c.tasks.length - 1; i >= 0; i--) {
        const p = c.tasks[i]!;
        if (p.settled || p.chunk !== c) continue;
        if (!this.revoke(p)) break;
        this.runs.delete(p.run);
        c.open--;
        taken.push(p);
      }
      for (let i = taken.length - 1; i >= 0; i--) {
        const p = taken[i]!;
        p.chunk = undefined;
        clearTimeout(p.timer);
        p.timer = undefined;
        this.ready.push(p);
      }
      if (c.open === 0) this.chunks.delete(c);
    }
    this.pump();
  }

  /** Put a task taken back from a dead thread's chunk in front of the ready ones (or hand it back, draining). */
  private requeue(p: Pending): void {
    p.chunk = undefined;
    p.begun = false;
    clearTimeout(p.timer);
    p.timer = undefined;
    if (p.aborted) { this.settle(p); p.reject(p.abortReason); } // the consumer gave it up already
    else if (this.draining) { this.settle(p); p.reject(handBackError()); }
    else this.ready.unshift(p);
  }

  private dispatch(tasks: Pending[]): void {
    this.free--;
    const chunk: Chunk = { tasks, kill: new KillSwitch(), over: false, open: tasks.length, straggler: undefined, deadline: undefined, since: performance.now() };
    this.chunks.add(chunk);
    const inputs = new Array<ThreadTask>(tasks.length);
    for (let i = 0; i < tasks.length; i++) {
      const p = tasks[i]!;
      const run = this.nextRun = this.nextRun >= 0x7fffffff ? 1 : this.nextRun + 1;
      p.run = run;
      p.chunk = chunk;
      Atomics.store(this.slots, run & SLOT_MASK, run);
      if (tasks.length > 1) Atomics.store(this.begunSlots, run & SLOT_MASK, 0);
      this.runs.set(run, p);
      inputs[i] = { task: p.task, run, attempt: p.attempt, checkpoint: p.checkpoint as ThreadTask['checkpoint'] };
    }
    this.armStartup(chunk);
    if (tasks.length > 1 && tasks.every((p) => p.task.timeoutMs)) {
      // A shard's own timer starts at its begin, which the main thread learns of only once its chunk-mates'
      // results have come back: this bounds a chunk stuck (synchronously) before a later shard's begin.
      const total = tasks.reduce((sum, p) => sum + p.task.timeoutMs!, STARTUP_ALLOWANCE_MS);
      chunk.deadline = setTimeout(() => {
        let stuck: Pending | undefined;
        for (const p of tasks) if (!p.settled && p.chunk === chunk && (!stuck || Atomics.load(this.slots, p.run & SLOT_MASK) === -p.run)) stuck = p;
        if (stuck) this.timeout(stuck);
      }, total);
    }
    const input: ThreadInput = { tasks: inputs, slots: this.slots, control: this.controlName };
    if (tasks.length > 1) {
      input.resultWaitMs = 2 * this.batch!.chunkMs;
      input.begun = this.begunSlots;
      this.pollBegins();
    }
    if (this.options.cache) input.cache = this.options.cache;
    this.pool.run(input, { signal: chunk.kill }).then(() => this.chunkOver(chunk, undefined), (e: unknown) => this.chunkOver(chunk, e));
  }

  /**
   * Until the chunk's next shard begins, allow it its timeout plus STARTUP_ALLOWANCE_MS (a fresh thread loading
   * the handler module, which may hang on import).
   */
  private armStartup(chunk: Chunk): void {
    const next = chunk.tasks.find((p) => !p.settled && p.chunk === chunk);
    if (next && !next.begun && !next.timer && next.task.timeoutMs) next.timer = setTimeout(() => this.timeout(next), next.task.timeoutMs + STARTUP_ALLOWANCE_MS);
  }

  /** Take a task back from its chunk if its thread has not started it. */
  private revoke(p: Pending): boolean {
    return Atomics.compareExchange(this.slots, p.run & SLOT_MASK, p.run, 0) === p.run;
  }

  /**
   * Is `p` what its chunk's thread is running? Not once the thread has started a later shard of the chunk:
   * then `p` is over, and its result waits in the thread to travel with the chunk's next ones.
   */
  private running(p: Pending): boolean {
    const chunk = p.chunk;
    if (!chunk || p.settled) return false;
    for (let i = chunk.tasks.length - 1; i >= 0; i--) {
      const q: Pending = chunk.tasks[i]!;
      if (q === p) return true;
      if (q.chunk === chunk && Atomics.load(this.slots, q.run & SLOT_MASK) === -q.run) return false;
    }
    return false;
  }

  private timeout(p: Pending): void {
    if (!this.running(p)) return; // over: the shard the thread runs now has its own timer
    p.timedOut = true;
    p.chunk!.kill.abort();
  }

  /** The consumer aborted the task (lease lost, or closed past its grace). */
  private aborted(p: Pending): void {
    if (p.settled) return;
    const reason = p.abortReason;
    if (!p.chunk) {
      const i = this.ready.indexOf(p);
      if (i >= 0) this.ready.splice(i, 1);
      this.settle(p);
      p.reject(reason);
      return;
    }
    if (this.revoke(p)) {
      this.settle(p);
      p.reject(reason);
      return;
    }
    this.control.postMessage({ abort: p.run });
    const chunk = p.chunk;
    setTimeout(() => { if (this.running(p)) chunk.kill.abort(reason); }, this.options.abortGraceMs ?? 2000).unref();
  }

  /** Done with a task (its promise is about to settle): forget its run. */
  private settle(p: Pending): void {
    p.settled = true;
    clearTimeout(p.timer);
    p.timer = undefined;
    const chunk = p.chunk;
    if (!chunk) return;
    this.runs.delete(p.run);
    if (--chunk.open === 0) {
      clearTimeout(chunk.straggler);
      this.chunks.delete(chunk);
    } else if (!chunk.over) this.armStartup(chunk);
  }

  private fail(p: Pending, e: unknown): void {
    const error = p.timedOut ? Object.assign(new Error(`shard ${p.task.shard.id} timed out after ${p.task.timeoutMs} ms; its thread was terminated`), { name: 'TimeoutError' }) : e;
    // Aborted because the worker is closing: the consumer hands the task back (not an attempt), so not `failed`.
    const reason = p.abortReason;
    const handedBack = !p.timedOut && p.aborted && reason instanceof Error && (reason as { code?: unknown }).code === 'CLOSED';
    this.settle(p);
    this.emit(handedBack ? 'released' : 'failed', { ...p.event, error });
    p.reject(error);
  }

  /** A chunk's pool.run settled: its thread is free, or it died (terminated by a timeout or an abort, or it exited). */
  private chunkOver(chunk: Chunk, error: unknown): void {
    if (chunk.tasks.length > 1) this.readBegins(chunk);
    chunk.over = true;
    clearTimeout(chunk.deadline);
    this.free++;
    if (chunk.open > 0) {
      if (error === undefined) {
        // The thread returned: every result was posted before, on another port; the stragglers are on their way.
        chunk.straggler = setTimeout(() => {
          for (const p of chunk.tasks) if (!p.settled && p.chunk === chunk) this.fail(p, new Error(`shard ${p.task.shard.id}: its thread returned without a result`));
        }, END_WAIT_MS);
      } else {
        const requeue: Pending[] = [];
        // The thread runs its shards in order: the last one it started is the one it was running.
        let culprit: Pending | undefined;
        for (const p of chunk.tasks) {
          if (p.settled || p.chunk !== chunk) continue; // (taken by another thread meanwhile)
          if (!p.timedOut && this.revoke(p)) {
            // Not started: it goes to another thread (or back to the queue, draining); not an attempt.
            this.runs.delete(p.run);
            chunk.open--;
            requeue.push(p);
          } else culprit = p;
        }
        for (let i = requeue.length - 1; i >= 0; i--) this.requeue(requeue[i]!); // in their order, in front
        for (const p of chunk.tasks) {
          if (p.settled || p.chunk !== chunk) continue;
          if (p === culprit) {
            // Terminated (its timeout or abort), or the consumer gave it up already (closing: the pool is being
            // destroyed under it): nothing to wait for.
            if (chunk.kill.aborted || p.aborted) this.fail(p, error);
            // The thread died under it (e.g. process.exit in the handler): wait for the messages it posted before
            // (checkpoints, saved with the retry).
            else setTimeout(() => { if (!p.settled) this.fail(p, error); }, END_WAIT_MS);
          } else {
            // It ran before the culprit, but its result (waiting in the thread to travel with the chunk's next
            // ones) died with the thread: run it again (a shard that committed is skipped then). Not an attempt.
            setTimeout(() => {
              if (p.settled || p.chunk !== chunk) return;
              this.runs.delete(p.run);
              if (--chunk.open === 0) this.chunks.delete(chunk);
              this.requeue(p);
              this.pump();
            }, LOST_WAIT_MS);
          }
        }
        if (chunk.open === 0) this.chunks.delete(chunk);
      }
    } else this.chunks.delete(chunk);
    this.pump();
  }

  /**
   * Drain: no new tasks (those leased ahead and not started are handed back at once); running shards
   * finish within the grace period or are handed back.
   */
  close(options: { graceMs?: number } = {}): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      clearTimeout(this.stealTimer);
      const consumerClosed = this.consumer.close(options); // stops fetching before the hand-backs free slots
      for (const p of this.ready.splice(0)) { this.settle(p); p.reject(handBackError()); }
      for (const chunk of [...this.chunks]) {
        for (const p of chunk.tasks) {
          if (p.settled || p.chunk !== chunk || !this.revoke(p)) continue;
          this.settle(p);
          p.reject(handBackError());
        }
      }
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
