import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openStore } from '@lading/storage';
import { parseJobSpec, submit } from '@lading/runner';
import { HANDLER, allEvents, fixture, sleep, startWorkerProcess, type Fixture, type WorkerProcess } from './helpers.js';

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

test('SIGKILL random workers during a job of hundreds of shards: the job completes, every output exactly once, none partial', async () => {
  fx = await fixture('chaos');
  const { inDir, outDir, queue, queueUri, store, workers } = fx;
  const RECORDS = 6000;
  const lines: string[] = [];
  for (let i = 0; i < RECORDS; i++) lines.push(JSON.stringify({ id: i, pad: 'x'.repeat((i * 7) % 23) }));
  writeFileSync(join(inDir, 'corpus.jsonl'), `${lines.join('\n')}\n`);

  // A short lease so a killed worker's shards come back quickly.
  await queue.createTopic('lading.tasks', { leaseMs: 1500 });
  const spec = parseJobSpec({
    name: 'chaos', handler: HANDLER, inputs: [`file:${inDir}/corpus.jsonl`], sharding: { by: 'bytes', size: 640, align: 'newline' },
    output: `file:${outDir}`, params: { mode: 'records', cpuMs: 20 }, retries: { maxAttempts: 5, backoff: { initialMs: 50, maxMs: 200, multiplier: 2, jitter: 0 } },
  });
  const job = await submit(spec, { queue, store });
  const shards = job.record.shards;
  expect(shards).toBeGreaterThanOrEqual(250);
  expect(shards).toBeLessThanOrEqual(400);

  workers.push(...(await Promise.all([0, 1, 2].map(() => startWorkerProcess(queueUri)))));
  const t0 = Date.now();
  let finished = false;
  const waiting = job.wait({ pollMs: 100 }).finally(() => { finished = true; });

  // Chaos: every 0.5-1 s SIGKILL a random live worker and start a replacement.
  const killed: WorkerProcess[] = [];
  for (let k = 0; k < 6 && !finished; k++) {
    await sleep(500 + Math.random() * 500);
    if (finished) break;
    const live = workers.filter((w) => w.alive);
    const victim = live[Math.floor(Math.random() * live.length)]!;
    victim.kill('SIGKILL');
    await victim.exited;
    killed.push(victim);
    workers.push(await startWorkerProcess(queueUri));
  }
  const final = await waiting;
  const seconds = (Date.now() - t0) / 1000;
  expect(killed.length).toBeGreaterThanOrEqual(4);
  expect(final).toMatchObject({ finished: true, ok: true, total: shards, done: shards, hospital: 0 });
  expect(await queue.hospital.list({ job: job.id })).toEqual([]);

  // Kills landed on running shards, and those were redone elsewhere.
  const events = allEvents(workers);
  const startedBy = new Map<string, number>();
  for (const e of events) if (e.event === 'started') startedBy.set(e.shard!, (startedBy.get(e.shard!) ?? 0) + 1);
  const redone = [...startedBy.values()].filter((n) => n > 1).length;
  const cutShort = killed.flatMap((w) => w.events.filter((e) => e.event === 'started' && !w.events.some((d) => d.event === 'done' && d.shard === e.shard)));
  expect(cutShort.length).toBeGreaterThanOrEqual(1);
  expect(redone).toBeGreaterThanOrEqual(1);
  expect(startedBy.size).toBe(shards);

  // Every output exactly once, under its deterministic name; none partial.
  const onDisk = readdirSync(outDir).filter((f) => f !== '_lading');
  const outputs = onDisk.filter((f) => f.endsWith('.json'));
  const temps = onDisk.filter((f) => f.startsWith('.lading-tmp-'));
  expect(onDisk.length - temps.length).toBe(shards);
  expect(outputs).toHaveLength(shards);
  const out = await openStore(`file:${outDir}`);
  const listed: string[] = [];
  for await (const o of out.list('')) listed.push(o.key);
  await out.close();
  expect(listed.filter((k) => k.includes('.lading-tmp-'))).toEqual([]);
  expect(listed.filter((k) => !k.startsWith('_lading/')).sort()).toEqual([...outputs].sort());
  // Commit markers: one per shard (a writer killed mid-marker leaves only an invisible temp file).
  const markers = readdirSync(join(outDir, '_lading', job.id, 'done')).filter((f) => !f.startsWith('.lading-tmp-'));
  expect(markers.sort()).toEqual([...outputs].sort());

  const seen = new Uint8Array(RECORDS);
  let ranges = 0;
  for (const f of outputs) {
    const r = JSON.parse(readFileSync(join(outDir, f), 'utf8')) as { shard: string; start: number; end: number; ids: number[] };
    expect(`${r.shard}.json`).toBe(f);
    ranges += r.end - r.start;
    for (const id of r.ids) seen[id]!++;
  }
  expect(ranges).toBe(Buffer.byteLength(`${lines.join('\n')}\n`));
  const counts = new Map<number, number>();
  for (const c of seen) counts.set(c, (counts.get(c) ?? 0) + 1);
  expect(Object.fromEntries(counts)).toEqual({ 1: RECORDS }); // every record exactly once
  console.log(`chaos: ${shards} shards, ${killed.length} SIGKILLs, ${cutShort.length} shards cut short, ${redone} run more than once, ${temps.length} temp files left by killed writers (invisible to list), ${seconds.toFixed(1)} s`);
}, 90_000);
