// Test helper: runs librdkafka's mock Kafka cluster (build/mock-broker) as a
// child process on 127.0.0.1. See README.md for what the mock can and cannot do.
import { execFileSync, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface KafkaMockOptions {
  /** Number of brokers, ids 1..N (default 1). */
  brokers?: number;
  /** Topics to create up front (replication factor min(3, brokers)). */
  topics?: { name: string; partitions: number }[];
  /** Partition count of topics auto-created by Metadata/Produce (mock default: 4). */
  defaultPartitions?: number;
  /** Fixed port for broker 1; broker i gets port + i - 1. Default: random free ports. */
  port?: number;
  /** Extra mock-broker flags, e.g. ['--debug', 'mock'] (logs go to the child's stderr, see `stderr`). */
  args?: string[];
  /** How long to wait for the READY line (default 15 s; includes compiling on first use). */
  readyTimeoutMs?: number;
}

export interface KafkaMock {
  /** "127.0.0.1:port" per broker, index i is broker id i + 1. */
  brokers: string[];
  pid: number;
  /** The last 64 KiB the broker wrote to stderr. */
  stderr(): string;
  /** SIGTERM and wait for exit (resolves immediately if already gone). */
  stop(): Promise<void>;
  /** SIGKILL the whole cluster (all data is lost; it is in memory). */
  kill(): void;
  /** Broker closes all connections and refuses new ones (port stays bound; data kept). */
  brokerDown(id: number): Promise<void>;
  brokerUp(id: number): Promise<void>;
  /** Change the controller id reported in Metadata (default 1). */
  setController(id: number): Promise<void>;
  /** Create a topic after start (kafkajs admin.createTopics is unsupported by the mock). */
  createTopic(name: string, partitions: number): Promise<void>;
  /** Add broker RTT (ms) to every response of one broker. */
  setRtt(id: number, ms: number): Promise<void>;
}

const here = fileURLToPath(new URL('.', import.meta.url));

let builtPath: string | undefined;

/** Compiles the mock broker if needed (see build.mjs) and returns the binary path. */
export function buildKafkaMock(): string {
  if (builtPath) return builtPath;
  try {
    const out = execFileSync(process.execPath, [`${here}build.mjs`], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    builtPath = out.trim();
    return builtPath;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`kafka-mock: build failed:\n${e.stderr ?? e.message}`);
  }
}

export async function startKafkaMock(opts: KafkaMockOptions = {}): Promise<KafkaMock> {
  const bin = buildKafkaMock();
  const args: string[] = ['--brokers', String(opts.brokers ?? 1)];
  if (opts.port !== undefined) args.push('--port', String(opts.port));
  if (opts.defaultPartitions !== undefined) args.push('--default-partitions', String(opts.defaultPartitions));
  for (const t of opts.topics ?? []) args.push('--topic', `${t.name}:${t.partitions}`);
  args.push(...(opts.args ?? []));

  // stdin stays a pipe: the broker exits when it closes, so it dies with us.
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    stderr = (stderr + d).slice(-65536);
  });
  child.stdin.on('error', () => {}); // EPIPE after the child died

  const pending: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let alive = true;
  void exited.then(() => {
    alive = false;
    for (const p of pending.splice(0)) p.reject(new Error(`kafka-mock exited (stderr: ${stderr.trim()})`));
  });

  let onReady: ((line: string) => void) | undefined;
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    if (onReady) {
      const f = onReady;
      onReady = undefined;
      f(line);
      return;
    }
    const p = pending.shift();
    if (!p) return;
    if (line.startsWith('OK')) p.resolve();
    else p.reject(new Error(`kafka-mock: ${line}`));
  });

  const timeoutMs = opts.readyTimeoutMs ?? 15_000;
  let timer: NodeJS.Timeout | undefined;
  let readyLine: string;
  try {
    readyLine = await new Promise<string>((resolve, reject) => {
      onReady = resolve;
      timer = setTimeout(
        () => reject(new Error(`kafka-mock: no READY line within ${timeoutMs} ms; stderr: ${stderr.trim()}`)),
        timeoutMs,
      );
      child.once('error', (e) => reject(new Error(`kafka-mock: spawn ${bin} failed: ${e.message}`)));
      void exited.then(() =>
        reject(new Error(`kafka-mock exited before READY (code ${child.exitCode}); stderr: ${stderr.trim()}`)),
      );
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const m = /^READY (\S+)$/.exec(readyLine);
  if (!m?.[1]) {
    child.kill('SIGKILL');
    throw new Error(`kafka-mock: unexpected first line ${JSON.stringify(readyLine)}; stderr: ${stderr.trim()}`);
  }

  const command = (cmd: string): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      if (!alive) {
        reject(new Error('kafka-mock is not running'));
        return;
      }
      pending.push({ resolve, reject });
      child.stdin.write(`${cmd}\n`);
    });

  return {
    brokers: m[1].split(','),
    pid: child.pid ?? -1,
    stderr: () => stderr,
    async stop() {
      if (!alive) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(t);
    },
    kill() {
      if (alive) child.kill('SIGKILL');
    },
    brokerDown: (id) => command(`DOWN ${id}`),
    brokerUp: (id) => command(`UP ${id}`),
    setController: (id) => command(`CONTROLLER ${id}`),
    createTopic: (name, partitions) => command(`TOPIC ${name} ${partitions}`),
    setRtt: (id, ms) => command(`RTT ${id} ${ms}`),
  };
}
