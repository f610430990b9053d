import type { Command } from 'commander';
import type { PublishInput, PublishResult } from '@lading/core';
import type { Cli } from '../context.js';
import { describeJsonProblem, parseJson } from '../json.js';
import { action, collect, examples, positiveInt, withJson } from './shared.js';

interface PublishOptions {
  file?: string;
  lines?: boolean;
  id?: string;
  key?: string;
  type?: string;
  header?: string[];
  ttl?: string;
  delay?: string;
  fireAndForget?: boolean;
  batch?: number;
}

export function registerPublish(program: Command): void {
  const cmd = program
    .command('publish')
    .description('publish a message to a topic (acknowledged: returns once it is durable), or many with --lines')
    .argument('<topic>', 'topic to publish to (created with the default policy on first use)')
    .argument('[body]', 'the message body as JSON text, or - to read it from stdin')
    .option('-f, --file <path>', 'read the body (JSON) from a file; with --lines, one message per line')
    .option('--lines', 'JSON Lines: one message body per line, from --file or stdin; all lines are checked before any is published')
    .option('--id <id>', 'message id (default: a new UUID); publishing the same id again within the dedup window is a no-op')
    .option('--key <key>', 'ordering key: messages with the same key are handled in order, one at a time per group')
    .option('--type <type>', 'message type, used by topic routes (e.g. image)')
    .option('-H, --header <name=value>', 'a header (repeatable)', collect)
    .option('--ttl <duration>', 'time to live, e.g. 30s, 1h: never handled after that (overrides the topic policy)')
    .option('--delay <duration>', 'deliver no earlier than this from now, e.g. 5s')
    .option('--fire-and-forget', 'return at once without waiting for durability')
    .option('--batch <n>', 'messages per durable write with --lines (default 500)', positiveInt);
  withJson(cmd);
  examples(cmd, [
    `lading publish images '{"path":"s3://bucket/cat.png"}' --type image --key cat`,
    'lading publish images --file body.json --ttl 1h',
    'cat tasks.jsonl | lading publish tasks - --lines',
    `echo '{"n":1}' | lading publish tasks - --header tenant=a --json`,
  ]);
  action<PublishOptions, [string, string | undefined]>(cmd, publish);
}

async function publish(cli: Cli, options: PublishOptions, topic: string, bodyArg: string | undefined): Promise<void> {
  const { LadingError, parseDuration, formatBytes } = await import('@lading/core');
  if (bodyArg !== undefined && bodyArg !== '-' && options.file !== undefined) {
    throw new LadingError('BAD_ARGUMENT', 'give the body either as an argument or with --file, not both', { hint: 'lading publish <topic> --file body.json' });
  }
  if (options.lines && bodyArg !== undefined && bodyArg !== '-') {
    throw new LadingError('BAD_ARGUMENT', 'with --lines the bodies come from --file or stdin, not from an argument', { hint: 'cat tasks.jsonl | lading publish tasks - --lines' });
  }
  if (options.lines && options.id !== undefined) {
    throw new LadingError('BAD_ARGUMENT', '--id names one message; with --lines every message needs its own id', { hint: 'drop --id (ids are generated), or publish messages one by one' });
  }
  if (bodyArg === undefined && options.file === undefined && !options.lines) {
    throw new LadingError('BAD_ARGUMENT', 'no message body given', { hint: `give a JSON body (lading publish ${topic} '{"path":"a.png"}'), --file body.json, or - to read stdin; an empty body is 'null'` });
  }

  const common: PublishInput = {};
  if (options.key !== undefined) common.key = options.key;
  if (options.type !== undefined) common.type = options.type;
  if (options.header?.length) common.headers = parseHeaders(options.header, LadingError);
  if (options.ttl !== undefined) common.ttlMs = parseDuration(options.ttl, '--ttl');
  if (options.delay !== undefined) common.delayMs = parseDuration(options.delay, '--delay');

  // Read and check every body before publishing anything: bad input publishes nothing.
  const source = options.file ?? 'stdin';
  const text = options.file !== undefined ? await readFileText(options.file, LadingError) : bodyArg === undefined || bodyArg === '-' ? await readStdin() : bodyArg;
  const label = options.file !== undefined ? options.file : bodyArg === '-' || bodyArg === undefined ? 'stdin' : 'the body';
  const bodies = options.lines ? parseLines(text, source, LadingError) : [parseBody(text, label, LadingError)];
  if (bodies.length === 0) throw new LadingError('BAD_MESSAGE', `${source} holds no messages (no non-empty lines)`, { hint: 'JSON Lines: one JSON value per line' });

  const queue = await cli.queue({ store: true });
  queue.events.on('error', (e: unknown) => cli.out.warn(`fire-and-forget publish failed: ${(e as Error).message}`));
  if (!queue.store) {
    const tooBig = bodies.map((b, i) => ({ line: b.line, size: Buffer.byteLength(JSON.stringify(b.value) ?? ''), i })).filter((b) => b.size > queue.inlineLimit);
    if (tooBig.length > 0) {
      const first = tooBig[0]!;
      const where = options.lines ? `${source} line ${first.line}: ` : '';
      throw new LadingError('TOO_LARGE', `${where}message body is ${formatBytes(first.size)}, over the inline limit of ${formatBytes(queue.inlineLimit)}, and no store is configured for the claim check${tooBig.length > 1 ? ` (${tooBig.length} bodies are too large)` : ''}; nothing was published`, {
        hint: 'configure a store (--store file:./data, LADING_STORE, or `store` in lading.config) so large bodies travel by reference, or put the bytes in storage and publish their URI',
      });
    }
  }

  const results: PublishResult[] = [];
  const fireAndForget = options.fireAndForget === true;
  if (!options.lines) {
    const input: PublishInput = { ...common, body: bodies[0]!.value };
    if (options.id !== undefined) input.id = options.id;
    results.push(await queue.publish(topic, input.body, { ...input, fireAndForget }));
  } else {
    const batch = options.batch ?? 500;
    const progress = await cli.out.progress(bodies.length, `publishing to ${topic}`);
    try {
      for (let i = 0; i < bodies.length; i += batch) {
        const chunk = bodies.slice(i, i + batch).map((b): PublishInput => ({ ...common, body: b.value }));
        results.push(...(await queue.publishMany(topic, chunk, { fireAndForget })));
        progress.increment(chunk.length);
      }
    } finally {
      progress.stop();
    }
  }

  const duplicates = results.filter((r) => r.duplicate).length;
  if (cli.json) {
    cli.out.result({
      topic,
      published: results.length - duplicates,
      duplicates,
      fireAndForget,
      messages: results.map((r) => ({ id: r.id, topic: r.topic, duplicate: r.duplicate, ...(r.ref ? { ref: r.ref } : {}) })),
    });
    return;
  }
  const verb = fireAndForget ? 'sent' : 'published';
  if (results.length === 1) {
    const r = results[0]!;
    if (r.duplicate) {
      cli.out.line(`${r.id} was already published to ${r.topic} within the dedup window: nothing written`);
      return;
    }
    const routed = r.topic !== topic ? ` (routed to ${r.topic})` : '';
    cli.out.line(`${verb} ${r.id} to ${topic}${routed}${fireAndForget ? ' (fire and forget: not waiting for durability)' : ''}`);
    if (r.ref) cli.out.line(`  body by claim check: ${r.ref.uri} (${formatBytes(r.ref.size)})`);
    return;
  }
  const routedTo = new Set(results.filter((r) => r.topic !== topic).map((r) => r.topic));
  const refs = results.filter((r) => r.ref).length;
  cli.out.line(
    `${verb} ${results.length - duplicates} message${results.length - duplicates === 1 ? '' : 's'} to ${topic}` +
      (duplicates ? ` (${duplicates} duplicate${duplicates === 1 ? '' : 's'} skipped)` : '') +
      (routedTo.size ? ` (some routed to ${[...routedTo].join(', ')})` : '') +
      (refs ? `; ${refs} by claim check` : ''),
  );
}

type ErrorClass = typeof import('@lading/core').LadingError;

interface Body {
  value: unknown;
  line: number;
}

export function parseHeaders(pairs: string[], LadingError: ErrorClass): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new LadingError('BAD_ARGUMENT', `--header ${JSON.stringify(pair)} is not name=value`, { hint: 'e.g. --header tenant=acme --header priority=high' });
    headers[pair.slice(0, eq).trim()] = pair.slice(eq + 1);
  }
  return headers;
}

function parseBody(text: string, label: string, LadingError: ErrorClass): Body {
  const parsed = parseJson(text);
  if (parsed.ok) return { value: parsed.value, line: 1 };
  const multiLine = text.trim().includes('\n');
  const severalValues = multiLine && parsed.problem.message.includes('after the end of the JSON value');
  const fromArgument = label === 'the body';
  throw new LadingError('BAD_MESSAGE', `${label} is not valid JSON (${describeJsonProblem(parsed.problem, multiLine)}); nothing was published`, {
    hint: severalValues
      ? 'it holds more than one JSON value: for one message per line use --lines'
      : fromArgument
        ? `quote the body for your shell, e.g. '{"path":"a.png"}'; a string body is quoted JSON: '"hello"'`
        : 'fix the JSON (no comments, no trailing commas, strings in double quotes)',
  });
}

/** JSON Lines: every non-empty line one body; every bad line is reported (by number) before anything is published. */
export function parseLines(text: string, source: string, LadingError: ErrorClass): Body[] {
  const bodies: Body[] = [];
  const bad: string[] = [];
  let badCount = 0;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const parsed = parseJson(line);
    if (parsed.ok) bodies.push({ value: parsed.value, line: i + 1 });
    else {
      badCount++;
      if (bad.length < 3) bad.push(`line ${i + 1}, ${describeJsonProblem(parsed.problem, false)}`);
    }
  }
  if (badCount > 0) {
    throw new LadingError('BAD_MESSAGE', `${source}: ${badCount} line${badCount === 1 ? ' is' : 's are'} not valid JSON (${bad.join('; ')}${badCount > bad.length ? '; …' : ''}); nothing was published`, {
      hint: 'JSON Lines: one complete JSON value per line, e.g. {"path":"a.png"}',
    });
  }
  return bodies;
}

async function readFileText(path: string, LadingError: ErrorClass): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new LadingError('NOT_FOUND', `--file ${path} does not exist`, { hint: 'check the path (relative paths are relative to the working directory)' });
    throw new LadingError('BAD_ARGUMENT', `cannot read --file ${path}: ${(e as Error).message}`);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
