import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openQueue, type Queue } from '@lading/core';
import { openStore } from '@lading/storage';
import { Job, parseJobSpec, startWorker, submit, type RunnerWorker } from '@lading/runner';

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'lading-job-'));
  mkdirSync(join(dir, 'in'));
  mkdirSync(join(dir, 'out'));
  return dir;
}

const COUNT_HANDLER = `
export default async function (ctx) {
  let n = 0, sum = 0;
  for await (const { line } of ctx.lines()) { if (!line) continue; const r = JSON.parse(line); n++; sum += r.v; }
  await ctx.write(ctx.shard.id + '.json', JSON.stringify({ n, sum, ids: [] }));
  return { n, sum };
}`;

test('a bytes-sharded job over JSONL: every record handled once, outputs committed', async () => {
  const dir = setup();
  const lines: string[] = [];
  for (let i = 0; i < 2000; i++) lines.push(JSON.stringify({ id: i, v: i, pad: 'x'.repeat(i % 37) }));
  writeFileSync(join(dir, 'in', 'a.jsonl'), lines.slice(0, 1200).join('\n') + '\n');
  writeFileSync(join(dir, 'in', 'b.jsonl'), lines.slice(1200).join('\n'));
  writeFileSync(join(dir, 'count.mjs'), COUNT_HANDLER);
  const queue: Queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  const store = await openStore(`file:${join(dir, 'store')}`);
  cleanup.push(() => queue.close(), () => store.close());
  const spec = parseJobSpec({ name: 'count', handler: './count.mjs', inputs: [`file:${dir}/in/*.jsonl`], sharding: { by: 'bytes', size: '8KiB' }, output: `file:${dir}/out` }, { baseDir: dir });
  const job = await submit(spec, { queue, store });
  expect(job.record.inputs).toBe(2);
  expect(job.record.shards).toBeGreaterThan(10);
  const before = await job.status();
  expect(before.queued).toBe(job.record.shards);

  // Resubmitting the same spec publishes nothing new.
  const again = await submit(spec, { queue, store });
  expect(again.id).toBe(job.id);
  expect((await again.status()).queued).toBe(job.record.shards);

  const worker: RunnerWorker = startWorker({ queue, threads: 2 });
  cleanup.push(() => worker.close());
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: true, done: job.record.shards, hospital: 0 });
  let n = 0, sum = 0;
  const outs = readdirSync(join(dir, 'out')).filter((f) => f.endsWith('.json'));
  expect(outs).toHaveLength(job.record.shards);
  for (const f of outs) {
    const r = JSON.parse(readFileSync(join(dir, 'out', f), 'utf8')) as { n: number; sum: number };
    n += r.n; sum += r.sum;
  }
  expect(n).toBe(2000);
  expect(sum).toBe((1999 * 2000) / 2);
  expect(readdirSync(join(dir, 'out', '_lading', job.id, 'done'))).toHaveLength(job.record.shards);
  const listed = await Job.list(queue, store);
  expect(listed.map((j) => j.id)).toEqual([job.id]);
});

test('a failing shard retries, then lands in the hospital; the others finish; wait reports not ok', async () => {
  const dir = setup();
  for (let i = 0; i < 6; i++) writeFileSync(join(dir, 'in', `f${i}.txt`), `file ${i}\n`);
  writeFileSync(join(dir, 'h.mjs'), `export default async function (ctx) {
    if (ctx.shard.key === 'f3.txt') throw new Error('cannot parse ' + ctx.shard.key);
    await ctx.write(ctx.shard.key + '.out', 'ok');
  }`);
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  const store = await openStore(`file:${join(dir, 'store')}`);
  cleanup.push(() => queue.close(), () => store.close());
  const spec = parseJobSpec({ handler: './h.mjs', inputs: [`file:${dir}/in/*.txt`], output: `file:${dir}/out`, retries: { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 20, multiplier: 2, jitter: 0 } } }, { baseDir: dir });
  const job = await submit(spec, { queue, store });
  const worker = startWorker({ queue, threads: 2 });
  cleanup.push(() => worker.close());
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 5, hospital: 1 });
  const [rec] = await queue.hospital.list({ job: job.id });
  expect(rec!.errors.map((e) => e.message)).toEqual(['cannot parse f3.txt', 'cannot parse f3.txt']);
});

test('a malformed task goes to the hospital as invalid and the worker keeps going', async () => {
  const dir = setup();
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  cleanup.push(() => queue.close());
  const worker = startWorker({ queue, threads: 1 });
  cleanup.push(() => worker.close());
  await queue.publish('lading.tasks', { kind: 'something else' });
  await expect.poll(async () => (await queue.hospital.list({ reason: 'invalid' })).length, { timeout: 10_000 }).toBe(1);
});
