// The runner on the Kafka driver: submit a sharded job, run it with a worker (Piscina threads), wait for it,
// and a failing shard that retries through the retry topic and lands in the hospital.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openQueue } from '@lading/core';
import { openStore } from '@lading/storage';
import { parseJobSpec, startWorker, submit } from '@lading/runner';
import { startKafkaMock } from '../kafka-mock/index.js';
import { kafkaUri } from './kafka-helpers.js';

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'lading-kjob-'));
  mkdirSync(join(dir, 'in'));
  mkdirSync(join(dir, 'out'));
  const mock = await startKafkaMock({ brokers: 1 });
  cleanup.push(() => mock.stop(), async () => rmSync(dir, { recursive: true, force: true }));
  const queue = await openQueue({ uri: kafkaUri(mock) });
  const store = await openStore(`file:${join(dir, 'store')}`);
  cleanup.push(() => queue.close(), () => store.close());
  return { dir, queue, store };
}

test('a sharded job over JSONL on Kafka: every record handled once, wait reports ok', async () => {
  const { dir, queue, store } = await setup();
  const lines: string[] = [];
  for (let i = 0; i < 2000; i++) lines.push(JSON.stringify({ id: i, v: i }));
  writeFileSync(join(dir, 'in', 'a.jsonl'), lines.slice(0, 1200).join('\n') + '\n');
  writeFileSync(join(dir, 'in', 'b.jsonl'), lines.slice(1200).join('\n'));
  writeFileSync(join(dir, 'count.mjs'), `export default async function (ctx) {
    let n = 0, sum = 0;
    for await (const { line } of ctx.lines()) { if (!line) continue; const r = JSON.parse(line); n++; sum += r.v; }
    await ctx.write(ctx.shard.id + '.json', JSON.stringify({ n, sum }));
  }`);
  const spec = parseJobSpec({ name: 'count', handler: './count.mjs', inputs: [`file:${dir}/in/*.jsonl`], sharding: { by: 'bytes', size: '8KiB' }, output: `file:${dir}/out` }, { baseDir: dir });
  const job = await submit(spec, { queue, store });
  expect(job.record.shards).toBeGreaterThan(3);
  expect((await job.status()).queued).toBe(job.record.shards);
  const worker = startWorker({ queue, threads: 2 });
  cleanup.push(() => worker.close());
  const final = await job.wait({ pollMs: 100 });
  expect(final).toMatchObject({ finished: true, ok: true, done: job.record.shards, hospital: 0 });
  let n = 0;
  let sum = 0;
  const outs = readdirSync(join(dir, 'out')).filter((f) => f.endsWith('.json'));
  expect(outs).toHaveLength(job.record.shards);
  for (const f of outs) {
    const r = JSON.parse(readFileSync(join(dir, 'out', f), 'utf8')) as { n: number; sum: number };
    n += r.n;
    sum += r.sum;
  }
  expect(n).toBe(2000);
  expect(sum).toBe((1999 * 2000) / 2);
});

test('a failing shard retries through the retry topic, then lands in the hospital; wait reports not ok', async () => {
  const { dir, queue, store } = await setup();
  for (let i = 0; i < 6; i++) writeFileSync(join(dir, 'in', `f${i}.txt`), `file ${i}\n`);
  writeFileSync(join(dir, 'h.mjs'), `export default async function (ctx) {
    if (ctx.shard.key === 'f3.txt') throw new Error('cannot parse ' + ctx.shard.key);
    await ctx.write(ctx.shard.key + '.out', 'ok');
  }`);
  const spec = parseJobSpec({ handler: './h.mjs', inputs: [`file:${dir}/in/*.txt`], output: `file:${dir}/out`, retries: { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 20, multiplier: 2, jitter: 0 } } }, { baseDir: dir });
  const job = await submit(spec, { queue, store });
  const worker = startWorker({ queue, threads: 2 });
  cleanup.push(() => worker.close());
  const final = await job.wait({ pollMs: 100 });
  expect(final).toMatchObject({ finished: true, ok: false, done: 5, hospital: 1 });
  const [rec] = await queue.hospital.list({ job: job.id });
  expect(rec!.errors.map((e) => e.message)).toEqual(['cannot parse f3.txt', 'cannot parse f3.txt']);
});
