import type { Command } from 'commander';
import type { Handler, HandlerContext, HospitalRecord, Message } from '@lading/core';
import type { Cli } from '../context.js';
import { action, examples, onStopSignals, positiveInt, withJson } from './shared.js';

interface ConsumeOptions {
  group: string;
  handler?: string;
  concurrency: number;
  max?: number;
  timeout?: string;
  idleExit?: string;
  grace: string;
}

export function registerConsume(program: Command): void {
  const cmd = program
    .command('consume')
    .description('consume a topic as a member of a consumer group: print the messages, or run a handler module on each')
    .argument('<topic>', 'topic to consume')
    .requiredOption('-g, --group <name>', 'consumer group: every group sees every message; inside a group each message goes to one consumer')
    .option('--handler <module>', 'JavaScript module whose default export (or `handler` export) is called as handler(message, ctx); a throw means retry')
    .option('-c, --concurrency <n>', 'messages handled at once', positiveInt, 1)
    .option('--max <n>', 'stop after handling N deliveries (retries count)', positiveInt)
    .option('--timeout <duration>', 'abort a handler that runs longer than this (the attempt fails), e.g. 10s')
    .option('--idle-exit <duration>', 'stop once nothing has been handled for this long, e.g. 2s (for scripts and tests)')
    .option('--grace <duration>', 'on SIGINT / SIGTERM: how long in-flight handlers may finish before they are handed back', '30s');
  withJson(cmd);
  examples(cmd, [
    'lading consume images --group thumbnails --max 10',
    'lading consume images --group thumbnails --handler ./thumbnail.js --concurrency 8',
    'lading consume images --group audit --json --idle-exit 2s > messages.jsonl',
    '',
    '# thumbnail.js',
    '# export default async function (message, ctx) { const { path } = await message.json(); /* ... */ }',
  ]);
  action<ConsumeOptions, [string]>(cmd, consume);
}

async function consume(cli: Cli, options: ConsumeOptions, topic: string): Promise<void> {
  const { parseDuration, formatBytes } = await import('@lading/core');
  const timeoutMs = options.timeout === undefined ? undefined : parseDuration(options.timeout, '--timeout');
  const idleMs = options.idleExit === undefined ? undefined : parseDuration(options.idleExit, '--idle-exit');
  const graceMs = parseDuration(options.grace, '--grace');
  const userHandler = options.handler === undefined ? undefined : await loadHandler(options.handler, cli.cwd);
  const queue = await cli.queue({ store: 'eager' });
  const out = cli.out;

  const budget = options.max ?? Number.POSITIVE_INFINITY;
  let started = 0;
  let handled = 0;
  let lastActivity = Date.now();
  const running = new Set<Promise<unknown>>();
  let stop: ((reason: 'max' | 'idle' | 'signal') => void) | undefined;

  const print = async (m: Message): Promise<void> => {
    const ref = m.envelope.ref;
    if (cli.json) {
      out.jsonLine({ id: m.id, topic: m.topic, ...(m.key !== undefined ? { key: m.key } : {}), ...(m.type !== undefined ? { type: m.type } : {}), headers: m.headers, attempt: m.attempt, publishedAt: new Date(m.envelope.publishedAt).toISOString(), ...(ref ? { ref } : { body: m.body ?? null }) });
    } else {
      const meta = [m.type !== undefined ? `type=${m.type}` : '', m.key !== undefined ? `key=${m.key}` : '', m.attempt ? `attempt=${m.attempt + 1}` : '', ...Object.entries(m.headers).map(([k, v]) => `${k}=${v}`)].filter(Boolean);
      const body = ref ? `<claim check ${ref.uri} (${formatBytes(ref.size)})>` : JSON.stringify(m.body ?? null);
      out.line(`${m.id}${meta.length ? ` [${meta.join(' ')}]` : ''} ${body}`);
    }
  };
  const inner: Handler = userHandler ?? ((m) => print(m));

  const handler: Handler = async (message, ctx) => {
    if (started >= budget) {
      // Over the --max budget: hold it until the consumer closes and hands it back (not an attempt).
      return new Promise<never>(() => undefined);
    }
    started++;
    lastActivity = Date.now();
    const run = Promise.resolve().then(() => inner(message, ctx));
    running.add(run);
    try {
      return await run;
    } finally {
      running.delete(run);
      handled++;
      lastActivity = Date.now();
      if (handled >= budget) stop?.('max');
    }
  };

  const consumer = queue.consume(topic, { group: options.group, concurrency: Math.min(options.concurrency, budget), ...(timeoutMs !== undefined ? { timeoutMs } : {}), graceMs, maxPollMs: 100 }, handler);
  consumer.on('error', (e: unknown) => out.warn(`consumer: ${(e as Error).message}`));
  if (userHandler) {
    consumer.on('done', (m: Message) => (cli.json ? out.jsonLine({ event: 'done', id: m.id }) : out.line(`done      ${m.id}`)));
    consumer.on('retry', (r: { id: string; attempt: number; delayMs: number; error: { name: string; message: string } }) =>
      cli.json
        ? out.jsonLine({ event: 'retry', id: r.id, attempt: r.attempt + 1, delayMs: r.delayMs, error: `${r.error.name}: ${r.error.message}` })
        : out.line(`retry     ${r.id} attempt ${r.attempt + 1} failed: ${r.error.name}: ${r.error.message} (next try in ${r.delayMs} ms)`),
    );
    consumer.on('hospital', (r: HospitalRecord) => {
      const last = r.errors.at(-1);
      const error = last ? `${last.name}: ${last.message}` : '';
      if (cli.json) out.jsonLine({ event: 'hospital', id: r.id, hid: r.hid, reason: r.reason, attempts: r.errors.length, error });
      else out.line(`hospital  ${r.id} (${r.reason} after ${r.errors.length} attempt${r.errors.length === 1 ? '' : 's'}): ${error} — see: lading hospital show ${r.hid}`);
    });
  }

  let removeSignals: (() => void) | undefined;
  const reason = await new Promise<'max' | 'idle' | 'signal'>((resolve) => {
    let idleTimer: NodeJS.Timeout | undefined;
    stop = (why) => {
      stop = undefined;
      clearInterval(idleTimer);
      resolve(why);
    };
    if (idleMs !== undefined) {
      idleTimer = setInterval(() => {
        if (consumer.active === 0 && running.size === 0 && Date.now() - lastActivity >= idleMs) stop?.('idle');
      }, Math.max(20, Math.min(250, idleMs / 4)));
    }
    removeSignals = onStopSignals((t) => out.note(t), 'unacked messages come back after their lease', (sig) => {
      out.note(`${sig}: finishing in-flight messages (up to ${options.grace}); press Ctrl-C again to exit at once`);
      stop?.('signal');
    });
  });

  if (reason === 'signal') {
    await consumer.close({ graceMs });
  } else {
    // Let the deliveries within the budget finish, then hand back anything fetched beyond it.
    await Promise.allSettled([...running]);
    await consumer.close({ graceMs: 0 });
  }
  removeSignals?.();

  const c = consumer.counts;
  if (cli.json) {
    if (userHandler) out.jsonLine({ event: 'summary', handled, done: c.done, retried: c.retried, hospital: c.hospital, stoppedBy: reason });
  } else {
    const parts = userHandler ? `: ${c.done} done, ${c.retried} to retry, ${c.hospital} to the hospital` : '';
    out.note(`${userHandler ? 'handled' : 'consumed'} ${handled} message${handled === 1 ? '' : 's'} from ${topic} as group ${options.group}${parts} (stopped: ${reason === 'max' ? `--max ${options.max}` : reason === 'idle' ? `idle for ${options.idleExit}` : 'signal'})`);
  }
}

/** Load a handler module: its default export, a `handler` export, or a default object with `handler`. */
export async function loadHandler(path: string, cwd: string): Promise<Handler> {
  const { LadingError } = await import('@lading/core');
  const { existsSync } = await import('node:fs');
  const { resolve } = await import('node:path');
  const { pathToFileURL } = await import('node:url');
  const file = resolve(cwd, path);
  if (!existsSync(file)) throw new LadingError('NOT_FOUND', `handler module ${path} does not exist (looked for ${file})`, { hint: 'give the path of a JavaScript module, e.g. --handler ./handler.js (compile TypeScript first)' });
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    const err = e as Error;
    const where = /(file:\/\/\S+?:\d+)/.exec(err.stack ?? '')?.[1];
    throw new LadingError('BAD_ARGUMENT', `handler module ${path} failed to load: ${err.name}: ${err.message}${where ? ` (at ${where.replace(/^file:\/\//, '')})` : ''}`, {
      hint: 'the module must be JavaScript that Node can import (ESM .js/.mjs or CommonJS .cjs); run `node <module>` to see the problem',
    });
  }
  const candidates = [mod.default, mod.handler, (mod.default as { handler?: unknown } | undefined)?.handler];
  const fn = candidates.find((c): c is (message: Message, ctx: HandlerContext) => unknown => typeof c === 'function');
  if (!fn) {
    throw new LadingError('BAD_ARGUMENT', `handler module ${path} exports no handler function (exports: ${Object.keys(mod).join(', ') || 'none'})`, {
      hint: 'export default async function (message, ctx) { ... }  — or —  export async function handler(message, ctx) { ... }',
    });
  }
  return fn as Handler;
}
