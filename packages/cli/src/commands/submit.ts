import type { Command } from 'commander';
import type { JobSpec } from '@lading/runner';
import type { Cli } from '../context.js';
import { action, examples, withJson } from './shared.js';

interface SubmitOptions {
  wait?: boolean;
  timeout?: string;
}

export function registerSubmit(program: Command): void {
  const cmd = program
    .command('submit')
    .description('submit a job: list its inputs, cut them into shards with deterministic ids, publish one small task per shard (resubmitting the same spec publishes nothing new)')
    .argument('<spec>', 'job spec: a .yaml, .yml or .json file (handler, inputs, sharding, output, params, retries, timeout, ttl)')
    .option('--wait', 'then wait until the job is finished, like `lading wait` (exit 3 when shards end in the hospital)')
    .option('--timeout <duration>', 'with --wait: stop waiting after this long and exit 1 (the job goes on), e.g. 2h');
  withJson(cmd);
  examples(cmd, [
    'lading submit job.yaml',
    'lading submit job.yaml --wait --timeout 2h',
    'lading submit job.json --json | jq -r .id',
    '',
    '# job.yaml',
    '# name: tokenize',
    '# handler: ./tokenize.mjs          # export default async function (ctx) { for await (const { line } of ctx.lines()) ... }',
    '# inputs: [file:/mnt/lustre/corpus/*.jsonl]',
    '# sharding: { by: bytes, size: 256MiB, align: newline }',
    '# output: file:/mnt/lustre/tokens',
    '# retries: { maxAttempts: 3 }',
  ]);
  action<SubmitOptions, [string]>(cmd, submitJob);
}

function describeSharding(spec: JobSpec, formatBytes: (n: number) => string): string {
  const s = spec.sharding;
  if (s.by === 'file') return 'one shard per input';
  if (s.by === 'bytes') return `${formatBytes(s.size)} per shard${s.align === 'newline' ? ', newline aligned' : ''}`;
  return `${s.count} records per shard`;
}

async function submitJob(cli: Cli, o: SubmitOptions, specPath: string): Promise<void> {
  const { LadingError, formatBytes, parseDuration } = await import('@lading/core');
  const { DEFAULT_TASK_TOPIC, loadJobSpec, submit } = await import('@lading/runner');
  const { existsSync } = await import('node:fs');
  const { relative, resolve } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const { openJobStore, sameBackendFlags, waitForJob } = await import('./jobs-common.js');

  if (o.timeout !== undefined && !o.wait) throw new LadingError('BAD_ARGUMENT', '--timeout only applies with --wait', { hint: 'lading submit job.yaml --wait --timeout 2h' });
  const timeoutMs = o.timeout === undefined ? undefined : parseDuration(o.timeout, '--timeout');
  const spec = await loadJobSpec(resolve(cli.cwd, specPath)).catch((e: unknown) => {
    // Name the file as the user wrote it, not its absolute path.
    if (e instanceof LadingError) throw new LadingError(e.code, e.message.replace(resolve(cli.cwd, specPath), specPath), e.hint === undefined ? {} : { hint: e.hint });
    throw e;
  });
  if (spec.handler.startsWith('file:')) {
    const file = fileURLToPath(spec.handler);
    if (!existsSync(file)) {
      throw new LadingError('BAD_JOB_SPEC', `${specPath}: handler: ${relative(cli.cwd, file) || file} does not exist (looked for ${file})`, {
        hint: 'handler is a JavaScript module path relative to the spec file (compile TypeScript first), or a package name',
      });
    }
  }

  const store = await openJobStore(cli);
  const queue = await cli.queue({ store: true });
  const out = cli.out;
  const live = out.interactive;
  const job = await submit(spec, {
    queue,
    store,
    ...(live ? { onShard: (n: number) => process.stderr.write(`\rpublishing shards: ${n}`) } : {}),
  });
  if (live) process.stderr.write('\r\x1b[K');

  const r = job.record;
  const published = job.submission?.published ?? r.shards;
  const duplicates = job.submission?.duplicates ?? 0;
  const flags = sameBackendFlags(cli);
  const workerCmd = `lading worker${r.topic !== DEFAULT_TASK_TOPIC ? ` --topic ${r.topic}` : ''}${flags}`;
  const next = [workerCmd, `lading status ${r.id}${flags}`, `lading wait ${r.id}${flags}`];
  const summary = {
    id: r.id,
    name: r.name ?? null,
    topic: r.topic,
    output: r.output,
    shards: r.shards,
    inputs: r.inputs,
    bytes: r.bytes,
    published,
    duplicates,
    resubmitted: duplicates > 0,
    next,
  };

  if (!cli.json) {
    out.line(`submitted job ${r.id}${r.name ? ` (${r.name})` : ''}`);
    out.line(`  shards   ${r.shards} (${describeSharding(spec, formatBytes)})`);
    out.line(`  inputs   ${r.inputs} object${r.inputs === 1 ? '' : 's'}, ${formatBytes(r.bytes)} (${r.bytes} bytes)`);
    out.line(`  topic    ${r.topic}`);
    out.line(`  output   ${r.output}`);
    if (duplicates > 0 && published === 0) out.line(`  already submitted: nothing new published (all ${r.shards} shard tasks were published by an earlier submit of this spec)`);
    else if (duplicates > 0) out.line(`  published ${published} new shard task${published === 1 ? '' : 's'}; ${duplicates} were already submitted`);
    else out.line(`  published ${published} shard task${published === 1 ? '' : 's'}`);
    if (!o.wait) {
      const notes = ['run the shards; on every node under Slurm: srun lading worker', 'counts, throughput, ETA (--watch to follow)', 'block until finished (exit 3 if shards end in the hospital)'];
      const width = Math.max(...next.map((c) => c.length));
      out.line('next:');
      next.forEach((c, i) => out.line(`  ${c.padEnd(width)}  # ${notes[i]}`));
    }
  }
  if (!o.wait) {
    out.result(summary);
    return;
  }
  if (!cli.json) out.line(`waiting for job ${r.id} (start workers: ${workerCmd})`);
  await waitForJob(cli, job, { timeoutMs, extra: summary });
}
