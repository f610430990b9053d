import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { afterEach, expect, test } from 'vitest';
import { openQueue, type Queue } from '@lading/core';
import { openStore, type BlobStore } from '@lading/storage';

const open: (Queue | BlobStore)[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) await o.close();
});

async function setup(inlineLimit = 1024) {
  const dir = mkdtempSync(join(tmpdir(), 'lading-cc-'));
  const store = await openStore(`file:${join(dir, 'store')}`);
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}`, store, inlineLimit });
  open.push(queue, store);
  return { dir, store, queue };
}

const payloadFiles = (dir: string) => {
  const root = join(dir, 'store', '.lading', 'payloads', 'sha256');
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => d.name);
};

test('a large body travels by reference, fans out to two groups, and is deleted once both are done', async () => {
  const { dir, queue } = await setup();
  const big = { rows: Array.from({ length: 2000 }, (_, i) => ({ i, text: `row ${i}` })) };
  // Both groups subscribe before the publish (pub/sub): each must get the body.
  await queue.driver.ensureGroup('cc', 'a');
  await queue.driver.ensureGroup('cc', 'b');
  const small = { hello: 'world' };
  const r1 = await queue.publish('cc', big);
  const r2 = await queue.publish('cc', small);
  expect(r1.ref).toBeDefined();
  expect(r1.ref!.size).toBeGreaterThan(1024);
  expect(r1.ref!.checksum).toMatch(/^sha256:[0-9a-f]{64}$/);
  expect(r2.ref).toBeUndefined();
  expect(payloadFiles(dir)).toHaveLength(1);

  const seen: Record<string, unknown[]> = { a: [], b: [] };
  const streamed: string[] = [];
  const ca = queue.consume('cc', { group: 'a' }, async (m) => {
    seen.a!.push(await m.json());
    if (m.isClaimCheck) streamed.push(await text(await m.stream()));
  });
  await expect.poll(() => seen.a!.length).toBe(2);
  expect(seen.a).toEqual([big, small]);
  expect(JSON.parse(streamed[0]!)).toEqual(big);
  await ca.close();
  // Group b has not consumed yet: the payload must survive a collection.
  await queue.collectPayloads();
  expect(payloadFiles(dir)).toHaveLength(1);
  const cb = queue.consume('cc', { group: 'b' }, async (m) => { seen.b!.push(await m.json()); });
  await expect.poll(() => seen.b!.length).toBe(2);
  expect(seen.b).toEqual([big, small]);
  await cb.close();
  await queue.collectPayloads();
  expect(payloadFiles(dir)).toHaveLength(0);
});

test('identical large bodies share one content-addressed payload, kept until the last message is done', async () => {
  const { dir, queue } = await setup();
  const big = 'x'.repeat(5000);
  await queue.driver.ensureGroup('dup', 'g');
  await queue.publish('dup', big);
  await queue.publish('dup', big);
  expect(payloadFiles(dir)).toHaveLength(1);
  let n = 0;
  const c = queue.consume('dup', { group: 'g' }, async (m) => {
    expect(await m.json()).toBe(big);
    n++;
    if (n === 1) {
      // After the first ack the second message still needs the payload.
    }
  });
  await expect.poll(() => n).toBe(2);
  await c.close();
  await queue.collectPayloads();
  expect(payloadFiles(dir)).toHaveLength(0);
});

test('a missing payload sends the message to the hospital, not a crash', async () => {
  const { dir, queue } = await setup();
  await queue.driver.ensureGroup('gone', 'g');
  await queue.publish('gone', 'y'.repeat(4000));
  rmSync(join(dir, 'store', '.lading'), { recursive: true, force: true });
  const c = queue.consume('gone', { group: 'g' }, async (m) => { await m.json(); });
  await expect.poll(async () => (await queue.hospital.list()).length, { timeout: 5000 }).toBe(1);
  const [rec] = await queue.hospital.list();
  expect(rec!.reason).toBe('invalid');
  expect(rec!.errors.at(-1)!.code).toBe('NOT_FOUND');
  await queue.publish('gone', 'fine');
  await expect.poll(() => c.counts.done).toBe(1);
});

test('a body over the limit with no store is refused with a clear error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lading-cc-'));
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}`, inlineLimit: 100 });
  open.push(queue);
  await expect(queue.publish('t', 'z'.repeat(200))).rejects.toMatchObject({ code: 'TOO_LARGE', message: expect.stringContaining('no store is configured') });
});
