import type { Command } from 'commander';
import type { Cli } from '../context.js';
import { action, examples, withJson } from './shared.js';

interface WaitOptions {
  timeout?: string;
}

export function registerWait(program: Command): void {
  const cmd = program
    .command('wait')
    .description('block until a job is finished (nothing queued, retrying or running): exit 0 when every shard is done, 3 when shards are in the hospital, 1 on --timeout')
    .argument('<job-id>', 'a job id (printed by lading submit)')
    .option('--timeout <duration>', 'give up after this long and exit 1 (the job goes on), e.g. 2h');
  withJson(cmd);
  examples(cmd, [
    'lading wait tokenize-3f2a9c1b7e40',
    'lading wait tokenize-3f2a9c1b7e40 --timeout 2h || lading hospital list --job tokenize-3f2a9c1b7e40',
    '',
    '# in a batch script: submit, run workers, wait',
    '# id=$(lading submit job.yaml --json | jq -r .id); srun lading worker --max-idle 1m & lading wait "$id"',
  ]);
  action<WaitOptions, [string]>(cmd, waitJob);
}

async function waitJob(cli: Cli, o: WaitOptions, id: string): Promise<void> {
  const { parseDuration } = await import('@lading/core');
  const { openJob, waitForJob } = await import('./jobs-common.js');
  const timeoutMs = o.timeout === undefined ? undefined : parseDuration(o.timeout, '--timeout');
  const job = await openJob(cli, id);
  await waitForJob(cli, job, { timeoutMs });
}
