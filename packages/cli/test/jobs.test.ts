import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, test } from 'vitest';
import type { JobStatus } from '@lading/runner';
import { BIN, cliEnv, expectUserError, lading, tempDir, type RunResult } from './helpers.js';

/**
 * The runner commands as users run them: real `lading submit / worker / status / wait` processes sharing
 * one SQLite queue (LADING_QUEUE, set by the helpers) and the default store (./.lading/store in cwd).
 */

const COUNT_HANDLER = `import { existsSync } from 'node:fs';
export default async function (ctx) {
  let records = 0;
  for await (const { line } of ctx.lines()) if (line) { JSON.parse(line); records++; }
  if (ctx.params.failOn === ctx.shard.key && existsSync(new URL('./broken', import.meta.url))) throw new Error('cannot parse ' + ctx.shard.key);
  await ctx.write(ctx.shard.key + '.' + ctx.shard.start + '.json', JSON.stringify({ records }));
  return { records };
}
`;

const SLOW_HANDLER = `export default async function (ctx) {
  ctx.log.info('begin ' + ctx.shard.key);
  await new Promise((r) => setTimeout(r, ctx.params.sleepMs));
  await ctx.write(ctx.shard.key + '.out', 'done ' + ctx.shard.key);
}
`;

/** A working directory with JSONL inputs under in/, the handler, and a YAML spec. */
function corpus(files: number, linesPerFile: number, spec: string): { cwd: string; records: number } {
  const cwd = tempDir('lading-jobs-');
  mkdirSync(join(cwd, 'in'));
  for (let f = 0; f < files; f++) {
    const lines = Array.from({ length: linesPerFile }, (_, i) => JSON.stringify({ id: `${f}-${i}`, text: 'lorem ipsum '.repeat(1 + (i % 5)) }));
    writeFileSync(join(cwd, 'in', `part-${f}.jsonl`), `${lines.join('\n')}\n`);
  }
  writeFileSync(join(cwd, 'count.mjs'), COUNT_HANDLER);
  writeFileSync(join(cwd, 'job.yaml'), spec);
  return { cwd, records: files * linesPerFile };
}

function outputs(cwd: string): string[] {
  return existsSync(join(cwd, 'out')) ? readdirSync(join(cwd, 'out')).filter((f) => f.endsWith('.json')) : [];
}

function countRecords(cwd: string): number {
  return outputs(cwd).reduce((n, f) => n + (JSON.parse(readFileSync(join(cwd, 'out', f), 'utf8')) as { records: number }).records, 0);
}

function explain(r: RunResult): string {
  return `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

async function submitJson(cwd: string, spec = 'job.yaml'): Promise<{ id: string; shards: number; published: number; duplicates: number; next: string[] }> {
  const r = await lading(['submit', spec, '--json'], { cwd });
  expect(r.code, explain(r)).toBe(0);
  return JSON.parse(r.stdout) as { id: string; shards: number; published: number; duplicates: number; next: string[] };
}

/** What `lading status JOB --json` prints: the SDK's JobStatus plus the job's state. */
type StatusJson = JobStatus & { state: string };

describe('submit → workers → wait', () => {
  test('`lading worker --cache-dir` reads shard inputs through the node cache; LADING_CACHE_DIR turns it on, --no-cache off; a budget below one block is a user error', async () => {
    const { cwd, records } = corpus(2, 300, 'name: cached\nhandler: ./count.mjs\ninputs: [file:./in/*.jsonl]\nsharding: { by: bytes, size: 4KiB, align: newline }\noutput: file:./out\n');
    const cacheDir = join(cwd, 'nvme-cache');
    const { id } = await submitJson(cwd);
    const w = await lading(['worker', '--threads', '2', '--max-idle', '2s', '--cache-dir', cacheDir, '--cache-max', '1GiB', '--json'], { cwd });
    expect(w.code, explain(w)).toBe(0);
    expect(JSON.parse(w.stdout.split('\n')[0]!)).toMatchObject({ event: 'ready', cache: { dir: cacheDir, maxBytes: 1024 ** 3 } });
    const waited = await lading(['wait', id, '--timeout', '30s'], { cwd });
    expect(waited.code, explain(waited)).toBe(0);
    expect(countRecords(cwd)).toBe(records);
    const stats = JSON.parse((await lading(['cache', 'stats', '--cache-dir', cacheDir, '--json'], { cwd })).stdout) as { objects: number; bytes: number };
    expect(stats.objects).toBe(2); // both inputs; the outputs are never cached
    expect(stats.bytes).toBeGreaterThan(0);

    // Configured for the node: on by itself; --no-cache wins.
    const envCache = join(cwd, 'env-cache');
    const on = await lading(['worker', '--max-idle', '200ms', '--json'], { cwd, env: { LADING_CACHE_DIR: envCache } });
    expect(JSON.parse(on.stdout.split('\n')[0]!)).toMatchObject({ event: 'ready', cache: { dir: envCache } });
    const off = await lading(['worker', '--max-idle', '200ms', '--json', '--no-cache'], { cwd, env: { LADING_CACHE_DIR: envCache } });
    expect(JSON.parse(off.stdout.split('\n')[0]!)).not.toHaveProperty('cache');
    const none = await lading(['worker', '--max-idle', '200ms', '--json'], { cwd });
    expect(JSON.parse(none.stdout.split('\n')[0]!)).not.toHaveProperty('cache');
    // Short shards are batched unless --no-batch.
    expect(JSON.parse(none.stdout.split('\n')[0]!)).toMatchObject({ batch: true });
    const unbatched = await lading(['worker', '--max-idle', '200ms', '--json', '--no-batch'], { cwd });
    expect(JSON.parse(unbatched.stdout.split('\n')[0]!)).toMatchObject({ event: 'ready', batch: false });

    expectUserError(await lading(['worker', '--max-idle', '200ms', '--cache-dir', cacheDir, '--cache-max', '1KiB'], { cwd }));
  });

  test('two `lading worker --max-idle 2s` processes run a YAML job; wait exits 0; outputs exist; status --json has the counts', async () => {
    const { cwd, records } = corpus(3, 200, 'name: count\nhandler: ./count.mjs\ninputs: [file:./in/*.jsonl]\nsharding: { by: bytes, size: 2KiB, align: newline }\noutput: file:./out\n');

    const first = await lading(['submit', 'job.yaml'], { cwd });
    expect(first.code, explain(first)).toBe(0);
    const id = /submitted job (\S+)/.exec(first.stdout)![1]!;
    expect(first.stdout).toMatch(/shards\s+\d+ \(2\.0 KiB per shard, newline aligned\)/);
    expect(first.stdout).toMatch(/inputs\s+3 objects/);
    expect(first.stdout).toContain('lading worker');
    expect(first.stdout).toContain(`lading status ${id}`);
    expect(first.stdout).toContain(`lading wait ${id}`);

    // The same spec again: the same job, nothing new published.
    const again = await submitJson(cwd);
    expect(again.id).toBe(id);
    expect(again.published).toBe(0);
    expect(again.duplicates).toBe(again.shards);
    const text = await lading(['submit', 'job.yaml'], { cwd });
    expect(text.stdout).toContain(`submitted job ${id}`);
    expect(text.stdout).toContain('nothing new published');
    const shards = again.shards;
    expect(shards).toBeGreaterThan(5);

    const queued = JSON.parse((await lading(['status', id, '--json'], { cwd })).stdout) as StatusJson;
    expect(queued).toMatchObject({ id, state: 'queued', total: shards, queued: shards, done: 0, finished: false });

    const [w1, w2, waited] = await Promise.all([
      lading(['worker', '--threads', '2', '--max-idle', '2s'], { cwd, env: { SLURM_JOB_ID: '4242', SLURM_PROCID: '1', SLURM_NODEID: '0' } }),
      lading(['worker', '--threads', '1', '--max-idle', '2s', '--json'], { cwd }),
      lading(['wait', id, '--timeout', '50s'], { cwd, timeoutMs: 55_000 }),
    ]);
    expect(waited.code, explain(waited)).toBe(0);
    expect(waited.stdout).toContain(`job ${id} finished: ${shards} shards done, none in the hospital`);
    expect(w1.code, explain(w1)).toBe(0);
    expect(w2.code, explain(w2)).toBe(0);

    // One line per shard event, with the worker identity (Slurm ids when set).
    expect(w1.stdout).toMatch(/ slurm:4242\.1@node0 ready /);
    const doneText = w1.stdout.split('\n').filter((l) => / done /.test(l));
    for (const l of doneText) expect(l).toMatch(/^\S+Z \S+:\d+ slurm:4242\.1@node0 done\s+\S+ shard [0-9a-f]+ in/);
    const events = w2.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string; worker: string; pid: number; job?: string });
    expect(events[0]).toMatchObject({ event: 'ready' });
    expect(events.at(-1)).toMatchObject({ event: 'stopped', reason: 'idle' });
    const doneJson = events.filter((e) => e.event === 'done');
    for (const e of doneJson) expect(e).toMatchObject({ job: id, worker: expect.stringMatching(/^\S+:\d+$/) as unknown });
    expect(doneText.length + doneJson.length).toBe(shards);

    // Outputs: one per shard, every record counted exactly once.
    expect(outputs(cwd)).toHaveLength(shards);
    expect(countRecords(cwd)).toBe(records);

    const status = await lading(['status', id, '--json'], { cwd });
    expect(status.code, explain(status)).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ id, name: 'count', state: 'done', total: shards, queued: 0, retrying: 0, running: 0, done: shards, hospital: 0, finished: true, ok: true });

    const human = await lading(['status', id], { cwd });
    expect(human.stdout).toMatch(new RegExp(`job ${id} \\(count\\): finished`));
    expect(human.stdout).toMatch(/done\s+\d+ \(100%\)/);
    const table = await lading(['status'], { cwd });
    expect(table.stdout).toMatch(new RegExp(`^JOB\\s+NAME\\s+STATE\\s+TOTAL\\s+DONE`, 'm'));
    expect(table.stdout).toMatch(new RegExp(`^${id}\\s+count\\s+done\\s+${shards}\\s+${shards}\\s`, 'm'));
    const all = JSON.parse((await lading(['status', '--json'], { cwd })).stdout) as StatusJson[];
    expect(all.map((s) => s.id)).toEqual([id]);

    // --watch off a terminal: one line per interval, ends when the job is finished.
    const watch = await lading(['status', id, '--watch', '--interval', '200ms'], { cwd });
    expect(watch.code).toBe(0);
    expect(watch.stdout).toMatch(new RegExp(`^\\S+Z ${id}: done: done ${shards}/${shards} \\(100%\\)`, 'm'));

    // submit --wait on a finished job returns at once with the result.
    const waitAgain = await lading(['submit', 'job.yaml', '--wait', '--json'], { cwd });
    expect(waitAgain.code, explain(waitAgain)).toBe(0);
    expect(JSON.parse(waitAgain.stdout)).toMatchObject({ id, published: 0, status: { state: 'done', ok: true } });
  });

  test('a shard that fails ends in the hospital: wait exits 3 with the hint; hospital retry --job after the fix completes the job', async () => {
    const { cwd } = corpus(3, 20, 'handler: ./count.mjs\ninputs: [file:./in/*.jsonl]\noutput: file:./out\nparams: { failOn: part-1.jsonl }\nretries: { maxAttempts: 2, backoff: { initialMs: 10, maxMs: 20, multiplier: 2, jitter: 0 } }\n');
    writeFileSync(join(cwd, 'broken'), 'the handler fails on part-1.jsonl while this file exists\n');
    const { id, shards } = await submitJson(cwd);
    expect(shards).toBe(3);

    const [worker, waited] = await Promise.all([lading(['worker', '--max-idle', '2s'], { cwd }), lading(['wait', id], { cwd })]);
    expect(worker.code, explain(worker)).toBe(0);
    expect(worker.stdout).toMatch(/failed\s+\S+ shard [0-9a-f]+ \(attempt 1\): Error: cannot parse part-1\.jsonl/);
    expect(worker.stdout).toMatch(/hospital .*\(failed after 2 attempts\)/);
    expect(waited.code, explain(waited)).toBe(3);
    expect(waited.stdout).toContain(`job ${id} finished with 1 shard in the hospital: 2 of 3 done`);
    expect(waited.stdout).toContain(`lading hospital list --job ${id}`);

    const status = JSON.parse((await lading(['status', id, '--json'], { cwd })).stdout) as StatusJson;
    expect(status).toMatchObject({ state: 'failed', done: 2, hospital: 1, finished: true, ok: false });

    const list = await lading(['hospital', 'list', '--job', id, '--json'], { cwd });
    expect(list.code, explain(list)).toBe(0);
    const records = JSON.parse(list.stdout) as { id: string; reason: string; errors: { message: string }[] }[];
    expect(records).toHaveLength(1);
    expect(records[0]!.id.startsWith(`${id}:`)).toBe(true);
    expect(records[0]!.reason).toBe('failed');
    expect(records[0]!.errors.map((e) => e.message)).toEqual(['cannot parse part-1.jsonl', 'cannot parse part-1.jsonl']);
    const listText = await lading(['hospital', 'list', '--job', id], { cwd });
    expect(listText.stdout).toContain('Error: cannot parse part-1.jsonl');
    const otherJob = await lading(['hospital', 'list', '--job', 'some-other-job', '--json'], { cwd });
    expect(JSON.parse(otherJob.stdout)).toEqual([]);

    // Fix the "handler" (the file it checks), retry the job's failed shards, run a worker again.
    rmSync(join(cwd, 'broken'));
    const retry = await lading(['hospital', 'retry', '--job', id], { cwd });
    expect(retry.code, explain(retry)).toBe(0);
    expect(retry.stdout).toContain('retried 1 message');
    const [worker2, waited2] = await Promise.all([lading(['worker', '--max-idle', '2s'], { cwd }), lading(['wait', id, '--json'], { cwd })]);
    expect(worker2.code, explain(worker2)).toBe(0);
    expect(waited2.code, explain(waited2)).toBe(0);
    expect(JSON.parse(waited2.stdout)).toMatchObject({ id, state: 'done', done: 3, hospital: 0, ok: true });
    expect(outputs(cwd).sort()).toEqual(['part-0.jsonl.0.json', 'part-1.jsonl.0.json', 'part-2.jsonl.0.json']);
    expect(JSON.parse((await lading(['hospital', 'list', '--job', id, '--json'], { cwd })).stdout)).toEqual([]);
  });

  test('wait --timeout exits 1 while the job goes on; an unknown job id exits 2', async () => {
    const { cwd } = corpus(2, 5, 'handler: ./count.mjs\ninputs: [file:./in/*.jsonl]\noutput: file:./out\n');
    const { id } = await submitJson(cwd);
    const started = Date.now();
    const r = await lading(['wait', id, '--timeout', '600ms'], { cwd });
    expect(r.code, explain(r)).toBe(1);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(r.stderr).toMatch(new RegExp(`^error: job ${id} did not finish within 600ms: done 0/2`, 'm'));
    expect(r.stderr).toMatch(/^hint: /m);
    expect(r.stderr).not.toContain('    at ');

    const unknown = await lading(['wait', 'no-such-job'], { cwd });
    expectUserError(unknown);
    expect(unknown.stderr).toContain('no job "no-such-job"');
    const unknownStatus = await lading(['status', 'no-such-job'], { cwd });
    expectUserError(unknownStatus);
  });
});

describe('worker drains on SIGTERM', () => {
  /** Start `lading worker` and resolve once it has started the slow shard. */
  function startWorker(cwd: string, args: string[]) {
    const child = spawn(process.execPath, [BIN, 'worker', '--json', ...args], { cwd, env: cliEnv(cwd), stdio: ['ignore', 'pipe', 'pipe'] });
    const events: { event: string; job?: string; shard?: string; message?: string; [k: string]: unknown }[] = [];
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const begun = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the worker did not begin the slow shard: ${JSON.stringify(events)} ${stderr}`)), 30_000);
      createInterface({ input: child.stdout }).on('line', (line) => {
        const e = JSON.parse(line) as (typeof events)[number];
        events.push(e);
        if (e.event === 'log' && e.message === 'begin slow.txt') {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    return { child, events, exited, begun, stderr: () => stderr };
  }

  function slowJob(): string {
    const cwd = tempDir('lading-drain-');
    mkdirSync(join(cwd, 'in'));
    writeFileSync(join(cwd, 'in', 'slow.txt'), 'slow\n');
    writeFileSync(join(cwd, 'slow.mjs'), SLOW_HANDLER);
    writeFileSync(join(cwd, 'job.yaml'), 'handler: ./slow.mjs\ninputs: [file:./in/slow.txt]\noutput: file:./out\nparams: { sleepMs: 2500 }\n');
    return cwd;
  }

  test('with enough grace the running shard finishes, no new work is taken, exit 0', async () => {
    const cwd = slowJob();
    const { id } = await submitJson(cwd);
    const w = startWorker(cwd, ['--threads', '1', '--grace', '20s']);
    await w.begun;
    w.child.kill('SIGTERM');
    const exit = await w.exited;
    expect(exit, w.stderr()).toEqual({ code: 0, signal: null });
    const names = w.events.map((e) => e.event);
    expect(names.indexOf('draining')).toBeGreaterThan(names.indexOf('started'));
    expect(names.indexOf('done')).toBeGreaterThan(names.indexOf('draining'));
    expect(w.events.at(-1)).toMatchObject({ event: 'stopped', reason: 'signal', signal: 'SIGTERM', done: 1, handedBack: 0 });
    expect(readFileSync(join(cwd, 'out', 'slow.txt.out'), 'utf8')).toBe('done slow.txt');
    const status = JSON.parse((await lading(['status', id, '--json'], { cwd })).stdout) as StatusJson;
    expect(status).toMatchObject({ state: 'done', done: 1, ok: true });
  });

  test('with a short grace the running shard is handed back (exit 0 at once) and another worker finishes it', async () => {
    const cwd = slowJob();
    const { id } = await submitJson(cwd);
    const w = startWorker(cwd, ['--threads', '1', '--grace', '200ms']);
    await w.begun;
    const termAt = Date.now();
    w.child.kill('SIGTERM');
    const exit = await w.exited;
    expect(exit, w.stderr()).toEqual({ code: 0, signal: null });
    expect(Date.now() - termAt).toBeLessThan(2000);
    expect(w.events.map((e) => e.event)).toContain('released');
    expect(w.events.map((e) => e.event)).not.toContain('done');
    expect(w.events.at(-1)).toMatchObject({ event: 'stopped', reason: 'signal', done: 0, failed: 0, handedBack: 1 });
    expect(existsSync(join(cwd, 'out', 'slow.txt.out'))).toBe(false);

    const queued = JSON.parse((await lading(['status', id, '--json'], { cwd })).stdout) as StatusJson;
    expect(queued).toMatchObject({ queued: 1, running: 0, done: 0, hospital: 0 });
    const [worker, waited] = await Promise.all([lading(['worker', '--max-idle', '1s'], { cwd }), lading(['wait', id], { cwd })]);
    expect(worker.code, explain(worker)).toBe(0);
    expect(worker.stdout).toMatch(/started\s+\S+ shard [0-9a-f]+ \(attempt 1\)/); // a hand-back is not an attempt
    expect(waited.code, explain(waited)).toBe(0);
    expect(readFileSync(join(cwd, 'out', 'slow.txt.out'), 'utf8')).toBe('done slow.txt');
  });
});

describe('bad specs are user errors (exit 2) that name the file and the field', () => {
  const cwd = tempDir('lading-badspec-');
  mkdirSync(join(cwd, 'in'));
  writeFileSync(join(cwd, 'in', 'a.txt'), 'a\n');
  writeFileSync(join(cwd, 'h.mjs'), 'export default async function () {}\n');

  test.each([
    ['missing handler', 'no-handler.yaml', 'inputs: [file:./in/a.txt]\noutput: file:./out\n', /no-handler\.yaml: handler: required/],
    ['bad sharding size', 'bad-size.yaml', 'handler: ./h.mjs\ninputs: [file:./in/a.txt]\noutput: file:./out\nsharding: { by: bytes, size: lots }\n', /bad-size\.yaml: sharding\.size: "lots" is not a byte size/],
    ['unknown field', 'unknown.json', JSON.stringify({ handler: './h.mjs', inputs: ['file:./in/a.txt'], output: 'file:./out', colour: 'red' }), /unknown\.json: colour: unknown field/],
    ['handler module that does not exist', 'no-module.yaml', 'handler: ./missing.mjs\ninputs: [file:./in/a.txt]\noutput: file:./out\n', /no-module\.yaml: handler: missing\.mjs does not exist/],
    ['not YAML', 'broken.yaml', 'handler: [unclosed\n', /broken\.yaml is not valid YAML/],
    ['inputs that match nothing', 'no-inputs.yaml', 'handler: ./h.mjs\ninputs: [file:./in/*.parquet]\noutput: file:./out\n', /matches no object/],
  ])('%s', async (_name, file, content, message) => {
    writeFileSync(join(cwd, file), content);
    const r = await lading(['submit', file], { cwd });
    expectUserError(r);
    expect(r.stderr).toMatch(message);
  });

  test('a spec file that does not exist', async () => {
    const r = await lading(['submit', 'nope.yaml'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('cannot read job spec nope.yaml: no such file');
  });

  test('--json errors are JSON on stderr', async () => {
    writeFileSync(join(cwd, 'unknown2.yaml'), 'handler: ./h.mjs\ninputs: [file:./in/a.txt]\noutput: file:./out\nshardng: { by: file }\n');
    const r = await lading(['submit', 'unknown2.yaml', '--json'], { cwd });
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const e = JSON.parse(r.stderr) as { error: { code: string; message: string } };
    expect(e.error.code).toBe('BAD_JOB_SPEC');
    expect(e.error.message).toContain('shardng: unknown field');
  });
});
