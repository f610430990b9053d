/**
 * Piscina worker-thread entry. It receives a task descriptor (URIs, a byte range, params) — never file
 * bytes — opens the stores itself (once per thread), checks the shard's commit marker and runs the user's
 * handler (imported once per thread). Progress, checkpoints and logs go back to the main thread over the
 * thread's parentPort; the main thread owns the lease, so a CPU-bound handler here never loses it.
 */
import { BroadcastChannel, parentPort } from 'node:worker_threads';
import type { JsonValue } from '@lading/core';
import { openCache, withCache, type BlobCache, type BlobStore, type CacheOptions, type WriteResult } from '@lading/storage';
import { alignedLines, type ShardContext, type ShardHandler } from './context.js';
import { StoreCache } from './inputs.js';
import { SLOT_MASK, markerKey, type ShardOutput, type Task, type ThreadMessage } from './task.js';

/** One shard of a chunk. */
export interface ThreadTask {
  task: Task;
  /** This run's id (unique in the RunnerWorker, below 2^31): tags the messages the thread posts, names its claim slot. */
  run: number;
  attempt: number;
  checkpoint: JsonValue | undefined;
}

/**
 * One pool.run: a chunk of shards, run one after the other (one shard unless the RunnerWorker batches short
 * shards). Each shard has its own begin, outputs, commit marker, result message and failure.
 */
export interface ThreadInput {
  tasks: ThreadTask[];
  /**
   * Claim slots shared with the main thread. A shard's slot holds its run id while it waits in the chunk; the
   * thread claims it (run → -run) before starting it, and skips a shard whose slot the main thread took back
   * (run → 0: handed back on drain, or moved to another thread). Whoever swaps first wins, so a shard is
   * either run here or taken back, never both.
   */
  slots: Int32Array;
  /**
   * A chunk's begins, shared with the main thread instead of one `begin` message per shard (a message costs the
   * main thread more than a short shard's lease): the thread stores a shard's run id at `begun[run & SLOT_MASK]`
   * as its handler starts, and the main thread reads them with each result and every few ms. Absent: a `begin`
   * message (a single, long shard, whose start the main thread learns of at once).
   */
  begun?: Int32Array;
  /** BroadcastChannel on which the RunnerWorker asks runs to abort (`{ abort: run }`). */
  control: string;
  /** Read inputs through the node's block cache (outputs are never cached). */
  cache?: CacheOptions;
  /** A chunk's results travel together, each waiting at most this long. Default 0: each at once. */
  resultWaitMs?: number;
}

const stores = new StoreCache();
/** Input stores wrapped in the block cache, and the cache itself: opened once per thread. */
const cachedInputs = new Map<string, Promise<BlobStore>>();
let blobCache: { key: string; cache: Promise<BlobCache> } | undefined;

function inputStore(uri: string, cache: CacheOptions | undefined): Promise<BlobStore> {
  if (!cache) return stores.get(uri);
  const cacheKey = JSON.stringify(cache);
  if (blobCache?.key !== cacheKey) {
    const opened = openCache(cache);
    opened.catch(() => { if (blobCache?.cache === opened) blobCache = undefined; });
    blobCache = { key: cacheKey, cache: opened };
    cachedInputs.clear();
  }
  let s = cachedInputs.get(uri);
  if (!s) {
    const { cache: opened } = blobCache;
    s = (async () => withCache(await stores.get(uri), await opened))();
    s.catch(() => cachedInputs.delete(uri));
    cachedInputs.set(uri, s);
  }
  return s;
}
const handlers = new Map<string, Promise<ShardHandler>>();

async function loadHandler(spec: string): Promise<ShardHandler> {
  let h = handlers.get(spec);
  if (!h) {
    h = import(spec).then((mod: { default?: unknown; handler?: unknown }) => {
      const fn = typeof mod.default === 'function' ? mod.default : mod.handler;
      if (typeof fn !== 'function') throw new Error(`handler module ${spec} exports no function (export default async function (ctx) { ... })`);
      return fn as ShardHandler;
    });
    h.catch(() => handlers.delete(spec));
    handlers.set(spec, h);
  }
  return h;
}

/**
 * Aborts. One channel per thread, opened on the first task (a worker thread runs one task at a time).
 * An abort can overtake its task (they travel on different ports), so recent aborts of runs this thread
 * has not seen are remembered and checked when a run starts.
 */
let control: BroadcastChannel | undefined;

/** A shard's abort: the AbortController is made only when something asks for the signal (most no-op-ish shards never do). */
class LazyAbort {
  private controller: AbortController | undefined;
  aborted = false;
  reason: unknown;
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

let current: { run: number; abort: LazyAbort } | undefined;
const abortedEarly = new Set<number>();
const abortError = () => new Error('the worker is draining');

function listen(name: string): void {
  if (control) return;
  control = new BroadcastChannel(name);
  control.unref(); // never what keeps a thread alive
  control.onmessage = (event) => {
    const run = (event as { data?: { abort?: unknown } }).data?.abort;
    if (typeof run !== 'number') return;
    if (current?.run === run) current.abort.abort(abortError());
    else if (!current || run > current.run) {
      if (abortedEarly.size > 1000) abortedEarly.clear();
      abortedEarly.add(run);
    }
  };
}

/** Post a message to the main thread. */
function post(m: ThreadMessage): void {
  parentPort!.postMessage(m);
}

/**
 * Results of a chunk's shards wait here and travel together (one message, so the main thread acks them in one
 * SQLite commit): at the end of the chunk, or once the oldest has waited `resultWaitMs` (checked between
 * shards, and by a timer while a shard awaits something).
 */
let results: ThreadMessage[] = [];
let resultsSince = 0;
let resultsTimer: NodeJS.Timeout | undefined;

function sendResults(): void {
  clearTimeout(resultsTimer);
  resultsTimer = undefined;
  if (results.length === 0) return;
  const list = results;
  results = [];
  if (list.length === 1) postResult(list[0]!);
  else {
    try {
      post({ run: 0, type: 'results', list });
    } catch {
      for (const m of list) postResult(m); // an error that cannot be cloned: each on its own
    }
  }
}

function queueResult(m: ThreadMessage, waitMs: number): void {
  if (waitMs <= 0) return postResult(m);
  results.push(m);
  if (results.length === 1) {
    resultsSince = performance.now();
    resultsTimer = setTimeout(sendResults, waitMs);
  }
}

/** A shard's result, as the main thread will see it (an error that cannot be cloned travels as its name, message and stack). */
function postResult(m: ThreadMessage): void {
  try {
    post(m);
  } catch (err) {
    if (m.type !== 'failed') throw err;
    const e = m.error as { name?: unknown; message?: unknown; stack?: unknown } | undefined;
    const plain = Object.assign(new Error(typeof e?.message === 'string' ? e.message : String(m.error)), { name: typeof e?.name === 'string' ? e.name : 'Error' });
    if (typeof e?.stack === 'string') plain.stack = e.stack;
    post({ ...m, error: plain });
  }
}

/** Run a chunk: each shard not taken back, in order. Resolves with the number of shards run. */
export default async function runChunk({ tasks, slots, begun, control: controlName, cache, resultWaitMs = 0 }: ThreadInput): Promise<number> {
  listen(controlName);
  const batched = tasks.length > 1;
  const waitMs = batched ? resultWaitMs : 0;
  // A chunk's commit-marker checks go out at once: one wait for the file system instead of one per shard (a
  // check is a snapshot either way; a marker written meanwhile only means a redelivery runs again, as before).
  const markers = batched ? tasks.map((t) => checkMarker(t.task)) : undefined;
  const checkedAt = performance.now();
  let ran = 0;
  try {
    for (let i = 0; i < tasks.length; i++) {
      const t = tasks[i]!;
      if (Atomics.compareExchange(slots, t.run & SLOT_MASK, t.run, -t.run) !== t.run) continue; // taken back
      ran++;
      const t0 = performance.now();
      let outputs: ShardOutput[];
      let skipped: boolean;
      try {
        // (A check older than a second, behind a shard that took long, is made again.)
        ({ outputs, skipped } = await runShard(t, cache, t0 - checkedAt < 1000 ? markers?.[i] : undefined, begun));
      } catch (error) {
        queueResult({ run: t.run, type: 'failed', error, ms: performance.now() - t0 }, waitMs);
        continue;
      }
      const now = performance.now();
      queueResult(skipped ? { run: t.run, type: 'done', skipped, outputs, ms: now - t0 } : { run: t.run, type: 'done', outputs, ms: now - t0 }, waitMs);
      if (waitMs > 0 && now - resultsSince >= waitMs) sendResults();
    }
  } finally {
    sendResults();
  }
  return ran;
}

/** Is the shard's commit marker there? (Never rejects unhandled: the shard's run awaits it.) */
function checkMarker(task: Task): Promise<unknown> {
  const p = stores.get(task.output).then((output) => output.stat(markerKey(task.job, task.shard.id)));
  p.catch(() => undefined);
  return p;
}

async function runShard({ task, run, attempt, checkpoint }: ThreadTask, cache: CacheOptions | undefined, markerCheck: Promise<unknown> | undefined, begun: Int32Array | undefined): Promise<{ outputs: ShardOutput[]; skipped: boolean }> {
  const abort = new LazyAbort();
  current = { run, abort };
  if (abortedEarly.delete(run)) abort.abort(abortError());
  try {
    const [handler, input, output] = await Promise.all([loadHandler(task.handler), inputStore(task.shard.storeUri, cache), stores.get(task.output)]);
    const { shard } = task;
    const marker = markerKey(task.job, shard.id);
    // Idempotent redelivery: a shard whose commit marker exists is done, whoever did it. (Checked here, not on
    // the main thread, which is the one serial part of a worker.)
    if (await (markerCheck ?? output.stat(marker))) return { skipped: true, outputs: [] };
    if (abort.aborted) throw abort.reason; // draining before the handler began
    const outputs: WriteResult[] = [];
    const base = task.output.split('?')[0]!;
    const ctx: ShardContext = {
      job: { id: task.job, name: task.jobName },
      shard,
      params: task.params,
      attempt,
      resumeFrom: checkpoint,
      get signal() { return abort.signal; },
      log: {
        info: (message) => post({ run, type: 'log', level: 'info', message }),
        warn: (message) => post({ run, type: 'log', level: 'warn', message }),
        error: (message) => post({ run, type: 'log', level: 'error', message }),
      },
      read: (range = {}) => input.read(shard.key, { start: range.start ?? shard.start, end: range.end ?? shard.end, signal: abort.signal }),
      lines: (options = {}) => alignedLines((start, end) => input.read(shard.key, { start, end, signal: abort.signal }), shard, options.from),
      write: async (name, body, options = {}) => {
        const r = await output.write(name, body, { ...options, signal: abort.signal });
        outputs.push(r);
        return r;
      },
      outputUri: (name) => `${base.endsWith('/') ? base : `${base}/`}${name}`,
      progress: (done, total) => post({ run, type: 'progress', done, total }),
      checkpoint: (state) => post({ run, type: 'checkpoint', state }),
      stores: { input, output },
    };
    if (begun) Atomics.store(begun, run & SLOT_MASK, run);
    else post({ run, type: 'begin' });
    const result: unknown = await handler(ctx);
    const summary = outputs.map((o) => ({ key: o.key, size: o.size, checksum: o.checksum }));
    // The commit marker comes after every output: its presence means the shard's outputs are complete and
    // final, and a redelivery skips the shard. A shard that wrote no output through ctx.write has nothing to
    // commit and gets no marker (an atomic, fsynced file write: most of a short shard's cost); a redelivery
    // of it runs it again, which at-least-once allows anyway (a crash before the marker does the same). Its
    // return value, kept only in the marker, is not kept then either.
    if (outputs.length > 0) {
      // Not flushed (durable: false): the outputs were, before it, so a marker lost or left empty by a crash of
      // the machine only means the shard runs again, or is skipped with its outputs complete. Two fsyncs saved.
      await output.write(marker, JSON.stringify({ job: task.job, shard: shard.id, input: shard.input, start: shard.start, end: shard.end, outputs: summary, result: result ?? null, at: new Date().toISOString() }), { contentType: 'application/json', durable: false });
    }
    return { outputs: summary, skipped: false };
  } finally {
    if (current?.run === run) current = undefined;
  }
}
