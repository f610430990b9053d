import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { parseJobSpec, submit } from '@lading/runner';
import { HANDLER, allEvents, fixture, startWorkerProcess, type Fixture } from './helpers.js';

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

async function slowJob(f: Fixture, sleepMs: number) {
  for (const name of ['a.txt', 'b.txt', 'slow.txt']) writeFileSync(join(f.inDir, name), `${name}\n`);
  const spec = parseJobSpec({ handler: HANDLER, inputs: [`file:${f.inDir}/*.txt`], output: `file:${f.outDir}`, params: { mode: 'files', slow: 'slow.txt', sleepMs } });
  return submit(spec, { queue: f.queue, store: f.store });
}

test('SIGTERM with a long enough grace: the running shard finishes and is acked, never re-run; exit 0', async () => {
  fx = await fixture('drain');
  const { queueUri, workers } = fx;
  const job = await slowJob(fx, 2000);
  const a = await startWorkerProcess(queueUri, { WORKER_GRACE_MS: 30_000 });
  workers.push(a);
  const begin = await a.waitFor((e) => e.event === 'log' && e.message === 'begin slow.txt attempt 0');
  const slowShard = begin.shard!;
  const b = await startWorkerProcess(queueUri);
  workers.push(b);
  const termAt = Date.now();
  a.kill('SIGTERM');
  const exit = await a.exited;
  const tookMs = Date.now() - termAt;
  expect(exit).toEqual({ code: 0, signal: null });
  // It exits once its shard is done (~2 s), not at the end of the grace: a bound far from both, so a loaded
  // machine cannot fail it, while a drain that sat out its grace would.
  expect(tookMs).toBeLessThan(20_000);
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: true, done: 3, hospital: 0 });

  const events = allEvents(workers);
  expect(events.filter((e) => e.event === 'started' && e.shard === slowShard)).toHaveLength(1);
  expect(a.events.filter((e) => e.event === 'done' && e.shard === slowShard)).toHaveLength(1);
  const draining = a.events.find((e) => e.event === 'draining')!;
  expect(a.events.filter((e) => e.event === 'started' && e.t > draining.t)).toEqual([]); // no new work after SIGTERM
  expect(a.events.at(-1)).toMatchObject({ event: 'closed' });
  expect(readFileSync(join(fx.outDir, 'slow.txt.out'), 'utf8')).toBe('done slow.txt\n');
});

test('SIGTERM with a short grace: the running shard is handed back and finished by another worker; exit is still clean', async () => {
  fx = await fixture('drain-short');
  const { queueUri, workers, queue } = fx;
  const job = await slowJob(fx, 500);
  // Worker A sleeps 10 s in the slow shard (ignoring the abort signal); B sleeps the job's 500 ms.
  const a = await startWorkerProcess(queueUri, { WORKER_GRACE_MS: 200, HANDLER_SLEEP_MS: 10_000 });
  workers.push(a);
  const begin = await a.waitFor((e) => e.event === 'log' && e.message === 'begin slow.txt attempt 0');
  const slowShard = begin.shard!;
  const b = await startWorkerProcess(queueUri);
  workers.push(b);
  const termAt = Date.now();
  a.kill('SIGTERM');
  const exit = await a.exited;
  const tookMs = Date.now() - termAt;
  expect(exit).toEqual({ code: 0, signal: null });
  expect(tookMs).toBeLessThan(4000); // grace 200 ms + terminating the thread, far from the 10 s shard
  const final = await job.wait({ pollMs: 50 });
  expect(final).toMatchObject({ finished: true, ok: true, done: 3, hospital: 0 });
  expect(await queue.hospital.list({ job: job.id })).toEqual([]);

  // A started it and handed it back; B ran it (as attempt 0 again: a hand-back is not a failed attempt).
  expect(a.events.filter((e) => e.event === 'done' && e.shard === slowShard)).toEqual([]);
  expect(b.events.filter((e) => e.event === 'started' && e.shard === slowShard).map((e) => e.attempt)).toEqual([0]);
  expect(b.events.filter((e) => e.event === 'done' && e.shard === slowShard)).toHaveLength(1);
  expect(a.events.at(-1)).toMatchObject({ event: 'closed' });
  expect(readFileSync(join(fx.outDir, 'slow.txt.out'), 'utf8')).toBe('done slow.txt\n');
  expect(readdirSync(fx.outDir).filter((f) => f !== '_lading').sort()).toEqual(['a.txt.out', 'b.txt.out', 'slow.txt.out']);
});
