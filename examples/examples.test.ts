/**
 * The examples, run as a user runs them: each as a real child process, on small data.
 * (The Slurm script runs under bash with a stand-in `srun`, the embedded SQLite queue and a local store.)
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { loadJobSpec } from '@lading/runner';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const EXAMPLES = fileURLToPath(new URL('.', import.meta.url));
const CLI = join(ROOT, 'packages', 'cli', 'dist', 'bin.js');
const LOCAL_BIN = join(EXAMPLES, 'slurm', 'local'); // stand-in srun + a `lading` wrapper around the built CLI

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(name: string): string {
  const d = mkdtempSync(join(tmpdir(), `lading-example-${name}-`));
  dirs.push(d);
  return d;
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a command to its end (or kill it after timeoutMs); `onStdout` sees the output so far as it arrives. */
function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; onStdout?: (all: string, kill: (sig: NodeJS.Signals) => void) => void } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const kill = (sig: NodeJS.Signals) => child.kill(sig);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      options.onStdout?.(stdout, kill);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 45_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const describeRun = (r: Run) => `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;

describe('ml-preprocess: clean + tokenize a JSONL corpus', () => {
  test('pipeline.mjs: counts add up against the planted corpus, a crashed shard resumes from its checkpoint, a rerun does no work', async () => {
    const out = tmp('ml');
    // Small shards and frequent checkpoints so shard 0 checkpoints, "crashes" once and resumes.
    const args = ['examples/ml-preprocess/pipeline.mjs', '--out', out, '--records', '3000', '--shard-size', '64KiB', '--checkpoint-every', '200', '--threads', '2'];
    const r = await run('node', [...args, '--crash-once', '--json']);
    expect(r.code, describeRun(r)).toBe(0);
    const s = JSON.parse(r.stdout);
    const p = s.planted;
    expect(s.ok).toBe(true);
    expect(s.shards.total).toBeGreaterThanOrEqual(6);
    expect(s.shards).toMatchObject({ done: s.shards.total, hospital: 0, resumed: 1 });
    expect(r.stdout + r.stderr).toMatch(/simulated crash/);
    expect(r.stderr).toMatch(/resuming shard/);
    // Every line is accounted for exactly once, resume or not.
    expect(p.lines).toBe(3000);
    expect(s.recordsIn).toBe(p.lines);
    expect(s.malformed).toBe(p.malformed);
    expect(s.empty).toBe(p.empty);
    expect(s.recordsIn).toBe(s.recordsOut + s.malformed + s.empty + s.duplicates);
    expect(s.recordsOut + s.duplicates).toBe(p.unique + p.duplicates);
    // Dedup is per shard: a duplicate pair split by a shard boundary survives; nearly all are caught.
    expect(s.duplicates).toBeLessThanOrEqual(p.duplicates);
    expect(s.duplicates).toBeGreaterThanOrEqual(p.duplicates * 0.9);
    expect(p.malformed).toBeGreaterThan(0);
    expect(s.verified).toBe(true); // the .jsonl outputs hold recordsOut lines
    expect(s.tokens).toBeGreaterThan(s.recordsOut * 5);
    expect(s.vocabSize).toBeGreaterThan(100);

    // The outputs: one .jsonl + one .stats.json per shard, no leftover parts; records are tokenized.
    const outDir = fileURLToPath(s.output);
    const files = readdirSync(outDir);
    expect(files.filter((f) => f.endsWith('.stats.json'))).toHaveLength(s.shards.total);
    expect(files.filter((f) => f.endsWith('.jsonl'))).toHaveLength(s.shards.total);
    expect(existsSync(join(outDir, '_parts')) ? readdirSync(join(outDir, '_parts')).flatMap((d) => readdirSync(join(outDir, '_parts', d))) : []).toEqual([]);
    const first = JSON.parse(readFileSync(join(outDir, files.find((f) => f.endsWith('.jsonl'))!), 'utf8').split('\n')[0]!);
    expect(first).toMatchObject({ id: expect.stringMatching(/^doc-/), h: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(first.tokens.every((t: string) => t === t.toLowerCase() && !/\s/.test(t))).toBe(true);

    // Run again, same corpus and flags: the same job, nothing redone, the same summary (human form this time).
    const again = await run('node', [...args, '--crash-once']);
    expect(again.code, describeRun(again)).toBe(0);
    expect(again.stdout).toContain(`records in    ${s.recordsIn}`);
    expect(again.stdout).toContain(`records out   ${s.recordsOut}  (read back from the outputs)`);
    expect(again.stdout).toContain(`vocab size    ${s.vocabSize}`);
    expect(again.stdout).not.toMatch(/simulated crash/);
  });
});

describe('hpc-large-file: one big file cut by byte ranges', () => {
  test('run.mjs: per-range sha256 / histogram / lines match a single pass (binary, last range partial)', async () => {
    const out = tmp('hpc');
    const r = await run('node', ['examples/hpc-large-file/run.mjs', '--out', out, '--size', '5MiB', '--range', '768KiB', '--kind', 'binary', '--threads', '2']);
    expect(r.code, describeRun(r)).toBe(0);
    expect(r.stdout).toMatch(/^OK: /m);
    expect(r.stdout).toMatch(/ranges\s+7 x 768\.0 KiB/);
    expect(r.stdout).toMatch(/byte values\s+256 distinct/);
  });

  test('run.mjs --json on text; a tampered range result is caught (exit 1, MISMATCH)', async () => {
    const out = tmp('hpc');
    const args = ['examples/hpc-large-file/run.mjs', '--out', out, '--size', '3MiB', '--range', '1MiB', '--kind', 'text', '--threads', '2'];
    const r = await run('node', [...args, '--json']);
    expect(r.code, describeRun(r)).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ ok: true, ranges: 3, bytes: 3 * 1024 * 1024, problems: [] });
    expect(s.lines).toBeGreaterThan(30_000); // ~1 newline per 85 bytes
    expect(s.sha256).toMatch(/^[0-9a-f]{64}$/);

    // Corrupt one committed range result: a rerun skips the (committed) shards, combines, and must notice.
    const rangeFile = join(out, 'ranges', s.job, 'range-000001.json');
    const range = JSON.parse(readFileSync(rangeFile, 'utf8'));
    range.histogram[65] += 1;
    range.sha256 = '0'.repeat(64);
    writeFileSync(rangeFile, JSON.stringify(range));
    const bad = await run('node', args);
    expect(bad.code, describeRun(bad)).toBe(1);
    expect(bad.stdout).toMatch(/MISMATCH: histogram differs/);
    expect(bad.stdout).toMatch(/MISMATCH: range 1 /);
    expect(bad.stdout).toMatch(/^FAILED$/m);
  });
});

describe('slurm: lading-job.sbatch under a stand-in srun (2 "nodes", SQLite queue, local store)', () => {
  const haveCli = ['submit', 'worker', 'wait'].every((c) => existsSync(join(ROOT, 'packages', 'cli', 'dist', 'commands', `${c}.js`))) && existsSync(CLI);

  /** What sbatch would provide, plus a single-node queue and store in `dir`. */
  function slurmEnv(dir: string, tasks = 2): NodeJS.ProcessEnv {
    return {
      PATH: `${LOCAL_BIN}${delimiter}${process.env.PATH}`,
      SLURM_JOB_ID: '4242',
      SLURM_NTASKS: String(tasks),
      SLURM_NNODES: String(tasks),
      SLURM_JOB_NUM_NODES: String(tasks),
      SLURM_JOB_NODELIST: `node[0-${tasks - 1}]`,
      SLURM_CPUS_PER_TASK: '1',
      SLURM_SUBMIT_DIR: dir,
      LADING_QUEUE: `sqlite:${join(dir, 'queue.db')}`,
      LADING_STORE: `file:${join(dir, 'store')}`,
      LADING_GRACE: '20s',
    };
  }

  test('job.yaml (the cluster template) is a valid job spec', async () => {
    const spec = await loadJobSpec(join(EXAMPLES, 'slurm', 'job.yaml'));
    expect(spec.handler).toBe(new URL('./ml-preprocess/tokenize.mjs', import.meta.url).href);
    expect(spec.sharding).toEqual({ by: 'bytes', size: 256 * 1024 * 1024, align: 'newline' });
    expect(spec.inputs).toEqual(['file:/lustre/proj/corpus/**/*.jsonl']);
    expect(spec.retries.maxAttempts).toBe(3);
  });

  test.skipIf(!haveCli)('the script submits, runs `srun lading worker` on every node, waits, drains: all outputs, hospital empty', async () => {
    const dir = tmp('slurm');
    const gen = await run('node', ['examples/ml-preprocess/pipeline.mjs', '--generate-only', '--json', '--out', dir, '--records', '2000']);
    expect(gen.code, describeRun(gen)).toBe(0);
    const corpus = JSON.parse(gen.stdout);
    writeFileSync(join(dir, 'job.yaml'), [
      'name: tokenize-slurm-test',
      `handler: ${join(EXAMPLES, 'ml-preprocess', 'tokenize.mjs')}`,
      `inputs: ["${corpus.input}"]`,
      'sharding: { by: bytes, size: 32KiB, align: newline }',
      `output: file:${join(dir, 'tokens')}/`,
      'retries: { maxAttempts: 2, backoff: { initialMs: 100 } }',
    ].join('\n'));
    const env = slurmEnv(dir);
    const r = await run('bash', [join(EXAMPLES, 'slurm', 'lading-job.sbatch'), 'job.yaml'], { env });
    expect(r.code, describeRun(r)).toBe(0);
    const jobId = /submitted job (\S+)/.exec(r.stdout)?.[1];
    expect(jobId).toMatch(/^tokenize-slurm-test-/);
    // Two workers, one per "node", with their Slurm identity; both drained on SIGTERM after the wait.
    expect(r.stdout).toMatch(/slurm:4242\.0@node0 ready/);
    expect(r.stdout).toMatch(/slurm:4242\.1@node1 ready/);
    expect(r.stdout.match(/ stopped +SIGTERM, drained/g)).toHaveLength(2);
    expect(r.stdout).toMatch(new RegExp(`job ${jobId} finished: \\d+ shards done, none in the hospital`));
    expect(r.stdout).toMatch(new RegExp(`job ${jobId} done`));

    // Outputs: one token file + stats per shard, every input line accounted for.
    const outDir = join(dir, 'tokens');
    const stats = readdirSync(outDir).filter((f) => f.endsWith('.stats.json')).map((f) => JSON.parse(readFileSync(join(outDir, f), 'utf8')));
    const shards = Number(/(\d+) shards done/.exec(r.stdout)![1]);
    expect(shards).toBeGreaterThanOrEqual(8);
    expect(stats).toHaveLength(shards);
    expect(readdirSync(outDir).filter((f) => f.endsWith('.jsonl'))).toHaveLength(shards);
    const sum = (k: string) => stats.reduce((n, s) => n + s[k], 0);
    expect(sum('recordsIn')).toBe(2000);
    expect(sum('malformed')).toBe(corpus.malformed);
    expect(sum('recordsOut') + sum('duplicates')).toBe(corpus.unique + corpus.duplicates);

    // The hospital is empty, and `lading status` agrees the job is done.
    const hospital = await run('lading', ['hospital', 'list', '--json'], { env });
    expect(hospital.code, describeRun(hospital)).toBe(0);
    expect(JSON.parse(hospital.stdout)).toEqual([]);
    const status = await run('lading', ['status', jobId!, '--json'], { env });
    expect(status.code, describeRun(status)).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ id: jobId, state: 'done', done: shards, hospital: 0 });
  });

  test.skipIf(!haveCli)('SIGTERM (the time limit) drains the workers; submitting the script again finishes the job, every shard once', async () => {
    const dir = tmp('slurm-term');
    mkdirSync(join(dir, 'in'));
    for (let i = 0; i < 16; i++) writeFileSync(join(dir, 'in', `f${String(i).padStart(2, '0')}.txt`), `file ${i}\n`);
    // A slow handler: each shard takes 400 ms, so the job is still running when the signal comes.
    writeFileSync(join(dir, 'slow.mjs'), `export default async function (ctx) {
      await new Promise((r) => setTimeout(r, 400));
      await ctx.write(ctx.shard.key + '.out', 'pid ' + process.pid + '\\n');
    }`);
    writeFileSync(join(dir, 'job.yaml'), `name: slow\nhandler: ./slow.mjs\ninputs: ["file:./in/*.txt"]\noutput: file:./out/\n`);
    const env = slurmEnv(dir);
    const script = join(EXAMPLES, 'slurm', 'lading-job.sbatch');
    let signalled = false;
    const first = await run('bash', [script, 'job.yaml'], {
      env,
      onStdout: (all, kill) => {
        if (!signalled && (all.match(/ done +slow-/g) ?? []).length >= 3) {
          signalled = true;
          kill('SIGTERM');
        }
      },
    });
    expect(signalled).toBe(true);
    expect(first.code, describeRun(first)).toBe(143);
    expect(first.stdout).toMatch(/SIGTERM: draining the workers/);
    expect(first.stdout.match(/ stopped +SIGTERM, drained/g)).toHaveLength(2);
    const doneFirst = (first.stdout.match(/ done +slow-/g) ?? []).length;
    expect(doneFirst).toBeLessThan(16);

    const second = await run('bash', [script, 'job.yaml'], { env });
    expect(second.code, describeRun(second)).toBe(0);
    expect(second.stdout).toMatch(/job slow-\S+ finished: 16 shards done, none in the hospital/);
    const doneSecond = (second.stdout.match(/ done +slow-/g) ?? []).length;
    // The shards running at the signal finished within the grace period and were acknowledged: nothing ran twice.
    expect(doneFirst + doneSecond).toBe(16);
    expect(readdirSync(join(dir, 'out')).filter((f) => f.endsWith('.out')).sort()).toEqual(Array.from({ length: 16 }, (_, i) => `f${String(i).padStart(2, '0')}.txt.out`));
  });
});
