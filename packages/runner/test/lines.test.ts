import { Readable } from 'node:stream';
import { describe, expect, test } from 'vitest';
import { alignedLines } from '@lading/runner';

const collect = async (data: string, start: number, end: number, chunk = 3, from?: number) => {
  const buf = Buffer.from(data);
  const open = async (s: number, e: number) => {
    const part = buf.subarray(s, e);
    const pieces: Buffer[] = [];
    for (let i = 0; i < part.length; i += chunk) pieces.push(part.subarray(i, i + chunk));
    return Readable.from(pieces);
  };
  const out: string[] = [];
  for await (const { line } of alignedLines(open, { start, end, objectSize: buf.length }, from)) out.push(line);
  return out;
};

describe('newline-aligned byte-range shards', () => {
  const data = 'alpha\nbeta\ngamma\n\ndelta\r\nepsilon';
  test.each([1, 2, 3, 4, 5, 7, 11, 100])('every line lands in exactly one shard (shard size %i)', async (size) => {
    for (const chunk of [1, 2, 5, 64]) {
      const all: string[] = [];
      for (let s = 0; s < data.length; s += size) all.push(...(await collect(data, s, Math.min(data.length, s + size), chunk)));
      expect(all).toEqual(['alpha', 'beta', 'gamma', '', 'delta', 'epsilon']);
    }
  });

  test('a shard starting exactly at a line start owns that line', async () => {
    expect(await collect(data, 6, 11)).toEqual(['beta']);
  });

  test('resume from a checkpointed offset', async () => {
    expect(await collect(data, 0, data.length, 4, 11)).toEqual(['gamma', '', 'delta', 'epsilon']);
  });
});
