import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, test } from 'vitest';
import { openQueue } from '@lading/core';
import { openCache, openStore } from '@lading/storage';
import { parseJobSpec, startWorker, submit } from '@lading/runner';

/**
 * A worker with a cache directory reads shard inputs through the node's read-through cache: the input
 * objects' blocks end up in the cache, handlers see the right bytes, outputs are not cached, and a changed
 * input is read fresh (never served stale).
 */

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const SUM_HANDLER = `
export default async function (ctx) {
  let n = 0, sum = 0;
  for await (const { line } of ctx.lines()) { if (!line) continue; n++; sum += JSON.parse(line).v; }
  await ctx.write(ctx.shard.key + '.' + ctx.shard.start + '.json', JSON.stringify({ n, sum }));
}`;

function totals(out: string): { n: number; sum: number } {
  let n = 0, sum = 0;
  for (const f of readdirSync(out).filter((x) => x.endsWith('.json'))) {
    const r = JSON.parse(readFileSync(join(out, f), 'utf8')) as { n: number; sum: number };
    n += r.n;
    sum += r.sum;
  }
  return { n, sum };
}

test('shard inputs are read through the cache; outputs are not cached; a changed input is read fresh', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lading-runner-cache-'));
  mkdirSync(join(dir, 'in'));
  const write = (name: string, from: number, to: number) =>
    writeFileSync(join(dir, 'in', name), Array.from({ length: to - from }, (_, i) => JSON.stringify({ v: from + i, pad: 'y'.repeat((from + i) % 29) })).join('\n') + '\n');
  write('a.jsonl', 0, 3000);
  write('b.jsonl', 3000, 5000);
  writeFileSync(join(dir, 'sum.mjs'), SUM_HANDLER);
  const cacheDir = join(dir, 'cache');
  const queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
  const store = await openStore(`file:${join(dir, 'store')}`);
  const worker = startWorker({ queue, threads: 2, cache: { dir: cacheDir, maxBytes: '64MiB', blockSize: '16KiB' } });
  cleanup.push(() => queue.close(), () => store.close(), () => worker.close());

  const run = async (output: string) => {
    const spec = parseJobSpec({ handler: './sum.mjs', inputs: [`file:${dir}/in/*.jsonl`], sharding: { by: 'bytes', size: '20KiB' }, output: `file:${join(dir, output)}` }, { baseDir: dir });
    const job = await submit(spec, { queue, store });
    expect(await job.wait({ pollMs: 50 })).toMatchObject({ finished: true, ok: true, hospital: 0 });
    return totals(join(dir, output));
  };

  expect(await run('out1')).toEqual({ n: 5000, sum: (4999 * 5000) / 2 });
  const cache = await openCache({ dir: cacheDir, maxBytes: '64MiB', blockSize: '16KiB' });
  const inputBytes = statSync(join(dir, 'in', 'a.jsonl')).size + statSync(join(dir, 'in', 'b.jsonl')).size;
  let stats = await cache.stats();
  expect(stats.objects).toBe(2); // the two inputs, not the outputs
  expect(stats.bytes).toBe(inputBytes);

  // Rewrite one input with other values: the next job must see the new bytes, not the cached blocks.
  write('a.jsonl', 10_000, 13_000);
  const expected = Array.from({ length: 3000 }, (_, i) => 10_000 + i).reduce((a, b) => a + b, 0) + Array.from({ length: 2000 }, (_, i) => 3000 + i).reduce((a, b) => a + b, 0);
  expect(await run('out2')).toEqual({ n: 5000, sum: expected });
  stats = await cache.stats();
  expect(stats.objects).toBeGreaterThanOrEqual(2);
});
