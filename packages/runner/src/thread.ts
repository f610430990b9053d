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
import { markerKey, type Task, type ThreadMessage, type ThreadResult } from './task.js';

export interface ThreadInput {
  task: Task;
  /** This run's id (unique in the RunnerWorker): tags the messages the thread posts. */
  run: number;
  attempt: number;
  checkpoint: JsonValue | undefined;
  /** BroadcastChannel on which the RunnerWorker asks runs to abort (`{ abort: run }`). */
  control: string;
  /** Read inputs through the node's block cache (outputs are never cached). */
  cache?: CacheOptions;
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
let current: { run: number; abort: AbortController } | undefined;
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

export default async function runShard({ task, run, attempt, checkpoint, control: controlName, cache }: ThreadInput): Promise<ThreadResult> {
  listen(controlName);
  let posted = 0;
  const post = (m: ThreadMessage) => { posted++; parentPort!.postMessage(m); };
  const abort = new AbortController();
  current = { run, abort };
  if (abortedEarly.delete(run)) abort.abort(abortError());
  try {
    const [handler, input, output] = await Promise.all([loadHandler(task.handler), inputStore(task.shard.storeUri, cache), stores.get(task.output)]);
    const { shard } = task;
    const marker = markerKey(task.job, shard.id);
    // Idempotent redelivery: a shard whose commit marker exists is done, whoever did it. (Checked here, not on
    // the main thread, which is the one serial part of a worker.)
    if (await output.stat(marker)) return { skipped: true, outputs: [], result: null, posted };
    if (abort.signal.aborted) throw abort.signal.reason; // draining before the handler began
    const outputs: WriteResult[] = [];
    const base = task.output.split('?')[0]!;
    const ctx: ShardContext = {
      job: { id: task.job, name: task.jobName },
      shard,
      params: task.params,
      attempt,
      resumeFrom: checkpoint,
      signal: abort.signal,
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
    post({ run, type: 'begin' });
    const result: unknown = await handler(ctx);
    const summary = outputs.map((o) => ({ key: o.key, size: o.size, checksum: o.checksum }));
    // The commit marker comes after every output: its presence means the shard's outputs are complete and
    // final, and a redelivery skips the shard. A shard that wrote no output through ctx.write has nothing to
    // commit and gets no marker (an atomic, fsynced file write: most of a short shard's cost); a redelivery
    // of it runs it again, which at-least-once allows anyway (a crash before the marker does the same). Its
    // return value, kept only in the marker, is not kept then either.
    if (outputs.length > 0) {
      await output.write(marker, JSON.stringify({ job: task.job, shard: shard.id, input: shard.input, start: shard.start, end: shard.end, outputs: summary, result: result ?? null, at: new Date().toISOString() }), { contentType: 'application/json' });
    }
    return { outputs: summary, result: result ?? null, posted };
  } catch (e) {
    // The error and this run's messages travel separately; `end` lets the main thread wait until every
    // checkpoint posted above has arrived before it settles the delivery.
    post({ run, type: 'end' });
    throw e;
  } finally {
    if (current?.run === run) current = undefined;
  }
}
