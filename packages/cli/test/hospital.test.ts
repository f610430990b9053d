import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { expectUserError, lading, tempDir } from './helpers.js';

interface RecordJson {
  hid: string;
  id: string;
  topic: string;
  group: string;
  reason: string;
  state: string;
  resolution?: string;
  errors: { name: string; message: string; stack?: string; worker: string; host: string; at: string; attempt: number }[];
}

// One hospital for the whole file, walked through in order: fail, list, show, report, retry, ignore, purge.
describe('the error hospital, end to end', () => {
  const cwd = tempDir();
  const run = (args: string[], env?: Record<string, string>) => lading(args, { cwd, ...(env ? { env } : {}) });
  const list = async (args: string[] = []) => JSON.parse((await run(['hospital', 'list', '--json', ...args])).stdout) as RecordJson[];

  beforeAll(async () => {
    // Fails on bodies with "bad" unless FIXED is set in the consumer's environment.
    writeFileSync(join(cwd, 'handler.mjs'), 'export default async function (message) {\n  if (message.body.bad && !process.env.FIXED) throw new Error(`cannot resize ${message.body.file}`);\n}\n');
    const t = await run(['topics', 'create', 'resize', '--max-attempts', '2', '--backoff-initial', '20ms', '--backoff-max', '50ms']);
    expect(t.code).toBe(0);
    for (const [id, body] of [['m1', { file: 'a.png', bad: true }], ['m2', { file: 'b.png', bad: true }], ['m3', { file: 'c.png' }], ['m4', { file: 'd.png', bad: true }]] as const) {
      expect((await run(['publish', 'resize', JSON.stringify(body), '--id', id])).code).toBe(0);
    }
    const c = await run(['consume', 'resize', '--group', 'resizer', '--handler', 'handler.mjs', '--idle-exit', '600ms']);
    expect(c.code).toBe(0);
    expect(c.stdout).toMatch(/retry {5}m1 attempt 1 failed: Error: cannot resize a\.png/);
    expect(c.stdout).toMatch(/hospital {2}m1 \(failed after 2 attempts\): Error: cannot resize a\.png — see: lading hospital show \d+/);
    expect(c.stderr).toContain('1 done, 3 to retry, 3 to the hospital');
  });

  test('list: text, --json, filters and --fail-if-any', async () => {
    const text = await run(['hospital', 'list']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^HID\s+STATE\s+REASON\s+TOPIC\/GROUP\s+MESSAGE\s+ATTEMPTS\s+ADMITTED\s+LAST ERROR/);
    expect(text.stdout).toMatch(/\s+open\s+failed\s+resize\/resizer\s+m1\s+2\s+.*Error: cannot resize a\.png/);
    const records = await list();
    expect(records.map((r) => r.id).sort()).toEqual(['m1', 'm2', 'm4']);
    expect((await list(['--grep', 'B.PNG'])).map((r) => r.id)).toEqual(['m2']);
    expect(await list(['--topic', 'other'])).toEqual([]);
    expect(await list(['--since', '1h', '--reason', 'failed', '--limit', '2'])).toHaveLength(2);
    expect(await list(['--until', '2000-01-01'])).toEqual([]);
    const failIfAny = await run(['hospital', 'list', '--fail-if-any']);
    expect(failIfAny.code).toBe(3);
    const badSince = await run(['hospital', 'list', '--since', 'yesterday']);
    expectUserError(badSince);
    expect(badSince.stderr).toContain('--since "yesterday" is neither a duration nor a date');
  });

  test('show: the full record, every attempt with worker, host, time and stack', async () => {
    const [m1] = await list(['--grep', 'a.png']);
    const r = await run(['hospital', 'show', m1!.hid]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`hospital record ${m1!.hid}: message m1`);
    expect(r.stdout).toContain('reason    failed');
    expect(r.stdout).toContain('topic     resize, group resizer');
    expect(r.stdout).toContain('attempts (2):');
    expect(r.stdout).toMatch(/#1 {2}\d{4}-\d\d-\d\dT[\d:.]+Z {2}worker \S+:\d+ \(host \S+\)/);
    expect(r.stdout).toMatch(/#2 .*\n {6}Error: cannot resize a\.png\n {6}at default \(file:\/\/.*handler\.mjs:2/);
    // By message id too, and as JSON.
    const json = JSON.parse((await run(['hospital', 'show', 'm1', '--json'])).stdout) as RecordJson;
    expect(json).toMatchObject({ hid: m1!.hid, id: 'm1', topic: 'resize', group: 'resizer', reason: 'failed', state: 'open' });
    expect(json.errors).toHaveLength(2);
    for (const e of json.errors) {
      expect(e.worker).toMatch(/:\d+/);
      expect(e.host).toBeTruthy();
      expect(e.stack).toContain('handler.mjs');
      expect(Number.isNaN(Date.parse(e.at))).toBe(false);
    }
    const missing = await run(['hospital', 'show', 'no-such-message']);
    expectUserError(missing);
    expect(missing.stderr).toContain('no hospital record "no-such-message"');
  });

  test('report: Markdown and JSON', async () => {
    const md = await run(['hospital', 'report']);
    expect(md.code).toBe(0);
    expect(md.stdout).toContain('# lading error hospital: 3 open records');
    expect(md.stdout).toContain('By reason: failed 3.');
    expect(md.stdout).toContain('| 1 | Error: cannot resize a.png |');
    const json = JSON.parse((await run(['hospital', 'report', '--format', 'json'])).stdout) as { total: number; byTopic: Record<string, number> };
    expect(json).toMatchObject({ total: 3, byTopic: { resize: 3 } });
    const viaFlag = JSON.parse((await run(['hospital', 'report', '--json', '--grep', 'd.png'])).stdout) as { total: number };
    expect(viaFlag.total).toBe(1);
  });

  test('retry: refused without a selection; by id; then handled once the handler is fixed', async () => {
    const refused = await run(['hospital', 'retry']);
    expectUserError(refused);
    expect(refused.stderr).toContain('error: hospital retry needs record ids, a filter, or --all');
    expect(refused.stderr).toContain('hint: e.g. lading hospital retry 12 13');

    const unknown = await run(['hospital', 'retry', '999']);
    expectUserError(unknown);
    expect(unknown.stderr).toContain('no open hospital record "999" to retry');

    const badRate = await run(['hospital', 'retry', '--all', '--rate', 'fast']);
    expectUserError(badRate);

    const [m1] = await list(['--grep', 'a.png']);
    const r = await run(['hospital', 'retry', m1!.hid, '--rate', '50/s', '--note', 'fixed the decoder']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('retried 1 message');
    expect((await list()).map((x) => x.id).sort()).toEqual(['m2', 'm4']);

    const c = await run(['consume', 'resize', '--group', 'resizer', '--handler', 'handler.mjs', '--idle-exit', '500ms', '--json'], { FIXED: '1' });
    expect(c.code).toBe(0);
    const events = c.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; id?: string });
    expect(events.filter((e) => e.event === 'done').map((e) => e.id)).toEqual(['m1']);
    expect(events.at(-1)).toMatchObject({ event: 'summary', done: 1, hospital: 0 });

    const retried = await list(['--state', 'retried']);
    expect(retried).toHaveLength(1);
    expect(retried[0]!.resolution).toContain('fixed the decoder');
  });

  test('retry by filter with --json', async () => {
    const r = await run(['hospital', 'retry', '--grep', 'b.png', '--json']);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as { retried: number; records: { id: string }[] };
    expect(result.retried).toBe(1);
    expect(result.records[0]!.id).toBe('m2');
    // Nothing handles it this time: it fails again and comes back to the hospital as a new record.
    await run(['consume', 'resize', '--group', 'resizer', '--handler', 'handler.mjs', '--idle-exit', '600ms']);
    expect((await list()).map((x) => x.id).sort()).toEqual(['m2', 'm4']);
  });

  test('ignore, then purge (resolved only unless --include-open)', async () => {
    const refused = await run(['hospital', 'ignore']);
    expectUserError(refused);
    const ig = await run(['hospital', 'ignore', 'm4', '--note', 'test data']);
    expect(ig.code).toBe(0);
    expect(ig.stdout.trim()).toBe('ignored 1 message');
    const ignored = await list(['--state', 'ignored']);
    expect(ignored.map((x) => [x.id, x.resolution])).toEqual([['m4', 'test data']]);

    expectUserError(await run(['hospital', 'purge']));
    const openNeedsFlag = await run(['hospital', 'purge', '--all', '--state', 'open']);
    expectUserError(openNeedsFlag);
    expect(openNeedsFlag.stderr).toContain('--include-open');

    const purged = await run(['hospital', 'purge', '--all', '--json']);
    expect(purged.code).toBe(0);
    const result = JSON.parse(purged.stdout) as { purged: number };
    expect(result.purged).toBe(3); // m1 retried, m2's first record retried, m4 ignored
    expect((await list(['--state', 'resolved']))).toEqual([]);
    expect((await list()).map((x) => x.id)).toEqual(['m2']); // the open one stays

    const all = await run(['hospital', 'purge', 'm2', '--include-open']);
    expect(all.code).toBe(0);
    expect(all.stdout).toContain('purged 1 record (1 open: their messages were dropped)');
    expect(await list(['--state', 'any'])).toEqual([]);
    const empty = await run(['hospital', 'list', '--fail-if-any']);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toContain('no open records in the hospital');
  });
});
