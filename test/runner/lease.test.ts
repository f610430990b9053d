import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { parseJobSpec, submit } from '@lading/runner';
import { HANDLER, allEvents, fixture, startWorkerProcess, type Fixture } from './helpers.js';

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

const fastBackoff = { initialMs: 20, maxMs: 50, multiplier: 2, jitter: 0 };

test('a CPU-bound shard running 4x its lease keeps the lease (renewed from the main thread): started once', async () => {
  fx = await fixture('lease');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  for (const name of ['a.txt', 'b.txt', 'busy.txt', 'c.txt']) writeFileSync(join(inDir, name), `${name}\n`);
  await queue.createTopic('lading.tasks', { leaseMs: 1000 });
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', busy: 'busy.txt', busyMs: 4000 } });
  const job = await submit(spec, { queue, store });
  workers.push(...(await Promise.all([startWorkerProcess(queueUri), startWorkerProcess(queueUri)])));
  const final = await job.wait({ pollMs: 100 });
  expect(final).toMatchObject({ finished: true, ok: true, done: 4, hospital: 0 });
  const events = allEvents(workers);
  const busy = events.find((e) => e.event === 'log' && e.message === 'begin busy.txt attempt 0')!;
  expect(events.filter((e) => e.event === 'started' && e.shard === busy.shard)).toHaveLength(1);
  expect(events.filter((e) => e.event === 'log' && e.message?.startsWith('begin busy.txt'))).toHaveLength(1);
  const done = events.find((e) => e.event === 'done' && e.shard === busy.shard)!;
  expect(done.t - busy.t).toBeGreaterThanOrEqual(3500); // (event times are taken in the main thread)
  expect(events.filter((e) => e.event === 'skipped')).toEqual([]);
});

test('checkpoint / resume: a retried shard gets the last checkpoint as resumeFrom and does only the rest', async () => {
  fx = await fixture('checkpoint');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  const lines = Array.from({ length: 10 }, (_, i) => `line ${i}`);
  // Many shards, each failing in the same tick as its 5th checkpoint: a checkpoint still in flight on the
  // thread's port when the failure arrives must not be lost (it was, about one shard in 60, before the fix).
  const FILES = 40;
  for (let i = 0; i < FILES; i++) writeFileSync(join(inDir, `d${String(i).padStart(2, '0')}.txt`), `${lines.join('\n')}\n`);
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'checkpoint', failAt: 5 }, retries: { maxAttempts: 2, backoff: fastBackoff } });
  const job = await submit(spec, { queue, store });
  workers.push(await startWorkerProcess(queueUri, { WORKER_THREADS: 2 }));
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: true, done: FILES, hospital: 0 });
  const outputs = readdirSync(outDir).filter((f) => f.endsWith('.json'));
  expect(outputs).toHaveLength(FILES);
  const offsetOfLine5 = Buffer.byteLength(`${lines.slice(0, 5).join('\n')}\n`);
  for (const f of outputs) {
    expect(f).toMatch(/\.attempt-1\.json$/); // attempt 0 failed before writing anything
    const out = JSON.parse(readFileSync(join(outDir, f), 'utf8')) as { attempt: number; resumeFrom: { offset: number; lines: number }; lines: string[] };
    expect(out.attempt).toBe(1);
    expect(out.resumeFrom, f).toEqual({ offset: offsetOfLine5, lines: 5 });
    expect(out.lines).toEqual(lines.slice(5)); // only the lines after the checkpoint
  }
});

test('timeout: a stuck synchronous handler has its thread terminated, is retried, then lands in the hospital as TimeoutError; the worker goes on', async () => {
  fx = await fixture('timeout');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  for (const name of ['a.txt', 'b.txt', 'stuck.txt', 'z.txt']) writeFileSync(join(inDir, name), `${name}\n`);
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', forever: 'stuck.txt' }, timeout: '500ms', retries: { maxAttempts: 2, backoff: fastBackoff } });
  const job = await submit(spec, { queue, store });
  const w = await startWorkerProcess(queueUri);
  workers.push(w);
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 3, hospital: 1 });
  const [rec] = await queue.hospital.list({ job: job.id });
  expect(rec!.reason).toBe('failed');
  expect(rec!.errors.map((e) => [e.attempt, e.name])).toEqual([[0, 'TimeoutError'], [1, 'TimeoutError']]);
  expect(rec!.errors[0]!.message).toMatch(/timed out after 500 ms/);
  expect(w.alive).toBe(true);
  expect(readdirSync(outDir).filter((f) => f.endsWith('.out')).sort()).toEqual(['a.txt.out', 'b.txt.out', 'z.txt.out']);
  // The worker still takes new work after its thread was terminated.
  const more = parseJobSpec({ name: 'after', handler: HANDLER, inputs: [`file:${inDir}/a.txt`], output: `file:${outDir}/again`, params: { mode: 'files' } });
  const job2 = await submit(more, { queue, store });
  expect(await job2.wait({ pollMs: 50 })).toMatchObject({ ok: true, done: 1 });
  expect(allEvents(workers).filter((e) => e.event === 'done' && e.job === job2.id)).toHaveLength(1);
});
