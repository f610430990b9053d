#!/usr/bin/env node
// @ts-check
/**
 * HPC large-file job with lading: one big file cut into byte ranges, checksummed in parallel, combined.
 *
 *   node examples/hpc-large-file/run.mjs                                  # 64 MiB generated file, 8 MiB ranges
 *   node examples/hpc-large-file/run.mjs --size 1GiB --range 64MiB --kind binary
 *   node examples/hpc-large-file/run.mjs --input file:/lustre/proj/run42/snapshot.h5 --range 256MiB
 *
 * Each shard (./checksum-range.mjs) streams its range and writes sha256 + byte histogram + line count.
 * This script then combines the ranges — a tree hash (sha256 over the ranges' sha256s, like S3 multipart
 * or Glacier tree hashes), the summed histogram, the line count — and verifies everything against one
 * single-pass read of the whole file. It prints OK (exit 0) or what differs (exit 1).
 */
import { createHash } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { text as readText } from 'node:stream/consumers';
import { finished } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { formatBytes, openQueue, parseBytes } from '@lading/core';
import { openStore } from '@lading/storage';
import { parseJobSpec, splitObjectUri, startWorker, submit } from '@lading/runner';

const here = dirname(fileURLToPath(import.meta.url));
const HELP = `usage: node run.mjs [options]

  --input URI     one large object: file:/lustre/proj/big.bin, s3://bucket/big.bin (default: a generated file)
  --size SIZE     size of the generated file (default 64MiB)
  --kind KIND     generated content: text (lines of printable characters) or binary (default text)
  --range SIZE    bytes per shard (default 8MiB)
  --out DIR       working directory: generated file, queue, job records, outputs (default examples/.work/hpc-large-file)
  --output URI    output prefix (default file:<out>/ranges/)
  --threads N     worker threads in this process (default: the cores, ${availableParallelism()})
  --queue URI     queue (default: $LADING_QUEUE, else sqlite:<out>/queue.db)
  --store URI     store for job records (default: $LADING_STORE, else file:<out>/store)
  --no-worker     only submit and wait: workers run elsewhere (lading worker, srun lading worker)
  --json          print the summary as JSON on stdout
`;
const { values: opt } = parseArgs({
  options: {
    input: { type: 'string' },
    size: { type: 'string', default: '64MiB' },
    kind: { type: 'string', default: 'text' },
    range: { type: 'string', default: '8MiB' },
    out: { type: 'string' },
    output: { type: 'string' },
    threads: { type: 'string' },
    queue: { type: 'string' },
    store: { type: 'string' },
    'no-worker': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
if (opt.kind !== 'text' && opt.kind !== 'binary') throw new Error(`--kind is text or binary, not ${opt.kind}`);
const say = (/** @type {string} */ line = '') => (opt.json ? process.stderr : process.stdout).write(`${line}\n`);

const out = resolve(opt.out ?? join(here, '..', '.work', 'hpc-large-file'));
mkdirSync(out, { recursive: true });
const rangeSize = parseBytes(opt.range, '--range');

// 1. The input: given, or generated (kept and reused: the same file is the same job, a rerun does no work).
let input = opt.input;
if (!input) {
  const size = parseBytes(opt.size, '--size');
  const file = join(out, `big-${size}-${opt.kind}.bin`);
  if (!existsSync(file) || statSync(file).size !== size) {
    const t = Date.now();
    await generate(file, size, opt.kind);
    say(`generated ${file} (${formatBytes(size)}, ${opt.kind}) in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  }
  input = `file:${file}`;
}
const output = opt.output ?? `file:${join(out, 'ranges')}/`;

// 2. Submit: fixed byte ranges, no newline alignment (every byte belongs to exactly one range).
const queueUri = opt.queue ?? process.env.LADING_QUEUE ?? `sqlite:${join(out, 'queue.db')}`;
const queue = await openQueue({ uri: queueUri });
const store = await openStore(opt.store ?? process.env.LADING_STORE ?? `file:${join(out, 'store')}`);
const spec = parseJobSpec({
  name: 'checksum',
  handler: new URL('./checksum-range.mjs', import.meta.url).href,
  inputs: [input],
  sharding: { by: 'bytes', size: rangeSize, align: 'none' },
  output,
  retries: { maxAttempts: 3, backoff: { initialMs: 500, multiplier: 2, maxMs: 10_000, jitter: 0.2 } },
  timeout: '1h',
});
const started = Date.now();
const job = await submit(spec, { queue, store });
if (job.record.inputs !== 1) throw new Error(`--input must name one object; ${input} matched ${job.record.inputs}`);
say(`submitted job ${job.id}: ${job.record.shards} ranges of ${formatBytes(rangeSize)} over ${input} (${formatBytes(job.record.bytes)})`);

// 3. Workers: here, in this process, unless --no-worker (then `lading worker` elsewhere does the work).
const worker = opt['no-worker'] ? undefined : startWorker({ queue, threads: opt.threads ? Number(opt.threads) : availableParallelism() });
worker?.on('failed', (e) => say(`  range ${e.shard.slice(0, 8)} failed on attempt ${e.attempt + 1}: ${e.error?.message ?? e.error}`));
/** Bytes done per shard in flight, from the handlers' ctx.progress. */
const inFlight = new Map();
worker?.on('progress', (e) => inFlight.set(e.shard, e.done));
worker?.on('done', (e) => inFlight.delete(e.shard));

let lastPct = -100;
const final = await job.wait({
  pollMs: 200,
  onProgress: (s) => {
    const bytesDone = Math.min(job.record.bytes, s.done * rangeSize + [...inFlight.values()].reduce((a, b) => a + b, 0));
    const pct = s.finished ? 100 : Math.floor((100 * bytesDone) / Math.max(1, job.record.bytes));
    const secs = (Date.now() - started) / 1000;
    const line = `checksum [${'#'.repeat(Math.round(pct / 4)).padEnd(25, '-')}] ${String(pct).padStart(3)}%  ${s.done}/${s.total} ranges  ${formatBytes(bytesDone / Math.max(secs, 0.001))}/s${s.hospital ? `  ${s.hospital} in hospital` : ''}`;
    if (process.stderr.isTTY) process.stderr.write(`\r${line}\x1b[K${s.finished ? '\n' : ''}`);
    else if (pct !== lastPct && (pct === 100 || pct - lastPct >= 25)) {
      lastPct = pct;
      process.stderr.write(`${line}\n`);
    }
  },
});
const jobSeconds = (Date.now() - started) / 1000;
await worker?.close();
await store.close();
if (!final.ok) {
  say(`FAILED: ${final.hospital} range(s) in the error hospital:`);
  for (const r of await queue.hospital.list({ job: job.id })) say(`  ${r.hid}  ${r.reason}  ${r.errors.at(-1)?.message ?? ''}`);
  say(`inspect: lading hospital list --queue ${queueUri}`);
  await queue.close();
  process.exit(1);
}
await queue.close();

// 4. Combine the per-range results.
const outStore = await openStore(output);
/** @type {{ start: number, end: number, bytes: number, sha256: string, lines: number, histogram: number[], etag: string }[]} */
const ranges = [];
for await (const o of outStore.list(`${job.id}/`)) {
  if (/\/range-\d+\.json$/.test(o.key)) ranges.push(JSON.parse(await readText(await outStore.read(o.key))));
}
await outStore.close();
ranges.sort((a, b) => a.start - b.start);
const combined = { bytes: 0, lines: 0, histogram: new Array(256).fill(0), tree: createHash('sha256') };
const problems = [];
let expectStart = 0;
for (const r of ranges) {
  if (r.start !== expectStart) problems.push(`gap or overlap at byte ${expectStart} (next range starts at ${r.start})`);
  expectStart = r.end;
  combined.bytes += r.bytes;
  combined.lines += r.lines;
  for (let b = 0; b < 256; b++) combined.histogram[b] += r.histogram[b];
  combined.tree.update(Buffer.from(r.sha256, 'hex'));
}
if (ranges.length !== job.record.shards) problems.push(`${ranges.length} range results for ${job.record.shards} shards`);
const treeSha256 = combined.tree.digest('hex');

// 5. Verify: one sequential pass over the whole file, computing the same things (and the plain sha256).
const t1 = Date.now();
const { storeUri, key } = splitObjectUri(input);
const inStore = await openStore(storeUri);
const single = { bytes: 0, lines: 0, histogram: new Array(256).fill(0), whole: createHash('sha256'), tree: createHash('sha256'), rangeHashes: /** @type {string[]} */ ([]) };
let rangeHash = createHash('sha256');
let inRange = 0;
for await (const chunk of /** @type {AsyncIterable<Buffer>} */ (await inStore.read(key))) {
  single.whole.update(chunk);
  const h = new Float64Array(256);
  for (let i = 0; i < chunk.length; i++) h[chunk[i]]++;
  for (let b = 0; b < 256; b++) single.histogram[b] += h[b];
  single.bytes += chunk.length;
  // The same range cuts as the job, to rebuild the tree hash.
  let pos = 0;
  while (pos < chunk.length) {
    const take = Math.min(chunk.length - pos, rangeSize - inRange);
    rangeHash.update(chunk.subarray(pos, pos + take));
    pos += take;
    inRange += take;
    if (inRange === rangeSize) {
      single.rangeHashes.push(rangeHash.digest('hex'));
      rangeHash = createHash('sha256');
      inRange = 0;
    }
  }
}
if (inRange > 0) single.rangeHashes.push(rangeHash.digest('hex'));
await inStore.close();
for (const h of single.rangeHashes) single.tree.update(Buffer.from(h, 'hex'));
single.lines = single.histogram[10];
const singleSeconds = (Date.now() - t1) / 1000;
const singleTree = single.tree.digest('hex');

if (combined.bytes !== single.bytes) problems.push(`bytes: ranges ${combined.bytes}, file ${single.bytes}`);
if (combined.lines !== single.lines) problems.push(`lines: ranges ${combined.lines}, file ${single.lines}`);
const badBytes = combined.histogram.map((n, b) => (n === single.histogram[b] ? -1 : b)).filter((b) => b >= 0);
if (badBytes.length) problems.push(`histogram differs for ${badBytes.length} byte value(s), e.g. 0x${badBytes[0].toString(16)}`);
single.rangeHashes.forEach((h, i) => {
  if (ranges[i]?.sha256 !== h) problems.push(`range ${i} (bytes ${i * rangeSize}-): sha256 ${ranges[i]?.sha256 ?? 'missing'} != ${h}`);
});
if (treeSha256 !== singleTree) problems.push(`tree sha256 ${treeSha256} != ${singleTree}`);

const ok = problems.length === 0;
const summary = {
  ok,
  job: job.id,
  input,
  bytes: single.bytes,
  ranges: ranges.length,
  rangeSize,
  lines: combined.lines,
  treeSha256,
  sha256: single.whole.digest('hex'),
  distinctByteValues: combined.histogram.filter((n) => n > 0).length,
  jobSeconds,
  singlePassSeconds: singleSeconds,
  problems,
};
if (opt.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
else {
  say(`ranges       ${ranges.length} x ${formatBytes(rangeSize)} = ${formatBytes(single.bytes)} in ${jobSeconds.toFixed(2)} s (${formatBytes(single.bytes / Math.max(jobSeconds, 0.001))}/s)`);
  say(`lines        ${combined.lines}`);
  say(`byte values  ${summary.distinctByteValues} distinct`);
  say(`tree sha256  ${treeSha256}  (sha256 over the ${ranges.length} range sha256s)`);
  say(`file sha256  ${summary.sha256}  (single pass, ${singleSeconds.toFixed(2)} s)`);
  for (const p of problems) say(`MISMATCH: ${p}`);
  say(ok ? 'OK: every range, the tree hash, the histogram and the line count match a single pass over the file' : 'FAILED');
}
process.exit(ok ? 0 : 1);

/**
 * Write `size` random bytes: printable lines (text) or raw bytes (binary), 1 MiB at a time, atomically.
 * @param {string} file @param {number} size @param {'text' | 'binary'} kind
 */
async function generate(file, size, kind) {
  const tmp = `${file}.tmp-${process.pid}`;
  const ws = createWriteStream(tmp);
  const printable = Buffer.from(Array.from({ length: 95 }, (_, i) => 32 + i));
  for (let done = 0; done < size; ) {
    const n = Math.min(1 << 20, size - done);
    const buf = randomBytes(n);
    if (kind === 'text') {
      for (let i = 0; i < n; i++) buf[i] = buf[i] < 3 ? 10 : printable[buf[i] % 95]; // ~1 line per 85 bytes
    }
    done += n;
    if (!ws.write(buf)) await new Promise((r) => ws.once('drain', () => r(undefined)));
  }
  ws.end();
  await finished(ws);
  renameSync(tmp, file);
}
