import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { expectUserError, lading, tempDir } from './helpers.js';

/**
 * `lading bench queue|store` measures the configured backends in place. The figures themselves are not
 * asserted (no test asserts on speed); what is checked: every message moved, the object was written, read
 * back and removed, the baseline ran beside it for a file store, and the output is countable.
 */

interface BenchJson {
  results: { name: string; value: number; unit: string; baseline?: { name: string; value: number; ratio: number } }[];
}

describe('lading bench', () => {
  test('queue: publishes and consumes every message of a fresh topic, one line per measurement', async () => {
    const cwd = tempDir('lading-bench-');
    const r = await lading(['bench', 'queue', '--messages', '500', '--batch', '50'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^queue: durable publishMany\(50\): [\d,.]+ msgs\/s$/);
    expect(lines[1]).toMatch(/^queue: consume\+ack, concurrency 16: [\d,.]+ msgs\/s$/);
    // It worked on the configured queue (a fresh topic of its own), not somewhere private.
    const topics = await lading(['topics', 'list', '--json'], { cwd });
    expect(topics.code, topics.stderr).toBe(0);
    expect(topics.stdout).toMatch(/lading\.bench\./);
  });

  test('store: a file store is measured beside plain fs, and the bench object is removed', async () => {
    const cwd = tempDir('lading-bench-');
    const root = join(cwd, 'st');
    const r = await lading(['bench', 'store', '--store', `file:${root}`, '--size', '3MiB', '--rounds', '2', '--json'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(r.stdout) as BenchJson;
    expect(json.results.map((x) => x.name)).toEqual(['store: streamed write of 3MiB', 'store: checksummed read of 3MiB']);
    for (const row of json.results) {
      expect(row.unit).toBe('MiB/s');
      expect(row.value).toBeGreaterThan(0);
      expect(row.baseline?.value).toBeGreaterThan(0);
      expect(row.baseline?.ratio).toBeCloseTo(row.value / row.baseline!.value, 6);
    }
    // Nothing left behind: neither lading's object nor the baseline's temp file.
    expect(readdirSync(root).filter((f) => f.startsWith('.lading-bench'))).toEqual([]);
    const benchDir = join(root, '.lading', 'bench');
    expect(existsSync(benchDir) ? readdirSync(benchDir) : []).toEqual([]);
  });

  test('store: text output is `name: value unit (ratio× baseline)`', async () => {
    const cwd = tempDir('lading-bench-');
    const r = await lading(['bench', 'store', '--store', `file:${join(cwd, 'st')}`, '--size', '1MiB', '--rounds', '1'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    for (const line of r.stdout.trim().split('\n')) expect(line).toMatch(/^store: .+: [\d,.]+ MiB\/s \([\d.]+× plain fs .+\)$/);
  });

  test('a bad size is a user error', async () => {
    const cwd = tempDir('lading-bench-');
    expectUserError(await lading(['bench', 'store', '--store', `file:${join(cwd, 'st')}`, '--size', 'lots'], { cwd }));
  });
});
