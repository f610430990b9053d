// `bench runner`: the runner (queue → RunnerWorker → Piscina thread → commit marker) beside a raw Piscina
// pool doing the same work, in the same run, interleaved round by round and reported as medians.
//
//   dispatch   N no-op tasks. lading: N shard-task messages (the real TaskSchema body, a 1-byte input range)
//              published with one queue.publishMany (not timed: that is `bench queue`), then the time until a
//              warm RunnerWorker (threads = cores) has run and acked all of them. That includes, per task: the
//              SQLite lease and ack, the task's shape check, the hand-off to a thread, the commit-marker stat
//              (idempotent redelivery, in the thread) and the no-op handler. A no-op writes no output, so it
//              commits no marker (nothing to protect; see thread.ts). Short shards like these are batched by
//              the worker's default (WorkerOptions.batch): leased ahead, several per pool.run, their acks
//              grouped into fewer commits; each keeps its own lease, marker check, result and ack.
//              baseline: a warm raw Piscina pool (maxThreads = cores) running a no-op function N times
//              with the same task object as its argument (Promise.all, Piscina queues the rest).
//   cpu-1ms    the same with ~1 ms of CPU per task (a busy loop, in both): small realistic shards, where
//              the queue's per-task cost is measured against some work.
//   outputs    N/4 tasks that each write one ~100-byte output through ctx.write (atomic: temp file, fsync,
//              rename, directory fsync), so lading also writes its commit marker (a second atomic write, not flushed);
//              baseline: raw Piscina writing the same output with the same store library. The ratio is
//              the price of the commit guarantee (and the queue) on this disk.
//   scaling    S shards of fixed CPU work (sha256 over a 4 MiB buffer, `rounds` times, inside the thread),
//              run by a RunnerWorker with threads = 1 and threads = cores → speedup, compared to linear
//              (cores×): the ratio is the fraction of linear. A raw Piscina pool doing the same hashing with
//              1 and cores threads is reported beside it: what this machine gives at best.
import { availableParallelism, loadavg } from 'node:os';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { Piscina } from 'piscina';
import { ensureBuilt } from './lib/build.mjs';

const TOPIC = 'lading.tasks';

const NOOP_HANDLER = 'export default async function () {}\n';
const NOOP_RAW = 'export default function () { return null; }\n';
// Hash a 4 MiB buffer `rounds` times: fixed CPU work, no I/O.
const HASH_BODY = `import { createHash } from 'node:crypto';
const buf = Buffer.alloc(4 * 1024 * 1024, 7);
function work(rounds) { let h = ''; for (let i = 0; i < rounds; i++) h = createHash('sha256').update(buf).update(h).digest('hex'); return h; }
`;
const HASH_HANDLER = `${HASH_BODY}export default async function (ctx) { return work(ctx.params.rounds); }\n`;
const HASH_RAW = `${HASH_BODY}export default function (task) { return work(task.params.rounds); }\n`;
// ~1 ms of CPU: a busy loop on the clock (the same in both).
const SPIN_BODY = 'function spin(ms) { const t = performance.now(); let x = 0; while (performance.now() - t < ms) x++; return x; }\n';
const SPIN_HANDLER = `${SPIN_BODY}export default async function (ctx) { spin(ctx.params.ms); }\n`;
const SPIN_RAW = `${SPIN_BODY}export default function (task) { spin(task.params.ms); return null; }\n`;
// One small output per task: lading through ctx.write (then its commit marker), raw Piscina through the same
// store library (opened once per thread, like lading's).
const OUT_HANDLER = 'export default async function (ctx) { await ctx.write(`${ctx.shard.id}.out`, `output of ${ctx.shard.id} `.repeat(5)); }\n';
const outRaw = (storageUrl) => `import { openStore } from ${JSON.stringify(storageUrl)};
const stores = new Map();
export default async function (task) {
  let s = stores.get(task.output);
  if (!s) { s = openStore(task.output); stores.set(task.output, s); }
  await (await s).write(\`\${task.shard.id}.out\`, \`output of \${task.shard.id} \`.repeat(5));
  return null;
}
`;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export async function run(ctx) {
  const cores = availableParallelism();
  const n = ctx.size('LADING_BENCH_N', 2000, 400);
  const rounds = ctx.size('LADING_BENCH_ROUNDS', 3, 2);
  const shards = ctx.size('LADING_BENCH_SHARDS', 8 * cores, 4 * cores);
  const core = await ctx.importPackage('core');
  const storage = await ctx.importPackage('storage');
  const runner = await ctx.importPackage('runner');

  const dir = ctx.workDir;
  const file = (name, text) => { writeFileSync(join(dir, name), text); return pathToFileURL(join(dir, name)).href; };
  const noopHandler = file('noop-handler.mjs', NOOP_HANDLER);
  const noopRaw = file('noop-raw.mjs', NOOP_RAW);
  const hashHandler = file('hash-handler.mjs', HASH_HANDLER);
  const hashRaw = file('hash-raw.mjs', HASH_RAW);
  const spinHandler = file('spin-handler.mjs', SPIN_HANDLER);
  const spinRaw = file('spin-raw.mjs', SPIN_RAW);
  const outHandler = file('out-handler.mjs', OUT_HANDLER);
  const outRawFile = file('out-raw.mjs', outRaw(pathToFileURL(ensureBuilt('storage', ctx.log)).href));
  const nOut = Math.max(50, Math.round(n / 4));
  mkdirSync(join(dir, 'in'), { recursive: true });
  writeFileSync(join(dir, 'in', 'x.bin'), 'x');

  let seq = 0;
  /** The task body the planner would publish for a 1-byte shard of in/x.bin. */
  const task = (job, i, handler, params, output) => ({
    kind: 'lading.shard', job, shard: { id: `s${i}`, index: i, input: `file:${dir}/in/x.bin`, storeUri: `file:${dir}/in`, key: 'x.bin', start: 0, end: 1, objectSize: 1, etag: '1-1', align: 'none' },
    handler, output, params,
  });

  /** A fresh queue + warm RunnerWorker; `batch(count, handler, params)` publishes and times until all are acked. */
  async function ladingSession(threads) {
    const id = ++seq;
    const qdir = join(dir, `lading-${id}`);
    mkdirSync(qdir, { recursive: true });
    const queue = await core.openQueue({ uri: `sqlite:${join(qdir, 'q.db')}` });
    await queue.createTopic(TOPIC, { maxAttempts: 1 });
    const worker = runner.startWorker({ queue, threads });
    let failure;
    worker.on('failed', (e) => { failure ??= e.error; });
    worker.on('hospital', (r) => { failure ??= new Error(`task in the hospital: ${r.errors.at(-1)?.message}`); });
    let batchNo = 0;
    const batch = async (count, handler, params, outRoot = join(qdir, 'out')) => {
      const job = `b${id}-${++batchNo}`;
      const output = `file:${join(outRoot, job)}`;
      const inputs = [];
      for (let i = 0; i < count; i++) inputs.push({ id: `${job}:${i}`, type: 'lading.shard', headers: { 'lading-job': job }, body: task(job, i, handler, params, output) });
      // The target before publishing (the worker may ack some before the clock starts otherwise, and a target
      // counted after them would never be reached). One publishMany: one commit, so the worker can lease none
      // of them before it resolves (not timed: publish is `bench queue`).
      const target = worker.counts.done + count;
      await queue.publishMany(TOPIC, inputs);
      // The messages are visible now; the worker wakes on the publish event.
      const t0 = performance.now();
      await new Promise((resolve, reject) => {
        const check = () => {
          if (failure) { worker.consumer.off('done', check); reject(failure); }
          else if (worker.counts.done >= target) { worker.consumer.off('done', check); resolve(); }
        };
        worker.consumer.on('done', check); // after each ack
        check();
      });
      return (performance.now() - t0) / 1000;
    };
    // Warm up: the threads start, the handler modules load.
    await batch(Math.max(threads * 4, 20), noopHandler, {});
    await batch(threads, hashHandler, { rounds: 1 });
    return {
      batch,
      async close() {
        await worker.close();
        await queue.close();
        rmSync(qdir, { recursive: true, force: true });
      },
    };
  }

  function rawPool(filename, threads) {
    return new Piscina({ filename, minThreads: threads, maxThreads: threads, idleTimeout: 30_000, concurrentTasksPerWorker: 1 });
  }

  let rawBatchNo = 0;
  async function rawBatch(pool, count, params, perTask = false) {
    const out = `file:${join(dir, 'raw-out', `r${++rawBatchNo}`)}`;
    const one = task('raw', 0, 'raw', params, out);
    // Per-task bodies only where the task needs its own id (outputs); otherwise the same object every time.
    const bodies = perTask ? Array.from({ length: count }, (_, i) => task('raw', i, 'raw', params, out)) : undefined;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: count }, (_, i) => pool.run(bodies ? bodies[i] : one)));
    return (performance.now() - t0) / 1000;
  }

  // Calibrate the CPU work: ~150 ms per shard on one thread (80 ms in a quick run).
  const shardSeconds = ctx.quick ? 0.08 : 0.15;
  let hashRounds;
  {
    const pool = rawPool(hashRaw, 1);
    await rawBatch(pool, 1, { rounds: 1 });
    const t = await rawBatch(pool, 1, { rounds: 8 });
    hashRounds = Math.max(2, Math.round((shardSeconds / t) * 8));
    await pool.destroy();
    ctx.log(`cpu work: sha256 of 4 MiB × ${hashRounds} per shard (~${((t / 8) * hashRounds * 1000).toFixed(0)} ms on one thread)`);
  }

  // The cost of one flushed small write on the work directory's disk (two fsyncs: file and directory), as an output's.
  const markerMs = await (async () => {
    const store = await storage.openStore(`file:${join(dir, 'marker-probe')}`);
    await store.write('warm.json', '{}');
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await store.write(`_lading/j/done/s${i}.json`, '{"probe":true}', { contentType: 'application/json' });
    await store.close();
    return (performance.now() - t0) / 20;
  })();
  ctx.log(`one flushed small write (output) on ${dir}: ${markerMs.toFixed(2)} ms`);

  const s = { lading: [], raw: [], spin: [], spinRaw: [], out: [], outRaw: [], l1: [], lN: [], r1: [], rN: [] };
  const cpu = { lading: [], raw: [], spin: [], spinRaw: [] };
  /** Run `fn` (a batch of `count` tasks, returns seconds); record tasks/s and this process's CPU µs per task. */
  const measured = async (rate, cpuList, count, fn) => {
    const c0 = process.cpuUsage();
    rate.push(count / (await fn()));
    const c = process.cpuUsage(c0);
    cpuList?.push((c.user + c.system) / count);
  };
  const spinParams = { ms: 1 };
  const l1 = await ladingSession(1);
  const lN = await ladingSession(cores);
  const noopPool = rawPool(noopRaw, cores);
  const spinPool = rawPool(spinRaw, cores);
  const outPool = rawPool(outRawFile, cores);
  const hash1 = rawPool(hashRaw, 1);
  const hashN = rawPool(hashRaw, cores);
  try {
    // Warm both sides to their steady state before any timing: the first few thousand tasks of a fresh process
    // run while V8 still compiles (its compiler threads take CPU from the two cores, lading having more code
    // to compile than raw Piscina), which made the first round about half as fast as the next ones.
    await rawBatch(noopPool, n, {});
    await lN.batch(n, noopHandler, {});
    await rawBatch(spinPool, 4 * cores, spinParams);
    await rawBatch(outPool, 4 * cores, {}, true);
    await lN.batch(4 * cores, spinHandler, spinParams);
    await lN.batch(4 * cores, outHandler, {});
    await rawBatch(hash1, 1, { rounds: 1 });
    await rawBatch(hashN, cores, { rounds: 1 });
    for (let r = 0; r < rounds; r++) {
      // Dispatch, order alternating per round.
      const steps = [
        () => measured(s.lading, cpu.lading, n, () => lN.batch(n, noopHandler, {})),
        () => measured(s.raw, cpu.raw, n, () => rawBatch(noopPool, n, {})),
        () => measured(s.spin, cpu.spin, n, () => lN.batch(n, spinHandler, spinParams)),
        () => measured(s.spinRaw, cpu.spinRaw, n, () => rawBatch(spinPool, n, spinParams)),
        () => measured(s.out, undefined, nOut, () => lN.batch(nOut, outHandler, {})),
        () => measured(s.outRaw, undefined, nOut, () => rawBatch(outPool, nOut, {}, true)),
      ];
      for (const step of r % 2 ? steps.reverse() : steps) await step();
      // CPU scaling.
      const params = { rounds: hashRounds };
      s.l1.push(await l1.batch(shards, hashHandler, params));
      s.lN.push(await lN.batch(shards, hashHandler, params));
      s.r1.push(await rawBatch(hash1, shards, params));
      s.rN.push(await rawBatch(hashN, shards, params));
      const i = s.l1.length - 1;
      ctx.log(`round ${r + 1}/${rounds}: dispatch lading ${Math.round(s.lading[i])} vs raw Piscina ${Math.round(s.raw[i])} tasks/s; ` +
        `1 ms tasks ${Math.round(s.spin[i])} vs ${Math.round(s.spinRaw[i])}; with an output ${Math.round(s.out[i])} vs ${Math.round(s.outRaw[i])}; ` +
        `${shards} cpu shards: lading ${s.l1[i].toFixed(2)} s (1 thread) / ${s.lN[i].toFixed(2)} s (${cores}), raw ${s.r1[i].toFixed(2)} / ${s.rN[i].toFixed(2)} s`);
    }
  } finally {
    await Promise.all([l1.close(), lN.close(), noopPool.destroy(), spinPool.destroy(), outPool.destroy(), hash1.destroy(), hashN.destroy()]);
  }

  const ladingRate = median(s.lading);
  const rawRate = median(s.raw);
  const speedups = s.l1.map((t, i) => t / s.lN[i]);
  const rawSpeedups = s.r1.map((t, i) => t / s.rN[i]);
  const load = loadavg()[0];
  const machineSpeedup = median(rawSpeedups);
  const busyNote = machineSpeedup < 0.9 * cores
    ? [`caution: raw Piscina itself reached only ${machineSpeedup.toFixed(2)}× of ${cores}× on this run (1-min load average ${load.toFixed(1)} on ${cores} cores at the end): the machine was busy, so the fraction of linear measures the machine more than the runner; compare the lading speedup with the raw Piscina speedup row.`]
    : [];
  const spinRate = median(s.spin);
  const spinRawRate = median(s.spinRaw);
  const outRate = median(s.out);
  const outRawRate = median(s.outRaw);
  // Wall-clock cost per task beyond raw Piscina's, in thread-time (cores busy at once).
  const extraUs = (a, b) => Math.round(((1e6 / a) - (1e6 / b)) * cores);
  return {
    rows: [
      {
        name: `runner: dispatch of no-op shard tasks, ${cores} threads`, value: ladingRate, unit: 'tasks/s', higherIsBetter: true, samples: s.lading,
        baseline: { name: `raw Piscina pool.run (no-op), ${cores} threads`, value: rawRate, samples: s.raw }, target: '≥ 0.8×', targetRatio: 0.8,
      },
      {
        name: `runner: no-op shard task, CPU per task (all threads)`, value: median(cpu.lading), unit: 'µs', higherIsBetter: false, samples: cpu.lading,
        baseline: { name: `raw Piscina pool.run (no-op)`, value: median(cpu.raw), samples: cpu.raw },
      },
      {
        name: `runner: shard tasks of ~1 ms CPU, ${cores} threads`, value: spinRate, unit: 'tasks/s', higherIsBetter: true, samples: s.spin,
        baseline: { name: `raw Piscina pool.run (~1 ms CPU), ${cores} threads`, value: spinRawRate, samples: s.spinRaw }, target: '(small real tasks)',
      },
      {
        name: `runner: shard task of ~1 ms CPU, CPU per task (all threads)`, value: median(cpu.spin), unit: 'µs', higherIsBetter: false, samples: cpu.spin,
        baseline: { name: `raw Piscina pool.run (~1 ms CPU)`, value: median(cpu.spinRaw), samples: cpu.spinRaw },
      },
      {
        name: `runner: shard tasks writing one small output (+ commit marker), ${cores} threads`, value: outRate, unit: 'tasks/s', higherIsBetter: true, samples: s.out,
        baseline: { name: `raw Piscina writing the same output (same store), ${cores} threads`, value: outRawRate, samples: s.outRaw }, target: '(diagnostic)',
      },
      {
        name: `runner: CPU-bound shards, speedup 1 → ${cores} threads`, value: median(speedups), unit: '×', higherIsBetter: true, samples: speedups,
        baseline: { name: `linear (${cores}×)`, value: cores }, target: '≥ 0.9×', targetRatio: 0.9,
      },
      {
        name: `runner: CPU-bound shards, speedup 1 → ${cores} threads`, value: median(speedups), unit: '×', higherIsBetter: true, samples: speedups,
        baseline: { name: `raw Piscina speedup 1 → ${cores} threads (same work)`, value: median(rawSpeedups), samples: rawSpeedups },
      },
    ],
    meta: { 'runner tasks': n, 'runner output tasks': nOut, 'runner rounds': rounds, 'cpu shards': shards, 'load average': load.toFixed(1) },
    notes: [
      `runner dispatch: ${n} no-op tasks per round, published first with one publishMany (not timed), then timed until a warm RunnerWorker acked all; per task it leases and acks in SQLite, checks the task's shape, hands the descriptor to a Piscina thread, stats the commit marker there and runs the handler; short shards are batched (leased ahead, several per pool.run, acks grouped into fewer commits). A shard that writes no output commits no marker. Raw Piscina: pool.run of a no-op with the same task object. Median of ${rounds} interleaved rounds; ≈${extraUs(ladingRate, rawRate)} µs more thread-time per task than raw Piscina. CPU per task is this process's user+system time (main thread and pool threads) over the batch, steadier than throughput on a busy machine.`,
      `runner 1 ms tasks: the same with a ~1 ms busy loop in the handler (and in the raw function): ≈${extraUs(spinRate, spinRawRate)} µs more thread-time per task than raw Piscina.`,
      `runner outputs: ${nOut} tasks per round each writing one ~100-byte output with ctx.write (temp file, fsync, rename, directory fsync), then lading's commit marker (atomic too, without the two fsyncs: it comes after flushed outputs; one flushed write costs ${markerMs.toFixed(1)} ms on this disk); raw Piscina writes the same output with the same store library.`,
      ...busyNote,
      `runner scaling: ${shards} shards of sha256 over 4 MiB × ${hashRounds} per shard, one RunnerWorker with threads = 1 and threads = ${cores}; the ratio to linear is the fraction of linear speedup. The raw Piscina row shows what the machine itself gives for the same work.`,
    ],
  };
}
