// Batching of short shards (WorkerOptions.batch): chunks of several shards per pool.run, leased ahead. Each
// shard of a chunk keeps its own result: one failing, timing out, killing its thread or being cut by a drain
// must not touch its chunk-mates.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openQueue, type Queue } from '@lading/core';
import { openStore, type BlobStore } from '@lading/storage';
import { parseJobSpec, startWorker, submit, type RunnerWorker, type ShardEvent } from '@lading/runner';
import { HANDLER as FIXTURE_HANDLER, fixture, startWorkerProcess } from './helpers.js';

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const HANDLER = `import { setTimeout as sleep } from 'node:timers/promises';
export default async function (ctx) {
  const k = ctx.shard.key, p = ctx.params;
  ctx.log.info(k);
  if (k === p.fail) throw new Error('cannot handle ' + k);
  if (k === p.stuck) for (;;) { /* stuck */ }
  if (k === p.exit) process.exit(3); // ends the worker thread
  if (k === p.slow) await sleep(p.slowMs);
  if (p.sleepAll) await sleep(p.sleepAll);
  return k;
}
`;

/** Shards that run in well under a millisecond: any shardMs makes them short; `shortMs: 1e6` makes every shard short. */
const ALWAYS = { shortMs: 1e6 };
const fastBackoff = { initialMs: 10, maxMs: 20, multiplier: 2, jitter: 0 };

interface Setup { dir: string; queue: Queue; store: BlobStore }

async function setup(): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'lading-batch-'));
  mkdirSync(join(dir, 'in'));
  writeFileSync(join(dir, 'h.mjs'), HANDLER);
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  const store = await openStore(`file:${join(dir, 'store')}`);
  cleanup.push(async () => rmSync(dir, { recursive: true, force: true }), () => queue.close(), () => store.close());
  return { dir, queue, store };
}

/** A job of `n` one-file shards (in/<name>-NN.txt) with these params. */
async function job(s: Setup, name: string, n: number, params: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  mkdirSync(join(s.dir, 'in', name));
  for (let i = 0; i < n; i++) writeFileSync(join(s.dir, 'in', name, `${name}-${String(i).padStart(2, '0')}.txt`), `${i}\n`);
  const spec = parseJobSpec({ name, handler: './h.mjs', inputs: [`file:${s.dir}/in/${name}/*.txt`], output: `file:${s.dir}/out/${name}`, params, ...extra }, { baseDir: s.dir });
  return submit(spec, { queue: s.queue, store: s.store });
}

type Events = Record<'started' | 'done' | 'failed' | 'released' | 'skipped', (ShardEvent & { error?: Error })[]>;

/** Shard id → input file name (the handler logs it first thing). */
const keys = new Map<string, string>();

function watch(w: RunnerWorker): { events: Events; order: string[]; runs: () => number } {
  const events: Events = { started: [], done: [], failed: [], released: [], skipped: [] };
  const order: string[] = [];
  for (const name of Object.keys(events) as (keyof Events)[]) w.on(name, (e: ShardEvent) => { events[name].push(e); order.push(`${name} ${e.shard}#${e.attempt}`); });
  w.on('log', (e: ShardEvent & { message: string }) => keys.set(e.shard, e.message));
  let runs = 0;
  const run = w.pool.run.bind(w.pool);
  w.pool.run = ((...args: Parameters<typeof run>) => { runs++; return run(...args); }) as typeof w.pool.run;
  return { events, order, runs: () => runs };
}

/** Warm a worker up (threads started, handler loaded, run times seen) with a job of tiny shards. */
async function warm(s: Setup, w: RunnerWorker): Promise<void> {
  const j = await job(s, 'warm', 24);
  expect(await j.wait({ pollMs: 20 })).toMatchObject({ ok: true, done: 24 });
  void w;
}

const keyOf = (e: ShardEvent) => keys.get(e.shard);

test('short shards go several per pool.run; one failing shard fails alone, its chunk-mates are done once', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 2, batch: ALWAYS });
  cleanup.push(() => w.close());
  const { events, order, runs } = watch(w);
  await warm(s, w);
  const r0 = runs();
  const j = await job(s, 'fail', 40, { fail: 'fail-17.txt' }, { retries: { maxAttempts: 2, backoff: fastBackoff } });
  const final = await j.wait({ pollMs: 20 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 39, hospital: 1 });
  const mine = (list: ShardEvent[]) => list.filter((e) => e.job === j.id);
  expect(runs() - r0).toBeLessThan(40); // chunks: fewer pool.run calls than shards
  expect(mine(events.failed).map((e) => [keyOf(e), e.attempt])).toEqual([['fail-17.txt', 0], ['fail-17.txt', 1]]);
  expect(mine(events.done)).toHaveLength(39);
  expect(new Set(mine(events.done).map((e) => e.shard)).size).toBe(39);
  expect(mine(events.done).every((e) => e.attempt === 0)).toBe(true);
  // A chunked shard's begin travels through shared memory, not a message: still exactly one `started` per run,
  // and before that run's end.
  for (const e of [...mine(events.done), ...mine(events.failed)]) {
    const at = `${e.shard}#${e.attempt}`;
    expect(order.filter((o) => o === `started ${at}`)).toHaveLength(1);
    expect(order.indexOf(`started ${at}`)).toBeLessThan(order.findIndex((o) => o === `done ${at}` || o === `failed ${at}`));
  }
  const [rec] = await s.queue.hospital.list({ job: j.id });
  expect(rec!.errors.map((e) => e.message)).toEqual(['cannot handle fail-17.txt', 'cannot handle fail-17.txt']);
});

test('a timeout in a chunk counts against the stuck shard only: its thread is terminated, its chunk-mates run elsewhere as attempt 0', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 2, batch: ALWAYS });
  cleanup.push(() => w.close());
  const { events } = watch(w);
  await warm(s, w);
  const j = await job(s, 'stuck', 40, { stuck: 'stuck-05.txt' }, { timeout: '400ms', retries: { maxAttempts: 2, backoff: fastBackoff } });
  const final = await j.wait({ pollMs: 20 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 39, hospital: 1 });
  const mine = (list: ShardEvent[]) => list.filter((e) => e.job === j.id);
  expect(mine(events.failed).map((e) => [keyOf(e), e.attempt, (e as { error?: Error }).error?.name])).toEqual([['stuck-05.txt', 0, 'TimeoutError'], ['stuck-05.txt', 1, 'TimeoutError']]);
  expect(mine(events.done)).toHaveLength(39);
  expect(mine(events.done).every((e) => e.attempt === 0)).toBe(true);
  // Every shard started; the stuck one twice (its two attempts). A chunk-mate that had finished just before the
  // stuck one began may run again (its result died with the thread), but never as a failed attempt.
  const starts = new Map<string, number>();
  for (const e of mine(events.started)) starts.set(e.shard, (starts.get(e.shard) ?? 0) + 1);
  expect(starts.size).toBe(40);
  for (const [id, n] of starts) if (keys.get(id) === 'stuck-05.txt') expect(n).toBe(2);
  const [rec] = await s.queue.hospital.list({ job: j.id });
  expect(rec!.errors.map((e) => e.name)).toEqual(['TimeoutError', 'TimeoutError']);
});

test('a shard that ends its thread (process.exit) in a chunk fails alone; the shards behind it in the chunk are run by another thread', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 2, batch: ALWAYS });
  cleanup.push(() => w.close());
  const { events } = watch(w);
  await warm(s, w);
  const j = await job(s, 'exit', 40, { exit: 'exit-03.txt' }, { retries: { maxAttempts: 1 } });
  const final = await j.wait({ pollMs: 20 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 39, hospital: 1 });
  const mine = (list: ShardEvent[]) => list.filter((e) => e.job === j.id);
  expect(mine(events.failed).map((e) => keyOf(e))).toEqual(['exit-03.txt']);
  expect(mine(events.done)).toHaveLength(39);
  expect(mine(events.done).every((e) => e.attempt === 0)).toBe(true);
  const [rec] = await s.queue.hospital.list({ job: j.id });
  expect(rec!.errors[0]!.message).toMatch(/exit/i);
});

test('drain with short shards leased ahead and in chunks: nothing starts after the drain, the running shard finishes, the rest go back untouched', async () => {
  const s = await setup();
  const a = startWorker({ queue: s.queue, threads: 1, batch: { ...ALWAYS, maxChunk: 16, chunkMs: 1e6 } });
  const { events } = watch(a);
  await warm(s, a);
  // The slow shard is first in its chunk (sorted names: slow-00 first), the others wait behind it in the chunk
  // or leased ahead.
  const j = await job(s, 'slow', 40, { slow: 'slow-00.txt', slowMs: 800 });
  await expect.poll(() => events.started.some((e) => keyOf(e) === 'slow-00.txt'), { timeout: 15_000 }).toBe(true);
  const startedBefore = events.started.filter((e) => e.job === j.id).length;
  expect(a.consumer.active).toBeGreaterThan(2); // leased ahead
  const t0 = Date.now();
  await a.close({ graceMs: 10_000 });
  expect(Date.now() - t0).toBeLessThan(5000);
  const mine = (list: ShardEvent[]) => list.filter((e) => e.job === j.id);
  expect(mine(events.started)).toHaveLength(startedBefore); // nothing started after the drain began
  expect(mine(events.done).map((e) => e.shard).sort()).toEqual(mine(events.started).map((e) => e.shard).sort());
  expect(events.failed).toEqual([]);
  expect(events.released).toEqual([]);
  const status = await j.status();
  expect(status).toMatchObject({ done: mine(events.done).length, running: 0, hospital: 0 });
  expect(status.queued).toBe(40 - mine(events.done).length);
  expect(status.queued).toBeGreaterThan(0);

  const b = startWorker({ queue: s.queue, threads: 2 });
  cleanup.push(() => b.close());
  const started: ShardEvent[] = [];
  b.on('started', (e: ShardEvent) => started.push(e));
  expect(await j.wait({ pollMs: 20 })).toMatchObject({ finished: true, ok: true, done: 40, hospital: 0 });
  expect(started.filter((e) => e.job === j.id).map((e) => e.attempt)).toEqual(new Array(status.queued).fill(0)); // handed back: not an attempt
});

test('long shards are not batched: one per pool.run, none leased ahead', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 1, batch: { shortMs: 5 } });
  cleanup.push(() => w.close());
  const { runs } = watch(w);
  let maxActive = 0;
  const timer = setInterval(() => { maxActive = Math.max(maxActive, w.consumer.active); }, 5);
  const j = await job(s, 'long', 20, { sleepAll: 30 });
  expect(await j.wait({ pollMs: 20 })).toMatchObject({ ok: true, done: 20 });
  clearInterval(timer);
  expect(runs()).toBe(20);
  expect(maxActive).toBe(1);
});

test('batch: false keeps one shard per pool.run however short the shards are', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 2, batch: false });
  cleanup.push(() => w.close());
  const { runs } = watch(w);
  const j = await job(s, 'off', 30);
  expect(await j.wait({ pollMs: 20 })).toMatchObject({ ok: true, done: 30 });
  expect(runs()).toBe(30);
});

test('SIGKILL of a worker batching short shards: the job completes, every output once; the shards it held ahead cost at most one attempt each, bounded by its concurrency', async () => {
  const fx = await fixture('batch-kill');
  cleanup.push(() => fx.cleanup());
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  const RECORDS = 3000;
  const lines: string[] = [];
  for (let i = 0; i < RECORDS; i++) lines.push(JSON.stringify({ id: i }));
  writeFileSync(join(inDir, 'corpus.jsonl'), `${lines.join('\n')}\n`);
  await queue.createTopic('lading.tasks', { leaseMs: 1000 });
  const spec = parseJobSpec({
    name: 'batch-kill', handler: FIXTURE_HANDLER, inputs: [`file:${inDir}/corpus.jsonl`], sharding: { by: 'bytes', size: 200, align: 'newline' },
    output: `file:${outDir}`, params: { mode: 'records', cpuMs: 0 }, retries: { maxAttempts: 3, backoff: fastBackoff },
  });
  const job = await submit(spec, { queue, store });
  const shards = job.record.shards;
  expect(shards).toBeGreaterThan(150);
  // One thread, every shard short: up to 1 + 64 shards in flight (leased ahead or in its chunk).
  const a = await startWorkerProcess(queueUri, { WORKER_THREADS: 1, WORKER_BATCH: JSON.stringify({ shortMs: 1e6 }) });
  workers.push(a);
  await a.waitFor((e) => e.event === 'done' && a.events.filter((d) => d.event === 'done').length >= 40, 30_000);
  a.kill('SIGKILL');
  await a.exited;
  const b = await startWorkerProcess(queueUri, { WORKER_THREADS: 2 });
  workers.push(b);
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: true, total: shards, done: shards, hospital: 0 });
  // Charged an attempt: the shards A held when it died (running, in its chunk, or leased ahead).
  const charged = b.events.filter((e) => e.event === 'started' && e.attempt! > 0);
  expect(charged.length).toBeGreaterThanOrEqual(1);
  expect(charged.length).toBeLessThanOrEqual(65);
  expect(charged.every((e) => e.attempt === 1)).toBe(true);
  console.log(`batch-kill: ${shards} shards; SIGKILL after ${a.events.filter((e) => e.event === 'done').length} done; ${charged.length} shards it held came back charged an attempt`);
  const outputs = readdirSync(outDir).filter((f) => f.endsWith('.json'));
  expect(outputs).toHaveLength(shards);
  const seen = new Uint8Array(RECORDS);
  for (const f of outputs) for (const id of (JSON.parse(readFileSync(join(outDir, f), 'utf8')) as { ids: number[] }).ids) seen[id]!++;
  expect(seen.every((c) => c === 1)).toBe(true);
}, 90_000);

test('a shard that turns out long in a chunk does not hold its chunk-mates: an idle thread takes the ones not started', async () => {
  const s = await setup();
  const w = startWorker({ queue: s.queue, threads: 2, batch: { ...ALWAYS, chunkMs: 5 } });
  cleanup.push(() => w.close());
  const { events } = watch(w);
  await warm(s, w);
  const j = await job(s, 'mixed', 20, { slow: 'mixed-00.txt', slowMs: 3000 });
  await expect.poll(() => events.started.some((e) => keyOf(e) === 'mixed-00.txt'), { timeout: 15_000 }).toBe(true);
  const slowAt = Date.now();
  // The other 19 finish long before the slow one, whichever chunk they were in.
  await expect.poll(() => events.done.filter((e) => e.job === j.id).length, { timeout: 2500, interval: 20 }).toBe(19);
  expect(Date.now() - slowAt).toBeLessThan(2500);
  expect(await j.wait({ pollMs: 20 })).toMatchObject({ ok: true, done: 20 });
  const mine = (list: ShardEvent[]) => list.filter((e) => e.job === j.id);
  expect(mine(events.started)).toHaveLength(20); // each started once
  expect(mine(events.failed)).toEqual([]);
});
