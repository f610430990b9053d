import { setTimeout as sleep } from 'node:timers/promises';
import type { HospitalFilter, HospitalRecord } from './driver.js';
import { LadingError } from './errors.js';
import type { Queue } from './queue.js';

export interface RetryOptions {
  /** Re-enqueue to another topic (as a new message, seen by all its groups) instead of the original group. */
  toTopic?: string;
  /** At most this many messages per second, so a redrive cannot flood the workers. Default unlimited. */
  ratePerSec?: number;
  note?: string;
}

export interface HospitalReport {
  generatedAt: string;
  total: number;
  byReason: Record<string, number>;
  byTopic: Record<string, number>;
  /** Most frequent last errors, `Name: message` → count. */
  topErrors: { error: string; count: number }[];
  records: {
    hid: string;
    id: string;
    topic: string;
    group: string;
    reason: string;
    attempts: number;
    lastError: string;
    lastWorker: string;
    admittedAt: string;
  }[];
}

/**
 * The error hospital: failed messages kept with their whole history. Nothing leaves it except by
 * retry, ignore or purge — each an explicit act by code or an operator.
 */
export class Hospital {
  constructor(private readonly queue: Queue) {}

  list(filter: HospitalFilter = {}): Promise<HospitalRecord[]> {
    return this.queue.driver.hospitalList(filter);
  }

  /** One record by hospital id or message id (the newest admission of that message). */
  async show(idOrHid: string): Promise<HospitalRecord> {
    const [record] = await this.queue.driver.hospitalList({ ids: [idOrHid], state: 'any', limit: 1 });
    if (!record) throw new LadingError('NOT_FOUND', `no hospital record ${JSON.stringify(idOrHid)}`, { hint: 'list records with `lading hospital list --state any`' });
    return record;
  }

  /** Re-enqueue open records with attempts reset; rate-limited. Returns the records as retried. */
  async retry(filter: HospitalFilter, options: RetryOptions = {}): Promise<HospitalRecord[]> {
    if (options.toTopic !== undefined) await this.queue.topic(options.toTopic);
    const gap = options.ratePerSec && options.ratePerSec > 0 ? 1000 / options.ratePerSec : 0;
    return this.act({ ...filter, state: 'open' }, async (r) => {
      const done = await this.queue.driver.hospitalRetry(r.hid, { toTopic: options.toTopic, note: options.note });
      if (done) this.queue.events.emit('published', options.toTopic ?? r.topic);
      if (gap) await sleep(gap);
      return done;
    });
  }

  /** Resolve open records without handling them. */
  ignore(filter: HospitalFilter, note?: string): Promise<HospitalRecord[]> {
    return this.act({ ...filter, state: 'open' }, (r) => this.queue.driver.hospitalIgnore(r.hid, note));
  }

  /**
   * Delete records for good. Only resolved (retried / ignored) records unless the filter names
   * `state: 'open'` or `'any'` explicitly: purging an open record drops its message.
   */
  async purge(filter: HospitalFilter): Promise<number> {
    const records = await this.act({ ...filter, state: filter.state ?? 'resolved' }, async (r) => ((await this.queue.driver.hospitalPurge(r.hid)) ? r : undefined));
    return records.length;
  }

  /** A summary for a human: Markdown (default) or JSON; POSTed to `webhook` when given. */
  async report(filter: HospitalFilter = {}, options: { format?: 'markdown' | 'json'; webhook?: string } = {}): Promise<string> {
    const records = await this.list({ ...filter, limit: filter.limit ?? 10_000 });
    const report = buildReport(records);
    const text = options.format === 'json' ? JSON.stringify(report, null, 2) : renderMarkdown(report, filter);
    if (options.webhook) {
      const response = await fetch(options.webhook, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ text: renderMarkdown(report, filter), report }),
      }).catch((e: unknown) => {
        throw new LadingError('BACKEND', `webhook ${options.webhook} did not answer: ${(e as Error).message}`, { hint: 'check the URL and that the service is reachable from this node' });
      });
      if (!response.ok) throw new LadingError('BACKEND', `webhook ${options.webhook} answered ${response.status} ${response.statusText}`);
    }
    return text;
  }

  /** Apply `fn` to every record the filter selects, page by page (a filter can select millions). */
  private async act(filter: HospitalFilter, fn: (r: HospitalRecord) => Promise<HospitalRecord | undefined>): Promise<HospitalRecord[]> {
    const out: HospitalRecord[] = [];
    const limit = filter.limit ?? Number.POSITIVE_INFINITY;
    const seen = new Set<string>();
    // Act on the records admitted before the act began: a retry of messages that fail again admits
    // new records while it runs, and chasing those would redrive them forever.
    const startedAt = Date.now();
    const snapshot: HospitalFilter = { ...filter, until: Math.min(filter.until ?? startedAt, startedAt) };
    while (out.length < limit) {
      const page = (await this.list({ ...snapshot, limit: Math.min(500, limit - out.length) })).filter((r) => !seen.has(r.hid));
      if (page.length === 0) break;
      for (const r of page) {
        seen.add(r.hid);
        const done = await fn(r);
        if (done) out.push(done);
      }
    }
    return out;
  }
}

export function buildReport(records: HospitalRecord[]): HospitalReport {
  const byReason: Record<string, number> = {};
  const byTopic: Record<string, number> = {};
  const errors = new Map<string, number>();
  for (const r of records) {
    byReason[r.reason] = (byReason[r.reason] ?? 0) + 1;
    byTopic[r.topic] = (byTopic[r.topic] ?? 0) + 1;
    const e = lastError(r);
    errors.set(e, (errors.get(e) ?? 0) + 1);
  }
  return {
    generatedAt: new Date().toISOString(),
    total: records.length,
    byReason,
    byTopic,
    topErrors: [...errors].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([error, count]) => ({ error, count })),
    records: records.map((r) => ({
      hid: r.hid,
      id: r.id,
      topic: r.topic,
      group: r.group,
      reason: r.reason,
      attempts: r.errors.length,
      lastError: lastError(r),
      lastWorker: r.errors.at(-1)?.worker ?? '',
      admittedAt: new Date(r.admittedAt).toISOString(),
    })),
  };
}

function lastError(r: HospitalRecord): string {
  const e = r.errors.at(-1);
  return e ? `${e.name}: ${e.message}` : '(no error recorded)';
}

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\s+/g, ' ').slice(0, 120);
}

export function renderMarkdown(report: HospitalReport, filter: HospitalFilter = {}): string {
  const lines = [`# lading error hospital: ${report.total} ${filter.state && filter.state !== 'open' ? filter.state : 'open'} record${report.total === 1 ? '' : 's'}`, '', `Generated ${report.generatedAt}.`, ''];
  if (report.total === 0) return [...lines, 'Nothing to report: the hospital is empty.', ''].join('\n');
  lines.push(`By reason: ${Object.entries(report.byReason).map(([k, v]) => `${k} ${v}`).join(', ')}.`);
  lines.push(`By topic: ${Object.entries(report.byTopic).map(([k, v]) => `${k} ${v}`).join(', ')}.`, '');
  lines.push('## Most frequent errors', '', '| count | error |', '| ---: | --- |');
  for (const e of report.topErrors) lines.push(`| ${e.count} | ${cell(e.error)} |`);
  lines.push('', '## Records', '', '| hid | message | topic / group | reason | attempts | last error | admitted |', '| --- | --- | --- | --- | ---: | --- | --- |');
  for (const r of report.records.slice(0, 200)) lines.push(`| ${r.hid} | ${cell(r.id)} | ${r.topic} / ${r.group} | ${r.reason} | ${r.attempts} | ${cell(r.lastError)} | ${r.admittedAt} |`);
  if (report.records.length > 200) lines.push('', `… and ${report.records.length - 200} more (use --json for all).`);
  lines.push('', 'Retry: `lading hospital retry <hid>` (or `--topic T --reason failed`); resolve without handling: `lading hospital ignore <hid>`.', '');
  return lines.join('\n');
}
