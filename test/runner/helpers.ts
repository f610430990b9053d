import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { openQueue, type Queue } from '@lading/core';
import { openStore, type BlobStore } from '@lading/storage';

export const WORKER = fileURLToPath(new URL('./fixtures/worker.mjs', import.meta.url));
export const HANDLER = fileURLToPath(new URL('./fixtures/handler.mjs', import.meta.url));

export interface WorkerEvent {
  event: string;
  pid: number;
  t: number;
  job?: string;
  shard?: string;
  attempt?: number;
  message?: string;
  error?: { name: string; message: string };
  identity?: string;
  [k: string]: unknown;
}

/** A real worker process (test/runner/fixtures/worker.mjs) and the JSON events it printed. */
export class WorkerProcess {
  readonly events: WorkerEvent[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly stderr: string[] = [];
  private waiters: { pred: (e: WorkerEvent) => boolean; resolve: (e: WorkerEvent) => void }[] = [];

  constructor(readonly proc: ChildProcess) {
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      let e: WorkerEvent;
      try {
        e = JSON.parse(line) as WorkerEvent;
      } catch {
        this.stderr.push(`stdout: ${line}`);
        return;
      }
      this.events.push(e);
      this.waiters = this.waiters.filter((w) => (w.pred(e) ? (w.resolve(e), false) : true));
    });
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => this.stderr.push(d));
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolve with the first event (already seen or future) that matches. */
  waitFor(pred: (e: WorkerEvent) => boolean, timeoutMs = 30_000): Promise<WorkerEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`worker ${this.pid}: no matching event within ${timeoutMs} ms; events: ${JSON.stringify(this.events.slice(-10))}; stderr: ${this.stderr.join('').slice(-2000)}`)), timeoutMs);
      this.waiters.push({ pred, resolve: (e) => { clearTimeout(timer); resolve(e); } });
    });
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) this.proc.kill(signal);
  }
}

export function spawnWorker(queueUri: string, env: Record<string, string | number> = {}): WorkerProcess {
  const proc = spawn(process.execPath, [WORKER], {
    env: { ...process.env, LADING_QUEUE: queueUri, ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new WorkerProcess(proc);
}

/** Start a worker and wait until it has opened the queue and its pool. */
export async function startWorkerProcess(queueUri: string, env: Record<string, string | number> = {}): Promise<WorkerProcess> {
  const w = spawnWorker(queueUri, env);
  await Promise.race([
    w.waitFor((e) => e.event === 'ready', 20_000),
    w.exited.then(({ code, signal }) => { throw new Error(`worker exited before ready (code ${code}, signal ${signal}): ${w.stderr.join('')}`); }),
  ]);
  return w;
}

export interface Fixture {
  dir: string;
  inDir: string;
  outDir: string;
  queueUri: string;
  queue: Queue;
  store: BlobStore;
  workers: WorkerProcess[];
  cleanup(): Promise<void>;
}

/** A scratch directory with in/, out/, a queue database and a job-record store; `cleanup` kills every worker. */
export async function fixture(prefix: string): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), `lading-${prefix}-`));
  const inDir = join(dir, 'in');
  const outDir = join(dir, 'out');
  mkdirSync(inDir);
  mkdirSync(outDir);
  const queueUri = `sqlite:${join(dir, 'q.db')}`;
  const queue = await openQueue({ uri: queueUri });
  const store = await openStore(`file:${join(dir, 'store')}`);
  const workers: WorkerProcess[] = [];
  return {
    dir, inDir, outDir, queueUri, queue, store, workers,
    async cleanup() {
      // A supervisor may have started a replacement meanwhile: kill until none is left running.
      for (let seen = 0; seen < workers.length; ) {
        const batch = workers.slice(seen);
        seen = workers.length;
        for (const w of batch) w.kill('SIGKILL');
        await Promise.all(batch.map((w) => w.exited));
      }
      await queue.close();
      await store.close();
      // A killed worker's files may still be closing: retry ENOTEMPTY / EBUSY a few times.
      rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** All events of all workers, in time order. */
export function allEvents(workers: WorkerProcess[]): WorkerEvent[] {
  return workers.flatMap((w) => w.events).sort((a, b) => a.t - b.t);
}
