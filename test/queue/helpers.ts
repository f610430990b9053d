// Helpers of the queue contract suite: child-process consumers / publishers that run the built SDK
// (packages/core/dist), their shared event log, a driver wrapper that can hold publishes, small waits.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { QueueDriver } from '@lading/core';

const fixtures = fileURLToPath(new URL('./fixtures/', import.meta.url));

/** Resolve packages the core depends on (zod, better-sqlite3) from packages/core, as the SDK itself does. */
export const requireFromCore = createRequire(fileURLToPath(new URL('../../packages/core/package.json', import.meta.url)));

/** One line of a child's event log (JSON lines, appended with O_APPEND so the file order is the global order). */
export interface LogEvent {
  ev: 'ready' | 'start' | 'end' | 'error' | 'published' | 'closed';
  pid: number;
  t: number;
  id?: string;
  key?: string;
  body?: unknown;
  attempt?: number;
  message?: string;
  ids?: string[];
}

export function readLog(file: string): LogEvent[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as LogEvent);
}

export interface Child {
  proc: ChildProcess;
  pid: number;
  /** Resolves with the exit code / signal once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  kill(signal?: NodeJS.Signals): void;
}

/** Every child spawned by a test, so afterEach can kill what a failing test left behind. */
export const children = new Set<Child>();

export function spawnFixture(script: string, env: Record<string, string | number | undefined>, args: string[] = []): Child {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(env)) if (v !== undefined) childEnv[k] = String(v);
  const proc = spawn(process.execPath, [`${fixtures}${script}`, ...args], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const child: Child = {
    proc,
    pid: proc.pid!,
    exited,
    stdout: () => out,
    stderr: () => err,
    kill: (signal = 'SIGKILL') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    },
  };
  children.add(child);
  void exited.then(() => children.delete(child));
  return child;
}

export interface ConsumerChildOptions {
  uri: string;
  topic: string;
  group: string;
  log: string;
  /** `record` (log start/end, optionally sleep), `hang` (log start, never finish), `fail` (log start, throw). */
  mode?: 'record' | 'hang' | 'fail';
  concurrency?: number;
  /** Random sleep of up to this many ms inside each handler (record mode). */
  sleepMs?: number;
  leaseMs?: number;
}

/** A consumer in its own OS process. It logs `ready` once its group exists and it is polling. */
export function spawnConsumer(o: ConsumerChildOptions): Child {
  return spawnFixture('consumer.mjs', {
    LQ_URI: o.uri, LQ_TOPIC: o.topic, LQ_GROUP: o.group, LQ_LOG: o.log, LQ_MODE: o.mode ?? 'record',
    LQ_CONCURRENCY: o.concurrency ?? 1, LQ_SLEEP_MS: o.sleepMs ?? 0, LQ_LEASE_MS: o.leaseMs,
  });
}

/** Kill every child still running (SIGKILL) and wait for them to be gone. */
export async function killChildren(): Promise<void> {
  const all = [...children];
  for (const c of all) c.kill('SIGKILL');
  await Promise.all(all.map((c) => c.exited));
}

/** Wait until the child logged `ready` (or fail with its stderr when it died first). */
export async function waitReady(child: Child, log: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (readLog(log).some((e) => e.ev === 'ready' && e.pid === child.pid)) return;
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) throw new Error(`child ${child.pid} exited before ready:\n${child.stderr()}`);
    if (Date.now() > deadline) throw new Error(`child ${child.pid} not ready after ${timeoutMs} ms:\n${child.stderr()}`);
    await sleep(20);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A promise with its resolve handle: a gate a test opens when it wants. */
export function gate<T = void>(): { promise: Promise<T>; open: (v: T) => void; opened: () => boolean } {
  let open!: (v: T) => void;
  let done = false;
  const promise = new Promise<T>((resolve) => { open = (v: T) => { done = true; resolve(v); }; });
  return { promise, open, opened: () => done };
}

/** Settled state of a promise without waiting for it (after letting pending I/O callbacks run). */
export async function isSettled(p: Promise<unknown>, afterMs = 50): Promise<boolean> {
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  await sleep(afterMs);
  return settled;
}

/**
 * Wrap a driver so that its `publish` writes are held until `release()` is called: the way to tell an
 * acknowledged publish (waits for the write) from fire-and-forget (does not) without timing anything.
 */
export function holdingPublishes(driver: QueueDriver): { driver: QueueDriver; held: () => number; release: () => void } {
  let waiting: (() => void)[] = [];
  let holding = true;
  const wrapped = new Proxy(driver, {
    get(target, prop, receiver) {
      if (prop === 'publish') {
        return async (...args: Parameters<QueueDriver['publish']>) => {
          if (holding) await new Promise<void>((resolve) => waiting.push(resolve));
          return target.publish(...args);
        };
      }
      const value: unknown = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return {
    driver: wrapped,
    held: () => waiting.length,
    release: () => {
      holding = false;
      const w = waiting;
      waiting = [];
      for (const r of w) r();
    },
  };
}

/**
 * Check per-key order and exclusivity in an ordered list of start/end events: returns the problems found
 * (empty when every key's messages started in publish order `seq`, one at a time) and the most distinct
 * keys in flight at once.
 */
export function checkKeyOrder(events: { ev: string; id?: string; key?: string; seq: number }[]): { problems: string[]; maxParallelKeys: number } {
  const problems: string[] = [];
  const inFlight = new Map<string, string>();
  const lastSeq = new Map<string, number>();
  let maxParallelKeys = 0;
  for (const e of events) {
    const key = e.key!;
    if (e.ev === 'start') {
      if (inFlight.has(key)) problems.push(`key ${key}: ${e.id} started while ${inFlight.get(key)} was running`);
      const last = lastSeq.get(key) ?? -1;
      if (e.seq <= last) problems.push(`key ${key}: seq ${e.seq} started after seq ${last}`);
      lastSeq.set(key, e.seq);
      inFlight.set(key, e.id!);
      maxParallelKeys = Math.max(maxParallelKeys, inFlight.size);
    } else if (e.ev === 'end') {
      if (inFlight.get(key) !== e.id) problems.push(`key ${key}: ${e.id} ended but ${inFlight.get(key) ?? 'nothing'} was running`);
      inFlight.delete(key);
    }
  }
  return { problems, maxParallelKeys };
}
