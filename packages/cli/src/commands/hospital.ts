import { Option, type Command } from 'commander';
import type { HospitalFilter, HospitalRecord, Queue } from '@lading/core';
import type { Cli } from '../context.js';
import { ExitCode, requestExit } from '../errors.js';
import { ago, plural, table, truncate } from '../output.js';
import { action, examples, positiveInt, withJson } from './shared.js';

type LadingErrorClass = typeof import('@lading/core').LadingError;

interface FilterOptions {
  topic?: string;
  group?: string;
  reason?: HospitalFilter['reason'];
  state?: HospitalFilter['state'];
  since?: string;
  until?: string;
  grep?: string;
  job?: string;
  limit?: number;
}

interface ActOptions extends FilterOptions {
  all?: boolean;
}

const REASONS = ['failed', 'expired', 'invalid', 'poison'];
const STATES = ['open', 'retried', 'ignored', 'resolved', 'any'];

function filterOptions(cmd: Command, withState: boolean): Command {
  cmd
    .option('--topic <name>', 'records of this topic')
    .option('--group <name>', 'records of this consumer group')
    .addOption(new Option('--reason <reason>', 'why it was admitted').choices(REASONS));
  if (withState) cmd.addOption(new Option('--state <state>', 'open (default), retried, ignored, resolved (retried or ignored) or any').choices(STATES));
  return cmd
    .option('--since <when>', 'admitted at or after: a duration ago (30m, 2h, 7d) or an ISO date')
    .option('--until <when>', 'admitted at or before: a duration ago or an ISO date')
    .option('--grep <text>', 'an attempt error (name or message) contains TEXT, case-insensitive')
    .option('--job <id>', 'records of one runner job')
    .option('--limit <n>', 'at most N records', positiveInt);
}

export function registerHospital(program: Command): void {
  const hospital = program
    .command('hospital')
    .description('the error hospital: messages that failed maxAttempts times, expired, or were invalid — list, show, retry, ignore, report, purge');
  examples(hospital, ['lading hospital list', 'lading hospital show 12', 'lading hospital retry --topic images --reason failed --rate 50/s', 'lading hospital report --format markdown']);

  const list = filterOptions(hospital.command('list').description('list hospital records (open ones unless --state says otherwise)'), true).option(
    '--fail-if-any',
    `exit with code ${ExitCode.HOSPITAL} when any record matches (for scripts and CI)`,
  );
  withJson(list);
  examples(list, ['lading hospital list', 'lading hospital list --topic images --since 1h --grep timeout', 'lading hospital list --state any --json', 'lading hospital list --fail-if-any  # exit 3 if anything is open']);
  action<FilterOptions & { failIfAny?: boolean }>(list, listRecords);

  const show = hospital.command('show').description("one record in full: the envelope and every attempt's error with worker, host, time and stack").argument('<id>', 'hospital record id (hid) or message id');
  withJson(show);
  examples(show, ['lading hospital show 12', 'lading hospital show order-7 --json']);
  action<Record<string, never>, [string]>(show, showRecord);

  const retry = filterOptions(
    hospital.command('retry').description('re-enqueue open records with attempts reset: to the group they failed in, or as new messages to --to-topic').argument('[hids...]', 'hospital record ids (or message ids)'),
    false,
  )
    .option('--all', 'every open record (narrowed by any filters given)')
    .option('--to-topic <topic>', 'publish the messages to this topic instead (seen by all its groups)')
    .option('--rate <rate>', 'at most this many per second, e.g. 50/s, 600/m or 20, so a redrive cannot flood the workers')
    .option('--note <text>', 'why: kept with the record');
  withJson(retry);
  examples(retry, ['lading hospital retry 12 13', 'lading hospital retry --topic images --reason failed --since 1h', 'lading hospital retry --all --rate 50/s', 'lading hospital retry 12 --to-topic images.slow']);
  action<ActOptions & { toTopic?: string; rate?: string; note?: string }, [string[]]>(retry, retryRecords);

  const ignore = filterOptions(hospital.command('ignore').description('resolve open records without handling them (kept, marked ignored)').argument('[hids...]', 'hospital record ids (or message ids)'), false)
    .option('--all', 'every open record (narrowed by any filters given)')
    .option('--note <text>', 'why: kept with the record');
  withJson(ignore);
  examples(ignore, ['lading hospital ignore 12 --note "test data"', 'lading hospital ignore --topic images --reason expired']);
  action<ActOptions & { note?: string }, [string[]]>(ignore, ignoreRecords);

  const report = filterOptions(hospital.command('report').description('a summary for humans (Markdown) or tools (JSON): counts by reason and topic, the most frequent errors, the records'), true)
    .addOption(new Option('--format <format>', 'markdown or json').choices(['markdown', 'json']).default('markdown'))
    .option('--webhook <url>', 'also POST the report to this URL (default: hospital.webhook from the config file)')
    .option('--no-webhook', 'do not POST, even if the config file names a webhook');
  withJson(report);
  examples(report, ['lading hospital report', 'lading hospital report --topic images --since 1d --format json', 'lading hospital report --webhook https://hooks.example.com/T000/B000']);
  action<FilterOptions & { format: 'markdown' | 'json'; webhook?: string | false }>(report, reportRecords);

  const purge = filterOptions(hospital.command('purge').description('delete records for good: resolved ones (retried or ignored) unless --include-open').argument('[hids...]', 'hospital record ids (or message ids)'), true)
    .option('--all', 'every resolved record (narrowed by any filters given)')
    .option('--include-open', 'also delete open records: their messages are dropped');
  withJson(purge);
  examples(purge, ['lading hospital purge --all --until 30d', 'lading hospital purge 12 --include-open']);
  action<ActOptions & { includeOpen?: boolean }, [string[]]>(purge, purgeRecords);
}

/** A time option: `2h` (that long ago) or an ISO date. */
function parseWhen(value: string, flag: string, LadingError: LadingErrorClass, now = Date.now()): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$/.exec(value);
  if (m) {
    const unit: Record<string, number> = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };
    return now - Number(m[1]) * unit[m[2]!]!;
  }
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    const t = Date.parse(value);
    if (Number.isFinite(t)) return t;
  }
  throw new LadingError('BAD_ARGUMENT', `${flag} ${JSON.stringify(value)} is neither a duration nor a date`, { hint: `e.g. ${flag} 30m, ${flag} 2d or ${flag} 2025-01-31T12:00:00Z` });
}

async function buildFilter(o: FilterOptions, ids: string[] = []): Promise<HospitalFilter> {
  const { LadingError } = await import('@lading/core');
  const f: HospitalFilter = {};
  if (ids.length) f.ids = ids;
  if (o.topic !== undefined) f.topic = o.topic;
  if (o.group !== undefined) f.group = o.group;
  if (o.reason !== undefined) f.reason = o.reason;
  if (o.state !== undefined) f.state = o.state;
  if (o.since !== undefined) f.since = parseWhen(o.since, '--since', LadingError);
  if (o.until !== undefined) f.until = parseWhen(o.until, '--until', LadingError);
  if (o.grep !== undefined) f.text = o.grep;
  if (o.job !== undefined) f.job = o.job;
  if (o.limit !== undefined) f.limit = o.limit;
  return f;
}

function narrows(o: FilterOptions): boolean {
  return [o.topic, o.group, o.reason, o.since, o.until, o.grep, o.job].some((v) => v !== undefined);
}

/** Acting on the whole hospital must be asked for: ids, a filter, or --all. */
async function requireSelection(verb: string, ids: string[], o: ActOptions): Promise<void> {
  if (ids.length || narrows(o) || o.all) return;
  const { LadingError } = await import('@lading/core');
  throw new LadingError('BAD_ARGUMENT', `hospital ${verb} needs record ids, a filter, or --all`, {
    hint: `e.g. lading hospital ${verb} 12 13, lading hospital ${verb} --topic images --reason failed, or lading hospital ${verb} --all; see lading hospital list`,
  });
}

/** Names the ids that matched nothing; none matching at all is an error. */
async function checkIds(cli: Cli, verb: string, ids: string[], acted: HospitalRecord[], state: string): Promise<void> {
  if (!ids.length) return;
  const missing = ids.filter((x) => !acted.some((r) => r.hid === x || r.id === x));
  if (!missing.length) return;
  if (missing.length === ids.length && acted.length === 0) {
    const { LadingError } = await import('@lading/core');
    throw new LadingError('NOT_FOUND', `no ${state ? `${state} ` : ''}hospital record ${missing.map((m) => JSON.stringify(m)).join(', ')} to ${verb}`, { hint: 'see `lading hospital list --state any` for the records and their states' });
  }
  cli.out.warn(`no ${state ? `${state} ` : ''}record ${missing.join(', ')}: not ${verb === 'retry' ? 'retried' : `${verb}d`}`);
}

function brief(r: HospitalRecord): Record<string, unknown> {
  const { raw, ...rest } = r;
  return {
    ...rest,
    ...(r.envelope ? {} : { raw }),
    admittedAt: new Date(r.admittedAt).toISOString(),
    ...(r.resolvedAt !== undefined ? { resolvedAt: new Date(r.resolvedAt).toISOString() } : {}),
    errors: r.errors.map((e) => ({ ...e, at: new Date(e.at).toISOString() })),
  };
}

function lastError(r: HospitalRecord): string {
  const e = r.errors.at(-1);
  return e ? `${e.name}: ${e.message}` : '(no error recorded)';
}

async function listRecords(cli: Cli, o: FilterOptions & { failIfAny?: boolean }): Promise<void> {
  const filter = await buildFilter(o);
  const limit = filter.limit ?? 100;
  const queue = await cli.queue();
  const records = await queue.hospital.list({ ...filter, limit });
  if (o.failIfAny && records.length > 0) requestExit(ExitCode.HOSPITAL);
  if (cli.json) {
    cli.out.result(records.map(brief));
    return;
  }
  const state = o.state ?? 'open';
  if (records.length === 0) {
    cli.out.line(`no ${state === 'any' ? '' : `${state} `}records in the hospital${narrows(o) ? ' match the filter' : ''}`);
    return;
  }
  cli.out.line(
    table(
      ['HID', 'STATE', 'REASON', 'TOPIC/GROUP', 'MESSAGE', 'ATTEMPTS', 'ADMITTED', 'LAST ERROR'],
      records.map((r) => [r.hid, r.state, r.reason, `${r.topic}/${r.group}`, truncate(r.id, 36), String(r.errors.length), ago(r.admittedAt), truncate(lastError(r), 80)]),
    ),
  );
  if (records.length === limit) cli.out.note(`showing the first ${limit}; narrow the filter or raise --limit`);
  else cli.out.note(`${plural(records.length, 'record')}; details: lading hospital show <hid>`);
}

async function showRecord(cli: Cli, _o: Record<string, never>, id: string): Promise<void> {
  const queue = await cli.queue();
  const r = await queue.hospital.show(id);
  if (cli.json) {
    cli.out.result(brief(r));
    return;
  }
  const { formatBytes } = await import('@lading/core');
  const out = cli.out;
  const job = r.envelope?.headers['lading-job'];
  out.line(`hospital record ${r.hid}: message ${r.id}`);
  out.line(`  state     ${r.state}${r.resolution ? ` (${r.resolution})` : ''}${r.resolvedAt ? ` at ${new Date(r.resolvedAt).toISOString()}` : ''}`);
  out.line(`  reason    ${r.reason}`);
  out.line(`  topic     ${r.topic}, group ${r.group}`);
  out.line(`  admitted  ${new Date(r.admittedAt).toISOString()} (${ago(r.admittedAt)})`);
  if (job) out.line(`  job       ${job}`);
  out.line('');
  if (r.envelope) {
    const e = r.envelope;
    out.line('message:');
    if (e.type !== undefined) out.line(`  type        ${e.type}`);
    if (e.key !== undefined) out.line(`  key         ${e.key}`);
    out.line(`  published   ${new Date(e.publishedAt).toISOString()}`);
    if (e.expiresAt !== undefined) out.line(`  expires     ${new Date(e.expiresAt).toISOString()}`);
    for (const [k, v] of Object.entries(e.headers)) out.line(`  header      ${k}=${v}`);
    if (e.ref) out.line(`  body        claim check ${e.ref.uri} (${formatBytes(e.ref.size)}, ${e.ref.checksum})`);
    else {
      const body = JSON.stringify(e.body ?? null, null, 2);
      out.line(`  body        ${body.length > 4000 ? `${body.slice(0, 4000)}… (${formatBytes(Buffer.byteLength(body))}; --json for all)` : body.replace(/\n/g, '\n              ')}`);
    }
  } else {
    out.line('message (not a valid envelope, as received):');
    out.line(`  ${truncate(r.raw, 4000)}`);
  }
  out.line('');
  out.line(`attempts (${r.errors.length}):`);
  for (const e of r.errors) {
    out.line(`  #${e.attempt + 1}  ${new Date(e.at).toISOString()}  worker ${e.worker} (host ${e.host})${e.code ? `  code ${e.code}` : ''}`);
    out.line(`      ${e.name}: ${e.message}`);
    const frames = (e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l));
    for (const f of frames) out.line(`      ${f.trim()}`);
  }
  if (r.state === 'open') out.line(`\nnext: lading hospital retry ${r.hid}   or   lading hospital ignore ${r.hid} --note "why"`);
}

async function retryRecords(cli: Cli, o: ActOptions & { toTopic?: string; rate?: string; note?: string }, ids: string[]): Promise<void> {
  await requireSelection('retry', ids, o);
  const { LadingError } = await import('@lading/core');
  const ratePerSec = o.rate === undefined ? undefined : parseRate(o.rate, LadingError);
  const filter = await buildFilter(o, ids);
  const queue = await cli.queue();
  const options = { ...(o.toTopic !== undefined ? { toTopic: o.toTopic } : {}), ...(ratePerSec !== undefined ? { ratePerSec } : {}), ...(o.note !== undefined ? { note: o.note } : {}) };
  const done = await actWithProgress(cli, queue, filter, 'retrying', (f) => queue.hospital.retry(f, options));
  await checkIds(cli, 'retry', ids, done, 'open');
  if (cli.json) {
    cli.out.result({ retried: done.length, toTopic: o.toTopic ?? null, records: done.map((r) => ({ hid: r.hid, id: r.id, topic: r.topic, group: r.group, resolution: r.resolution })) });
    return;
  }
  cli.out.line(`retried ${plural(done.length, 'message')}${o.toTopic ? ` to topic ${o.toTopic}` : ''}${done.length === 0 ? ': no open record matched' : ''}`);
}

async function ignoreRecords(cli: Cli, o: ActOptions & { note?: string }, ids: string[]): Promise<void> {
  await requireSelection('ignore', ids, o);
  const filter = await buildFilter(o, ids);
  const queue = await cli.queue();
  const done = await actWithProgress(cli, queue, filter, 'ignoring', (f) => queue.hospital.ignore(f, o.note));
  await checkIds(cli, 'ignore', ids, done, 'open');
  if (cli.json) {
    cli.out.result({ ignored: done.length, records: done.map((r) => ({ hid: r.hid, id: r.id, topic: r.topic, group: r.group, resolution: r.resolution })) });
    return;
  }
  cli.out.line(`ignored ${plural(done.length, 'message')}${done.length === 0 ? ': no open record matched' : ''}`);
}

async function purgeRecords(cli: Cli, o: ActOptions & { includeOpen?: boolean }, ids: string[]): Promise<void> {
  await requireSelection('purge', ids, o);
  const { LadingError } = await import('@lading/core');
  if ((o.state === 'open' || o.state === 'any') && !o.includeOpen) {
    throw new LadingError('BAD_ARGUMENT', `purging ${o.state} records deletes open ones, and their messages are dropped`, { hint: 'add --include-open if that is what you want, or retry / ignore them first' });
  }
  const filter = await buildFilter(o, ids);
  filter.state = o.includeOpen ? (o.state ?? 'any') : (o.state ?? 'resolved');
  const queue = await cli.queue();
  // Hospital.purge returns a count; list first so ids can be checked and reported.
  const selected = await queue.hospital.list({ ...filter, limit: filter.limit ?? 1_000_000 });
  const count = selected.length ? await queue.hospital.purge({ ...filter, ids: selected.map((r) => r.hid) }) : 0;
  await checkIds(cli, 'purge', ids, selected, o.includeOpen ? '' : 'resolved');
  if (cli.json) {
    cli.out.result({ purged: count, hids: selected.map((r) => r.hid) });
    return;
  }
  const open = selected.filter((r) => r.state === 'open').length;
  cli.out.line(`purged ${plural(count, 'record')}${open ? ` (${open} open: their messages were dropped)` : ''}${count === 0 ? `: no ${o.includeOpen ? '' : 'resolved '}record matched` : ''}`);
  if (count === 0 && !o.includeOpen && ids.length === 0) cli.out.note('open records are kept unless --include-open; retry or ignore them first');
}

async function reportRecords(cli: Cli, o: FilterOptions & { format: 'markdown' | 'json'; webhook?: string | false }): Promise<void> {
  const filter = await buildFilter(o);
  const queue = await cli.queue();
  const webhook = o.webhook === false ? undefined : (o.webhook ?? cli.config().webhook);
  const format = cli.json ? 'json' : o.format;
  const text = await queue.hospital.report(filter, { format, ...(webhook ? { webhook } : {}) });
  cli.out.text(text);
  if (webhook) cli.out.note(`posted the report to ${webhook}`);
}

/** `50/s`, `600/m`, `20` (per second). */
export function parseRate(value: string, LadingError: LadingErrorClass): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:\/\s*(s|sec|second|m|min|minute|h|hour))?\s*$/.exec(value);
  const n = m ? Number(m[1]) : NaN;
  if (!m || !(n > 0)) throw new LadingError('BAD_ARGUMENT', `--rate ${JSON.stringify(value)} is not a rate`, { hint: 'e.g. --rate 50/s, --rate 600/m or --rate 20 (per second)' });
  const per = m[2]?.[0] ?? 's';
  return per === 'm' ? n / 60 : per === 'h' ? n / 3600 : n;
}

/**
 * Act on the records a filter selects. When someone is watching, list them first and act in chunks
 * under a progress bar; otherwise one paged pass in the SDK (a filter can select millions).
 */
async function actWithProgress(cli: Cli, queue: Queue, filter: HospitalFilter, label: string, act: (f: HospitalFilter) => Promise<HospitalRecord[]>): Promise<HospitalRecord[]> {
  if (!cli.out.interactive) return act(filter);
  const selected = await queue.hospital.list({ ...filter, state: 'open', limit: filter.limit ?? 1_000_000 });
  if (selected.length < 20) return act(filter);
  const progress = await cli.out.progress(selected.length, label);
  const done: HospitalRecord[] = [];
  try {
    for (let i = 0; i < selected.length; i += 50) {
      const chunk = selected.slice(i, i + 50).map((r) => r.hid);
      done.push(...(await act({ ids: chunk, state: 'open' })));
      progress.increment(chunk.length);
    }
  } finally {
    progress.stop();
  }
  return done;
}
