// The queue contract against the embedded SQLite driver, plus what only SQLite has: rows written into the
// database file behind the SDK's back, and the refusal to put the database on NFS.
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { LadingError, openQueue, type Queue } from '@lading/core';
import { SqliteQueueDriver } from '../../packages/core/src/drivers/sqlite.js';
import { describeQueueContract } from './contract.js';
import { readLog, requireFromCore, spawnFixture } from './helpers.js';

const Database = requireFromCore('better-sqlite3') as typeof BetterSqlite3;

describeQueueContract('sqlite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'lading-q-'));
  return { uri: `sqlite:${join(dir, 'q.db')}`, cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
});

describe('sqlite driver specifics', () => {
  let dir = '';
  let queue: Queue | undefined;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'lading-sqlite-'));
  });
  afterEach(async () => {
    await queue?.close();
    queue = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  test('a malformed envelope written straight into the database goes to the hospital as invalid; the consumer survives', async () => {
    const file = join(dir, 'q.db');
    queue = await openQueue({ uri: `sqlite:${file}` });
    await queue.createTopic('raw', { maxAttempts: 5 });
    await queue.driver.ensureGroup('raw', 'g');
    const handled: string[] = [];
    const consumerErrors: unknown[] = [];
    const c = queue.consume('raw', { group: 'g', maxPollMs: 20, graceMs: 100 }, (m) => { handled.push(m.id); });
    c.on('error', (e: unknown) => consumerErrors.push(e));

    const db = new Database(file);
    try {
      const insert = db.transaction((id: string, text: string) => {
        const now = Date.now();
        const { lastInsertRowid } = db.prepare(`INSERT INTO messages(topic, id, key, envelope, published_at, available_at, refs)
          VALUES ('raw', ?, NULL, ?, ?, ?, 1)`).run(id, text, now, now);
        db.prepare(`INSERT INTO deliveries(topic, grp, seq, key, state, visible_at) VALUES ('raw', 'g', ?, NULL, 0, ?)`).run(lastInsertRowid, now);
      });
      insert('broken-json', '{"v":1,"id":"broken-json","topic":"raw", this is not JSON');
      insert('wrong-types', JSON.stringify({ v: 1, id: 'wrong-types', topic: 'raw', headers: { n: 5 }, attempt: -1, publishedAt: 'yesterday' }));
      insert('not-an-object', '42');
    } finally {
      db.close();
    }
    await expect.poll(async () => (await queue!.hospital.list()).map((r) => `${r.id}:${r.reason}`).sort(), { timeout: 10_000 })
      .toEqual(['broken-json:invalid', 'not-an-object:invalid', 'wrong-types:invalid']);
    const [broken] = await queue.hospital.list({ ids: ['broken-json'] });
    expect(broken!.envelope).toBeUndefined();
    expect(broken!.raw).toContain('this is not JSON'); // kept exactly as received
    expect(broken!.errors).toHaveLength(1);
    expect(broken!.errors[0]!.message).toMatch(/not valid JSON/);
    const [wrong] = await queue.hospital.list({ ids: ['wrong-types'] });
    expect(wrong!.errors[0]!.message).toMatch(/publishedAt/);
    // The hospital can show, report and ignore what it cannot parse; it cannot re-publish it elsewhere.
    expect(await queue.hospital.report({}, { format: 'json' })).toContain('broken-json');
    await expect(queue.hospital.retry({ ids: ['broken-json'] }, { toTopic: 'elsewhere' })).rejects.toMatchObject({ code: 'BAD_MESSAGE' });
    expect(await queue.hospital.ignore({ ids: ['broken-json'] })).toHaveLength(1);

    await queue.publish('raw', 'good', { id: 'good' });
    await expect.poll(() => handled, { timeout: 10_000 }).toEqual(['good']);
    expect(consumerErrors).toEqual([]);
  });

  // The embedded queue deletes a message once every existing group is done with it (disk is not spent
  // on history); a group created later starts from the oldest message still held. Messages published
  // while a topic has no group at all are held for retentionMs. (Kafka keeps history by retention.)
  test('a group created later sees what is still held, not what every earlier group already finished', async () => {
    queue = await openQueue({ uri: `sqlite:${join(dir, 'q.db')}` });
    await queue.createTopic('late', { retentionMs: 3_600_000 });
    await queue.publishMany('late', [{ id: 'orphan', body: 0 }]); // no group yet: held for retentionMs
    const early: string[] = [];
    const late: string[] = [];
    const c = queue.consume('late', { group: 'early', maxPollMs: 20, graceMs: 100 }, (m) => { early.push(m.id); });
    await queue.driver.ensureGroup('late', 'early');
    await queue.publishMany('late', [{ id: 'm1', body: 1 }, { id: 'm2', body: 2 }]);
    await expect.poll(() => early.sort(), { timeout: 5000 }).toEqual(['m1', 'm2', 'orphan']);
    await expect.poll(async () => (await queue!.stats('late')).find((s) => s.group === 'early')?.ready, { timeout: 5000 }).toBe(0);
    await c.close();
    await queue.publishMany('late', [{ id: 'm3', body: 3 }]); // held: group early has not handled it
    queue.consume('late', { group: 'newcomer', maxPollMs: 20, graceMs: 100 }, (m) => { late.push(m.id); });
    await expect.poll(() => late.sort(), { timeout: 5000 }).toEqual(['m3']);
    await new Promise((r) => setTimeout(r, 300));
    expect(late).toEqual(['m3']);
  });

  describe('the database is never put on NFS', () => {
    const mountinfo = (nfsMount: string) =>
      [
        '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
        '23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
        `61 22 0:52 / ${nfsMount.replace(/ /g, '\\040')} rw,relatime shared:30 - nfs4 filer:/export/proj rw,vers=4.2,rsize=1048576`,
      ].join('\n');

    test('LADING_MOUNTINFO_FILE: a queue database on an nfs4 mount is refused with UNSAFE_LOCATION', async () => {
      const nfs = realpathSync(dir);
      const fixture = join(dir, 'mountinfo');
      writeFileSync(fixture, mountinfo(join(nfs, 'nfs')));
      mkdirSync(join(nfs, 'nfs'));
      const before = process.env.LADING_MOUNTINFO_FILE;
      process.env.LADING_MOUNTINFO_FILE = fixture;
      try {
        for (const path of [join(nfs, 'nfs', 'q.db'), join(nfs, 'nfs', 'not', 'yet', 'created', 'q.db')]) {
          const error = await openQueue({ uri: `sqlite:${path}` }).then(() => undefined, (e: unknown) => e);
          expect(error).toBeInstanceOf(LadingError);
          expect(error).toMatchObject({ code: 'UNSAFE_LOCATION' });
          expect((error as LadingError).message).toMatch(/NFS/);
          expect((error as LadingError).message).toContain('nfs4');
          expect((error as LadingError).hint).toMatch(/local disk|kafka/i);
        }
        // Beside the mount is fine.
        queue = await openQueue({ uri: `sqlite:${join(nfs, 'local', 'q.db')}` });
        expect(await queue.publish('t', 1)).toMatchObject({ duplicate: false });
      } finally {
        if (before === undefined) delete process.env.LADING_MOUNTINFO_FILE;
        else process.env.LADING_MOUNTINFO_FILE = before;
      }
    });

    test('the mountinfo option of SqliteQueueDriver, and a child process with LADING_MOUNTINFO_FILE, refuse it too', async () => {
      const nfs = realpathSync(dir);
      const text = mountinfo(nfs);
      expect(() => new SqliteQueueDriver(join(nfs, 'q.db'), { mountinfo: text })).toThrow(expect.objectContaining({ code: 'UNSAFE_LOCATION' }) as Error);
      await expect(SqliteQueueDriver.open(join(nfs, 'sub', 'q.db'), { mountinfo: text })).rejects.toMatchObject({ code: 'UNSAFE_LOCATION' });
      const local = await SqliteQueueDriver.open(join(nfs, 'q.db'), { mountinfo: mountinfo('/mnt/elsewhere') });
      await local.close();

      const fixture = join(dir, 'mountinfo');
      writeFileSync(fixture, text);
      const log = join(dir, 'log.jsonl');
      const child = spawnFixture('publisher.mjs', { LQ_URI: `sqlite:${join(nfs, 'child', 'q.db')}`, LQ_TOPIC: 't', LQ_LOG: log, LADING_MOUNTINFO_FILE: fixture });
      const exit = await child.exited;
      expect(exit.code).not.toBe(0);
      expect(child.stderr()).toContain('UNSAFE_LOCATION');
      expect(readLog(log)).toEqual([]);
    });
  });
});
