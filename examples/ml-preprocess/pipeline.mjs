#!/usr/bin/env node
// @ts-check
/**
 * ML preprocessing with lading: clean + tokenize a JSONL text corpus into output shards.
 *
 *   node examples/ml-preprocess/pipeline.mjs                      # sample corpus, everything local
 *   node examples/ml-preprocess/pipeline.mjs --input 's3://bucket/corpus/**\/*.jsonl' --output s3://bucket/tok/
 *   LADING_QUEUE=kafka://k1:9092 node examples/ml-preprocess/pipeline.mjs --no-worker --input ... --output ...
 *
 * Steps: (1) make a sample corpus when no --input is given, (2) submit a job: the inputs cut into
 * newline-aligned byte ranges, one small task per range on the queue, (3) run a worker in this process
 * (threads = cores; skip with --no-worker when workers run elsewhere, e.g. `srun lading worker`),
 * (4) wait with a progress line, (5) read the outputs and print a summary.
 * The per-shard work is in ./tokenize.mjs. `--help` lists the options.
 */
import { mkdirSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { text as readText } from 'node:stream/consumers';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openQueue, formatBytes } from '@lading/core';
import { openStore } from '@lading/storage';
import { parseJobSpec, startWorker, submit } from '@lading/runner';
import { contentHash, normalise } from './tokenize.mjs';

const here = dirname(fileURLToPath(import.meta.url));

const HELP = `usage: node pipeline.mjs [options]

  --input URI        input objects, globs allowed (repeatable), e.g. 's3://bucket/corpus/**/*.jsonl',
                     file:/lustre/proj/corpus/*.jsonl. Default: a generated sample corpus in --out
  --output URI       output prefix (default: file:<out>/tokens-<corpus>/)
  --out DIR          working directory: sample corpus, queue, job records, outputs
                     (default: examples/.work/ml-preprocess)
  --records N        sample corpus lines (default 20000)
  --files N          sample corpus files (default 4)
  --shard-size SIZE  bytes per shard, newline-aligned (default 256KiB; 64MiB-1GiB for real corpora)
  --threads N        worker threads in this process (default: the cores, ${availableParallelism()})
  --checkpoint-every N  records between checkpoints (default 1000)
  --queue URI        queue (default: $LADING_QUEUE, else sqlite:<out>/queue.db)
  --store URI        store for job records (default: $LADING_STORE, else file:<out>/store)
  --no-worker        only submit and wait: workers run elsewhere (lading worker, srun lading worker)
  --no-verify        do not read the .jsonl outputs back to count their records
  --crash-once       make shard 0 fail once after its first checkpoint, to watch it resume
  --json             print the summary as JSON on stdout (progress stays on stderr)
  --generate-only    only make the sample corpus and print its input URI (for lading submit, job.yaml)
`;

const { values: opt } = parseArgs({
  options: {
    input: { type: 'string', multiple: true },
    output: { type: 'string' },
    out: { type: 'string' },
    records: { type: 'string', default: '20000' },
    files: { type: 'string', default: '4' },
    'shard-size': { type: 'string', default: '256KiB' },
    threads: { type: 'string' },
    'checkpoint-every': { type: 'string', default: '1000' },
    queue: { type: 'string' },
    store: { type: 'string' },
    'no-worker': { type: 'boolean', default: false },
    'no-verify': { type: 'boolean', default: false },
    'crash-once': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    'generate-only': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const started = Date.now();
const out = resolve(opt.out ?? join(here, '..', '.work', 'ml-preprocess'));
mkdirSync(out, { recursive: true });
/** Human-readable lines: stdout normally, stderr with --json (stdout is the JSON summary then). */
const say = (/** @type {string} */ line = '') => (opt.json ? process.stderr : process.stdout).write(`${line}\n`);

// 1. The corpus: given, or a generated sample with known numbers of malformed lines and duplicates.
let inputs = opt.input ?? [];
/** @type {Planted | undefined} */
let planted;
let corpusName = 'input';
if (inputs.length === 0) {
  const records = Number(opt.records);
  const files = Number(opt.files);
  corpusName = `corpus-${records}x${files}`;
  const dir = join(out, corpusName);
  planted = makeSampleCorpus(dir, records, files);
  inputs = [`file:${dir}/*.jsonl`];
  if (opt['generate-only']) {
    process.stdout.write(`${opt.json ? JSON.stringify({ input: inputs[0], ...planted }) : inputs[0]}\n`);
    process.exit(0);
  }
  say(`sample corpus: ${planted.lines} lines in ${files} files under ${dir} (${planted.malformed} malformed, ${planted.empty} empty, ${planted.duplicates} near-duplicates planted)`);
}
const output = opt.output ?? `file:${join(out, `tokens-${corpusName}`)}/`;

// 2. Submit: list the inputs, cut shards, publish one task per shard. Same spec + same bytes = same job.
const queueUri = opt.queue ?? process.env.LADING_QUEUE ?? `sqlite:${join(out, 'queue.db')}`;
const queue = await openQueue({ uri: queueUri });
const store = await openStore(opt.store ?? process.env.LADING_STORE ?? `file:${join(out, 'store')}`);
const spec = parseJobSpec({
  name: 'tokenize',
  handler: new URL('./tokenize.mjs', import.meta.url).href,
  inputs,
  sharding: { by: 'bytes', size: opt['shard-size'], align: 'newline' },
  output,
  params: { checkpointEvery: Number(opt['checkpoint-every']), textField: 'text', ...(opt['crash-once'] ? { crashOnce: true } : {}) },
  retries: { maxAttempts: 3, backoff: { initialMs: 200, multiplier: 2, maxMs: 5000, jitter: 0.2 } },
  timeout: '30m',
});
const job = await submit(spec, { queue, store });
say(`submitted job ${job.id}: ${job.record.shards} shards over ${job.record.inputs} input file(s), ${formatBytes(job.record.bytes)}`);

// 3. A worker in this process: Piscina threads run tokenize.mjs, one shard each.
const worker = opt['no-worker'] ? undefined : startWorker({ queue, threads: opt.threads ? Number(opt.threads) : availableParallelism() });
worker?.on('failed', (e) => say(`\n  shard ${e.shard.slice(0, 8)} failed on attempt ${e.attempt + 1}: ${e.error?.message ?? e.error}`));
worker?.on('log', (e) => e.level !== 'info' || /resuming/.test(e.message) ? say(`\n  shard ${e.shard.slice(0, 8)}: ${e.message}`) : undefined);
if (!worker) say('no worker in this process (--no-worker): start some with `lading worker` or `srun lading worker`');

// 4. Wait, with a progress line.
let lastPct = -100;
const final = await job.wait({ pollMs: 200, onProgress: progressLine });
if (process.stderr.isTTY) process.stderr.write('\n');
await worker?.close();

let exitCode = 0;
if (!final.ok) {
  exitCode = 1;
  say(`job ${job.id}: ${final.hospital} shard(s) in the error hospital:`);
  for (const r of await queue.hospital.list({ job: job.id })) say(`  ${r.hid}  ${r.reason}  ${r.errors.at(-1)?.message ?? ''}`);
  say(`inspect: lading hospital list --queue ${queueUri}; after a fix: lading hospital retry --job ${job.id}`);
}
await queue.close();
await store.close();

// 5. Read the outputs: per-shard stats, and (unless --no-verify) the token files themselves.
const outStore = await openStore(output);
/** @type {Record<string, number>} */
const totals = { recordsIn: 0, malformed: 0, empty: 0, duplicates: 0, recordsOut: 0, tokens: 0 };
const vocab = new Set();
let shards = 0;
let resumed = 0;
let outputBytes = 0;
let linesRead = 0;
let firstRecord = '';
for await (const o of outStore.list('')) {
  if (o.key.includes('/')) continue; // _lading/ markers, _parts/
  outputBytes += o.size;
  if (o.key.endsWith('.stats.json')) {
    const s = JSON.parse(await readText(await outStore.read(o.key)));
    shards++;
    if (s.resumedFrom !== null) resumed++;
    for (const k of Object.keys(totals)) totals[k] += s[k];
    for (const t of Object.keys(s.vocab)) vocab.add(t);
  } else if (o.key.endsWith('.jsonl') && !opt['no-verify']) {
    const body = await readText(await outStore.read(o.key));
    const lines = body.split('\n').filter(Boolean);
    linesRead += lines.length;
    if (!firstRecord && lines[0]) firstRecord = lines[0];
  }
}
await outStore.close();

const seconds = (Date.now() - started) / 1000;
const summary = {
  job: job.id,
  ok: final.ok,
  shards: { total: job.record.shards, done: final.done, hospital: final.hospital, resumed },
  inputs: job.record.inputs,
  inputBytes: job.record.bytes,
  ...totals,
  vocabSize: vocab.size,
  outputBytes,
  output,
  verified: opt['no-verify'] ? null : linesRead === totals.recordsOut,
  planted: planted ?? null,
  seconds,
};
if (opt.json) {
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
} else {
  say('');
  say(`tokenize: ${final.done}/${job.record.shards} shards in ${seconds.toFixed(1)} s${resumed ? ` (${resumed} resumed from a checkpoint)` : ''}`);
  say(`  records in    ${totals.recordsIn}`);
  say(`  malformed     ${totals.malformed}  (dropped)`);
  say(`  empty         ${totals.empty}  (dropped)`);
  say(`  duplicates    ${totals.duplicates}  (dropped; exact after normalisation, within each shard)`);
  say(`  records out   ${totals.recordsOut}${summary.verified === null ? '' : summary.verified ? '  (read back from the outputs)' : `  MISMATCH: ${linesRead} lines in the outputs`}`);
  say(`  tokens        ${totals.tokens}`);
  say(`  vocab size    ${vocab.size}`);
  say(`  outputs       ${output}  (${shards} x <shard>.jsonl + <shard>.stats.json, ${formatBytes(outputBytes)})`);
  if (firstRecord) say(`  first record  ${firstRecord.length > 110 ? `${firstRecord.slice(0, 107)}...` : firstRecord}`);
}
if (summary.verified === false) exitCode = 1;
process.exit(exitCode);

/** @param {import('@lading/runner').JobStatus} s */
function progressLine(s) {
  const pct = s.total ? Math.floor((100 * (s.done + s.hospital)) / s.total) : 100;
  const width = 24;
  const filled = Math.round((pct / 100) * width);
  const line = `tokenize [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(pct).padStart(3)}%  ${s.done}/${s.total} shards  ${s.running} running${s.retrying ? `  ${s.retrying} retrying` : ''}${s.hospital ? `  ${s.hospital} in hospital` : ''}${s.etaSeconds !== undefined && !s.finished ? `  eta ${Math.ceil(s.etaSeconds)} s` : ''}`;
  if (process.stderr.isTTY) process.stderr.write(`\r${line}\x1b[K`);
  else if (pct !== lastPct && (pct === 100 || pct - lastPct >= 25)) {
    lastPct = pct;
    process.stderr.write(`${line}\n`);
  }
}

/**
 * @typedef {object} Planted
 * @property {number} lines       lines written
 * @property {number} malformed   lines that are not a JSON object with a string "text"
 * @property {number} empty       records whose text is empty after normalisation
 * @property {number} duplicates  records whose normalised text repeats an earlier one (1-3 lines later)
 * @property {number} unique      the rest
 */

/**
 * A deterministic sample corpus: `lines` JSONL lines over `files` files, with messy text (case, extra
 * whitespace, control characters, full-width letters), malformed lines, empty texts and near-duplicates.
 * Kept in `dir` and reused when it is already there (then the job is the same, and a rerun does no work).
 * @param {string} dir @param {number} lines @param {number} files
 * @returns {Planted}
 */
function makeSampleCorpus(dir, lines, files) {
  const manifest = join(dir, 'manifest.json');
  if (existsSync(manifest)) return JSON.parse(readFileSync(manifest, 'utf8'));
  mkdirSync(dir, { recursive: true });
  let seed = 42;
  const rand = () => {
    // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = (/** @type {any[]} */ a) => a[Math.floor(rand() * a.length)];
  const syllables = ['ka', 'lo', 'mi', 'ra', 'te', 'su', 'no', 'vi', 'de', 'pa', 'shi', 'qu', 'an', 'el', 'or', 'um', 'tri', 'zo'];
  const common = ['the', 'a', 'of', 'and', 'to', 'in', 'is', 'that', 'for', 'on', 'with', "don't", 'café', 'naïve', 'data', 'model'];
  const word = () => (rand() < 0.45 ? pick(common) : Array.from({ length: 1 + Math.floor(rand() * 3) }, () => pick(syllables)).join(''));
  const sentence = () => {
    const n = 6 + Math.floor(rand() * 34);
    const words = Array.from({ length: n }, (_, i) => {
      let w = word();
      if (i === 0 || rand() < 0.05) w = w[0].toUpperCase() + w.slice(1);
      if (rand() < 0.03) w = w.toUpperCase();
      if (rand() < 0.01) w = [...w].map((c) => (c >= 'a' && c <= 'z' ? String.fromCharCode(c.charCodeAt(0) + 0xfee0) : c)).join(''); // full-width
      if (rand() < 0.08) w += pick([',', ';', ':', ' -', ' (x)', '!']);
      return w;
    });
    let s = words.join(' ') + pick(['.', '.', '.', '?', '!']);
    if (rand() < 0.05) s = s.replace(' ', pick(['  ', '\t', ' \u0007', '\u200b ', ' \r\n ']));
    return s;
  };
  const planted = { lines, malformed: 0, empty: 0, duplicates: 0, unique: 0 };
  const seen = new Set();
  /** @type {{ due: number, file: number, text: string }[]} */
  const pendingDups = [];
  const out = Array.from({ length: files }, () => /** @type {string[]} */ ([]));
  for (let i = 0; i < lines; i++) {
    const file = Math.min(files - 1, Math.floor((i * files) / lines));
    const id = `doc-${String(i).padStart(7, '0')}`;
    const r = rand();
    let line;
    // A duplicate lands 1-3 lines after its original, in the same file (or is not planted).
    while (pendingDups.length && pendingDups[0].file !== file) pendingDups.shift();
    const dup = pendingDups.length && pendingDups[0].due <= i ? pendingDups.shift() : undefined;
    if (dup) {
      // The same text again, re-crawled: other id, other case and spacing; equal after normalisation.
      line = JSON.stringify({ id, text: `  ${rand() < 0.5 ? dup.text.toUpperCase() : dup.text.replace(/ /g, '   ')} `, source: 'recrawl' });
      planted.duplicates++;
    } else if (r < 0.012) {
      line = pick([
        () => JSON.stringify({ id, text: sentence() }).slice(0, 20 + Math.floor(rand() * 20)), // truncated
        () => `<html><body>not json ${i}</body></html>`,
        () => JSON.stringify({ id, body: sentence() }), // no "text"
        () => JSON.stringify({ id, text: 17 }),
        () => JSON.stringify([id, sentence()]),
      ])();
      planted.malformed++;
    } else if (r < 0.018) {
      line = JSON.stringify({ id, text: pick(['', '   ', '\t\u0007 \u200b', '\n']) });
      planted.empty++;
    } else {
      let text = sentence();
      while (seen.has(contentHash(normalise(text)))) text = sentence();
      seen.add(contentHash(normalise(text)));
      line = JSON.stringify({ id, text, source: pick(['web', 'books', 'forum']) });
      planted.unique++;
      if (r > 0.97) pendingDups.push({ due: i + 1 + Math.floor(rand() * 3), file, text });
    }
    out[file].push(line);
  }
  // Duplicates still pending at the end of the corpus are simply not planted.
  for (let f = 0; f < files; f++) writeFileSync(join(dir, `part-${String(f).padStart(4, '0')}.jsonl`), `${out[f].join('\n')}\n`);
  writeFileSync(manifest, JSON.stringify(planted, null, 2));
  return planted;
}
