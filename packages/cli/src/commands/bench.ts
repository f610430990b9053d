import type { Command } from 'commander';
import type { Cli } from '../context.js';
import { action, examples, positiveInt, withJson } from './shared.js';

/**
 * `lading bench queue|store`: measure the backends this node is configured with (its queue, its store) in
 * place, e.g. a Lustre mount or an on-prem S3 endpoint before a big job. A file store is measured beside
 * plain `fs` writes and reads of the same bytes in the same directory, and printed as a ratio; the
 * repository's `pnpm bench` compares lading with raw libraries on this machine instead.
 */

interface QueueBenchOptions {
  messages: number;
  concurrency: number;
  batch: number;
}
interface StoreBenchOptions {
  size: string;
  rounds: number;
}

/** One measured line: `name: value unit (ratio× baseline)`. */
export interface BenchLine {
  name: string;
  value: number;
  unit: string;
  baseline?: { name: string; value: number; ratio: number };
}

export function registerBench(program: Command): void {
  const bench = program
    .command('bench')
    .description('measure this node\'s configured queue and store in place (throughput, with a plain-fs baseline for file stores)');
  examples(bench, ['lading bench queue --messages 20000', 'lading bench store --store file:/lustre/proj/tmp --size 4GiB', 'lading bench store --store "s3://bucket/tmp?endpoint=http://10.0.0.5:9000" --json']);

  const queue = bench
    .command('queue')
    .description('publish N messages (durable, in batches) to a fresh topic, then consume and ack them all: messages per second')
    .option('-n, --messages <n>', 'messages to move', positiveInt, 10_000)
    .option('-c, --concurrency <n>', 'consumer concurrency', positiveInt, 16)
    .option('--batch <n>', 'messages per publishMany', positiveInt, 100);
  withJson(queue);
  examples(queue, ['lading bench queue', 'lading --queue kafka://kafka1:9092 bench queue --messages 100000 --json']);
  action<QueueBenchOptions>(queue, benchQueue);

  const store = bench
    .command('store')
    .description('write, read back (checksum verified) and delete one object of SIZE in the configured store (--store); a file store also beside plain fs of the same bytes')
    .option('--size <bytes>', 'object size, e.g. 256MiB, 4GiB (streamed: memory stays small)', '256MiB')
    .option('--rounds <n>', 'rounds (the median is printed)', positiveInt, 3);
  withJson(store);
  examples(store, ['lading bench store --store file:/mnt/lustre/proj/tmp --size 4GiB', 'lading bench store --store gs://bucket/tmp --size 1GiB --json']);
  action<StoreBenchOptions>(store, benchStore);
}

function print(cli: Cli, lines: BenchLine[], context: Record<string, unknown>): void {
  for (const l of lines) {
    const value = l.value >= 100 ? Math.round(l.value).toLocaleString('en-US') : l.value.toFixed(1);
    cli.out.line(`${l.name}: ${value} ${l.unit}${l.baseline ? ` (${l.baseline.ratio.toFixed(2)}× ${l.baseline.name})` : ''}`);
  }
  cli.out.result({ ...context, results: lines });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function benchQueue(cli: Cli, o: QueueBenchOptions): Promise<void> {
  const queue = await cli.queue();
  const topic = `lading.bench.${Date.now().toString(36)}-${process.pid}`;
  await queue.createTopic(topic, { maxAttempts: 1 });
  const body = { path: 'file:/data/shard-00001.bin', start: 0, end: 268435456, params: { tokenizer: 'bpe' } };
  const t0 = performance.now();
  for (let i = 0; i < o.messages; i += o.batch) {
    const n = Math.min(o.batch, o.messages - i);
    await queue.publishMany(topic, Array.from({ length: n }, (_, j) => ({ body, key: `k${(i + j) % 64}` })));
  }
  const publishS = (performance.now() - t0) / 1000;
  let done = 0;
  const t1 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const consumer = queue.consume(topic, { group: 'lading.bench', concurrency: o.concurrency }, async () => {
      if (++done === o.messages) resolve();
    });
    consumer.on('error', reject);
    cli.onClose(() => consumer.close());
  });
  const consumeS = (performance.now() - t1) / 1000;
  print(cli, [
    { name: `queue: durable publishMany(${o.batch})`, value: o.messages / publishS, unit: 'msgs/s' },
    { name: `queue: consume+ack, concurrency ${o.concurrency}`, value: o.messages / consumeS, unit: 'msgs/s' },
  ], { queue: cli.config().queue, topic, messages: o.messages });
}

async function benchStore(cli: Cli, o: StoreBenchOptions): Promise<void> {
  const { parseBytes, LadingError } = await import('@lading/core');
  const { openStore, FileStore } = await import('@lading/storage');
  const { createHash, randomBytes } = await import('node:crypto');
  const { Readable, Writable } = await import('node:stream');
  const { pipeline } = await import('node:stream/promises');
  const fs = await import('node:fs');
  const { join } = await import('node:path');

  const size = parseBytes(o.size, '--size');
  const uri = cli.config().store;
  if (uri === undefined) throw new LadingError('BAD_ARGUMENT', 'lading bench store needs a store', { hint: 'give one with --store file:/path or s3://bucket/prefix (or LADING_STORE)' });
  const store = await openStore(uri, { cwd: cli.cwd });
  cli.onClose(() => store.close());

  // The same 1 MiB of random bytes, repeated: cheap to produce, incompressible enough for any backend.
  const block = randomBytes(1024 * 1024);
  const source = () => {
    let left = size;
    return new Readable({
      read() {
        if (left <= 0) return void this.push(null);
        const n = Math.min(left, block.length);
        left -= n;
        this.push(n === block.length ? block : block.subarray(0, n));
      },
    });
  };
  const hashSink = (hash: ReturnType<typeof createHash>) => new Writable({ write(chunk: Buffer, _e, cb) { hash.update(chunk); cb(); } });

  // Plain fs beside a file store: in its root directory, written, fsynced, read back and hashed.
  const root = store instanceof FileStore ? store.root : undefined;
  const key = `.lading/bench/${Date.now().toString(36)}-${process.pid}.bin`;
  const rows = { write: [] as number[], read: [] as number[], fsWrite: [] as number[], fsRead: [] as number[] };
  try {
    const viaStore = async () => {
      let t = performance.now();
      await store.write(key, source(), { sizeHint: size });
      rows.write.push(size / ((performance.now() - t) / 1000));
      t = performance.now();
      await pipeline(await store.read(key), hashSink(createHash('sha256')));
      rows.read.push(size / ((performance.now() - t) / 1000));
      await store.delete(key);
    };
    const viaFs = async (dir: string) => {
      const path = join(dir, `.lading-bench-${process.pid}.tmp`);
      fs.mkdirSync(dir, { recursive: true });
      let t = performance.now();
      const fd = fs.openSync(path, 'w');
      await pipeline(source(), fs.createWriteStream(path, { fd, autoClose: false }));
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      rows.fsWrite.push(size / ((performance.now() - t) / 1000));
      t = performance.now();
      await pipeline(fs.createReadStream(path, { highWaterMark: 1024 * 1024 }), hashSink(createHash('sha256')));
      rows.fsRead.push(size / ((performance.now() - t) / 1000));
      fs.rmSync(path, { force: true });
    };
    // Interleaved, the order swapped every round: neither side always gets the warmer page cache.
    for (let r = 0; r < o.rounds; r++) {
      if (root === undefined) await viaStore();
      else if (r % 2 === 0) { await viaStore(); await viaFs(root); }
      else { await viaFs(root); await viaStore(); }
    }
  } finally {
    await store.delete(key).catch(() => false);
  }
  const MiB = 1024 * 1024;
  const line = (name: string, xs: number[], base: number[] | undefined, baseName: string): BenchLine => {
    const value = median(xs) / MiB;
    if (!base || base.length === 0) return { name, value, unit: 'MiB/s' };
    const b = median(base) / MiB;
    return { name, value, unit: 'MiB/s', baseline: { name: baseName, value: b, ratio: value / b } };
  };
  print(cli, [
    line(`store: streamed write of ${o.size}`, rows.write, rows.fsWrite, 'plain fs write + fsync'),
    line(`store: checksummed read of ${o.size}`, rows.read, rows.fsRead, 'plain fs read + sha256'),
  ], { store: store.uri, size, rounds: o.rounds });
}
