/**
 * Piscina worker-thread entry. It receives a task descriptor (URIs, a byte range, params) — never file
 * bytes — opens the stores itself, and runs the user's handler. Progress, checkpoints and logs go back to
 * the main thread over a MessagePort; the main thread owns the lease, so a CPU-bound handler here never
 * loses it.
 */
import type { MessagePort } from 'node:worker_threads';
import type { JsonValue } from '@lading/core';
import type { WriteResult } from '@lading/storage';
import { alignedLines, type ShardContext, type ShardHandler } from './context.js';
import { StoreCache } from './inputs.js';
import { markerKey, type Task, type ThreadMessage, type ThreadResult } from './task.js';

export interface ThreadInput {
  task: Task;
  attempt: number;
  checkpoint: JsonValue | undefined;
  port: MessagePort;
}

const stores = new StoreCache();
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

export default async function runShard({ task, attempt, checkpoint, port }: ThreadInput): Promise<ThreadResult> {
  const post = (m: ThreadMessage) => port.postMessage(m);
  const abort = new AbortController();
  port.on('message', (m: { type?: string }) => { if (m.type === 'abort') abort.abort(new Error('the worker is draining')); });
  try {
    const [handler, input, output] = await Promise.all([loadHandler(task.handler), stores.get(task.shard.storeUri), stores.get(task.output)]);
    const outputs: WriteResult[] = [];
    const { shard } = task;
    const base = task.output.split('?')[0]!;
    const ctx: ShardContext = {
      job: { id: task.job, name: task.jobName },
      shard,
      params: task.params,
      attempt,
      resumeFrom: checkpoint,
      signal: abort.signal,
      log: {
        info: (message) => post({ type: 'log', level: 'info', message }),
        warn: (message) => post({ type: 'log', level: 'warn', message }),
        error: (message) => post({ type: 'log', level: 'error', message }),
      },
      read: (range = {}) => input.read(shard.key, { start: range.start ?? shard.start, end: range.end ?? shard.end, signal: abort.signal }),
      lines: (options = {}) => alignedLines((start, end) => input.read(shard.key, { start, end, signal: abort.signal }), shard, options.from),
      write: async (name, body, options = {}) => {
        const r = await output.write(name, body, { ...options, signal: abort.signal });
        outputs.push(r);
        return r;
      },
      outputUri: (name) => `${base.endsWith('/') ? base : `${base}/`}${name}`,
      progress: (done, total) => post({ type: 'progress', done, total }),
      checkpoint: (state) => post({ type: 'checkpoint', state }),
      stores: { input, output },
    };
    post({ type: 'begin' });
    const result: unknown = await handler(ctx);
    const summary = outputs.map((o) => ({ key: o.key, size: o.size, checksum: o.checksum }));
    // The commit marker comes after every output: its presence means the shard is done for good.
    await output.write(markerKey(task.job, shard.id), JSON.stringify({ job: task.job, shard: shard.id, input: shard.input, start: shard.start, end: shard.end, outputs: summary, result: result ?? null, at: new Date().toISOString() }), { contentType: 'application/json' });
    return { outputs: summary, result: result ?? null };
  } finally {
    // Messages on this port and the task's result travel separately; `end` lets the main thread wait
    // until every checkpoint posted above has arrived before it settles the delivery.
    post({ type: 'end' });
    port.close();
  }
}
