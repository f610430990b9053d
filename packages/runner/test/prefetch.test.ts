import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openQueue } from '@lading/core';
import { openStore } from '@lading/storage';
import { parseJobSpec, startWorker, submit, type ShardEvent } from '@lading/runner';

/**
 * Leasing ahead (`prefetch`): tasks wait for a thread in lease order; when the worker drains, the ones that
 * have not started go back to the queue untouched (not an attempt), and the running one finishes.
 */

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

test('tasks leased ahead wait for a thread; a drain hands back the ones not started, as attempt 0 again', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lading-prefetch-'));
  mkdirSync(join(dir, 'in'));
  for (let i = 0; i < 4; i++) writeFileSync(join(dir, 'in', `f${i}.txt`), `file ${i}\n`);
  writeFileSync(join(dir, 'h.mjs'), `import { setTimeout as sleep } from 'node:timers/promises';
export default async function (ctx) {
  await sleep(ctx.params.sleepMs);
  await ctx.write(ctx.shard.key + '.out', 'ok ' + ctx.shard.key);
}`);
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  const store = await openStore(`file:${join(dir, 'store')}`);
  cleanup.push(() => queue.close(), () => store.close());
  const spec = parseJobSpec({ handler: './h.mjs', inputs: [`file:${dir}/in/*.txt`], output: `file:${dir}/out`, params: { sleepMs: 600 } }, { baseDir: dir });
  const job = await submit(spec, { queue, store });

  const a = startWorker({ queue, threads: 1, prefetch: 2 });
  const events = { started: [] as ShardEvent[], done: [] as ShardEvent[], failed: [] as ShardEvent[], released: [] as ShardEvent[] };
  for (const name of ['started', 'done', 'failed', 'released'] as const) a.on(name, (e: ShardEvent) => events[name].push(e));
  await expect.poll(() => events.started.length, { timeout: 15_000 }).toBe(1);
  expect(a.consumer.active).toBe(3); // one running, two leased ahead
  await a.close({ graceMs: 10_000 });
  expect(events.started).toHaveLength(1); // nothing started after the drain began
  expect(events.done.map((e) => e.shard)).toEqual(events.started.map((e) => e.shard));
  expect(events.failed).toEqual([]);
  expect(events.released).toEqual([]);

  const status = await job.status();
  expect(status).toMatchObject({ done: 1, queued: 3, running: 0, hospital: 0 });
  const b = startWorker({ queue, threads: 2 });
  cleanup.push(() => b.close());
  const started: ShardEvent[] = [];
  b.on('started', (e: ShardEvent) => started.push(e));
  expect(await job.wait({ pollMs: 50 })).toMatchObject({ finished: true, ok: true, done: 4, hospital: 0 });
  expect(started.map((e) => e.attempt)).toEqual([0, 0, 0]); // handed back: not an attempt
  for (let i = 0; i < 4; i++) expect(readFileSync(join(dir, 'out', `f${i}.txt.out`), 'utf8')).toBe(`ok f${i}.txt`);
});
