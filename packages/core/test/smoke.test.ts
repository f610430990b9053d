import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { openQueue } from '@lading/core';

test('publish, consume, fail to the hospital, retry', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lading-smoke-'));
  const q = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  await q.createTopic('t', { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 10, multiplier: 1, jitter: 0 } });
  const seen: unknown[] = [];
  let fail = true;
  const c = q.consume('t', { group: 'g', concurrency: 4 }, async (m) => {
    if (m.body === 'bad' && fail) throw new Error('boom');
    seen.push(m.body);
  });
  for (let i = 0; i < 10; i++) await q.publish('t', i);
  await q.publish('t', 'bad');
  await expect.poll(() => c.counts.hospital, { timeout: 5000 }).toBe(1);
  await expect.poll(() => seen.length).toBe(10);
  const [rec] = await q.hospital.list();
  expect(rec!.errors).toHaveLength(2);
  expect(rec!.reason).toBe('failed');
  fail = false;
  await q.hospital.retry({ ids: [rec!.hid] });
  await expect.poll(() => seen.length, { timeout: 5000 }).toBe(11);
  console.log(await q.hospital.report({ state: 'any' }));
  await q.close();
});
