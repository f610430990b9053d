import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { AttemptError, Delivery, FetchRequest, GroupStats, HospitalFilter, HospitalReason, HospitalRecord, HospitalState, PublishOutcome, QueueDriver } from '../driver.js';
import { parseEnvelope, readEnvelope, type Envelope, type JsonValue } from '../envelope.js';
import { LadingError } from '../errors.js';
import { mountOf } from '../mounts.js';
import { TopicPolicySchema, type TopicInfo, type TopicPolicy, type TopicPolicyInput } from '../topic.js';

/**
 * The embedded default queue: one SQLite file in WAL mode, shared by any number of processes on one
 * node. Messages are stored once; each consumer group has its own delivery rows (fan-out at publish),
 * so groups never see each other's progress. Writes from one process are grouped into one transaction
 * per event-loop turn (group commit): a durable publish waits for a transaction with synchronous=FULL
 * (fsync of the WAL); acks and leases use synchronous=NORMAL, which survives a process crash, and a lost
 * ack only means a redelivery — at-least-once either way.
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics(name TEXT PRIMARY KEY, policy TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups(topic TEXT NOT NULL, name TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY(topic, name));
CREATE TABLE IF NOT EXISTS messages(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL, id TEXT NOT NULL, key TEXT, envelope TEXT NOT NULL,
  published_at INTEGER NOT NULL, available_at INTEGER NOT NULL, expires_at INTEGER,
  payload TEXT, job TEXT,
  dedup INTEGER NOT NULL DEFAULT 1,       -- 0: generated id, no dedup bookkeeping
  refs INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS messages_topic ON messages(topic, seq);
CREATE INDEX IF NOT EXISTS messages_payload ON messages(payload) WHERE payload IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_unref ON messages(published_at) WHERE refs <= 0;
CREATE INDEX IF NOT EXISTS messages_job ON messages(job) WHERE job IS NOT NULL;
CREATE TABLE IF NOT EXISTS published(topic TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY(topic, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS published_at ON published(at);
CREATE TABLE IF NOT EXISTS deliveries(
  topic TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL, key TEXT,
  state INTEGER NOT NULL DEFAULT 0,          -- 0 waiting (ready once visible_at passes), 1 leased until visible_at
  visible_at INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT, lease_token TEXT, errors TEXT NOT NULL DEFAULT '[]', checkpoint TEXT,
  PRIMARY KEY(topic, grp, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(topic, grp, visible_at, seq);
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(topic, grp, key, seq) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS completed(topic TEXT NOT NULL, grp TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL, PRIMARY KEY(topic, grp, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS completed_at ON completed(at);
CREATE TABLE IF NOT EXISTS hospital(
  hid INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL, grp TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
  reason TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'open',
  envelope TEXT NOT NULL, errors TEXT NOT NULL, job TEXT,
  admitted_at INTEGER NOT NULL, resolved_at INTEGER, resolution TEXT);
CREATE INDEX IF NOT EXISTS hospital_state ON hospital(state, topic);
CREATE INDEX IF NOT EXISTS hospital_id ON hospital(id);
CREATE INDEX IF NOT EXISTS hospital_job ON hospital(job) WHERE job IS NOT NULL;
CREATE TABLE IF NOT EXISTS released_payloads(uri TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
`;

const SCHEMA_VERSION = '1';

interface PendingWrite {
  durable: boolean;
  run: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

/** Scan size of the prepared candidate queries: at most this many rows per query (see `candidates`). */
const MAX_SCAN = 256;

/**
 * A candidate row, as an array: the candidate statements run in raw mode, because better-sqlite3 builds
 * an object row property by property, which cost more than the query itself.
 */
type DeliveryRow = [seq: number, key: string | null, state: number, attempt: number, errors: string, checkpoint: string | null,
  leaseOwner: string | null, id: string, envelope: string, dedup: number];

interface HospitalRow {
  hid: number;
  topic: string;
  grp: string;
  id: string;
  seq: number;
  reason: HospitalReason;
  state: HospitalState;
  envelope: string;
  errors: string;
  admitted_at: number;
  resolved_at: number | null;
  resolution: string | null;
}

export interface SqliteDriverOptions {
  busyTimeoutMs?: number | string;
  /** /proc/self/mountinfo text to use instead of the real one (tests of the NFS refusal). */
  mountinfo?: string;
}

export class SqliteQueueDriver implements QueueDriver {
  readonly kind = 'sqlite';
  readonly uri: string;
  private readonly db: Database.Database;
  private readonly pending: PendingWrite[] = [];
  private flushScheduled = false;
  private synchronous: 'FULL' | 'NORMAL' = 'FULL';
  private readonly tokenPrefix = randomBytes(6).toString('hex');
  private tokenCounter = 0;
  private readonly policies = new Map<string, { policy: TopicPolicy; at: number }>();
  private lastSweep = 0;
  /** Groups of a topic, valid for one flush (the write lock is held, so they cannot change under it). */
  private readonly groupCache = new Map<string, string[]>();
  private closed = false;
  private readonly stmt: ReturnType<SqliteQueueDriver['prepare']>;
  /**
   * The candidate query, one prepared statement per LIMIT. The limit is written into the SQL, not bound:
   * with `LIMIT ?` this SQLite (3.53, better-sqlite3 12) re-prepares the statement on every run (the
   * bound value feeds the query planner; sqlite3Reprepare in a profile), ~20 µs per fetch here.
   */
  private readonly candidateStmts = new Map<number, Database.Statement<[string, string, number], DeliveryRow>>();

  static async open(path: string, options: SqliteDriverOptions = {}): Promise<SqliteQueueDriver> {
    return new SqliteQueueDriver(path, options);
  }

  constructor(path: string, options: SqliteDriverOptions = {}) {
    const file = resolve(path);
    this.uri = `sqlite:${path}`;
    const mountinfo = options.mountinfo ?? (process.env.LADING_MOUNTINFO_FILE ? readFileSync(process.env.LADING_MOUNTINFO_FILE, 'utf8') : undefined);
    const { kind, mount } = mountOf(dirname(file), mountinfo);
    if (kind === 'nfs') {
      throw new LadingError('UNSAFE_LOCATION', `the queue database ${file} would be on an NFS mount (${mount?.mountPoint ?? '?'}, ${mount?.fsType ?? 'nfs'}): SQLite's locks are not reliable on NFS and the queue could lose or duplicate messages`, {
        hint: 'put the queue database on a local disk of this node (e.g. sqlite:/var/tmp/lading/queue.db), or use Kafka (kafka://host:9092) to share a queue between nodes',
      });
    }
    try {
      mkdirSync(dirname(file), { recursive: true });
      this.db = new Database(file, { timeout: Number(options.busyTimeoutMs ?? 15_000) });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('temp_store = MEMORY');
      this.db.exec(SCHEMA);
    } catch (e) {
      throw new LadingError('BACKEND', `cannot open the queue database ${file}: ${(e as Error).message}`, { hint: 'check that the directory exists and is writable, and that the file is a lading queue database', cause: e });
    }
    const version = this.db.prepare<[], { v: string }>("SELECT v FROM meta WHERE k='schema'").get();
    if (!version) this.db.prepare("INSERT OR IGNORE INTO meta(k, v) VALUES ('schema', ?)").run(SCHEMA_VERSION);
    else if (version.v !== SCHEMA_VERSION) throw new LadingError('UNSUPPORTED', `queue database ${file} has schema version ${version.v}; this lading reads version ${SCHEMA_VERSION}`, { hint: 'use the lading version that created it, or start a new queue file' });
    this.stmt = this.prepare();
  }

  private prepare() {
    const db = this.db;
    return {
      topic: db.prepare<[string], { name: string; policy: string; created_at: number }>('SELECT name, policy, created_at FROM topics WHERE name = ?'),
      insertTopic: db.prepare('INSERT OR IGNORE INTO topics(name, policy, created_at) VALUES (?, ?, ?)'),
      updateTopic: db.prepare('UPDATE topics SET policy = ? WHERE name = ?'),
      groupsOf: db.prepare<[string], { name: string }>('SELECT name FROM groups WHERE topic = ? ORDER BY name'),
      insertGroup: db.prepare('INSERT OR IGNORE INTO groups(topic, name, created_at) VALUES (?, ?, ?)'),
      backfill: db.prepare(`INSERT OR IGNORE INTO deliveries(topic, grp, seq, key, state, visible_at)
        SELECT topic, ?, seq, key, 0, available_at FROM messages WHERE topic = ?`),
      backfillRefs: db.prepare('UPDATE messages SET refs = refs + 1 WHERE topic = ?'),
      published: db.prepare<[string, string], { at: number }>('SELECT at FROM published WHERE topic = ? AND id = ?'),
      markPublished: db.prepare('INSERT OR REPLACE INTO published(topic, id, at) VALUES (?, ?, ?)'),
      insertMessage: db.prepare<[string, string, string | null, string, number, number, number | null, string | null, string | null, number, number]>(`INSERT INTO messages(topic, id, key, envelope, published_at, available_at, expires_at, payload, job, dedup, refs)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      unrelease: db.prepare('DELETE FROM released_payloads WHERE uri = ?'),
      insertDelivery: db.prepare('INSERT OR IGNORE INTO deliveries(topic, grp, seq, key, state, visible_at) VALUES (?, ?, ?, ?, 0, ?)'),
      completedAt: db.prepare<[string, string, string], { at: number }>('SELECT at FROM completed WHERE topic = ? AND grp = ? AND id = ?'),
      // Positional parameters on the per-message statements: binding by name costs an object and a
      // lookup per parameter. The error history is rewritten only when a lease ran out (leaseExpired).
      lease: db.prepare<[number, string, string, string, string, number]>(`UPDATE deliveries SET state = 1, visible_at = ?, attempt = attempt + 1, lease_owner = ?, lease_token = ?
        WHERE topic = ? AND grp = ? AND seq = ?`),
      leaseExpired: db.prepare<[number, string, string, string, string, string, number]>(`UPDATE deliveries SET state = 1, visible_at = ?, attempt = attempt + 1, lease_owner = ?, lease_token = ?, errors = ?
        WHERE topic = ? AND grp = ? AND seq = ?`),
      owned: db.prepare<[string, string, number, string], { errors: string; attempt: number }>('SELECT errors, attempt FROM deliveries WHERE topic = ? AND grp = ? AND seq = ? AND lease_token = ? AND state = 1'),
      ackOwned: db.prepare('DELETE FROM deliveries WHERE topic = ? AND grp = ? AND seq = ? AND lease_token = ? AND state = 1'),
      // The common case of unref, in one plain statement: RETURNING makes SQLite open an ephemeral table per run.
      dropLastInline: db.prepare<[number]>('DELETE FROM messages WHERE seq = ? AND refs <= 1 AND payload IS NULL'),
      dropLast: db.prepare<[number], { payload: string | null }>('DELETE FROM messages WHERE seq = ? AND refs <= 1 RETURNING payload'),
      deleteDelivery: db.prepare('DELETE FROM deliveries WHERE topic = ? AND grp = ? AND seq = ?'),
      complete: db.prepare('INSERT OR REPLACE INTO completed(topic, grp, id, at) VALUES (?, ?, ?, ?)'),
      unref: db.prepare('UPDATE messages SET refs = refs - 1 WHERE seq = ?'),
      deleteMessage: db.prepare('DELETE FROM messages WHERE seq = ?'),
      payloadInUse: db.prepare<[string], { n: number }>('SELECT 1 AS n FROM messages WHERE payload = ? LIMIT 1'),
      release: db.prepare('INSERT OR IGNORE INTO released_payloads(uri, at) VALUES (?, ?)'),
      retry: db.prepare(`UPDATE deliveries SET state = 0, visible_at = @visible, errors = @errors, checkpoint = @checkpoint, lease_token = NULL
        WHERE topic = @topic AND grp = @grp AND seq = @seq AND lease_token = @token AND state = 1`),
      extend: db.prepare(`UPDATE deliveries SET visible_at = @until, checkpoint = coalesce(@checkpoint, checkpoint)
        WHERE topic = @topic AND grp = @grp AND seq = @seq AND lease_token = @token AND state = 1`),
      handBack: db.prepare(`UPDATE deliveries SET state = 0, visible_at = @now, attempt = max(0, attempt - 1), lease_token = NULL
        WHERE topic = @topic AND grp = @grp AND seq = @seq AND lease_token = @token AND state = 1`),
      admit: db.prepare<Record<string, unknown>, { hid: number }>(`INSERT INTO hospital(topic, grp, id, seq, reason, state, envelope, errors, job, admitted_at)
        VALUES (@topic, @grp, @id, @seq, @reason, 'open', @envelope, @errors, @job, @now) RETURNING hid`),
      hospitalRow: db.prepare<[number], HospitalRow>('SELECT * FROM hospital WHERE hid = ?'),
      message: db.prepare<[number], { seq: number; key: string | null; envelope: string; topic: string }>('SELECT seq, key, envelope, topic FROM messages WHERE seq = ?'),
      resolveHospital: db.prepare("UPDATE hospital SET state = ?, resolved_at = ?, resolution = ? WHERE hid = ? AND state = 'open'"),
      deleteHospital: db.prepare('DELETE FROM hospital WHERE hid = ?'),
      releasedPayloads: db.prepare<[number], { uri: string }>('SELECT uri FROM released_payloads ORDER BY at LIMIT ?'),
      confirmPayload: db.prepare('DELETE FROM released_payloads WHERE uri = ?'),
      sweepUnref: db.prepare<[number, number], { seq: number; payload: string | null }>(`SELECT seq, payload FROM messages m WHERE refs <= 0
        AND (published_at < ? OR (expires_at IS NOT NULL AND expires_at < ?)) LIMIT 1000`),
      sweepPublished: db.prepare('DELETE FROM published WHERE at < ?'),
      sweepCompleted: db.prepare('DELETE FROM completed WHERE at < ?'),
      // The group commit's own transaction statements (db.transaction() would build a new wrapper per flush).
      begin: db.prepare('BEGIN IMMEDIATE'),
      commit: db.prepare('COMMIT'),
      rollback: db.prepare('ROLLBACK'),
      syncFull: db.prepare('PRAGMA synchronous = FULL'),
      syncNormal: db.prepare('PRAGMA synchronous = NORMAL'),
    };
  }

  /** Deliverable rows of a group, oldest first, at most `limit`: only the head of each key (per-key order). */
  private candidates(limit: number): Database.Statement<[string, string, number], DeliveryRow> {
    let stmt = this.candidateStmts.get(limit);
    if (!stmt) {
      stmt = this.db.prepare<[string, string, number], DeliveryRow>(`
        SELECT d.seq, d.key, d.state, d.attempt, d.errors, d.checkpoint, d.lease_owner, m.id, m.envelope, m.dedup
        FROM deliveries d JOIN messages m ON m.seq = d.seq
        WHERE d.topic = ? AND d.grp = ? AND d.visible_at <= ?
          AND (d.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries e WHERE e.topic = d.topic AND e.grp = d.grp AND e.key = d.key AND e.seq < d.seq))
        ORDER BY d.visible_at, d.seq LIMIT ${limit}`).raw();
      this.candidateStmts.set(limit, stmt);
    }
    return stmt;
  }

  // ---- write batching (group commit) -------------------------------------------------------

  /** Run `fn` inside the next batched write transaction; durable ones make that transaction fsync. */
  private write<T>(durable: boolean, fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new LadingError('CLOSED', 'the queue driver is closed'));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ durable, run: fn, resolve: resolve as (v: unknown) => void, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending.splice(0, this.pending.length);
    if (batch.length === 0) return;
    const want = batch.some((p) => p.durable) ? 'FULL' : 'NORMAL';
    if (want !== this.synchronous) {
      (want === 'FULL' ? this.stmt.syncFull : this.stmt.syncNormal).run();
      this.synchronous = want;
    }
    this.groupCache.clear();
    // Fast path: the whole batch in one transaction with no savepoints.
    const values = new Array<unknown>(batch.length);
    try {
      this.stmt.begin.run();
      try {
        for (let i = 0; i < batch.length; i++) values[i] = batch[i]!.run();
        this.stmt.commit.run();
      } catch (e) {
        if (this.db.inTransaction) this.stmt.rollback.run();
        throw e;
      }
    } catch (first) {
      // One write failed: the batch was rolled back. Replay each write on its own so that one
      // caller's failure does not fail the others.
      this.groupCache.clear();
      const results: { ok: boolean; value: unknown }[] = [];
      try {
        this.db.transaction(() => {
          for (const p of batch) {
            try {
              results.push({ ok: true, value: this.db.transaction(p.run)() });
            } catch (e) {
              results.push({ ok: false, value: e });
            }
          }
        }).immediate();
      } catch (e) {
        const err = wrapSqliteError(e ?? first);
        for (const p of batch) p.reject(err);
        return;
      }
      batch.forEach((p, i) => {
        const r = results[i]!;
        if (r.ok) p.resolve(r.value);
        else p.reject(wrapSqliteError(r.value));
      });
      return;
    }
    for (let i = 0; i < batch.length; i++) batch[i]!.resolve(values[i]);
  }

  // ---- topics and groups -------------------------------------------------------------------

  private policy(topic: string): TopicPolicy {
    const hit = this.policies.get(topic);
    if (hit && Date.now() - hit.at < 2000) return hit.policy;
    const row = this.stmt.topic.get(topic);
    let policy: TopicPolicy;
    if (row) {
      policy = TopicPolicySchema.parse(JSON.parse(row.policy));
    } else {
      policy = TopicPolicySchema.parse({});
      this.stmt.insertTopic.run(topic, JSON.stringify(policy), Date.now());
    }
    this.policies.set(topic, { policy, at: Date.now() });
    return policy;
  }

  private topicInfo(name: string): TopicInfo | undefined {
    const row = this.stmt.topic.get(name);
    if (!row) return undefined;
    return { name, policy: TopicPolicySchema.parse(JSON.parse(row.policy)), createdAt: row.created_at, groups: this.stmt.groupsOf.all(name).map((g) => g.name) };
  }

  async ensureTopic(name: string, input: TopicPolicyInput = {}, options: { update?: boolean } = {}): Promise<TopicInfo> {
    return this.write(true, () => {
      const existing = this.stmt.topic.get(name);
      if (!existing) {
        this.stmt.insertTopic.run(name, JSON.stringify(TopicPolicySchema.parse(input)), Date.now());
      } else if (options.update && Object.keys(input).length > 0) {
        const merged = TopicPolicySchema.parse({ ...(JSON.parse(existing.policy) as object), ...input });
        this.stmt.updateTopic.run(JSON.stringify(merged), name);
      }
      this.policies.delete(name);
      return this.topicInfo(name)!;
    });
  }

  async getTopic(name: string): Promise<TopicInfo | undefined> {
    return this.topicInfo(name);
  }

  async listTopics(): Promise<TopicInfo[]> {
    const names = this.db.prepare<[], { name: string }>('SELECT name FROM topics ORDER BY name').all();
    return names.map((n) => this.topicInfo(n.name)!);
  }

  async ensureGroup(topic: string, group: string): Promise<void> {
    await this.write(false, () => {
      this.policy(topic);
      if (this.stmt.insertGroup.run(topic, group, Date.now()).changes === 1) {
        this.groupCache.delete(topic);
        // A new group starts from the oldest retained message of the topic.
        this.stmt.backfill.run(group, topic);
        this.stmt.backfillRefs.run(topic);
      }
    });
  }

  // ---- publish -------------------------------------------------------------------------------

  publish(envelopes: Envelope[], options: { durable: boolean; dedup?: boolean[] | undefined; texts?: (string | undefined)[] | undefined }): Promise<PublishOutcome[]> {
    return this.write(options.durable, () => envelopes.map((e, i) => this.insert(e, options.dedup?.[i] !== false, options.texts?.[i])));
  }

  private insert(env: Envelope, dedup: boolean, text?: string): PublishOutcome {
    const policy = this.policy(env.topic);
    const now = Date.now();
    if (dedup && policy.dedupWindowMs > 0) {
      const seen = this.stmt.published.get(env.topic, env.id);
      if (seen && seen.at > now - policy.dedupWindowMs) return { id: env.id, topic: env.topic, duplicate: true };
    }
    let groups = this.groupCache.get(env.topic);
    if (!groups) {
      groups = this.stmt.groupsOf.all(env.topic).map((g) => g.name);
      this.groupCache.set(env.topic, groups);
    }
    const available = env.notBefore ?? env.publishedAt;
    const payload = env.ref?.uri ?? null;
    const { lastInsertRowid } = this.stmt.insertMessage.run(
      env.topic, env.id, env.key ?? null, text ?? JSON.stringify(env), env.publishedAt, available, env.expiresAt ?? null,
      payload, env.headers['lading-job'] ?? null, dedup ? 1 : 0, groups.length,
    );
    if (payload) this.stmt.unrelease.run(payload);
    if (dedup && policy.dedupWindowMs > 0) this.stmt.markPublished.run(env.topic, env.id, now);
    for (const g of groups) this.stmt.insertDelivery.run(env.topic, g, lastInsertRowid, env.key ?? null, available);
    return { id: env.id, topic: env.topic, duplicate: false };
  }

  // ---- consume -------------------------------------------------------------------------------

  // Not `async`: the hot methods return the group commit's promise itself (an async wrapper would
  // add a promise and a few microtask hops per message).
  fetch(req: FetchRequest): Promise<Delivery[]> {
    return this.write(false, () => {
      const now = Date.now();
      if (now - this.lastSweep > 10_000) this.sweep(now);
      const policy = this.policy(req.topic);
      const out: Delivery[] = [];
      // Ask for exactly the free slots; only when rows were dropped on the way (poison, consumer dedup)
      // look again for more. A row leased here is not a candidate any more (its visible_at moved on).
      for (let pass = 0; out.length < req.max; pass++) {
        const want = req.max - out.length;
        const limit = want <= 32 ? want : Math.min(MAX_SCAN, 2 ** Math.ceil(Math.log2(want)));
        const rows = this.candidates(limit).all(req.topic, req.group, now);
        let dropped = 0;
        for (const row of rows) {
          if (out.length >= req.max) break;
          const delivery = this.leaseRow(req, policy, row, now);
          if (delivery) out.push(delivery);
          else dropped++;
        }
        if (dropped === 0 || rows.length < limit || req.leaseMs <= 0 || pass >= 16) break;
      }
      return out;
    });
  }

  /** Lease one candidate row, or drop it (poison after expired leases, consumer dedup) and return undefined. */
  private leaseRow(req: FetchRequest, policy: TopicPolicy, row: DeliveryRow, now: number): Delivery | undefined {
    const [seq, , state, attempt, errorsText, checkpoint, leaseOwner, id, raw, dedup] = row;
    // A fresh delivery has no history: skip parsing '[]' for every message.
    const errors = errorsText === '[]' ? [] : (JSON.parse(errorsText) as AttemptError[]);
    let envelope: Envelope | undefined;
    let invalid: string | undefined;
    try {
      envelope = readEnvelope(raw);
    } catch (e) {
      invalid = (e as Error).message;
    }
    const token = `${this.tokenPrefix}-${++this.tokenCounter}`;
    const until = now + req.leaseMs;
    if (state === 1) {
      // The previous lease ran out without an ack: the consumer died, hung or was cut off.
      const owner = leaseOwner ?? 'unknown';
      errors.push({ name: 'LeaseExpired', message: `lease held by ${owner} expired without an ack (the consumer died, hung or lost its connection)`, attempt: attempt - 1, worker: owner, host: owner.split(':')[0] ?? owner, at: now });
      // A message may carry its own limit (runner jobs do), like BullMQ's per-job attempts.
      const maxAttempts = Number(envelope?.headers['lading-max-attempts']) || policy.maxAttempts;
      if (attempt >= maxAttempts) {
        this.admitRow(req.topic, req.group, seq, id, raw, 'poison', errors, now);
        this.stmt.deleteDelivery.run(req.topic, req.group, seq);
        return undefined;
      }
      this.stmt.leaseExpired.run(until, req.consumer, token, JSON.stringify(errors), req.topic, req.group, seq);
    } else {
      if (dedup && policy.dedupWindowMs > 0 && attempt === 0) {
        const done = this.stmt.completedAt.get(req.topic, req.group, id);
        if (done && done.at > now - policy.dedupWindowMs) {
          // Consumer dedup: this id was already handled by the group inside the window.
          this.stmt.deleteDelivery.run(req.topic, req.group, seq);
          this.unref(seq);
          return undefined;
        }
      }
      this.stmt.lease.run(until, req.consumer, token, req.topic, req.group, seq);
    }
    return {
      topic: req.topic, group: req.group, id: envelope?.id ?? id, receipt: `${seq}:${token}:${dedup}`,
      raw, envelope, invalid, attempt, errors,
      checkpoint: checkpoint === null ? undefined : (JSON.parse(checkpoint) as JsonValue), leaseUntil: until,
    };
  }

  private owned(d: Delivery): { seq: number; token: string; errors: AttemptError[] } | undefined {
    const [seqText, token = ''] = d.receipt.split(':');
    const seq = Number(seqText);
    const row = this.stmt.owned.get(d.topic, d.group, seq, token);
    return row ? { seq, token, errors: JSON.parse(row.errors) as AttemptError[] } : undefined;
  }

  /** One less holder of the message (a group done with it, a hospital record resolved); the last one drops it. */
  private unref(seq: number): void {
    if (this.stmt.dropLastInline.run(seq).changes === 1) return; // the last holder, and no claim-check payload
    const last = this.stmt.dropLast.get(seq);
    if (last) this.releasePayload(last.payload);
    else this.stmt.unref.run(seq);
  }

  private dropMessage(seq: number, payload: string | null): void {
    this.stmt.deleteMessage.run(seq);
    this.releasePayload(payload);
  }

  private releasePayload(payload: string | null): void {
    if (payload && !this.stmt.payloadInUse.get(payload)) this.stmt.release.run(payload, Date.now());
  }

  ack(d: Delivery): Promise<boolean> {
    // The receipt is `seq:token:dedup`; cut by hand, without split's array, on this per-message path.
    const r = d.receipt;
    const a = r.indexOf(':');
    const b = r.indexOf(':', a + 1);
    const seq = Number(r.slice(0, a));
    const token = b < 0 ? r.slice(a + 1) : r.slice(a + 1, b);
    const dedup = b >= 0 && r.charCodeAt(b + 1) === 49; // '1'
    return this.write(false, () => {
      if (this.stmt.ackOwned.run(d.topic, d.group, seq, token).changes !== 1) return false;
      // Remember the id for consumer dedup (only ids a caller chose can come again).
      if (dedup && this.policy(d.topic).dedupWindowMs > 0) this.stmt.complete.run(d.topic, d.group, d.id, Date.now());
      this.unref(seq);
      return true;
    });
  }

  async retry(d: Delivery, options: { delayMs: number; error: AttemptError; checkpoint?: JsonValue | undefined }): Promise<boolean> {
    return this.write(false, () => {
      const own = this.owned(d);
      if (!own) return false;
      return this.stmt.retry.run({
        visible: Date.now() + options.delayMs, errors: JSON.stringify([...own.errors, options.error]),
        checkpoint: options.checkpoint === undefined ? null : JSON.stringify(options.checkpoint),
        topic: d.topic, grp: d.group, seq: own.seq, token: own.token,
      }).changes === 1;
    });
  }

  async extend(d: Delivery, options: { leaseMs: number; checkpoint?: JsonValue | undefined }): Promise<boolean> {
    const [seqText, token] = d.receipt.split(':');
    return this.write(false, () => this.stmt.extend.run({
      until: Date.now() + options.leaseMs, checkpoint: options.checkpoint === undefined ? null : JSON.stringify(options.checkpoint),
      topic: d.topic, grp: d.group, seq: Number(seqText), token,
    }).changes === 1);
  }

  async release(d: Delivery): Promise<boolean> {
    const [seqText, token] = d.receipt.split(':');
    return this.write(false, () => this.stmt.handBack.run({ now: Date.now(), topic: d.topic, grp: d.group, seq: Number(seqText), token }).changes === 1);
  }

  async deadLetter(d: Delivery, options: { reason: HospitalReason; error?: AttemptError | undefined }): Promise<HospitalRecord> {
    return this.write(true, () => {
      const own = this.owned(d);
      if (!own) throw new LadingError('CONFLICT', `cannot admit message ${d.id} to the hospital: its lease was lost to another consumer`);
      const errors = options.error ? [...own.errors, options.error] : own.errors;
      const hid = this.admitRow(d.topic, d.group, own.seq, d.id, d.raw, options.reason, errors, Date.now());
      this.stmt.deleteDelivery.run(d.topic, d.group, own.seq);
      return toRecord(this.stmt.hospitalRow.get(hid)!);
    });
  }

  private admitRow(topic: string, group: string, seq: number, id: string, raw: string, reason: HospitalReason, errors: AttemptError[], now: number): number {
    let job: string | null = null;
    try {
      job = (JSON.parse(raw) as { headers?: Record<string, string> }).headers?.['lading-job'] ?? null;
    } catch { /* invalid JSON: no job */ }
    // The message row stays referenced by the open hospital record until it is retried, ignored or purged.
    return this.stmt.admit.get({ topic, grp: group, id, seq, reason, envelope: raw, errors: JSON.stringify(errors), job, now })!.hid;
  }

  // ---- hospital --------------------------------------------------------------------------------

  async hospitalList(filter: HospitalFilter): Promise<HospitalRecord[]> {
    const where: string[] = [];
    const params: Record<string, unknown> = {};
    const state = filter.state ?? 'open';
    if (state === 'resolved') where.push("state != 'open'");
    else if (state !== 'any') { where.push('state = @state'); params.state = state; }
    if (filter.ids?.length) {
      const names = filter.ids.map((_, i) => `@id${i}`);
      filter.ids.forEach((id, i) => { params[`id${i}`] = id; });
      where.push(`(CAST(hid AS TEXT) IN (${names.join(',')}) OR id IN (${names.join(',')}))`);
    }
    if (filter.topic) { where.push('topic = @topic'); params.topic = filter.topic; }
    if (filter.group) { where.push('grp = @grp'); params.grp = filter.group; }
    if (filter.reason) { where.push('reason = @reason'); params.reason = filter.reason; }
    if (filter.since !== undefined) { where.push('admitted_at >= @since'); params.since = filter.since; }
    if (filter.until !== undefined) { where.push('admitted_at <= @until'); params.until = filter.until; }
    if (filter.text) { where.push("errors LIKE @text ESCAPE '\\'"); params.text = `%${filter.text.replace(/[\\%_]/g, (c) => `\\${c}`)}%`; }
    if (filter.job) { where.push('job = @job'); params.job = filter.job; }
    const order = filter.ids?.length ? 'hid DESC' : 'hid';
    const sql = `SELECT * FROM hospital ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY ${order} LIMIT ${Math.max(0, Math.min(filter.limit ?? 1000, 1_000_000))}`;
    return this.db.prepare<Record<string, unknown>, HospitalRow>(sql).all(params).map(toRecord);
  }

  async hospitalRetry(hid: string, options: { toTopic?: string | undefined; note?: string | undefined }): Promise<HospitalRecord | undefined> {
    return this.write(true, () => {
      const row = this.stmt.hospitalRow.get(Number(hid));
      if (!row || row.state !== 'open') return undefined;
      const now = Date.now();
      const toTopic = options.toTopic ?? row.topic;
      const message = this.stmt.message.get(row.seq);
      if (toTopic === row.topic && message) {
        // Back to the group it failed in, attempts reset; the other groups are not disturbed.
        this.stmt.insertGroup.run(row.topic, row.grp, now);
        this.stmt.insertDelivery.run(row.topic, row.grp, row.seq, message.key, now);
      } else {
        // Another topic (or the message row is gone): publish a copy there, seen by all its groups.
        let env: Envelope;
        try {
          env = parseEnvelope(row.envelope);
        } catch (e) {
          throw new LadingError('BAD_MESSAGE', `hospital record ${hid} holds an invalid message and cannot be re-published to ${toTopic}: ${(e as Error).message}`, { hint: 'ignore it, or fix the producer and publish again' });
        }
        this.insert({ ...env, topic: toTopic, attempt: 0, publishedAt: now, notBefore: undefined, headers: { ...env.headers, 'lading-retried-from': `${row.topic}/${row.grp}` } }, false);
        if (message) this.unref(row.seq);
      }
      this.stmt.resolveHospital.run('retried', now, `retried to ${toTopic}${toTopic === row.topic ? `/${row.grp}` : ''}${options.note ? `: ${options.note}` : ''}`, row.hid);
      return toRecord(this.stmt.hospitalRow.get(row.hid)!);
    });
  }

  async hospitalIgnore(hid: string, note?: string): Promise<HospitalRecord | undefined> {
    return this.write(true, () => {
      const row = this.stmt.hospitalRow.get(Number(hid));
      if (!row || row.state !== 'open') return undefined;
      this.stmt.resolveHospital.run('ignored', Date.now(), note ?? 'ignored', row.hid);
      if (this.stmt.message.get(row.seq)) this.unref(row.seq);
      return toRecord(this.stmt.hospitalRow.get(row.hid)!);
    });
  }

  async hospitalPurge(hid: string): Promise<boolean> {
    return this.write(true, () => {
      const row = this.stmt.hospitalRow.get(Number(hid));
      if (!row) return false;
      if (row.state === 'open' && this.stmt.message.get(row.seq)) this.unref(row.seq);
      return this.stmt.deleteHospital.run(row.hid).changes === 1;
    });
  }

  // ---- housekeeping ------------------------------------------------------------------------

  /** Drop what no one needs: unreferenced messages past retention or TTL, and dedup records past the window. */
  private sweep(now: number): void {
    this.lastSweep = now;
    let longestWindow = 0;
    let longestRetention = 0;
    for (const row of this.db.prepare<[], { policy: string }>('SELECT policy FROM topics').all()) {
      const p = TopicPolicySchema.parse(JSON.parse(row.policy));
      longestWindow = Math.max(longestWindow, p.dedupWindowMs);
      longestRetention = Math.max(longestRetention, p.retentionMs);
    }
    for (const m of this.stmt.sweepUnref.all(now - longestRetention, now)) this.dropMessage(m.seq, m.payload);
    this.stmt.sweepPublished.run(now - longestWindow);
    this.stmt.sweepCompleted.run(now - longestWindow);
  }

  async releasedPayloads(limit: number): Promise<string[]> {
    return this.stmt.releasedPayloads.all(limit).map((r) => r.uri);
  }

  async confirmPayloadsDeleted(uris: string[]): Promise<void> {
    if (uris.length === 0) return;
    await this.write(false, () => { for (const u of uris) this.stmt.confirmPayload.run(u); });
  }

  async stats(topic?: string, options: { job?: string; group?: string } = {}): Promise<GroupStats[]> {
    const now = Date.now();
    // With a job, count only that job's messages (messages.job is the `lading-job` header).
    const jobJoin = options.job ? 'JOIN messages m ON m.seq = d.seq AND m.job = @job' : '';
    const jobWhere = options.job ? 'AND h.job = @job' : '';
    const count = (cond: string) => `(SELECT count(*) FROM deliveries d ${jobJoin} WHERE d.topic = g.topic AND d.grp = g.name AND ${cond})`;
    return this.db.prepare<Record<string, unknown>, GroupStats>(`
      SELECT g.topic AS topic, g.name AS "group",
        ${count('d.visible_at <= @now')} AS ready,
        ${count('d.state = 0 AND d.visible_at > @now')} AS delayed,
        ${count('d.state = 1 AND d.visible_at > @now')} AS leased,
        (SELECT count(*) FROM hospital h WHERE h.topic = g.topic AND h.grp = g.name AND h.state = 'open' ${jobWhere}) AS hospital
      FROM groups g WHERE (@topic IS NULL OR g.topic = @topic) AND (@grp IS NULL OR g.name = @grp)
      ORDER BY g.topic, g.name`).all({ now, topic: topic ?? null, grp: options.group ?? null, ...(options.job ? { job: options.job } : {}) });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.length) this.flush();
    this.closed = true;
    this.db.close();
  }
}

function toRecord(row: HospitalRow): HospitalRecord {
  let envelope: Envelope | undefined;
  try {
    envelope = parseEnvelope(row.envelope);
  } catch {
    envelope = undefined;
  }
  return {
    hid: String(row.hid), id: row.id, topic: row.topic, group: row.grp, reason: row.reason, state: row.state,
    envelope, raw: row.envelope, errors: JSON.parse(row.errors) as AttemptError[], admittedAt: row.admitted_at,
    resolvedAt: row.resolved_at ?? undefined, resolution: row.resolution ?? undefined,
  };
}

function wrapSqliteError(e: unknown): unknown {
  if (e instanceof LadingError) return e;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && code.startsWith('SQLITE_')) {
    return new LadingError('BACKEND', `queue database error (${code}): ${(e as Error).message}`, {
      hint: code === 'SQLITE_BUSY' ? 'another process held the database too long; retry, or raise busyTimeoutMs' : code === 'SQLITE_FULL' ? 'the disk holding the queue database is full' : undefined,
      cause: e,
    });
  }
  return e;
}
