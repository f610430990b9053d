import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { lading, tempDir } from './helpers.js';

test('lading demo runs end to end on the embedded default and shows every stage', async () => {
  const cwd = tempDir();
  const started = Date.now();
  const r = await lading(['demo'], { cwd });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const out = r.stdout;
  // 1. publish: acknowledged and fire-and-forget
  expect(out).toMatch(/1\. publish\n\s+acknowledged\s+order-1 -> orders/);
  expect(out).toMatch(/fire-and-forget\s+order-2 -> orders/);
  expect(out).toContain('group shipping received order-1, order-2');
  // 2. pub/sub: both groups see every message
  expect(out).toContain('group audit   saw 3/3');
  expect(out).toContain('group billing saw 3/3');
  // 3. routing
  expect(out).toContain('upload-1 (type image) -> images');
  expect(out).toContain('upload-2 (type text)  -> uploads');
  // 4. retries with backoff, then the hospital
  expect(out).toContain('attempt 1 failed: Error: corrupt PNG header in cat.png -> retry in 100 ms');
  expect(out).toContain('attempt 2 failed: Error: corrupt PNG header in cat.png -> retry in 200 ms');
  expect(out).toMatch(/attempt 3 failed: .* -> admitted to the hospital as record 1 \(reason failed\)/);
  // 5. the report (Markdown, shortened)
  expect(out).toContain('| # lading error hospital: 1 open record');
  expect(out).toContain('| 1 | Error: corrupt PNG header in cat.png |');
  // 6. retry from the hospital succeeds
  expect(out).toContain('retried 1 message');
  expect(out).toContain('resizer handled resize-cat on attempt 1; hospital record 1 is now retried');
  // 7. claim check: 1 MiB by reference
  expect(out).toMatch(/7\. claim check: a 1 MiB body travels by reference/);
  expect(out).toMatch(/ref file:\/.*\/\.lading\/payloads\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}/);
  expect(out).toContain('1.0 MiB (1048576 bytes)');
  expect(out).toContain('read it back through the ref: 1.0 MiB, checksum verified');
  // 8. a sharded job run by a worker: its status and its outputs
  expect(out).toMatch(/8\. a sharded job: 3 JSONL files \(450 records, [\d.]+ KiB\) cut into 4 KiB newline-aligned shards/);
  const shards = Number(/\$ lading submit wordcount\.yaml {2}-> {2}job wordcount-[0-9a-f]{12}: (\d+) shards from 3 inputs/.exec(out)?.[1]);
  expect(shards).toBeGreaterThan(3);
  expect(out).toContain(`$ lading worker --threads 2     ->  ran ${shards} shards in 2 worker threads`);
  expect(out).toMatch(new RegExp(`\\$ lading status wordcount-[0-9a-f]{12} {2}-> {2}finished: done ${shards}/${shards}, running 0, queued 0, retrying 0, hospital 0`));
  expect(out).toContain(`(${shards} objects, one per shard; 450 of 450 records counted`);
  expect(out).toMatch(/ {5}part-0-000000\.json +\d+ records +\d+ words/);
  expect(out).toMatch(/done in \d+\.\ds\./);
  expect(Date.now() - started).toBeLessThan(20_000);
  // The demo never touches the working directory's queue.
  expect(existsSync(join(cwd, 'queue.db'))).toBe(false);
});

test('lading demo --dir keeps the queue to explore; --json prints a summary', async () => {
  const cwd = tempDir();
  const r = await lading(['demo', '--dir', 'demo', '--json'], { cwd });
  expect(r.code).toBe(0);
  const summary = JSON.parse(r.stdout) as Record<string, unknown>;
  expect(summary.kept).toBe(true);
  expect(summary.pubsub).toEqual({ audit: ['event-1', 'event-2', 'event-3'], billing: ['event-1', 'event-2', 'event-3'] });
  expect(summary.routing).toEqual({ 'upload-1': 'images', 'upload-2': 'uploads' });
  expect(summary.retry).toEqual({ retried: 1, handledOnAttempt: 1, recordState: 'retried' });
  const job = summary.job as { id: string; shards: number; records: number; counted: number; outputs: string[]; status: { ok: boolean; done: number } };
  expect(job.counted).toBe(job.records);
  expect(job.outputs).toHaveLength(job.shards);
  expect(job.status).toMatchObject({ ok: true, done: job.shards });
  // The kept demo dir holds the job: the spec, the handler, the outputs, and the record the CLI can read.
  for (const f of ['wordcount.yaml', 'wordcount.mjs', 'corpus/part-0.jsonl', `out/${job.outputs[0]}`]) expect(existsSync(join(cwd, 'demo', f)), f).toBe(true);
  const status = await lading(['status', job.id, '--json', '--queue', 'sqlite:./demo/queue.db', '--store', 'file:./demo/store'], { cwd });
  expect(status.code).toBe(0);
  expect(JSON.parse(status.stdout)).toMatchObject({ id: job.id, state: 'done', done: job.shards, total: job.shards });

  const list = await lading(['hospital', 'list', '--state', 'any', '--json', '--queue', 'sqlite:./demo/queue.db'], { cwd });
  expect(list.code).toBe(0);
  const records = JSON.parse(list.stdout) as { id: string; state: string; errors: unknown[] }[];
  expect(records).toHaveLength(1);
  expect(records[0]).toMatchObject({ id: 'resize-cat', state: 'retried' });
  expect(records[0]!.errors).toHaveLength(3);

  // A second run into the same directory refuses instead of mixing two demos.
  const again = await lading(['demo', '--dir', 'demo'], { cwd });
  expect(again.code).toBe(2);
  expect(again.stderr).toContain('already holds a demo queue');
});
