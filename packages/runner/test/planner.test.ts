import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { LadingError } from '@lading/core';
import { ShardPlanner, StoreCache, listInput, parseJobSpec, type ShardDescriptor, type Sharding } from '@lading/runner';

/**
 * The shard planner on real files: each sharding mode covers every byte exactly once, `records` cuts after
 * exactly N lines, and ids are deterministic (same job + same bytes = same ids; changed bytes = new ids).
 */

const stores: StoreCache[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
});

function corpus(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'lading-planner-'));
  mkdirSync(join(dir, 'in'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'in', name), text);
  return dir;
}

async function plan(dir: string, sharding: Sharding, jobId = 'job-1'): Promise<ShardDescriptor[]> {
  const cache = new StoreCache();
  stores.push(cache);
  const planner = new ShardPlanner(jobId, sharding, cache);
  const out: ShardDescriptor[] = [];
  for await (const object of listInput(`file:${dir}/in/*.jsonl`, cache)) for await (const s of planner.shards(object)) out.push(s);
  return out;
}

const lines = (n: number, tag: string) => Array.from({ length: n }, (_, i) => JSON.stringify({ tag, i, pad: 'x'.repeat(i % 7) })).join('\n') + '\n';

/** Every byte of every input in exactly one shard, in order. */
function expectCover(shards: ShardDescriptor[], sizes: Record<string, number>): void {
  for (const [key, size] of Object.entries(sizes)) {
    const mine = shards.filter((s) => s.key === key).sort((a, b) => a.start - b.start);
    let at = 0;
    for (const s of mine) {
      expect(s.start).toBe(at);
      expect(s.end).toBeGreaterThan(s.start);
      at = s.end;
    }
    expect(at).toBe(size);
  }
}

describe('ShardPlanner', () => {
  test('by file: one shard per input object, in key order', async () => {
    const dir = corpus({ 'a.jsonl': lines(10, 'a'), 'b.jsonl': lines(3, 'b'), 'skip.txt': 'not matched' });
    const shards = await plan(dir, { by: 'file' });
    expect(shards.map((s) => s.key)).toEqual(['a.jsonl', 'b.jsonl']);
    expect(shards.map((s) => s.index)).toEqual([0, 1]);
    expectCover(shards, { 'a.jsonl': lines(10, 'a').length, 'b.jsonl': lines(3, 'b').length });
  });

  test('by bytes: fixed ranges that cover each file, the last one short', async () => {
    const text = lines(200, 'a');
    const dir = corpus({ 'a.jsonl': text });
    const shards = await plan(dir, { by: 'bytes', size: 1000, align: 'newline' });
    expect(shards).toHaveLength(Math.ceil(text.length / 1000));
    expect(shards.slice(0, -1).every((s) => s.end - s.start === 1000)).toBe(true);
    expect(shards.every((s) => s.align === 'newline')).toBe(true);
    expectCover(shards, { 'a.jsonl': text.length });
  });

  test('by records: exactly N lines per shard (the last one the rest), cut after a newline', async () => {
    const a = lines(1050, 'a');
    const b = lines(7, 'b');
    const dir = corpus({ 'a.jsonl': a, 'b.jsonl': b });
    const shards = await plan(dir, { by: 'records', count: 100 });
    expectCover(shards, { 'a.jsonl': a.length, 'b.jsonl': b.length });
    const counts = shards.map((s) => {
      const text = readFileSync(join(dir, 'in', s.key)).subarray(s.start, s.end).toString();
      expect(text.endsWith('\n')).toBe(true);
      return text.split('\n').length - 1;
    });
    expect(counts).toEqual([...Array(10).fill(100), 50, 7]);
  });

  test('ids are deterministic: same job and bytes give the same ids; another job or changed bytes do not', async () => {
    const dir = corpus({ 'a.jsonl': lines(300, 'a') });
    const sharding: Sharding = { by: 'bytes', size: 2048, align: 'newline' };
    const first = (await plan(dir, sharding)).map((s) => s.id);
    const again = (await plan(dir, sharding)).map((s) => s.id);
    expect(again).toEqual(first);
    expect(new Set(first).size).toBe(first.length);
    const otherJob = (await plan(dir, sharding, 'job-2')).map((s) => s.id);
    expect(otherJob.some((id) => first.includes(id))).toBe(false);
    writeFileSync(join(dir, 'in', 'a.jsonl'), lines(301, 'a')); // new bytes: a new etag
    const changed = (await plan(dir, sharding)).map((s) => s.id);
    expect(changed.some((id) => first.includes(id))).toBe(false);
  });
});

describe('job spec', () => {
  const base = { handler: './h.mjs', inputs: ['file:/data/*.jsonl'], output: 'file:/out/' };
  const message = (input: unknown): string => {
    try {
      parseJobSpec(input, { baseDir: '/specs' });
    } catch (e) {
      expect(e).toBeInstanceOf(LadingError);
      expect((e as LadingError).code).toBe('BAD_JOB_SPEC');
      return (e as Error).message;
    }
    throw new Error('expected BAD_JOB_SPEC');
  };

  test('defaults, resolved paths and a stable id', () => {
    const spec = parseJobSpec({ ...base, inputs: ['file:./in/*.jsonl'] }, { baseDir: '/specs' });
    expect(spec.handler).toBe('file:///specs/h.mjs'); // a module URL, importable from any thread
    expect(spec.inputs).toEqual(['file:/specs/in/*.jsonl']);
    expect(spec.sharding).toEqual({ by: 'file' });
    expect(spec.retries.maxAttempts).toBe(3);
    expect(spec.topic).toBe('lading.tasks');
    expect(parseJobSpec({ ...base, inputs: ['file:./in/*.jsonl'] }, { baseDir: '/specs' }).id).toBe(spec.id);
    expect(parseJobSpec({ ...base, params: { n: 1 } }, { baseDir: '/specs' }).id).not.toBe(parseJobSpec(base, { baseDir: '/specs' }).id);
  });

  test('errors name the field', () => {
    expect(message({ ...base, handler: undefined })).toMatch(/handler: required/);
    expect(message({ ...base, inputs: [] })).toMatch(/inputs/);
    expect(message({ ...base, shards: 4 })).toMatch(/shards: unknown field \(known: .*sharding/);
    expect(message({ ...base, sharding: { by: 'bytes', size: 'big' } })).toMatch(/sharding\.size/);
    expect(message({ ...base, sharding: { by: 'lines' } })).toMatch(/sharding\.by/);
    expect(message({ ...base, retries: { maxAttempts: 0 } })).toMatch(/retries\.maxAttempts/);
    expect(message({ ...base, timeout: 'soon' })).toMatch(/timeout/);
  });
});
