import type { Command } from 'commander';
import type { HospitalRecord, Message, Queue } from '@lading/core';
import type { Cli } from '../context.js';
import { action, examples, withJson } from './shared.js';

interface DemoOptions {
  dir?: string;
}

export function registerDemo(program: Command): void {
  const cmd = program
    .command('demo')
    .description('run lading end to end on the embedded default (SQLite queue + local store), no server: publish, pub/sub, routing, retries, the error hospital, a retry, the claim check, a sharded job run by a worker')
    .option('--dir <dir>', 'keep the demo queue and store in DIR to explore afterwards (default: a temporary directory, removed at the end)');
  withJson(cmd);
  examples(cmd, ['lading demo', 'lading demo --dir ./demo && lading hospital list --queue sqlite:./demo/queue.db --state any']);
  action<DemoOptions>(cmd, demo);
}

async function until(what: string, condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Consume `expected` messages of a topic as `group`, then leave. */
async function receive(queue: Queue, topic: string, group: string, expected: number, handler?: (m: Message) => Promise<void>): Promise<Message[]> {
  const seen: Message[] = [];
  const consumer = queue.consume(topic, { group, maxPollMs: 20 }, async (m) => {
    await handler?.(m);
    seen.push(m);
  });
  await until(`${expected} message(s) on ${topic} for group ${group}`, () => seen.length >= expected);
  await consumer.close();
  return seen;
}

async function demo(cli: Cli, o: DemoOptions): Promise<void> {
  const started = Date.now();
  const { openQueue, formatBytes, LadingError } = await import('@lading/core');
  const { existsSync } = await import('node:fs');
  const { mkdir, mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join, resolve } = await import('node:path');
  const { closeStore, openConfiguredStore } = await import('../store.js');

  const keep = o.dir !== undefined;
  const dir = keep ? resolve(cli.cwd, o.dir!) : await mkdtemp(join(tmpdir(), 'lading-demo-'));
  if (keep && existsSync(join(dir, 'queue.db'))) {
    throw new LadingError('CONFLICT', `${o.dir} already holds a demo queue (queue.db)`, { hint: `remove it (rm -r ${o.dir}) or choose another --dir` });
  }
  await mkdir(dir, { recursive: true });
  const queueUri = `sqlite:${join(dir, 'queue.db')}`;
  // TODO(storage): the claim check step needs @lading/storage; without it the demo skips that step.
  const store = await openConfiguredStore(`file:${join(dir, 'store')}`, { required: false }).catch(() => undefined);
  const queue = await openQueue({ uri: queueUri, ...(store ? { store } : {}) });
  const say = (line = '') => cli.out.line(line);
  const summary: Record<string, unknown> = { dir, queue: queueUri, store: store?.uri ?? null, kept: keep };

  try {
    say(`lading demo: embedded SQLite queue and local store in ${dir}, no server`);
    say('');

    // 1. Publish: acknowledged (returns once durable) and fire-and-forget (returns at once).
    say('1. publish');
    const acked = await queue.publish('orders', { sku: 'A-100', qty: 2 }, { id: 'order-1' });
    say(`   acknowledged     ${acked.id} -> orders (returned once it was durable)`);
    const fired = await queue.publish('orders', { sku: 'B-200', qty: 1 }, { id: 'order-2', fireAndForget: true });
    say(`   fire-and-forget  ${fired.id} -> orders (returned at once)`);
    const shipped = await receive(queue, 'orders', 'shipping', 2);
    say(`   group shipping received ${shipped.map((m) => m.id).join(', ')}`);
    summary.publish = { acknowledged: acked.id, fireAndForget: fired.id, received: shipped.map((m) => m.id) };

    // 2. Pub/sub: two consumer groups, each sees every message.
    say('2. pub/sub: every consumer group sees every message');
    await queue.publishMany('events', [1, 2, 3].map((n) => ({ id: `event-${n}`, body: { n } })));
    const [audit, billing] = await Promise.all([receive(queue, 'events', 'audit', 3), receive(queue, 'events', 'billing', 3)]);
    say(`   published event-1, event-2, event-3 to events`);
    say(`   group audit   saw ${audit.length}/3: ${audit.map((m) => m.id).join(', ')}`);
    say(`   group billing saw ${billing.length}/3: ${billing.map((m) => m.id).join(', ')}`);
    summary.pubsub = { audit: audit.map((m) => m.id), billing: billing.map((m) => m.id) };

    // 3. Routing: a topic rule sends messages of type image to another topic.
    say('3. routing: topic uploads sends type=image to topic images');
    await queue.createTopic('images');
    await queue.createTopic('uploads', { routes: [{ when: { type: 'image' }, to: 'images' }] });
    const photo = await queue.publish('uploads', { path: 'cat.png' }, { id: 'upload-1', type: 'image' });
    const text = await queue.publish('uploads', { path: 'notes.txt' }, { id: 'upload-2', type: 'text' });
    const [thumbs, indexed] = await Promise.all([receive(queue, 'images', 'thumbnails', 1), receive(queue, 'uploads', 'indexer', 1)]);
    say(`   ${photo.id} (type image) -> ${photo.topic}: handled by group thumbnails (${thumbs[0]!.id})`);
    say(`   ${text.id} (type text)  -> ${text.topic}: handled by group indexer (${indexed[0]!.id})`);
    summary.routing = { [photo.id]: photo.topic, [text.id]: text.topic };

    // 4. A failing handler: retried with exponential backoff, then admitted to the hospital.
    say('4. retries: the resize handler fails on cat.png (maxAttempts 3, backoff 100 ms x2, no jitter)');
    await queue.createTopic('resize', { maxAttempts: 3, backoff: { initialMs: 100, multiplier: 2, maxMs: 1000, jitter: 0 } });
    let fixed = false;
    const resized: Message[] = [];
    const attempts: unknown[] = [];
    let admitted: HospitalRecord | undefined;
    const resizer = queue.consume('resize', { group: 'resizer', maxPollMs: 20 }, (m) => {
      if (!fixed) throw new Error(`corrupt PNG header in ${(m.body as { file: string }).file}`);
      resized.push(m);
    });
    resizer.on('retry', (r: { attempt: number; delayMs: number; error: { name: string; message: string } }) => {
      attempts.push({ attempt: r.attempt + 1, error: `${r.error.name}: ${r.error.message}`, retryInMs: r.delayMs });
      say(`   attempt ${r.attempt + 1} failed: ${r.error.name}: ${r.error.message} -> retry in ${r.delayMs} ms`);
    });
    resizer.on('hospital', (record: HospitalRecord) => {
      admitted = record;
      const last = record.errors.at(-1);
      attempts.push({ attempt: record.errors.length, error: last ? `${last.name}: ${last.message}` : '', hospital: record.hid });
      say(`   attempt ${record.errors.length} failed: ${last?.name}: ${last?.message} -> admitted to the hospital as record ${record.hid} (reason ${record.reason})`);
    });
    await queue.publish('resize', { file: 'cat.png' }, { id: 'resize-cat' });
    await until('the failing message to reach the hospital', () => admitted !== undefined);
    const hid = admitted!.hid;
    summary.retries = { attempts, hospitalRecord: hid };

    // 5. The hospital report: Markdown, shortened here.
    say('5. hospital report (Markdown, shortened; full: lading hospital report)');
    const markdown = await queue.hospital.report();
    const lines = markdown.split('\n');
    const head = lines.filter((l) => l.startsWith('# ') || l.startsWith('By reason') || l.startsWith('By topic'));
    const errorsAt = lines.indexOf('## Most frequent errors');
    const errorRows = errorsAt >= 0 ? lines.slice(errorsAt + 2, errorsAt + 5).filter((l) => l.startsWith('|')) : [];
    for (const l of [...head, ...errorRows]) say(`   | ${l}`);
    summary.report = markdown;

    // 6. Fix the handler, retry from the hospital: handled with attempts reset.
    say('6. retry from the hospital after fixing the handler');
    fixed = true;
    const retried = await queue.hospital.retry({ ids: [hid] });
    say(`   $ lading hospital retry ${hid}  ->  retried ${retried.length} message`);
    await until('the retried message to be handled', () => resized.length === 1);
    await resizer.close();
    const record = await queue.hospital.show(hid);
    say(`   resizer handled ${resized[0]!.id} on attempt ${resized[0]!.attempt + 1}; hospital record ${hid} is now ${record.state}`);
    summary.retry = { retried: retried.length, handledOnAttempt: resized[0]!.attempt + 1, recordState: record.state };

    // 7. Claim check: a body over the inline limit travels by reference to the store.
    if (store) {
      say('7. claim check: a 1 MiB body travels by reference, the queue carries only the bill');
      const empty = JSON.stringify({ kind: 'tensor', data: '' });
      const big = { kind: 'tensor', data: 'x'.repeat(1024 * 1024 - Buffer.byteLength(empty)) };
      const published = await queue.publish('tensors', big, { id: 'tensor-1' });
      const ref = published.ref!;
      say(`   ref ${ref.uri}`);
      say(`       ${formatBytes(ref.size)} (${ref.size} bytes), ${ref.checksum.slice(0, 19)}…`);
      // The payload is read inside the handler: once every group has acked, it is deleted from the store.
      let size = 0;
      await receive(queue, 'tensors', 'trainer', 1, async (m) => {
        size = Buffer.byteLength(JSON.stringify(await m.json()));
      });
      say(`   group trainer read it back through the ref: ${formatBytes(size)}, checksum verified`);
      summary.claimCheck = { ref, readBackBytes: size };
    } else {
      say('7. claim check: skipped (the storage package is not available in this build)');
      summary.claimCheck = null;
    }

    // 8. A sharded job: submit, a worker with 2 threads, status, outputs.
    if (store) summary.job = await jobStage(dir, queue, say);
    else {
      say('8. a sharded job: skipped (the storage package is not available in this build)');
      summary.job = null;
    }

    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    summary.seconds = Number(seconds);
    say('');
    say(`done in ${seconds}s.`);
    if (keep) {
      say(`explore: lading hospital list --queue ${queueUri} --state any`);
      if (store) say(`         lading status --queue ${queueUri} --store file:${join(dir, 'store')}`);
    }
    else say('keep the queue to explore it: lading demo --dir ./demo');
    cli.out.result(summary);
  } finally {
    await queue.close();
    await closeStore(store);
    if (!keep) await rm(dir, { recursive: true, force: true });
  }
}

const WORDCOUNT_HANDLER = `// A lading shard handler: runs in a worker thread, once per shard (a newline-aligned byte range).
export default async function wordcount(ctx) {
  let records = 0;
  let words = 0;
  for await (const { line } of ctx.lines()) {
    if (!line) continue;
    const { text } = JSON.parse(line);
    records++;
    words += text.split(/\\s+/).filter(Boolean).length;
  }
  const name = ctx.shard.key.replace(/\\.jsonl$/, '') + '-' + String(ctx.shard.start).padStart(6, '0') + '.json';
  await ctx.write(name, JSON.stringify({ input: ctx.shard.key, start: ctx.shard.start, end: ctx.shard.end, records, words }) + '\\n');
  return { records, words };
}
`;

const WORDCOUNT_SPEC = `# A lading job spec: lading submit wordcount.yaml
name: wordcount
handler: ./wordcount.mjs
inputs: [file:./corpus/*.jsonl]
sharding: { by: bytes, size: 4KiB, align: newline }
output: file:./out
retries: { maxAttempts: 2 }
`;

/** Stage 8: a few generated JSONL files, a job spec and a handler in the demo dir; submit; a 2-thread worker; status; outputs. */
async function jobStage(dir: string, queue: Queue, say: (line?: string) => void): Promise<Record<string, unknown>> {
  const { formatBytes } = await import('@lading/core');
  const { loadJobSpec, startWorker, submit } = await import('@lading/runner');
  const { openStore } = await import('@lading/storage');
  const { mkdir, readdir, readFile, stat, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');

  const words = ['tensor', 'shard', 'lease', 'queue', 'cargo', 'bill', 'node', 'thread', 'byte', 'range', 'lustre', 'slurm'];
  await mkdir(join(dir, 'corpus'), { recursive: true });
  let records = 0;
  let bytes = 0;
  for (let f = 0; f < 3; f++) {
    const lines: string[] = [];
    for (let i = 0; i < 150; i++) {
      const n = 3 + ((i * 7 + f * 5) % 11);
      const text = Array.from({ length: n }, (_, j) => words[(i + j * 3 + f) % words.length]).join(' ');
      lines.push(JSON.stringify({ id: `${f}-${i}`, text }));
    }
    const body = `${lines.join('\n')}\n`;
    records += lines.length;
    bytes += Buffer.byteLength(body);
    await writeFile(join(dir, 'corpus', `part-${f}.jsonl`), body);
  }
  await writeFile(join(dir, 'wordcount.mjs'), WORDCOUNT_HANDLER);
  await writeFile(join(dir, 'wordcount.yaml'), WORDCOUNT_SPEC);
  say(`8. a sharded job: 3 JSONL files (${records} records, ${formatBytes(bytes)}) cut into 4 KiB newline-aligned shards`);

  const jobStore = await openStore(`file:${join(dir, 'store')}`);
  const worker = startWorker({ queue, threads: 2 });
  try {
    const spec = await loadJobSpec(join(dir, 'wordcount.yaml'));
    const job = await submit(spec, { queue, store: jobStore });
    say(`   $ lading submit wordcount.yaml  ->  job ${job.id}: ${job.record.shards} shards from ${job.record.inputs} inputs`);
    const events = { started: 0, done: 0 };
    worker.on('started', () => events.started++);
    worker.on('done', () => events.done++);
    const status = await Promise.race([
      job.wait({ pollMs: 25 }),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('demo: the job did not finish in 20 s')), 20_000).unref()),
    ]);
    say(`   $ lading worker --threads 2     ->  ran ${events.done} shards in 2 worker threads (${queue.identity.label})`);
    say(`   $ lading status ${job.id}  ->  ${status.ok ? 'finished' : 'finished with shards in the hospital'}: done ${status.done}/${status.total}, running ${status.running}, queued ${status.queued}, retrying ${status.retrying}, hospital ${status.hospital}`);
    const outDir = join(dir, 'out');
    const names = (await readdir(outDir)).filter((n) => n.endsWith('.json')).sort();
    let counted = 0;
    let totalWords = 0;
    const outputs: { name: string; size: number; records: number; words: number }[] = [];
    for (const name of names) {
      const r = JSON.parse(await readFile(join(outDir, name), 'utf8')) as { records: number; words: number };
      counted += r.records;
      totalWords += r.words;
      outputs.push({ name, size: (await stat(join(outDir, name))).size, records: r.records, words: r.words });
    }
    say(`   outputs in ${job.record.output} (${names.length} objects, one per shard; ${counted} of ${records} records counted, ${totalWords} words):`);
    const shown = outputs.length > 6 ? [...outputs.slice(0, 3), undefined, ...outputs.slice(-2)] : outputs;
    for (const o of shown) say(o ? `     ${o.name.padEnd(20)} ${String(o.records).padStart(3)} records ${String(o.words).padStart(5)} words` : `     … ${outputs.length - 5} more`);
    return { id: job.id, shards: job.record.shards, inputs: job.record.inputs, bytes: job.record.bytes, records, status, outputs: outputs.map((o) => o.name), counted, words: totalWords };
  } finally {
    await worker.close({ graceMs: 1000 });
    await jobStore.close();
  }
}
