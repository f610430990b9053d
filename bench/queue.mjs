// `bench queue`: throughput of lading's embedded SQLite queue beside two baselines measured in the same
// run, interleaved round by round (the order of the systems rotates every round) and reported as medians:
//
//   raw      better-sqlite3 by hand: the limit. One table `jobs(seq INTEGER PRIMARY KEY, id, payload,
//            visible_at)` + one index (visible_at, seq), WAL. Publish: a UUID and JSON.stringify of an
//            envelope-like object per message, one INSERT each, one BEGIN IMMEDIATE … COMMIT per batch of
//            the same size lading commits (256 or 100), synchronous=FULL (an fsync per commit, like
//            lading's durable publish). Consume: loop { BEGIN IMMEDIATE; SELECT 16 ready rows; UPDATE each
//            visible_at = now + lease; COMMIT; JSON.parse each (the no-op handler); BEGIN; DELETE each
//            (ack); COMMIT } with synchronous=NORMAL, as lading's leases and acks.
//   BullMQ   Queue.add / Queue.addBulk and a Worker (concurrency 16, no-op processor, removeOnComplete)
//            on a local redis-server started for the run: AOF, appendfsync everysec (so an acknowledged
//            add can still be lost for up to ~1 s: weaker than lading's fsync before the ack).
//
// lading: the built @lading/core, `sqlite:` file in the bench work dir, one topic with one consumer group
// (so each publish writes the message and its delivery row — the real path; the bench's ids are
// generated, so no idempotent-publish record: lading keeps one only for caller-given ids).
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';

const TOPIC = 'bench';
const GROUP = 'workers';
const LEASE_MS = 30_000;

/** ~200 bytes of JSON: a typical "process this tile" task. */
function body(i) {
  return {
    i,
    kind: 'tile.segment',
    path: `/scratch/proj-astro/run-0042/tiles/${String(i).padStart(8, '0')}.tif`,
    shape: [512, 512, 3],
    dtype: 'uint16',
    params: { threshold: 0.35, sigma: 1.5, model: 'segm-v3', seed: i % 97 },
    tags: ['bench', 'lading'],
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Wall-clock and this process's CPU time of a measured section. */
function timer() {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  return (n) => {
    const c = process.cpuUsage(c0);
    return { rate: n / ((performance.now() - t0) / 1000), cpuUs: (c.user + c.system) / n };
  };
}

/** Run fn(i) for i < n with `inflight` calls outstanding at any time. */
async function pool(n, inflight, fn) {
  let next = 0;
  const lane = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(inflight, n) }, lane));
}

function rmDb(path) {
  for (const s of ['', '-wal', '-shm', '-journal']) rmSync(path + s, { force: true });
}

// ---- lading ------------------------------------------------------------------------------------

async function ladingOpen(core, path) {
  const queue = await core.openQueue({ uri: `sqlite:${path}` });
  await queue.createTopic(TOPIC);
  await queue.driver.ensureGroup(TOPIC, GROUP);
  // Count group-commit transactions (diagnostic only: one array length read per flush).
  const driver = queue.driver;
  const stats = { flushes: 0, writes: 0 };
  if (typeof driver.flush === 'function' && Array.isArray(driver.pending)) {
    const flush = driver.flush.bind(driver);
    driver.flush = () => {
      if (driver.pending.length) { stats.flushes++; stats.writes += driver.pending.length; }
      flush();
    };
  }
  return { queue, stats };
}

const lading = {
  async publishEach(env, n) {
    const { queue, stats } = await ladingOpen(env.core, env.db());
    const stop = timer();
    await pool(n, env.inflight, (i) => queue.publish(TOPIC, body(i)));
    const result = stop(n);
    env.groupCommit.push(stats.writes / Math.max(1, stats.flushes));
    await queue.close();
    return result;
  },
  async publishBatch(env, n) {
    const { queue } = await ladingOpen(env.core, env.db());
    const stop = timer();
    for (let i = 0; i < n; i += env.batch) {
      const inputs = [];
      for (let j = i; j < Math.min(n, i + env.batch); j++) inputs.push({ body: body(j) });
      await queue.publishMany(TOPIC, inputs);
    }
    const result = stop(n);
    await queue.close();
    return result;
  },
  async consume(env, n) {
    const { queue } = await ladingOpen(env.core, env.db());
    for (let i = 0; i < n; i += 1000) {
      const inputs = [];
      for (let j = i; j < Math.min(n, i + 1000); j++) inputs.push({ body: body(j) });
      await queue.publishMany(TOPIC, inputs);
    }
    let done = 0;
    let consumer;
    const stop = timer();
    await new Promise((resolve, reject) => {
      consumer = queue.consume(TOPIC, { group: GROUP, concurrency: env.concurrency }, () => {});
      consumer.on('done', () => { if (++done === n) resolve(); });
      consumer.on('error', reject);
      consumer.on('retry', (r) => reject(new Error(`lading consumer retried ${r.id}: ${r.error.message}`)));
    });
    const result = stop(n);
    await consumer.close();
    const left = (await queue.stats(TOPIC)).reduce((a, g) => a + g.ready + g.delayed + g.leased, 0);
    await queue.close();
    if (left !== 0) throw new Error(`lading consume: ${left} deliveries left after draining`);
    return result;
  },
};

// ---- raw better-sqlite3 ------------------------------------------------------------------------

function rawOpen(path, synchronous) {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${synchronous}`);
  db.exec(`CREATE TABLE IF NOT EXISTS jobs(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, payload TEXT NOT NULL, visible_at INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(visible_at, seq);`);
  const insert = db.prepare('INSERT INTO jobs(id, payload, visible_at) VALUES (?, ?, ?)');
  const publish = db.transaction((from, to) => {
    for (let i = from; i < to; i++) {
      const now = Date.now();
      const id = randomUUID();
      insert.run(id, JSON.stringify({ id, topic: TOPIC, headers: {}, publishedAt: now, body: body(i) }), now);
    }
  });
  return { db, publish: (from, to) => publish.immediate(from, to) };
}

function rawPublish(env, n, batch) {
  const { db, publish } = rawOpen(env.db(), 'FULL');
  const stop = timer();
  for (let i = 0; i < n; i += batch) publish(i, Math.min(n, i + batch));
  const result = stop(n);
  db.close();
  return result;
}

const raw = {
  async publishEach(env, n) { return rawPublish(env, n, env.inflight); },
  async publishBatch(env, n) { return rawPublish(env, n, env.batch); },
  async consume(env, n) {
    const { db, publish } = rawOpen(env.db(), 'FULL');
    for (let i = 0; i < n; i += 1000) publish(i, Math.min(n, i + 1000));
    db.pragma('synchronous = NORMAL');
    const select = db.prepare('SELECT seq, id, payload FROM jobs WHERE visible_at <= ? ORDER BY visible_at, seq LIMIT ?');
    const lease = db.prepare('UPDATE jobs SET visible_at = ? WHERE seq = ?');
    const del = db.prepare('DELETE FROM jobs WHERE seq = ?');
    const fetch = db.transaction((now, max) => {
      const rows = select.all(now, max);
      for (const r of rows) lease.run(now + LEASE_MS, r.seq);
      return rows;
    });
    const ack = db.transaction((rows) => { for (const r of rows) del.run(r.seq); });
    let done = 0;
    const stop = timer();
    while (done < n) {
      const rows = fetch.immediate(Date.now(), env.concurrency);
      if (rows.length === 0) break;
      for (const r of rows) JSON.parse(r.payload); // the no-op handler gets its message
      ack.immediate(rows);
      done += rows.length;
    }
    const result = stop(n);
    db.close();
    if (done !== n) throw new Error(`raw consume drained ${done} of ${n}`);
    return result;
  },
};

// ---- BullMQ ------------------------------------------------------------------------------------

async function bullOpen(env) {
  const name = `bench-${++env.bullSeq}`;
  const queue = new env.bullmq.Queue(name, { connection: env.connection });
  await queue.waitUntilReady();
  return { name, queue };
}

async function bullClose(queue) {
  await queue.obliterate({ force: true });
  await queue.close();
}

const bull = {
  async publishEach(env, n) {
    const { queue } = await bullOpen(env);
    const stop = timer();
    await pool(n, env.inflight, (i) => queue.add('task', body(i)));
    const result = stop(n);
    await bullClose(queue);
    return result;
  },
  async publishBatch(env, n) {
    const { queue } = await bullOpen(env);
    const stop = timer();
    for (let i = 0; i < n; i += env.batch) {
      const jobs = [];
      for (let j = i; j < Math.min(n, i + env.batch); j++) jobs.push({ name: 'task', data: body(j) });
      await queue.addBulk(jobs);
    }
    const result = stop(n);
    await bullClose(queue);
    return result;
  },
  async consume(env, n) {
    const { name, queue } = await bullOpen(env);
    for (let i = 0; i < n; i += 1000) {
      const jobs = [];
      for (let j = i; j < Math.min(n, i + 1000); j++) jobs.push({ name: 'task', data: body(j), opts: { removeOnComplete: true, removeOnFail: true } });
      await queue.addBulk(jobs);
    }
    const worker = new env.bullmq.Worker(name, async () => {}, { connection: env.connection, concurrency: env.concurrency, autorun: false });
    await worker.waitUntilReady();
    let done = 0;
    const stop = timer();
    await new Promise((resolve, reject) => {
      worker.on('completed', () => { if (++done === n) resolve(); });
      worker.on('failed', (job, err) => reject(new Error(`BullMQ job failed: ${err?.message}`)));
      worker.on('error', reject);
      worker.run().catch(reject);
    });
    const result = stop(n);
    await worker.close();
    await bullClose(queue);
    return result;
  },
};

// ---- the benchmark -----------------------------------------------------------------------------

export async function run(ctx) {
  const n = ctx.size('LADING_BENCH_N', 20_000, 2_000);
  // Up to `rounds` rounds, at least `minRounds`; no new round starts when it would end past the time budget
  // (default 150 s, quick 25 s), so a busy machine gets fewer rounds rather than a run without end.
  const rounds = ctx.size('LADING_BENCH_ROUNDS', 5, 3);
  const minRounds = Math.min(rounds, 3);
  const budgetMs = ctx.size('LADING_BENCH_BUDGET_S', 150, 25) * 1000;
  const started = Date.now();
  const inflight = 256;
  const batch = 100;
  const concurrency = 16;
  const core = await ctx.importPackage('core');

  let dbSeq = 0;
  const env = {
    core, inflight, batch, concurrency, groupCommit: [], bullSeq: 0,
    files: [],
    db() {
      const path = join(ctx.workDir, `q${++dbSeq}.db`);
      this.files.push(path);
      return path;
    },
  };

  const systems = { lading, raw };
  const redis = await ctx.redis();
  let bullSkip;
  if (redis.skip) {
    bullSkip = redis.skip;
    ctx.log(`BullMQ baseline skipped: ${redis.skip}`);
  } else {
    env.bullmq = await import('bullmq');
    try { env.bullVersion = createRequire(import.meta.url)('bullmq/package.json').version; } catch { env.bullVersion = '5'; }
    env.connection = { host: redis.host, port: redis.port, maxRetriesPerRequest: null };
    systems.bullmq = bull;
  }

  const measurements = [
    { key: 'publishEach', name: `queue: durable publish, ${inflight} in flight`, unit: 'msgs/s',
      raw: `raw better-sqlite3, txn of ${inflight}, FULL`, bull: `BullMQ add, ${inflight} in flight, AOF everysec` },
    { key: 'publishBatch', name: `queue: durable publishMany(${batch})`, unit: 'msgs/s',
      raw: `raw better-sqlite3, txn of ${batch}, FULL`, bull: `BullMQ addBulk(${batch}), AOF everysec` },
    { key: 'consume', name: `queue: consume+ack, concurrency ${concurrency}`, unit: 'msgs/s',
      raw: `raw better-sqlite3, lease+ack txns of ${concurrency}, NORMAL`, bull: `BullMQ Worker, concurrency ${concurrency}` },
  ];
  const names = Object.keys(systems);
  const samples = {};
  for (const m of measurements) for (const s of names) samples[`${m.key}.${s}`] = { rate: [], cpuUs: [] };

  let completedRounds = 0;
  const clean = () => { for (const f of env.files.splice(0)) rmDb(f); };
  try {
    // Warm-up (not measured): JIT, page cache, redis connections.
    const warm = Math.min(n, 1000);
    for (const m of measurements) for (const s of names) { await systems[s][m.key](env, warm); clean(); }
    env.groupCommit.length = 0;

    let done = 0;
    for (let r = 0; r < rounds; r++) {
      const roundStart = Date.now();
      if (r >= minRounds && roundStart - started + (roundStart - started) / r > budgetMs) {
        ctx.log(`stopping after ${r} rounds: another would pass the ${budgetMs / 1000} s budget (LADING_BENCH_BUDGET_S)`);
        break;
      }
      done = r + 1;
      for (const m of measurements) {
        const order = names.map((_, k) => names[(k + r) % names.length]);
        const line = [];
        for (const s of order) {
          const { rate, cpuUs } = await systems[s][m.key](env, n);
          clean();
          samples[`${m.key}.${s}`].rate.push(rate);
          samples[`${m.key}.${s}`].cpuUs.push(cpuUs);
          line.push(`${s} ${Math.round(rate)}`);
        }
        ctx.log(`round ${r + 1}/${rounds} ${m.key} (n=${n}): ${line.join(', ')} msgs/s`);
      }
    }
    completedRounds = done;
  } finally {
    clean();
  }

  const rows = [];
  for (const m of measurements) {
    const mine = samples[`${m.key}.lading`];
    const common = { name: m.name, value: median(mine.rate), unit: m.unit, higherIsBetter: true, samples: mine.rate };
    const rawRate = samples[`${m.key}.raw`].rate;
    rows.push({ id: `${m.key}.vs-raw`, ...common, baseline: { name: m.raw, value: median(rawRate), samples: rawRate }, target: '≥ 0.5×', targetRatio: 0.5 });
    if (systems.bullmq) {
      const bullRate = samples[`${m.key}.bullmq`].rate;
      rows.push({ id: `${m.key}.vs-bullmq`, ...common, baseline: { name: m.bull, value: median(bullRate), samples: bullRate }, target: '≥ 2×', targetRatio: 2 });
    } else {
      rows.push({ id: `${m.key}.vs-bullmq`, ...common, baseline: { name: m.bull, value: null }, skipped: bullSkip, target: '≥ 2×', targetRatio: 2 });
    }
  }
  // CPU time of the measuring process per message: far less sensitive to a busy machine than
  // throughput, and what the driver itself costs (lading and the raw loop both run in this process;
  // BullMQ's work is mostly inside redis-server, so it has no comparable figure here).
  for (const m of measurements) {
    const mine = samples[`${m.key}.lading`].cpuUs;
    const base = samples[`${m.key}.raw`].cpuUs;
    rows.push({ id: `${m.key}.cpu-vs-raw`, name: `${m.name}, CPU per message`, value: median(mine), unit: 'µs', higherIsBetter: false, samples: mine, baseline: { name: m.raw, value: median(base), samples: base } });
  }
  const gc = env.groupCommit.length ? median(env.groupCommit) : undefined;
  const bytes = Buffer.byteLength(JSON.stringify(body(12345)));
  return {
    rows,
    meta: { messages: n, rounds: completedRounds, ...(redis.version ? { redis: redis.version, bullmq: env.bullVersion } : {}), 'peak RSS': `${Math.round(process.resourceUsage().maxRSS / 1024)} MiB` },
    notes: [
      `${n} messages of ~${bytes} B JSON per measurement, fresh database / queue each time; median of ${completedRounds} interleaved rounds (system order rotated per round) after a warm-up.`,
      `lading durable publish = fsync (WAL, synchronous=FULL) before the promise resolves; its group commit put ${gc ? gc.toFixed(0) : '?'} publishes in each transaction (median), so the raw baseline commits ${inflight} rows per transaction.`,
      systems.bullmq
        ? `BullMQ ${env.bullVersion} on redis-server ${redis.version} (started by the bench) with appendonly yes, appendfsync everysec: an acknowledged add can be lost for up to ~1 s on a crash — weaker durability than lading.`
        : `BullMQ baseline skipped: ${bullSkip}`,
      'Ratios: above 1× lading does better (msgs/s: lading/baseline; µs rows: baseline/lading). CPU per message is this process\'s user+system time, far steadier than throughput on a busy machine.',
      'Consume: messages pre-published (not timed), then time until a consumer with a no-op handler has acked all of them. lading leases and acks use synchronous=NORMAL (survives a process crash), like the raw loop.',
    ],
  };
}
