import type { Command } from 'commander';
import type { JobStatus } from '@lading/runner';
import type { Cli } from '../context.js';
import { ago, table } from '../output.js';
import { action, examples, withJson } from './shared.js';

interface StatusOptions {
  watch?: boolean;
  interval: string;
}

export function registerStatus(program: Command): void {
  const cmd = program
    .command('status')
    .description('job status: counts (queued, retrying, running, done, hospital, total), throughput and ETA with --watch; without a job id, a table of all jobs')
    .argument('[job-id]', 'a job id (printed by lading submit); omit for all jobs in the store')
    .option('-w, --watch', 'follow: redraw on a terminal, one line per interval otherwise; exits when the job (or every job) is finished')
    .option('--interval <duration>', 'with --watch: time between samples', '2s');
  withJson(cmd);
  examples(cmd, ['lading status', 'lading status tokenize-3f2a9c1b7e40', 'lading status tokenize-3f2a9c1b7e40 --watch --interval 5s', 'lading status tokenize-3f2a9c1b7e40 --json | jq .done']);
  action<StatusOptions, [string | undefined]>(cmd, status);
}

async function status(cli: Cli, o: StatusOptions, id: string | undefined): Promise<void> {
  const { LadingError, parseDuration } = await import('@lading/core');
  const { Job } = await import('@lading/runner');
  const common = await import('./jobs-common.js');
  const intervalMs = parseDuration(o.interval, '--interval');
  if (o.watch && intervalMs < 100) throw new LadingError('BAD_ARGUMENT', `--interval ${o.interval} is too short`, { hint: 'at least 100ms, e.g. --interval 2s' });
  const store = await common.openJobStore(cli);
  const queue = await cli.queue({ store: true });
  const out = cli.out;
  const jobs = id === undefined ? await Job.list(queue, store) : [await Job.open(id, queue, store)];
  jobs.sort((a, b) => a.record.submittedAt.localeCompare(b.record.submittedAt));
  const rates = new Map(jobs.map((j) => [j.id, new common.Rate()]));
  const sample = async (): Promise<JobStatus[]> => {
    const now = Date.now();
    const all = await Promise.all(jobs.map((j) => j.status()));
    all.forEach((s) => rates.get(s.id)!.add(s.done, now));
    return all;
  };

  const render = (all: JobStatus[]): string[] => {
    if (id !== undefined) return common.statusBlock(jobs[0]!, all[0]!, o.watch ? rates.get(all[0]!.id) : undefined);
    if (jobs.length === 0) return ['no jobs in the store; submit one with lading submit job.yaml'];
    const rows = jobs.map((j, i) => {
      const s = all[i]!;
      const rate = rates.get(j.id)!;
      return [j.id, j.record.name ?? '', common.stateOf(s), String(s.total), String(s.done), String(s.running), String(s.queued), String(s.retrying), String(s.hospital), ...(o.watch ? [common.formatRate(rate.perSecond), s.finished ? '–' : common.formatEta(rate.etaSeconds(s.total - s.done - s.hospital))] : []), ago(Date.parse(j.record.submittedAt))];
    });
    return table(['JOB', 'NAME', 'STATE', 'TOTAL', 'DONE', 'RUNNING', 'QUEUED', 'RETRYING', 'HOSPITAL', ...(o.watch ? ['THROUGHPUT', 'ETA'] : []), 'SUBMITTED'], rows).split('\n');
  };
  const json = (all: JobStatus[]): unknown => {
    const values = jobs.map((j, i) => common.statusJson(j, all[i]!, o.watch ? rates.get(j.id) : undefined));
    return id === undefined ? values : values[0];
  };

  if (!o.watch) {
    const all = await sample();
    if (cli.json) out.result(json(all));
    else {
      for (const l of render(all)) out.line(l);
      if (id !== undefined && !all[0]!.finished) out.note(`throughput and ETA: lading status ${id} --watch`);
    }
    return;
  }

  // --watch: redraw on a terminal; otherwise one line (or JSON line) per interval. Ends when all are finished.
  let drawn = 0;
  for (;;) {
    const all = await sample();
    const finished = all.every((s) => s.finished);
    if (cli.json) out.jsonLine({ time: new Date().toISOString(), ...(id === undefined ? { jobs: json(all) } : (json(all) as Record<string, unknown>)) });
    else if (out.interactive) {
      const lines = [...render(all), '', finished ? 'finished.' : `every ${o.interval}; Ctrl-C to stop watching (the job goes on)`];
      if (drawn) process.stdout.write(`\x1b[${drawn}A\x1b[J`);
      process.stdout.write(`${lines.join('\n')}\n`);
      drawn = lines.length;
    } else {
      const time = new Date().toISOString();
      all.forEach((s, i) => out.line(`${time} ${jobs[i]!.id}: ${common.stateOf(s)}: ${common.statusLine(s, rates.get(s.id))}`));
    }
    if (finished) break;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
