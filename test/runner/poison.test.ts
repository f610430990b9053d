import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { parseJobSpec, submit } from '@lading/runner';
import { HANDLER, allEvents, fixture, spawnWorker, startWorkerProcess, type Fixture, type WorkerProcess } from './helpers.js';

let fx: Fixture | undefined;
let sup: { stop(): void; ready: Promise<void> } | undefined;
afterEach(async () => {
  sup?.stop(); // first: no replacement may start while the cleanup kills the workers
  sup = undefined;
  await fx?.cleanup();
  fx = undefined;
});

const fastBackoff = { initialMs: 20, maxMs: 50, multiplier: 2, jitter: 0 };

function inputs(dir: string, n: number): void {
  for (let i = 0; i < n; i++) writeFileSync(join(dir, `f${i}.txt`), `file ${i}\n`);
}

/** Keep `n` workers alive: start a replacement whenever one exits, until stopped. */
function supervise(f: Fixture, n: number, env: Record<string, string | number> = {}): { stop(): void; ready: Promise<void> } {
  let stopped = false;
  const keep = async (w: WorkerProcess): Promise<void> => {
    await w.exited;
    if (stopped) return;
    // Registered as soon as it is spawned, not once ready: the cleanup must kill a replacement still starting.
    const next = spawnWorker(f.queueUri, env);
    f.workers.push(next);
    void keep(next);
  };
  const ready = (async () => {
    const ws = await Promise.all(Array.from({ length: n }, () => startWorkerProcess(f.queueUri, env)));
    f.workers.push(...ws);
    for (const w of ws) void keep(w);
  })();
  return { stop: () => { stopped = true; }, ready };
}

test('a shard whose handler always throws ends in the hospital (every attempt, with worker identity); the others finish', async () => {
  fx = await fixture('poison');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  inputs(inDir, 8);
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', poison: 'f1.txt' }, retries: { maxAttempts: 3, backoff: fastBackoff } });
  const job = await submit(spec, { queue, store });
  workers.push(...(await Promise.all([startWorkerProcess(queueUri), startWorkerProcess(queueUri)])));
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: false, total: 8, done: 7, hospital: 1 });
  for (let i = 0; i < 8; i++) expect(existsSync(join(outDir, `f${i}.txt.out`))).toBe(i !== 1);

  const records = await queue.hospital.list({ job: job.id });
  expect(records).toHaveLength(1);
  const [rec] = records;
  expect(rec!.reason).toBe('failed');
  expect((rec!.envelope?.body as { shard: { key: string } }).shard.key).toBe('f1.txt');
  expect(rec!.errors.map((e) => [e.attempt, e.message])).toEqual([[0, 'cannot handle f1.txt'], [1, 'cannot handle f1.txt'], [2, 'cannot handle f1.txt']]);
  const pids = new Set(workers.map((w) => w.pid));
  for (const e of rec!.errors) {
    const m = /^(.+):(\d+)$/.exec(e.worker);
    expect(m, e.worker).not.toBeNull();
    expect(m![1]).toBe(e.host);
    expect(pids.has(Number(m![2]))).toBe(true);
  }
  // Both workers are still alive.
  expect(workers.every((w) => w.alive)).toBe(true);
  expect(allEvents(workers).filter((e) => e.event === 'failed')).toHaveLength(3);
});

test('a shard that kills its worker process is redelivered to other workers, then admitted as poison; the rest finish', async () => {
  fx = await fixture('crash');
  const { inDir, outDir, queue, store, workers } = fx;
  inputs(inDir, 6);
  // Lease-expiry counting uses the topic's maxAttempts (see the known-bug test below), so set both.
  await queue.createTopic('lading.tasks', { leaseMs: 1000, maxAttempts: 3 });
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', crash: 'f2.txt', exitThread: 'f4.txt' }, retries: { maxAttempts: 3, backoff: fastBackoff } });
  const job = await submit(spec, { queue, store });
  sup = supervise(fx, 2);
  await sup.ready;
  const final = await job.wait({ pollMs: 100 });
  sup.stop();
  expect(final).toMatchObject({ finished: true, ok: false, total: 6, done: 4, hospital: 2 });
  for (const i of [0, 1, 3, 5]) expect(readFileSync(join(outDir, `f${i}.txt.out`), 'utf8')).toBe(`done f${i}.txt\n`);

  const records = await queue.hospital.list({ job: job.id });
  const byKey = new Map(records.map((r) => [(r.envelope?.body as { shard: { key: string } }).shard.key, r]));
  // The process killer: three deliveries, three dead workers (one per attempt), then poison.
  const crash = byKey.get('f2.txt')!;
  expect(crash.reason).toBe('poison');
  expect(crash.errors.map((e) => [e.attempt, e.name])).toEqual([[0, 'LeaseExpired'], [1, 'LeaseExpired'], [2, 'LeaseExpired']]);
  expect(new Set(crash.errors.map((e) => e.worker)).size).toBe(3);
  const dead = workers.filter((w) => !w.alive && w.proc.signalCode === 'SIGKILL').map((w) => w.pid);
  expect(dead).toHaveLength(3);
  for (const e of crash.errors) expect(dead).toContain(Number(/:(\d+)/.exec(e.worker)![1]));

  // process.exit() inside a handler ends only its worker thread: an ordinary failed attempt, the process lives on.
  const exiter = byKey.get('f4.txt')!;
  const why = JSON.stringify(exiter.errors.map((e) => [e.name, e.message, e.worker]));
  expect(exiter.reason, why).toBe('failed');
  expect(exiter.errors, why).toHaveLength(3);
  for (const e of exiter.errors) expect(e.message, why).toMatch(/exit/i);
}, 60_000);

test('lease-expiry poison honours the job\'s retries.maxAttempts (header lading-max-attempts)', async () => {
  fx = await fixture('crash-max');
  const { inDir, outDir, queue, store } = fx;
  inputs(inDir, 1);
  await queue.createTopic('lading.tasks', { leaseMs: 300 }); // topic default maxAttempts: 5
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', crash: 'f0.txt' }, retries: { maxAttempts: 2, backoff: fastBackoff } });
  const job = await submit(spec, { queue, store });
  sup = supervise(fx, 2);
  await sup.ready;
  await job.wait({ pollMs: 100 });
  sup.stop();
  const [rec] = await queue.hospital.list({ job: job.id });
  expect(rec!.reason).toBe('poison');
  // The job said 2 attempts; the driver counts lease expiries against the topic's 5.
  expect(rec!.errors).toHaveLength(2);
}, 60_000);

test('under Slurm the worker identity in hospital records carries the Slurm job, task and node ids', async () => {
  fx = await fixture('slurm');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  inputs(inDir, 2);
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${inDir}/*.txt`], output: `file:${outDir}`, params: { mode: 'files', poison: 'f0.txt' }, retries: { maxAttempts: 1 } });
  const job = await submit(spec, { queue, store });
  const w = await startWorkerProcess(queueUri, { SLURM_JOB_ID: 123, SLURM_PROCID: 4, SLURM_NODEID: 2 });
  workers.push(w);
  expect(w.events[0]!.identity).toContain('slurm:123.4');
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 1, hospital: 1 });
  const [rec] = await queue.hospital.list({ job: job.id });
  expect(rec!.errors).toHaveLength(1);
  expect(rec!.errors[0]!.worker).toContain('slurm:123.4');
  expect(rec!.errors[0]!.worker).toBe(`${rec!.errors[0]!.host}:${w.pid} slurm:123.4@node2`);
});
