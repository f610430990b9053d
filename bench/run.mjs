#!/usr/bin/env node
// lading benchmarks: `node bench/run.mjs [name...] [--json] [--md]` (root: `pnpm bench [name...]`).
// Every benchmark measures lading beside its baseline(s) in the same run on the same machine, and
// reports ratios: machines are noisy, so an absolute number alone means little.
//
// Adding a benchmark: write bench/<name>.mjs exporting `async function run(ctx)` that returns rows
//   { name, value, unit, baseline: { name, value }, higherIsBetter, samples?, target?, note?, skipped? }
// and add one line to BENCHMARKS below. `ctx` gives: name, quick, root, workDir (scratch, removed at the
// end), log(msg) (stderr), size(envName, normal, quick), importPackage('core'|...) (the built dist/,
// rebuilt with tsc -b when stale), redis() (a shared local redis-server: { host, port, version } or { skip }).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, ensureBuilt } from './lib/build.mjs';
import { ensureRedisServer, startRedis } from './lib/redis.mjs';

const BENCHMARKS = {
  queue: () => import('./queue.mjs'),
  storage: () => import('./storage.mjs'),
  runner: () => import('./runner.mjs'),
  kafka: () => import('./kafka.mjs'),
};

const USAGE = `usage: node bench/run.mjs [name...] [--json] [--md]
  (from the root: npx -y pnpm@10 bench [name...])

  name      one of: ${Object.keys(BENCHMARKS).join(', ')} (default: all)
  --json    print the results as JSON (nothing else on stdout)
  --md      also print a Markdown table with date, Node, CPU and cores (for the README)

  env LADING_BENCH_QUICK=1     small sizes for a smoke run (seconds, numbers are noisier)
      LADING_BENCH_N, LADING_BENCH_ROUNDS   override message count / rounds
      LADING_BENCH_BUDGET_S      time budget of a benchmark: fewer rounds (not fewer than 3) when busy
      LADING_BENCH_NO_INSTALL=1  never apt-get install redis-server (the BullMQ baseline is skipped)
      LADING_BENCH_REDIS_SERVER=path   use this redis-server binary instead of the one on PATH
      LADING_BENCH_KEEP=1        keep the work directory (bench/.work/...) for inspection
      LADING_BENCH_CORE=path/to/dist/index.js   measure another build of @lading/core
                                 (e.g. a prototype of a driver change) against the same baselines

A ratio above 1× means lading does better than the baseline (for "higher is better" rows
value/baseline, otherwise baseline/value). Values are medians of interleaved rounds.`;

const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);

function parseArgs(argv) {
  const opts = { names: [], json: false, md: false };
  for (const a of argv) {
    if (a === '--json') opts.json = true;
    else if (a === '--md') opts.md = true;
    else if (a === '-h' || a === '--help') { console.log(USAGE); process.exit(0); }
    else if (a.startsWith('-')) { console.error(`unknown option ${a}\n\n${USAGE}`); process.exit(2); }
    else if (!(a in BENCHMARKS)) { console.error(`unknown benchmark "${a}": choose from ${Object.keys(BENCHMARKS).join(', ')}`); process.exit(2); }
    else opts.names.push(a);
  }
  if (opts.names.length === 0) opts.names = Object.keys(BENCHMARKS);
  return opts;
}

// ---- shared services ---------------------------------------------------------------------------

const WORK_ROOT = join(ROOT, 'bench', '.work');
const cleanups = [];
let redisPromise;

function makeContext(name, runDir) {
  mkdirSync(join(runDir, name), { recursive: true });
  const quick = process.env.LADING_BENCH_QUICK === '1';
  return {
    name,
    quick,
    root: ROOT,
    /** This benchmark's scratch directory (removed at the end unless LADING_BENCH_KEEP=1). */
    workDir: join(runDir, name),
    log: (msg) => log(`${name}: ${msg}`),
    /** Integer setting: env var, else the quick or the default size. */
    size(envName, normal, quickValue) {
      const v = process.env[envName];
      if (v !== undefined && v !== '') {
        const n = Number(v);
        if (!Number.isInteger(n) || n <= 0) throw new Error(`${envName} must be a positive integer, got ${JSON.stringify(v)}`);
        return n;
      }
      return quick ? quickValue : normal;
    },
    /** Import a workspace package from its built dist/ (built first with tsc -b if stale). */
    async importPackage(pkg) {
      const override = process.env[`LADING_BENCH_${pkg.toUpperCase()}`];
      if (override) {
        log(`${name}: measuring ${override} instead of packages/${pkg} (LADING_BENCH_${pkg.toUpperCase()})`);
        return import(pathToFileURL(resolve(override)).href);
      }
      return import(pathToFileURL(ensureBuilt(pkg, log)).href);
    },
    /** Local redis-server shared by all benchmarks of this run: `{ host, port, version }` or `{ skip }`. */
    redis() {
      redisPromise ??= (async () => {
        const found = ensureRedisServer(log);
        if (found.skip) return { skip: found.skip };
        try {
          const server = await startRedis(found.path, join(runDir, 'redis'), log);
          cleanups.push(() => server.stop());
          return server;
        } catch (e) {
          return { skip: e.message };
        }
      })();
      return redisPromise;
    },
  };
}

// ---- output ------------------------------------------------------------------------------------

function ratioOf(row) {
  const b = row.baseline?.value;
  if (typeof b !== 'number' || !(b > 0) || !(row.value > 0)) return undefined;
  return row.higherIsBetter === false ? b / row.value : row.value / b;
}

function fmtNum(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString('en-US');
  return Number(v.toPrecision(3)).toString();
}

function fmtRatio(r) {
  return r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function textLine(row) {
  const r = ratioOf(row);
  const tail = r !== undefined ? `${fmtRatio(r)}× ${row.baseline.name}` : `skipped ${row.baseline?.name ?? 'baseline'}: ${row.skipped ?? 'no value'}`;
  return `${row.name}: ${fmtNum(row.value)} ${row.unit} (${tail})`;
}

function checkRow(bench, row) {
  const ok = row && typeof row.name === 'string' && typeof row.value === 'number' && typeof row.unit === 'string'
    && row.baseline && typeof row.baseline.name === 'string' && (typeof row.baseline.value === 'number' || row.baseline.value === null)
    && typeof row.higherIsBetter === 'boolean';
  if (!ok) throw new Error(`benchmark ${bench} returned a malformed row: ${JSON.stringify(row)}`);
}

function machine() {
  const list = cpus();
  return {
    date: new Date().toISOString().slice(0, 10),
    node: process.version,
    cpu: (list[0]?.model ?? 'unknown').trim(),
    cores: list.length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    platform: `${process.platform} ${process.arch}`,
  };
}

function spread(samples) {
  if (!Array.isArray(samples) || samples.length < 2) return '';
  const lo = Math.min(...samples), hi = Math.max(...samples);
  return `${fmtNum(lo)}–${fmtNum(hi)}`;
}

function markdown(results, m, meta) {
  const lines = [
    `Date ${m.date} · Node ${m.node} · ${m.cpu} · ${m.cores} cores · ${m.memGiB} GiB · ${m.platform}${meta.length ? ` · ${meta.join(' · ')}` : ''}`,
    '',
    '| Benchmark | lading | Baseline | Baseline value | Ratio | Target | lading rounds (min–max) |',
    '|---|---:|---|---:|---:|:---:|---:|',
  ];
  for (const { rows } of results) {
    for (const row of rows) {
      const r = ratioOf(row);
      const base = typeof row.baseline.value === 'number' ? `${fmtNum(row.baseline.value)} ${row.unit}` : `skipped: ${row.skipped ?? '—'}`;
      const target = row.target ? `${row.target}${r !== undefined && row.targetRatio !== undefined ? (r >= row.targetRatio ? ' ✓' : ' ✗') : ''}` : '';
      lines.push(`| ${row.name} | ${fmtNum(row.value)} ${row.unit} | ${row.baseline.name} | ${base} | ${r !== undefined ? `${fmtRatio(r)}×` : '—'} | ${target} | ${spread(row.samples)} |`);
    }
  }
  const notes = results.flatMap((r) => r.notes ?? []);
  if (notes.length) lines.push('', ...notes.map((n) => `- ${n}`));
  return lines.join('\n');
}

// ---- main --------------------------------------------------------------------------------------

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  mkdirSync(WORK_ROOT, { recursive: true });
  const runDir = mkdtempSync(join(WORK_ROOT, 'run-'));
  cleanups.push(() => { if (process.env.LADING_BENCH_KEEP !== '1') rmSync(runDir, { recursive: true, force: true }); else log(`kept ${runDir}`); });
  let stopping = false;
  const cleanup = async () => {
    if (stopping) return;
    stopping = true;
    for (const fn of cleanups.reverse()) { try { await fn(); } catch (e) { log(`cleanup: ${e.message}`); } }
  };
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { log(`${sig}: cleaning up`); void cleanup().finally(() => process.exit(130)); });

  const m = machine();
  const results = [];
  let failed = false;
  try {
    for (const name of opts.names) {
      const t0 = Date.now();
      const mod = await BENCHMARKS[name]();
      const ctx = makeContext(name, runDir);
      log(`${name}: start`);
      try {
        const out = await mod.run(ctx);
        const rows = Array.isArray(out) ? out : out.rows;
        for (const row of rows) checkRow(name, row);
        results.push({ name, rows, notes: Array.isArray(out) ? [] : out.notes ?? [], meta: Array.isArray(out) ? {} : out.meta ?? {}, seconds: (Date.now() - t0) / 1000 });
        log(`${name}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        if (!opts.json) for (const row of rows) console.log(textLine(row));
      } catch (e) {
        failed = true;
        log(`${name}: FAILED: ${e.stack ?? e}`);
      }
    }
  } finally {
    await cleanup();
  }
  const meta = results.flatMap((r) => Object.entries(r.meta).map(([k, v]) => `${k} ${v}`));
  if (opts.json) {
    const json = { machine: m, results: results.map((r) => ({ ...r, rows: r.rows.map((row) => ({ ...row, ratio: ratioOf(row) ?? null })) })) };
    if (opts.md) json.markdown = markdown(results, m, meta);
    console.log(JSON.stringify(json, null, 2));
  } else if (opts.md) {
    console.log(`\n${markdown(results, m, meta)}`);
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
