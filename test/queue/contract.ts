// The queue contract: one suite, parameterised by driver. Every queue driver (the embedded SQLite driver
// now, the Kafka driver later) runs these very tests through the public SDK (openQueue / Queue / Consumer /
// Hospital) and the QueueDriver port only — nothing here knows which driver is underneath.
//
// Usage (see sqlite.test.ts):
//   describeQueueContract('sqlite', async () => ({ uri: 'sqlite:/tmp/x/q.db', cleanup: async () => {} }));
//
// Waiting is always `expect.poll` on an observable outcome; the only timing assertions are lower bounds
// that the contract itself promises (backoff delays, the hospital's redrive rate limit).
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import {
  ENVELOPE_VERSION, InvalidMessageError, LadingError, UnrecoverableError, openQueue, parseEnvelope, parseQueueUri,
  type ConsumeOptions, type Consumer, type Envelope, type Handler, type HandlerContext, type JsonValue, type Message, type Queue, type QueueOptions,
} from '@lading/core';
import {
  checkKeyOrder, gate, holdingPublishes, isSettled, killChildren, readLog, requireFromCore, sleep, spawnConsumer, spawnFixture, waitReady, type LogEvent,
} from './helpers.js';

/**
 * zod, loaded from packages/core (the root has no zod of its own), typed by the few calls the suite makes:
 * the schemas it builds are handed to the consumer as the core's own `ConsumeOptions['schema']` type.
 */
type BodySchema = NonNullable<ConsumeOptions['schema']>;
interface ZodSubset {
  object(shape: Record<string, unknown>): BodySchema;
  string(): unknown;
  number(): { int(): unknown };
}
const { z } = requireFromCore('zod') as { z: ZodSubset };

export interface QueueContractCaps {
  /** Consumers in separate OS processes can share one queue URI (the child-process cases). Default true. */
  multiProcess?: boolean;
  /** Upper bound for a dead consumer's message to come back (lease expiry or group rebalance). Default 15 s. */
  redeliveryTimeoutMs?: number;
  /** Multiplies every wait of the suite, for slower backends. Default 1. */
  timeoutScale?: number;
  /**
   * Messages with different keys are handled in publish order by a single consumer (SQLite: one FIFO per
   * topic). False where order holds only per key / partition (Kafka). Default true.
   */
  globalOrder?: boolean;
  /** How long a newly started consumer may need before it receives anything (Kafka: the group join). Default 0. */
  consumerStartMs?: number;
}

export type MakeQueueUri = () => Promise<{ uri: string; cleanup(): Promise<void> }>;

/** Short backoff without jitter, so tests are fast and delays are known lower bounds. */
const FAST = { initialMs: 20, multiplier: 2, maxMs: 200, jitter: 0 };

export function describeQueueContract(name: string, makeQueueUri: MakeQueueUri, caps: QueueContractCaps = {}): void {
  const scale = caps.timeoutScale ?? 1;
  const T = (ms: number) => Math.round(ms * scale);
  const redelivery = T(caps.redeliveryTimeoutMs ?? 15_000);
  const multiProcess = caps.multiProcess ?? true;
  const mpTest = multiProcess ? test : test.skip;

  /** Poll until `fn()` satisfies the matcher; the default wait is generous, the poll interval short. */
  const poll = <R>(fn: () => R | Promise<R>, timeout = 10_000) => expect.poll(fn, { timeout: T(timeout), interval: 15 });

  describe(`queue contract: ${name}`, () => {
    let uri = '';
    let cleanupUri: (() => Promise<void>) | undefined;
    let dir = '';
    let queues: Queue[] = [];
    /** `error` events of every consumer of the test. */
    let errors: unknown[] = [];

    beforeEach(async () => {
      const made = await makeQueueUri();
      uri = made.uri;
      cleanupUri = made.cleanup;
      dir = mkdtempSync(join(tmpdir(), 'lading-contract-'));
      queues = [];
      errors = [];
    });

    afterEach(async () => {
      await killChildren();
      // Consumers are started with a short grace (see `consume`), so closing never waits on a hung handler long.
      for (const q of queues.reverse()) await q.close().catch(() => undefined);
      await cleanupUri?.();
      rmSync(dir, { recursive: true, force: true });
    });

    async function open(options: Omit<QueueOptions, 'uri'> = {}): Promise<Queue> {
      const q = await openQueue({ uri, ...options });
      queues.push(q);
      return q;
    }

    function consume<T = unknown>(q: Queue, topic: string, options: Partial<ConsumeOptions<T>> & { group: string }, handler: Handler<T>): Consumer<T> {
      const c = q.consume<T>(topic, { maxPollMs: 20, graceMs: 100, ...options }, handler);
      c.on('error', (e: unknown) => { errors.push(e); });
      return c;
    }

    /** Messages a handler saw, in order. */
    interface Seen { id: string; key: string | undefined; body: unknown; attempt: number; group: string; at: number }
    function recorder(group: string, seen: Seen[] = []): { seen: Seen[]; handler: Handler } {
      return {
        seen,
        handler: (m: Message) => { seen.push({ id: m.id, key: m.key, body: m.body, attempt: m.attempt, group, at: Date.now() }); },
      };
    }
    const ids = (seen: Seen[]) => seen.map((s) => s.id);
    const logFile = (n = 'events') => join(dir, `${n}.jsonl`);
    async function settledGroup(q: Queue, topic: string, group: string) {
      const s = (await q.stats(topic)).find((g) => g.group === group);
      return s ? s.ready + s.delayed + s.leased : -1;
    }
    async function groupStats(q: Queue, topic: string, group: string) {
      const s = (await q.stats(topic)).find((g) => g.group === group);
      return s ? { ready: s.ready, delayed: s.delayed, leased: s.leased, hospital: s.hospital } : undefined;
    }
    async function expectCode(p: Promise<unknown> | (() => unknown), code: string, text?: RegExp): Promise<LadingError> {
      let error: unknown;
      try {
        if (typeof p === 'function') await p();
        else await p;
      } catch (e) {
        error = e;
      }
      expect(error, `expected a ${code} error`).toBeInstanceOf(LadingError);
      const le = error as LadingError;
      expect(le.code, le.message).toBe(code);
      if (text) expect(le.message).toMatch(text);
      return le;
    }

    // ---- publish --------------------------------------------------------------------------------

    describe('publish', () => {
      mpTest('an acknowledged publish is durable: the publishing process is SIGKILLed right after it, and nothing is lost', async () => {
        const q = await open();
        await q.createTopic('durable');
        await q.driver.ensureGroup('durable', 'g');
        const log = logFile();
        const child = spawnFixture('publisher.mjs', { LQ_URI: uri, LQ_TOPIC: 'durable', LQ_LOG: log, LQ_COUNT: 5, LQ_PREFIX: 'dur', LQ_CRASH: 1 });
        expect(await child.exited, child.stderr()).toEqual({ code: null, signal: 'SIGKILL' });
        const published = readLog(log).find((e) => e.ev === 'published');
        expect(published?.ids).toEqual(['dur-0', 'dur-1', 'dur-2', 'dur-3', 'dur-4']);
        const { seen, handler } = recorder('g');
        consume(q, 'durable', { group: 'g', concurrency: 4 }, handler);
        await poll(() => ids(seen).sort()).toEqual(published!.ids);
      });

      test('a new Queue on the same URI after close sees what was published', async () => {
        const q1 = await open();
        await q1.createTopic('reopen');
        await q1.driver.ensureGroup('reopen', 'g');
        await q1.publish('reopen', { n: 1 }, { id: 'r1' });
        await q1.publishMany('reopen', [{ id: 'r2', body: { n: 2 } }, { id: 'r3', body: { n: 3 } }]);
        await q1.close();
        const q2 = await open();
        const { seen, handler } = recorder('g');
        consume(q2, 'reopen', { group: 'g' }, handler);
        await poll(() => ids(seen).sort()).toEqual(['r1', 'r2', 'r3']);
        const bodies = seen.map((s) => s.body as { n: number });
        expect(caps.globalOrder ?? true ? bodies : [...bodies].sort((a, b) => a.n - b.n)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
      });

      test('acknowledged publish waits for the write; fireAndForget returns at once and the message still arrives', async () => {
        const base = await open();
        await base.createTopic('ff');
        await base.driver.ensureGroup('ff', 'g');
        const hold = holdingPublishes(base.driver);
        const q = await open({ driver: hold.driver });
        const acked = q.publish('ff', 'acked', { id: 'acked' });
        expect(await isSettled(acked), 'an acknowledged publish resolved before its write was done').toBe(false);
        const fast = q.publish('ff', 'fire', { id: 'fire', fireAndForget: true });
        expect(await isSettled(fast), 'fireAndForget waited for the write').toBe(true);
        expect(await fast).toMatchObject({ id: 'fire', topic: 'ff', duplicate: false });
        expect(hold.held()).toBe(2);
        hold.release();
        expect(await acked).toMatchObject({ id: 'acked', topic: 'ff', duplicate: false });
        const { seen, handler } = recorder('g');
        consume(base, 'ff', { group: 'g' }, handler);
        await poll(() => ids(seen).sort()).toEqual(['acked', 'fire']);
      });

      test('publishMany writes a batch: one result per input, each message delivered once', async () => {
        const q = await open();
        await q.createTopic('batch');
        await q.driver.ensureGroup('batch', 'g');
        const results = await q.publishMany('batch', Array.from({ length: 100 }, (_, i) => ({ body: { i } })));
        expect(results).toHaveLength(100);
        expect(new Set(results.map((r) => r.id)).size).toBe(100);
        expect(results.every((r) => !r.duplicate && r.topic === 'batch')).toBe(true);
        expect((await groupStats(q, 'batch', 'g'))?.ready).toBe(100);
        const { seen, handler } = recorder('g');
        consume(q, 'batch', { group: 'g', concurrency: 8 }, handler);
        await poll(() => seen.length).toBe(100);
        expect(new Set(ids(seen))).toEqual(new Set(results.map((r) => r.id)));
        await poll(() => settledGroup(q, 'batch', 'g')).toBe(0);
        expect(seen).toHaveLength(100);
      });
    });

    // ---- idempotent publish and consumer dedup -----------------------------------------------------

    describe('dedup', () => {
      test('the same id twice inside the publish dedup window: the second is a duplicate and there is one delivery', async () => {
        const q = await open();
        await q.createTopic('idem');
        await q.driver.ensureGroup('idem', 'g');
        expect(await q.publish('idem', { v: 1 }, { id: 'x' })).toMatchObject({ id: 'x', duplicate: false });
        expect(await q.publish('idem', { v: 2 }, { id: 'x' })).toMatchObject({ id: 'x', duplicate: true });
        const batch = await q.publishMany('idem', [{ id: 'y', body: 1 }, { id: 'y', body: 2 }, { id: 'x', body: 3 }]);
        expect(batch.map((r) => r.duplicate)).toEqual([false, true, true]);
        // Nothing of the duplicates was written: two messages are waiting, not five.
        expect((await groupStats(q, 'idem', 'g'))?.ready).toBe(2);
        const { seen, handler } = recorder('g');
        consume(q, 'idem', { group: 'g', concurrency: 4 }, handler); // both fetched at once: consumer dedup cannot hide an extra copy
        await poll(() => settledGroup(q, 'idem', 'g')).toBe(0);
        expect(ids(seen).sort()).toEqual(['x', 'y']);
        expect(seen.find((s) => s.id === 'x')?.body).toEqual({ v: 1 }); // the first publish wins
      });

      test('after both dedup windows a republished id is delivered again', async () => {
        const W = 300;
        const q = await open();
        await q.createTopic('window', { dedupWindowMs: W });
        const { seen, handler } = recorder('g');
        const c = consume(q, 'window', { group: 'g' }, handler);
        let ackedAt = 0;
        c.on('done', () => { ackedAt = Date.now(); });
        await q.publish('window', 1, { id: 'x' });
        const publishedAt = Date.now();
        await poll(() => ackedAt).toBeGreaterThan(0);
        await sleep(Math.max(publishedAt, ackedAt) + W + 30 - Date.now()); // the windows are time: wait them out
        expect(await q.publish('window', 2, { id: 'x' })).toMatchObject({ duplicate: false });
        await poll(() => seen.map((s) => s.body)).toEqual([1, 2]);
      });

      test('consumer dedup: an id the group already completed is skipped when republished after the publish window but inside the consumer window', async () => {
        const W = 2000;
        const q = await open();
        await q.createTopic('cdedup', { dedupWindowMs: W });
        await q.driver.ensureGroup('cdedup', 'g');
        await q.publish('cdedup', 1, { id: 'x' });
        const publishedBy = Date.now(); // the publish window of x ends by publishedBy + W
        await sleep(W / 2);
        const seen: Seen[] = [];
        let handledAt = 0;
        consume(q, 'cdedup', { group: 'g' }, (m) => {
          handledAt = Date.now(); // the group completes x after this: its consumer window ends after handledAt + W
          seen.push({ id: m.id, key: m.key, body: m.body, attempt: m.attempt, group: 'g', at: handledAt });
        });
        await poll(() => settledGroup(q, 'cdedup', 'g')).toBe(0);
        expect(seen).toHaveLength(1);
        await sleep(publishedBy + W + 50 - Date.now());
        expect(await q.publish('cdedup', 2, { id: 'x' }), 'the publish window should be over').toMatchObject({ duplicate: false });
        await poll(() => settledGroup(q, 'cdedup', 'g')).toBe(0);
        expect(Date.now(), 'test too slow: the consumer window ended before the check').toBeLessThan(handledAt + W);
        expect(seen.map((s) => s.body)).toEqual([1]);
        // Another id is not affected.
        await q.publish('cdedup', 3, { id: 'other' });
        await poll(() => seen.map((s) => s.body)).toEqual([1, 3]);
      });
    });

    // ---- consumer groups -----------------------------------------------------------------------

    describe('consumer groups', () => {
      test('pub/sub: two groups each see every message exactly once', async () => {
        const q = await open();
        await q.createTopic('fan');
        const a = recorder('a');
        const b = recorder('b');
        consume(q, 'fan', { group: 'a', concurrency: 4 }, a.handler);
        consume(q, 'fan', { group: 'b', concurrency: 4 }, b.handler);
        await q.driver.ensureGroup('fan', 'a');
        await q.driver.ensureGroup('fan', 'b');
        const published = (await q.publishMany('fan', Array.from({ length: 30 }, (_, i) => ({ body: i })))).map((r) => r.id).sort();
        await poll(() => ids(a.seen).sort()).toEqual(published);
        await poll(() => ids(b.seen).sort()).toEqual(published);
        await poll(() => settledGroup(q, 'fan', 'a')).toBe(0);
        await poll(() => settledGroup(q, 'fan', 'b')).toBe(0);
        expect(a.seen).toHaveLength(30);
        expect(b.seen).toHaveLength(30);
      });

      test('work queue: two consumers in one group (two connections) split the messages, none handled twice', async () => {
        const q1 = await open();
        const q2 = await open();
        await q1.createTopic('split');
        const seen: Seen[] = [];
        const slow = (group: string) => async (m: Message) => {
          seen.push({ id: m.id, key: m.key, body: m.body, attempt: m.attempt, group, at: Date.now() });
          await sleep(2);
        };
        consume(q1, 'split', { group: 'g', concurrency: 4 }, slow('c1'));
        consume(q2, 'split', { group: 'g', concurrency: 4 }, slow('c2'));
        await q1.driver.ensureGroup('split', 'g');
        const published = (await q1.publishMany('split', Array.from({ length: 200 }, (_, i) => ({ body: i })))).map((r) => r.id);
        await poll(() => seen.length).toBe(200);
        await poll(() => settledGroup(q1, 'split', 'g')).toBe(0);
        expect(new Set(ids(seen)).size).toBe(200);
        expect(seen).toHaveLength(200);
        expect(new Set(ids(seen))).toEqual(new Set(published));
        expect(seen.filter((s) => s.group === 'c1').length).toBeGreaterThan(0);
        expect(seen.filter((s) => s.group === 'c2').length).toBeGreaterThan(0);
      });

      mpTest('child processes: two in one group split the work with no duplicate; a third in another group sees everything', async () => {
        const q = await open();
        await q.createTopic('mp');
        const logA = logFile('a');
        const logB = logFile('b');
        const a1 = spawnConsumer({ uri, topic: 'mp', group: 'g1', log: logA, concurrency: 4, sleepMs: 4 });
        const a2 = spawnConsumer({ uri, topic: 'mp', group: 'g1', log: logA, concurrency: 4, sleepMs: 4 });
        const b = spawnConsumer({ uri, topic: 'mp', group: 'g2', log: logB, concurrency: 4 });
        await Promise.all([waitReady(a1, logA), waitReady(a2, logA), waitReady(b, logB)]);
        const N = 200;
        const published = (await q.publishMany('mp', Array.from({ length: N }, (_, i) => ({ body: i })))).map((r) => r.id).sort();
        const ends = (log: string) => readLog(log).filter((e) => e.ev === 'end');
        await poll(() => ends(logA).length, 30_000).toBeGreaterThanOrEqual(N);
        await poll(() => ends(logB).length, 30_000).toBeGreaterThanOrEqual(N);
        await poll(() => settledGroup(q, 'mp', 'g1')).toBe(0);
        await poll(() => settledGroup(q, 'mp', 'g2')).toBe(0);
        const g1 = ends(logA);
        expect(g1.map((e) => e.id).sort()).toEqual(published); // every message once: total N, no duplicate
        expect(g1.filter((e) => e.pid === a1.pid).length).toBeGreaterThan(0);
        expect(g1.filter((e) => e.pid === a2.pid).length).toBeGreaterThan(0);
        expect(ends(logB).map((e) => e.id).sort()).toEqual(published);
        expect(readLog(logA).filter((e) => e.ev === 'error')).toEqual([]);
      });
    });

    // ---- at-least-once --------------------------------------------------------------------------

    describe('at-least-once', () => {
      mpTest('a consumer process SIGKILLed in the middle of its handlers loses nothing: its messages come back after the lease', async () => {
        const q = await open();
        await q.createTopic('kill', { leaseMs: 800 });
        await q.driver.ensureGroup('kill', 'g');
        const published = (await q.publishMany('kill', Array.from({ length: 12 }, (_, i) => ({ id: `k${i}`, body: i })))).map((r) => r.id).sort();
        const log = logFile();
        const victim = spawnConsumer({ uri, topic: 'kill', group: 'g', log, mode: 'hang', concurrency: 3 });
        await poll(() => readLog(log).filter((e) => e.ev === 'start').length, 15_000).toBe(3);
        victim.kill('SIGKILL');
        expect((await victim.exited).signal, `the victim exited by itself:\n${victim.stderr()}`).toBe('SIGKILL');
        const inFlight = readLog(log).filter((e) => e.ev === 'start').map((e) => e.id!);
        const rescuer = spawnConsumer({ uri, topic: 'kill', group: 'g', log, concurrency: 4 });
        await poll(() => [...new Set(readLog(log).filter((e) => e.ev === 'end').map((e) => e.id))].sort(), redelivery).toEqual(published);
        const ends = readLog(log).filter((e) => e.ev === 'end');
        expect(ends.every((e) => e.pid === rescuer.pid)).toBe(true);
        for (const id of inFlight) {
          // Redelivered: the killed attempt counted, and its history says the lease expired.
          expect(ends.find((e) => e.id === id)?.attempt, id).toBeGreaterThanOrEqual(1);
        }
        for (const e of ends.filter((x) => !inFlight.includes(x.id!))) expect(e.attempt).toBe(0);
        await poll(() => settledGroup(q, 'kill', 'g')).toBe(0);
        expect(await q.hospital.list()).toEqual([]);
      });

      mpTest('a message whose consumer dies maxAttempts times goes to the hospital as poison', async () => {
        const q = await open();
        await q.createTopic('poison', { maxAttempts: 2, leaseMs: 500 });
        await q.driver.ensureGroup('poison', 'g');
        await q.publish('poison', { bad: true }, { id: 'pill' });
        const log = logFile();
        for (let i = 0; i < 2; i++) {
          const child = spawnConsumer({ uri, topic: 'poison', group: 'g', log, mode: 'hang' });
          await poll(() => readLog(log).filter((e) => e.ev === 'start').length, redelivery).toBe(i + 1);
          child.kill('SIGKILL');
          await child.exited;
        }
        expect(readLog(log).filter((e) => e.ev === 'start').map((e) => e.attempt)).toEqual([0, 1]);
        // A healthy consumer never gets the pill: the lease expiry that would be its third delivery admits it.
        const { seen, handler } = recorder('g');
        consume(q, 'poison', { group: 'g' }, handler);
        await poll(async () => (await q.hospital.list({ topic: 'poison' })).map((r) => r.reason), redelivery).toEqual(['poison']);
        const [record] = await q.hospital.list({ topic: 'poison' });
        expect(record).toMatchObject({ id: 'pill', group: 'g', reason: 'poison', state: 'open' });
        expect(record!.errors).toHaveLength(2);
        expect(record!.envelope?.body).toEqual({ bad: true });
        expect(seen).toEqual([]);
      });
    });

    // ---- leases ---------------------------------------------------------------------------------

    describe('leases', () => {
      test('a handler running for many lease periods keeps its message: no other consumer of the group gets it', async () => {
        const leaseMs = 500;
        const q1 = await open();
        const q2 = await open();
        await q1.createTopic('long', { leaseMs });
        const started = gate();
        const runs: string[] = [];
        let abortedDuringRun = false;
        consume(q1, 'long', { group: 'g' }, async (m, ctx) => {
          runs.push(`c1:${m.id}`);
          started.open();
          await sleep(leaseMs * 5);
          abortedDuringRun = ctx.signal.aborted;
        });
        await q1.driver.ensureGroup('long', 'g');
        await q1.publish('long', 'slow job', { id: 'long-1' });
        await started.promise;
        consume(q2, 'long', { group: 'g' }, (m) => { runs.push(`c2:${m.id}`); });
        await sleep(leaseMs * 3); // well past the first lease
        expect(await groupStats(q1, 'long', 'g')).toMatchObject({ ready: 0, leased: 1 });
        await poll(() => settledGroup(q1, 'long', 'g')).toBe(0);
        expect(runs).toEqual(['c1:long-1']);
        expect(abortedDuringRun).toBe(false);
        expect(await q1.hospital.list()).toEqual([]);
      });

      test('saveCheckpoint, then a failure: the retry gets the saved checkpoint back', async () => {
        const q = await open();
        await q.createTopic('ckpt', { maxAttempts: 3, backoff: FAST });
        const checkpoints: (JsonValue | undefined)[] = [];
        consume(q, 'ckpt', { group: 'g' }, async (m, ctx: HandlerContext) => {
          checkpoints.push(ctx.checkpoint);
          if (m.attempt === 0) {
            await ctx.saveCheckpoint({ rows: 1234, file: 'part-7' });
            throw new Error('crashed after row 1234');
          }
        });
        await q.publish('ckpt', 'resumable');
        await poll(() => checkpoints.length).toBe(2);
        expect(checkpoints).toEqual([undefined, { rows: 1234, file: 'part-7' }]);
        await poll(() => settledGroup(q, 'ckpt', 'g')).toBe(0);
      });
    });

    // ---- ordering per key -----------------------------------------------------------------------

    describe('ordering', () => {
      test('same key: publish order, one at a time; different keys run in parallel (concurrency 8)', async () => {
        const q = await open();
        await q.createTopic('ord');
        const events: { ev: string; id: string; key: string; seq: number }[] = [];
        consume<{ seq: number }>(q, 'ord', { group: 'g', concurrency: 8 }, async (m) => {
          events.push({ ev: 'start', id: m.id, key: m.key!, seq: m.body.seq });
          await sleep(Math.floor(Math.random() * 4));
          events.push({ ev: 'end', id: m.id, key: m.key!, seq: m.body.seq });
        });
        await q.driver.ensureGroup('ord', 'g');
        const N = 120;
        await q.publishMany('ord', Array.from({ length: N }, (_, i) => ({ key: `k${i % 4}`, body: { seq: i } })));
        await poll(() => events.filter((e) => e.ev === 'end').length).toBe(N);
        const { problems, maxParallelKeys } = checkKeyOrder(events);
        expect(problems).toEqual([]);
        expect(maxParallelKeys).toBeGreaterThanOrEqual(2);
        await poll(() => settledGroup(q, 'ord', 'g')).toBe(0);
        expect(events.filter((e) => e.ev === 'end')).toHaveLength(N);
      });

      mpTest('same key: publish order and one at a time across two consumer processes', async () => {
        const q = await open();
        await q.createTopic('ordmp');
        const log = logFile();
        const c1 = spawnConsumer({ uri, topic: 'ordmp', group: 'g', log, concurrency: 8, sleepMs: 3 });
        const c2 = spawnConsumer({ uri, topic: 'ordmp', group: 'g', log, concurrency: 8, sleepMs: 3 });
        await Promise.all([waitReady(c1, log), waitReady(c2, log)]);
        const N = 120;
        await q.publishMany('ordmp', Array.from({ length: N }, (_, i) => ({ key: `k${i % 5}`, body: { seq: i } })));
        await poll(() => readLog(log).filter((e) => e.ev === 'end').length, 30_000).toBe(N);
        const events = readLog(log)
          .filter((e): e is LogEvent & { id: string; key: string } => e.ev === 'start' || e.ev === 'end')
          .map((e) => ({ ev: e.ev, id: e.id, key: e.key, seq: (e.body as { seq: number }).seq }));
        const { problems, maxParallelKeys } = checkKeyOrder(events);
        expect(problems).toEqual([]);
        expect(maxParallelKeys).toBeGreaterThanOrEqual(2);
        const pids = new Set(readLog(log).filter((e) => e.ev === 'end').map((e) => e.pid));
        expect(pids.size).toBe(2);
      });

      test('a retried keyed message holds back only its own key, and the key keeps its order', async () => {
        const q = await open();
        await q.createTopic('ordretry', { maxAttempts: 3, backoff: { initialMs: 300, multiplier: 1, maxMs: 300, jitter: 0 } });
        const order: string[] = [];
        consume<{ n: string }>(q, 'ordretry', { group: 'g', concurrency: 4 }, (m) => {
          if (m.body.n === 'a0' && m.attempt === 0) throw new Error('first try of a0 fails');
          order.push(m.body.n);
        });
        await q.driver.ensureGroup('ordretry', 'g');
        await q.publishMany('ordretry', ['a0', 'a1', 'a2', 'b0', 'b1', 'b2'].map((n) => ({ key: n[0], body: { n } })));
        await poll(() => order.length).toBe(6);
        expect(order.filter((n) => n.startsWith('a'))).toEqual(['a0', 'a1', 'a2']);
        expect(order.filter((n) => n.startsWith('b'))).toEqual(['b0', 'b1', 'b2']);
        expect(order.indexOf('b2')).toBeLessThan(order.indexOf('a0')); // key b was not held back by a0's retry
      });
    });

    // ---- retries --------------------------------------------------------------------------------

    describe('retries', () => {
      test('a failing message is retried after its backoff without holding back the messages behind it', async () => {
        const q = await open();
        const initialMs = 1000;
        await q.createTopic('retry', { maxAttempts: 2, backoff: { initialMs, multiplier: 2, maxMs: 10_000, jitter: 0 } });
        const badTries: number[] = [];
        const good: string[] = [];
        // Concurrency 1: a consumer that slept through the backoff would handle nothing else meanwhile.
        consume<string>(q, 'retry', { group: 'g', concurrency: 1 }, (m) => {
          if (m.body === 'bad') {
            badTries.push(Date.now());
            throw new Error('not yet');
          }
          good.push(m.id);
        });
        await q.driver.ensureGroup('retry', 'g');
        await q.publish('retry', 'bad', { id: 'bad' });
        await q.publishMany('retry', Array.from({ length: 10 }, (_, i) => ({ id: `good-${i}`, body: 'good' })));
        await poll(() => good.length).toBe(10);
        expect(badTries, 'the messages behind waited for the retry').toHaveLength(1);
        expect(await groupStats(q, 'retry', 'g')).toMatchObject({ ready: 0, delayed: 1, leased: 0 });
        await poll(() => badTries.length).toBe(2);
        expect(badTries[1]! - badTries[0]!).toBeGreaterThanOrEqual(initialMs);
        await poll(async () => (await q.hospital.list({ topic: 'retry' })).length).toBe(1);
      });

      test('after maxAttempts: the hospital, reason failed, one error per attempt with name, message, stack, worker, host and time', async () => {
        const q = await open();
        await q.createTopic('fail3', { maxAttempts: 3, backoff: FAST });
        const attempts: number[] = [];
        consume(q, 'fail3', { group: 'g' }, (m) => {
          attempts.push(m.attempt);
          throw new TypeError(`boom on attempt ${m.attempt}`);
        });
        await q.publish('fail3', { file: 's3://b/k' }, { id: 'f1', key: 'k', headers: { tenant: 'a' } });
        await poll(async () => (await q.hospital.list({ topic: 'fail3' })).length).toBe(1);
        expect(attempts).toEqual([0, 1, 2]);
        const [r] = await q.hospital.list({ topic: 'fail3' });
        expect(r).toMatchObject({ id: 'f1', topic: 'fail3', group: 'g', reason: 'failed', state: 'open' });
        expect(r!.envelope).toMatchObject({ id: 'f1', key: 'k', body: { file: 's3://b/k' }, headers: { tenant: 'a' } });
        expect(r!.errors).toHaveLength(3);
        r!.errors.forEach((e, i) => {
          expect(e).toMatchObject({ name: 'TypeError', message: `boom on attempt ${i}`, attempt: i, worker: q.identity.label, host: q.identity.host });
          expect(e.stack).toContain(`boom on attempt ${i}`);
          expect(typeof e.at).toBe('number');
        });
        // Exponential backoff: 20 ms, then 40 ms (no jitter) at least between the failures.
        expect(r!.errors[1]!.at - r!.errors[0]!.at).toBeGreaterThanOrEqual(FAST.initialMs);
        expect(r!.errors[2]!.at - r!.errors[1]!.at).toBeGreaterThanOrEqual(FAST.initialMs * FAST.multiplier);
        expect(r!.admittedAt).toBeGreaterThanOrEqual(r!.errors[2]!.at);
      });
    });

    // ---- TTL ------------------------------------------------------------------------------------

    describe('TTL', () => {
      test("past expiresAt a message is never handled; onExpired 'hospital' admits it as expired (per-message and topic TTL)", async () => {
        const q = await open();
        await q.createTopic('ttl', { onExpired: 'hospital' });
        await q.createTopic('ttl-topic', { ttlMs: 100 });
        await q.driver.ensureGroup('ttl', 'g');
        await q.driver.ensureGroup('ttl-topic', 'g');
        await q.publish('ttl', 'stale', { id: 'stale', ttlMs: 100 });
        await q.publish('ttl-topic', 'stale too', { id: 'stale-topic' });
        await q.publish('ttl', 'fresh', { id: 'fresh', ttlMs: 600_000 });
        await sleep(150); // expiry is wall-clock time
        const a = recorder('g');
        const b = recorder('g');
        consume(q, 'ttl', { group: 'g' }, a.handler);
        consume(q, 'ttl-topic', { group: 'g' }, b.handler);
        await poll(async () => (await q.hospital.list()).map((r) => `${r.id}:${r.reason}`).sort()).toEqual(['stale-topic:expired', 'stale:expired']);
        await poll(() => ids(a.seen)).toEqual(['fresh']);
        expect(b.seen).toEqual([]);
        const [r] = await q.hospital.list({ ids: ['stale'] });
        expect(r!.envelope?.expiresAt).toBeLessThanOrEqual(r!.admittedAt);
      });

      test("onExpired 'drop': an expired message vanishes: not handled, not in the hospital", async () => {
        const q = await open();
        await q.createTopic('ttl-drop', { onExpired: 'drop' });
        await q.driver.ensureGroup('ttl-drop', 'g');
        await q.publish('ttl-drop', 'stale', { id: 'stale', ttlMs: 100 });
        await sleep(150);
        await q.publish('ttl-drop', 'fresh', { id: 'fresh' });
        const { seen, handler } = recorder('g');
        consume(q, 'ttl-drop', { group: 'g' }, handler);
        await poll(() => ids(seen)).toEqual(['fresh']);
        await poll(() => settledGroup(q, 'ttl-drop', 'g')).toBe(0);
        expect(ids(seen)).toEqual(['fresh']);
        expect(await q.hospital.list({ state: 'any' })).toEqual([]);
      });

      test('a message that expires while it waits for a retry is not handled again', async () => {
        const q = await open();
        await q.createTopic('ttl-retry', { maxAttempts: 5, backoff: { initialMs: 1500, multiplier: 1, maxMs: 1500, jitter: 0 } });
        const tries: number[] = [];
        const warm: string[] = [];
        consume(q, 'ttl-retry', { group: 'g' }, (m) => {
          if (m.body === 'warm-up') return void warm.push(m.id);
          tries.push(m.attempt);
          throw new Error('transient');
        });
        await sleep(caps.consumerStartMs ?? 0); // the TTL must not run out before the consumer can receive anything
        // Only once the consumer is receiving does the short TTL start: its first delivery must come in time.
        await q.publish('ttl-retry', 'warm-up');
        await poll(() => warm.length, 30_000).toBe(1);
        await q.publish('ttl-retry', 'x', { id: 'short-lived', ttlMs: 700 });
        await poll(async () => (await q.hospital.list({ topic: 'ttl-retry' })).map((r) => r.reason)).toEqual(['expired']);
        expect(tries).toEqual([0]);
      });
    });

    // ---- routing --------------------------------------------------------------------------------

    describe('routing', () => {
      test('topic routes on type, a header and a body field send matching messages to their topics; the rest stay', async () => {
        const q = await open();
        await q.createTopic('ingest', {
          routes: [
            { when: { type: 'image' }, to: 'images' },
            { when: { 'headers.tenant': 'b' }, to: 'tenant-b' },
            { when: { 'body.kind': ['x', 'y'] }, to: 'xy' },
          ],
        });
        const got: Record<string, Seen[]> = {};
        const headers = new Map<string, Record<string, string>>();
        for (const t of ['ingest', 'images', 'tenant-b', 'xy']) {
          const seen: Seen[] = (got[t] = []);
          consume(q, t, { group: 'g' }, (m) => {
            headers.set(m.id, m.headers);
            seen.push({ id: m.id, key: m.key, body: m.body, attempt: m.attempt, group: t, at: Date.now() });
          });
          await q.driver.ensureGroup(t, 'g');
        }
        const results = await q.publishMany('ingest', [
          { id: 'img', type: 'image', body: { kind: 'x' } }, // the first matching rule wins
          { id: 'tb', headers: { tenant: 'b' }, body: {} },
          { id: 'ta', headers: { tenant: 'a' }, body: {} },
          { id: 'kx', body: { kind: 'x' } },
          { id: 'ky', body: { kind: 'y' } },
          { id: 'kz', body: { kind: 'z' } },
          { id: 'doc', type: 'document' },
        ]);
        expect(Object.fromEntries(results.map((r) => [r.id, r.topic]))).toEqual({
          img: 'images', tb: 'tenant-b', ta: 'ingest', kx: 'xy', ky: 'xy', kz: 'ingest', doc: 'ingest',
        });
        await poll(() => Object.fromEntries(Object.entries(got).map(([t, s]) => [t, ids(s).sort()]))).toEqual({
          ingest: ['doc', 'kz', 'ta'],
          images: ['img'],
          'tenant-b': ['tb'],
          xy: ['kx', 'ky'],
        });
        for (const t of ['ingest', 'images', 'tenant-b', 'xy']) await poll(() => settledGroup(q, t, 'g')).toBe(0);
        expect(Object.values(got).flat()).toHaveLength(7);
        expect(headers.get('img')?.['lading-routed-from']).toBe('ingest');
        expect(headers.get('kx')?.['lading-routed-from']).toBe('ingest');
        expect(headers.get('kz')?.['lading-routed-from']).toBeUndefined();
      });
    });

    // ---- invalid messages -------------------------------------------------------------------------

    describe('invalid messages', () => {
      test('a body that fails the consumer schema goes to the hospital as invalid; the consumer keeps running', async () => {
        const q = await open();
        await q.createTopic('typed', { maxAttempts: 5 });
        const schema = z.object({ path: z.string(), size: z.number().int() });
        const handled: unknown[] = [];
        const c = consume(q, 'typed', { group: 'g', schema }, (m) => { handled.push(m.body); });
        await q.publish('typed', { path: 'a.bin', size: 'big' }, { id: 'bad-body' });
        await poll(async () => (await q.hospital.list()).map((r) => `${r.id}:${r.reason}`)).toEqual(['bad-body:invalid']);
        await q.publish('typed', { path: 'b.bin', size: 3 }, { id: 'good' });
        await poll(() => handled).toEqual([{ path: 'b.bin', size: 3 }]);
        const [r] = await q.hospital.list();
        expect(r!.errors).toHaveLength(1); // no retries for an invalid message
        expect(r!.errors[0]!.message).toMatch(/size/);
        await poll(() => ({ ...c.counts })).toMatchObject({ done: 1, hospital: 1, retried: 0 }); // counted once acked
      });

      test('InvalidMessageError → invalid, UnrecoverableError → failed after one attempt', async () => {
        const q = await open();
        await q.createTopic('throws', { maxAttempts: 5, backoff: FAST });
        const tries: string[] = [];
        consume<string>(q, 'throws', { group: 'g' }, (m) => {
          tries.push(m.id);
          if (m.body === 'invalid') throw new InvalidMessageError('header x is missing');
          if (m.body === 'fatal') throw new UnrecoverableError('the input file is corrupt');
        });
        await q.publish('throws', 'invalid', { id: 'inv' });
        await q.publish('throws', 'fatal', { id: 'fatal' });
        await q.publish('throws', 'fine', { id: 'fine' });
        await poll(async () => (await q.hospital.list()).map((r) => `${r.id}:${r.reason}:${r.errors.length}`).sort()).toEqual(['fatal:failed:1', 'inv:invalid:1']);
        await poll(() => tries.sort()).toEqual(['fatal', 'fine', 'inv']);
        const [fatal] = await q.hospital.list({ ids: ['fatal'] });
        expect(fatal!.errors[0]).toMatchObject({ name: 'UnrecoverableError', message: 'the input file is corrupt' });
      });
    });

    // ---- the error hospital -----------------------------------------------------------------------

    describe('hospital', () => {
      /** Topic whose handler fails with `body.err` while `healthy.ok` is false. */
      function failingTopic(q: Queue, topic: string, healthy: { ok: boolean }, seen: Seen[] = [], group = 'g') {
        return consume<{ err?: string }>(q, topic, { group }, (m) => {
          if (!healthy.ok && m.body?.err) throw new Error(m.body.err);
          seen.push({ id: m.id, key: m.key, body: m.body, attempt: m.attempt, group, at: Date.now() });
        });
      }
      const openCount = async (q: Queue, filter = {}) => (await q.hospital.list(filter)).length;

      test('list filters by topic, group, reason, error text, time and state; show by hospital id or message id', async () => {
        const q = await open();
        await q.createTopic('ha', { maxAttempts: 1 });
        await q.createTopic('hb', { maxAttempts: 1 });
        failingTopic(q, 'ha', { ok: false });
        consume(q, 'hb', { group: 'g2', schema: z.object({ n: z.number() }) }, () => undefined);
        await q.publish('ha', { err: 'Disk full on /scratch' }, { id: 'd1' });
        await q.publish('ha', { err: 'disk full on /lustre' }, { id: 'd2' });
        await q.publish('ha', { err: 'timeout talking to s3' }, { id: 's1' });
        await q.publish('hb', { n: 'not a number' }, { id: 'i1' });
        await poll(() => openCount(q)).toBe(4);
        const firstBatchEnd = Math.max(...(await q.hospital.list()).map((r) => r.admittedAt));
        await sleep(firstBatchEnd + 5 - Date.now());
        await q.publish('ha', { err: 'timeout talking to s3 again' }, { id: 's2' });
        await poll(() => openCount(q)).toBe(5);
        const idsOf = async (filter: Parameters<Queue['hospital']['list']>[0]) => (await q.hospital.list(filter)).map((r) => r.id).sort();
        expect(await idsOf({})).toEqual(['d1', 'd2', 'i1', 's1', 's2']);
        expect(await idsOf({ topic: 'ha' })).toEqual(['d1', 'd2', 's1', 's2']);
        expect(await idsOf({ group: 'g2' })).toEqual(['i1']);
        expect(await idsOf({ reason: 'invalid' })).toEqual(['i1']);
        expect(await idsOf({ reason: 'failed', topic: 'hb' })).toEqual([]);
        expect(await idsOf({ text: 'DISK FULL' })).toEqual(['d1', 'd2']);
        expect(await idsOf({ text: 's3', topic: 'ha' })).toEqual(['s1', 's2']);
        expect(await idsOf({ since: firstBatchEnd + 1 })).toEqual(['s2']);
        expect(await idsOf({ until: firstBatchEnd })).toEqual(['d1', 'd2', 'i1', 's1']);
        expect(await q.hospital.list({ limit: 2 })).toHaveLength(2);

        const d1 = await q.hospital.show('d1');
        expect(d1).toMatchObject({ id: 'd1', topic: 'ha', group: 'g', reason: 'failed', state: 'open' });
        expect(await q.hospital.show(d1.hid)).toEqual(d1);
        await expectCode(q.hospital.show('no-such-record'), 'NOT_FOUND');

        expect(await q.hospital.ignore({ ids: ['d1'] }, 'known issue')).toHaveLength(1);
        expect(await idsOf({})).toEqual(['d2', 'i1', 's1', 's2']);
        expect(await idsOf({ state: 'ignored' })).toEqual(['d1']);
        expect(await idsOf({ state: 'resolved' })).toEqual(['d1']);
        expect(await idsOf({ state: 'any' })).toHaveLength(5);
        expect(await q.hospital.show('d1')).toMatchObject({ state: 'ignored', resolution: 'known issue' });
      });

      test('retry one: attempts reset, back to its original group only (another group that handled it does not see it again)', async () => {
        const q = await open();
        // dedupWindowMs 0: consumer dedup off, so only "back to the original group" keeps g2 from seeing it again.
        await q.createTopic('hr', { maxAttempts: 2, backoff: FAST, dedupWindowMs: 0 });
        const healthy = { ok: false };
        const g1: Seen[] = [];
        const g2: Seen[] = [];
        failingTopic(q, 'hr', healthy, g1, 'g1');
        failingTopic(q, 'hr', { ok: true }, g2, 'g2');
        await q.driver.ensureGroup('hr', 'g1');
        await q.driver.ensureGroup('hr', 'g2');
        await q.publish('hr', { err: 'flaky dependency' }, { id: 'm1' });
        await poll(() => openCount(q)).toBe(1);
        await poll(() => ids(g2)).toEqual(['m1']);
        const [r] = await q.hospital.list();
        expect(r).toMatchObject({ id: 'm1', group: 'g1', reason: 'failed' });
        expect(r!.errors).toHaveLength(2);
        healthy.ok = true;
        const retried = await q.hospital.retry({ ids: [r!.hid] });
        expect(retried.map((x) => [x.hid, x.state])).toEqual([[r!.hid, 'retried']]);
        await poll(() => g1.map((s) => `${s.id}@${s.attempt}`)).toEqual(['m1@0']); // attempts reset
        await poll(() => settledGroup(q, 'hr', 'g1')).toBe(0);
        expect(await settledGroup(q, 'hr', 'g2')).toBe(0);
        expect(ids(g2)).toEqual(['m1']);
        expect(await openCount(q)).toBe(0);
        expect((await q.hospital.show(r!.hid)).state).toBe('retried');
        // A retried record cannot be retried twice.
        expect(await q.hospital.retry({ ids: [r!.hid] })).toEqual([]);
      });

      test('retry by filter, retry all, and retry to another topic', async () => {
        const q = await open();
        await q.createTopic('hf', { maxAttempts: 1 });
        const healthy = { ok: false };
        const seen: Seen[] = [];
        failingTopic(q, 'hf', healthy, seen);
        await q.publish('hf', { err: 'alpha broke' }, { id: 'a1' });
        await q.publish('hf', { err: 'alpha broke' }, { id: 'a2' });
        await q.publish('hf', { err: 'beta broke' }, { id: 'b1' });
        await q.publish('hf', { err: 'gamma broke' }, { id: 'c1' });
        await poll(() => openCount(q)).toBe(4);
        healthy.ok = true;
        expect((await q.hospital.retry({ text: 'alpha' })).map((r) => r.id).sort()).toEqual(['a1', 'a2']);
        await poll(() => ids(seen).sort()).toEqual(['a1', 'a2']);
        expect((await q.hospital.list()).map((r) => r.id).sort()).toEqual(['b1', 'c1']);

        // To another topic: a new message there (seen by that topic's groups), not by the original group.
        const fixed: Message[] = [];
        consume(q, 'hf-repair', { group: 'fixer' }, (m) => { fixed.push(m); });
        await q.driver.ensureGroup('hf-repair', 'fixer');
        expect((await q.hospital.retry({ ids: ['c1'] }, { toTopic: 'hf-repair' })).map((r) => r.id)).toEqual(['c1']);
        await poll(() => fixed.map((m) => m.id)).toEqual(['c1']);
        expect(fixed[0]!.attempt).toBe(0);
        expect(fixed[0]!.body).toEqual({ err: 'gamma broke' });
        expect(fixed[0]!.headers['lading-retried-from']).toContain('hf');
        expect((await q.hospital.show('c1')).resolution).toContain('hf-repair');

        expect((await q.hospital.retry({})).map((r) => r.id)).toEqual(['b1']);
        await poll(() => ids(seen).sort()).toEqual(['a1', 'a2', 'b1']);
        await poll(() => settledGroup(q, 'hf', 'g')).toBe(0);
        expect(ids(seen)).not.toContain('c1');
        expect(await openCount(q)).toBe(0);
      });

      test('retry with a rate limit: 10 records at 20/s take at least ~450 ms', async () => {
        const q = await open();
        await q.createTopic('hrate', { maxAttempts: 1 });
        const c = failingTopic(q, 'hrate', { ok: false });
        await q.publishMany('hrate', Array.from({ length: 10 }, (_, i) => ({ id: `r${i}`, body: { err: 'nope' } })));
        await poll(() => openCount(q)).toBe(10);
        await c.close();
        const t0 = Date.now();
        const retried = await q.hospital.retry({}, { ratePerSec: 20 });
        const elapsed = Date.now() - t0;
        expect(retried).toHaveLength(10);
        expect(elapsed).toBeGreaterThanOrEqual(400); // 10 messages at 20/s: 9 gaps of 50 ms at the very least
        expect(await groupStats(q, 'hrate', 'g')).toMatchObject({ ready: 10, hospital: 0 });
      });

      test('retry of everything while the handler still fails acts once per record (it does not chase the records it creates)', async () => {
        const q = await open();
        await q.createTopic('hloop', { maxAttempts: 1 });
        const seen: Seen[] = [];
        failingTopic(q, 'hloop', { ok: false }, seen); // still broken: every retried message comes straight back
        await q.publishMany('hloop', Array.from({ length: 3 }, (_, i) => ({ id: `l${i}`, body: { err: 'still broken' } })));
        await poll(() => openCount(q)).toBe(3);
        const outcome = await Promise.race([
          q.hospital.retry({}, { ratePerSec: 50 }).then((r) => r.length),
          sleep(T(5000)).then(() => 'still retrying after 5 s'),
        ]);
        expect(outcome).toBe(3);
        await poll(() => openCount(q)).toBe(3); // they failed again and are back, as new records
        expect(await openCount(q, { state: 'retried' })).toBe(3);
      });

      test('ignore resolves a record without handling it; purge removes resolved records, open ones only when asked', async () => {
        const q = await open();
        await q.createTopic('hp', { maxAttempts: 1 });
        const healthy = { ok: false };
        const seen: Seen[] = [];
        failingTopic(q, 'hp', healthy, seen);
        for (const id of ['p1', 'p2', 'p3']) await q.publish('hp', { err: `bad ${id}` }, { id });
        await poll(() => openCount(q)).toBe(3);
        healthy.ok = true;
        const [ignored] = await q.hospital.ignore({ ids: ['p1'] }, 'duplicate upload');
        expect(ignored).toMatchObject({ id: 'p1', state: 'ignored', resolution: 'duplicate upload' });
        expect(ignored!.resolvedAt).toBeTypeOf('number');
        await q.hospital.retry({ ids: ['p2'] });
        await poll(() => ids(seen)).toEqual(['p2']);
        await poll(() => settledGroup(q, 'hp', 'g')).toBe(0);
        expect(ids(seen)).toEqual(['p2']); // p1 was ignored: never handled
        expect(await q.hospital.ignore({ ids: ['p1'] })).toEqual([]); // already resolved

        expect(await q.hospital.purge({})).toBe(2); // the ignored and the retried record
        expect((await q.hospital.list({ state: 'any' })).map((r) => r.id)).toEqual(['p3']);
        expect(await q.hospital.purge({})).toBe(0); // an open record stays unless asked for explicitly
        expect(await q.hospital.purge({ state: 'open' })).toBe(1);
        expect(await q.hospital.list({ state: 'any' })).toEqual([]);
        await poll(() => settledGroup(q, 'hp', 'g')).toBe(0);
        expect(ids(seen)).toEqual(['p2']);
      });

      test('report: Markdown and JSON with counts and errors, and a webhook POST', async () => {
        const q = await open();
        await q.createTopic('hq', { maxAttempts: 2, backoff: FAST });
        failingTopic(q, 'hq', { ok: false });
        consume(q, 'hq-typed', { group: 'g', schema: z.object({ n: z.number() }) }, () => undefined);
        await q.publish('hq', { err: 'disk full on /scratch' }, { id: 'q1' });
        await q.publish('hq', { err: 'disk full on /scratch' }, { id: 'q2' });
        await q.publish('hq-typed', { n: 'x' }, { id: 'q3' });
        await poll(() => openCount(q)).toBe(3);

        const md = await q.hospital.report();
        expect(md).toContain('3 open records');
        expect(md).toMatch(/failed 2/);
        expect(md).toMatch(/invalid 1/);
        expect(md).toContain('Error: disk full on /scratch');
        expect(md).toContain('q1');

        const json = JSON.parse(await q.hospital.report({}, { format: 'json' })) as {
          total: number; byReason: Record<string, number>; byTopic: Record<string, number>;
          topErrors: { error: string; count: number }[]; records: { id: string; attempts: number; lastError: string; lastWorker: string }[];
        };
        expect(json.total).toBe(3);
        expect(json.byReason).toEqual({ failed: 2, invalid: 1 });
        expect(json.byTopic).toEqual({ hq: 2, 'hq-typed': 1 });
        expect(json.topErrors[0]).toEqual({ error: 'Error: disk full on /scratch', count: 2 });
        expect(json.records.find((r) => r.id === 'q1')).toMatchObject({ attempts: 2, lastError: 'Error: disk full on /scratch', lastWorker: q.identity.label });

        const posts: { method: string; type: string | undefined; body: string }[] = [];
        let status = 200;
        const server = createServer((req: IncomingMessage, res) => {
          let body = '';
          req.setEncoding('utf8').on('data', (d: string) => { body += d; }).on('end', () => {
            posts.push({ method: req.method ?? '', type: req.headers['content-type'], body });
            res.writeHead(status).end();
          });
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        try {
          const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/lading`;
          await q.hospital.report({ topic: 'hq' }, { webhook: url });
          expect(posts).toHaveLength(1);
          expect(posts[0]).toMatchObject({ method: 'POST', type: 'application/json' });
          const payload = JSON.parse(posts[0]!.body) as { text: string; report: { total: number } };
          expect(payload.report.total).toBe(2);
          expect(payload.text).toContain('disk full on /scratch');
          status = 500;
          await expectCode(q.hospital.report({}, { webhook: url }), 'BACKEND', /500/);
        } finally {
          await new Promise((resolve) => server.close(resolve));
        }
        await expectCode(q.hospital.report({}, { webhook: 'http://127.0.0.1:1/hook' }), 'BACKEND');
      });

      test('nothing leaves the hospital by itself: restarted consumers do not drain it', async () => {
        const q1 = await open();
        await q1.createTopic('hn', { maxAttempts: 1 });
        failingTopic(q1, 'hn', { ok: false });
        await q1.publish('hn', { err: 'x' }, { id: 'n1' });
        await q1.publish('hn', { err: 'y' }, { id: 'n2' });
        await poll(() => openCount(q1)).toBe(2);
        await q1.close();
        const q2 = await open();
        const seen: Seen[] = [];
        failingTopic(q2, 'hn', { ok: true }, seen);
        await q2.publish('hn', { ok: 1 }, { id: 'sentinel' });
        await poll(() => ids(seen)).toEqual(['sentinel']);
        await poll(() => settledGroup(q2, 'hn', 'g')).toBe(0);
        expect((await q2.hospital.list()).map((r) => r.id).sort()).toEqual(['n1', 'n2']);
        expect(await groupStats(q2, 'hn', 'g')).toMatchObject({ hospital: 2 });
        expect(ids(seen)).toEqual(['sentinel']);
      });
    });

    // ---- close and drain --------------------------------------------------------------------------

    describe('close and drain', () => {
      test('close({graceMs}) takes nothing new and lets the in-flight handler finish', async () => {
        const q = await open();
        await q.createTopic('drain');
        const started = gate();
        const finished: string[] = [];
        const c = consume(q, 'drain', { group: 'g', concurrency: 1 }, async (m) => {
          started.open();
          await sleep(300);
          finished.push(m.id);
        });
        await q.publish('drain', 1, { id: 'in-flight' });
        await started.promise;
        const closing = c.close({ graceMs: 10_000 });
        await q.publish('drain', 2, { id: 'after-close' });
        await closing;
        expect(finished).toEqual(['in-flight']);
        expect(c.counts.done).toBe(1);
        expect(await groupStats(q, 'drain', 'g')).toMatchObject({ ready: 1, leased: 0, hospital: 0 });
      });

      test('a handler that ignores the signal past the grace period is handed back, not counted as an attempt, and another consumer handles it', async () => {
        const q1 = await open();
        const q2 = await open();
        await q1.createTopic('handback', { maxAttempts: 1 }); // a counted failure would send it straight to the hospital
        const started = gate();
        const signals: string[] = [];
        const c1 = consume(q1, 'handback', { group: 'g' }, async (_m, ctx) => {
          started.open();
          // The callback form (ctx.onAbort) fires at the same moment as the signal; a removed one never does.
          ctx.onAbort((reason) => signals.push(`onAbort:${(reason as { code?: string }).code}`));
          const off = ctx.onAbort(() => signals.push('removed'));
          off();
          await new Promise<void>((resolve) => {
            ctx.signal.addEventListener('abort', () => {
              signals.push('signal');
              ctx.onAbort(() => signals.push('late')); // registered after the abort: called at once (microtask)
            });
            setTimeout(resolve, 5000).unref(); // ignores the signal
          });
        });
        await q1.publish('handback', 'stubborn', { id: 'h1' });
        await started.promise;
        await c1.close({ graceMs: 150 });
        expect(signals).toEqual(['signal', 'onAbort:CLOSED', 'late']);
        expect(c1.counts).toMatchObject({ done: 0, retried: 0, hospital: 0 });
        expect(await groupStats(q1, 'handback', 'g')).toMatchObject({ ready: 1, leased: 0, hospital: 0 });
        const { seen, handler } = recorder('g');
        consume(q2, 'handback', { group: 'g' }, handler);
        await poll(() => seen.map((s) => `${s.id}@${s.attempt}`)).toEqual(['h1@0']);
        await poll(() => settledGroup(q2, 'handback', 'g')).toBe(0);
        expect(await q2.hospital.list({ state: 'any' })).toEqual([]);
      });
    });

    // ---- stats ----------------------------------------------------------------------------------

    describe('stats', () => {
      test('ready, delayed, leased and hospital counts per group', async () => {
        const q = await open();
        await q.createTopic('st', { maxAttempts: 1 });
        const hold = gate();
        const c = consume<string>(q, 'st', { group: 'g', concurrency: 1 }, async (m) => {
          if (m.body === 'boom') throw new UnrecoverableError('boom');
          if (m.body === 'hold') await hold.promise;
        });
        await q.driver.ensureGroup('st', 'g');
        await q.driver.ensureGroup('st', 'other');
        await q.publish('st', 'boom');
        await poll(() => c.counts.hospital).toBe(1);
        await q.publish('st', 'hold');
        await poll(async () => (await groupStats(q, 'st', 'g'))?.leased).toBe(1);
        await q.publishMany('st', [{ body: 'a' }, { body: 'b' }, { body: 'c' }, { body: 'later', delayMs: 60_000 }]);
        expect(await groupStats(q, 'st', 'g')).toEqual({ ready: 3, delayed: 1, leased: 1, hospital: 1 });
        // The other group has no consumer: everything is waiting there, nothing leased or in the hospital.
        expect(await groupStats(q, 'st', 'other')).toEqual({ ready: 5, delayed: 1, leased: 0, hospital: 0 });
        hold.open();
        await poll(() => groupStats(q, 'st', 'g')).toEqual({ ready: 0, delayed: 1, leased: 0, hospital: 1 });
        const all = await q.stats();
        expect(all.map((s) => `${s.topic}/${s.group}`).sort()).toEqual(['st/g', 'st/other']);
      });
    });

    // ---- bad input ------------------------------------------------------------------------------

    describe('bad input', () => {
      test('invalid topic and group names are refused with a hint', async () => {
        const q = await open();
        for (const bad of ['', 'has space', '../etc', '-leading-dash', 'a/b', 'x'.repeat(201), 'ünïcode']) {
          await expectCode(q.createTopic(bad), 'BAD_ARGUMENT');
          await expectCode(q.publish(bad, 1), 'BAD_ARGUMENT');
          await expectCode(() => q.consume(bad, { group: 'g' }, () => undefined), 'BAD_ARGUMENT');
        }
        for (const bad of ['', 'has space', 'a/b', '.hidden']) {
          const e = await expectCode(() => q.consume('fine', { group: bad }, () => undefined), 'BAD_ARGUMENT', /group/);
          expect(e.hint).toBeTruthy();
        }
        expect(await q.topics()).toEqual([]);
      });

      test('bad topic policies are refused with BAD_CONFIG naming the field', async () => {
        const q = await open();
        await expectCode(q.createTopic('p', { onExpired: 'delete' } as never), 'BAD_CONFIG', /onExpired/);
        await expectCode(q.createTopic('p', { maxAttempts: 0 }), 'BAD_CONFIG', /maxAttempts/);
        await expectCode(q.createTopic('p', { leaseMs: 5 }), 'BAD_CONFIG', /leaseMs/);
        await expectCode(q.createTopic('p', { backoff: { initialMs: -1 } }), 'BAD_CONFIG', /backoff\.initialMs/);
        await expectCode(q.createTopic('p', { backoff: { jitter: 2 } }), 'BAD_CONFIG', /jitter/);
        await expectCode(q.createTopic('p', { maxAttemps: 3 } as never), 'BAD_CONFIG', /maxAttemps/);
        await expectCode(q.createTopic('p', { routes: [{ when: { colour: 'red' }, to: 'x' }] }), 'BAD_CONFIG', /routes/);
        await expectCode(q.createTopic('p', { routes: [{ when: {}, to: 'x' }] }), 'BAD_CONFIG', /routes/);
        await expectCode(q.createTopic('p', { routes: [{ when: { type: 'a' }, to: 'bad name' }] }), 'BAD_CONFIG', /routes/);
        await expectCode(q.createTopic('p', { routes: [{ when: { type: 'a' }, to: 'p' }] }), 'BAD_CONFIG', /itself/);
        expect(await q.topics()).toEqual([]);
        const ok = await q.createTopic('p', { maxAttempts: 2, onExpired: 'drop' });
        expect(ok.policy).toMatchObject({ maxAttempts: 2, onExpired: 'drop' });
      });

      test('a body over the inline limit with no store is TOO_LARGE; a non-JSON body is BAD_MESSAGE', async () => {
        const q = await open();
        await q.createTopic('b');
        await q.driver.ensureGroup('b', 'g');
        await expectCode(q.publish('b', 'x'.repeat(70 * 1024)), 'TOO_LARGE', /inline limit/);
        const small = await open({ inlineLimit: 1024 });
        const e = await expectCode(small.publish('b', { blob: 'y'.repeat(2048) }), 'TOO_LARGE');
        expect(e.hint).toMatch(/store/);
        expect(await small.publish('b', { blob: 'y'.repeat(512) })).toMatchObject({ duplicate: false });
        const circular: Record<string, unknown> = {};
        circular.self = circular;
        for (const bad of [() => 1, 10n, Symbol('s'), circular, { n: 10n }]) await expectCode(q.publish('b', bad), 'BAD_MESSAGE');
        await expectCode(q.publish('b', 1, { headers: { n: 1 as unknown as string } }), 'BAD_MESSAGE', /headers/);
        await expectCode(q.publish('b', 1, { id: 'i'.repeat(600) }), 'BAD_MESSAGE', /id/);
        expect(await groupStats(q, 'b', 'g')).toMatchObject({ ready: 1 }); // only the good one was written
      });

      test('bad queue URIs are refused with BAD_URI', async () => {
        for (const bad of ['', 'sqlite:', 'sqlite://', 'kafka://', 'kafka://host', 'kafka:host:9092', 'mysql://x', 'queue.db', 'sqlite:./q.db?journal=off', 'kafka://h:9092?bogus=1']) {
          await expectCode(async () => parseQueueUri(bad), 'BAD_URI');
          await expectCode(openQueue({ uri: bad }), 'BAD_URI');
        }
        expect(parseQueueUri('kafka://a:9092,b:9093?clientId=x')).toEqual({ kind: 'kafka', brokers: ['a:9092', 'b:9093'], options: { clientId: 'x' } });
        expect(parseQueueUri('sqlite:./.lading/queue.db')).toMatchObject({ kind: 'sqlite', path: './.lading/queue.db' });
      });
    });

    // ---- envelope -------------------------------------------------------------------------------

    describe('envelope', () => {
      const rawEnvelope = (topic: string, extra: Record<string, unknown>): Envelope =>
        ({ v: ENVELOPE_VERSION, id: `raw-${Math.random().toString(36).slice(2)}`, topic, headers: {}, attempt: 0, publishedAt: Date.now(), body: { n: 1 }, ...extra }) as Envelope;

      test('unknown top-level fields are kept through publish, consume, the hospital and a retry', async () => {
        const q = await open();
        await q.createTopic('ev', { maxAttempts: 1 });
        const extra = { futureField: { nested: [1, 2] }, 'x-vendor': 'abc' };
        const env = rawEnvelope('ev', extra);
        expect(parseEnvelope(JSON.stringify(env))).toMatchObject(extra);
        let fail = true;
        const seen: Envelope[] = [];
        consume(q, 'ev', { group: 'g' }, (m) => {
          seen.push(m.envelope);
          if (fail) throw new UnrecoverableError('not now');
        });
        await q.driver.ensureGroup('ev', 'g');
        expect(await q.driver.publish([env], { durable: true })).toEqual([{ id: env.id, topic: 'ev', duplicate: false }]);
        await poll(() => seen.length).toBe(1);
        expect(seen[0]).toMatchObject(extra);
        await poll(async () => (await q.hospital.list()).length).toBe(1);
        const [r] = await q.hospital.list();
        expect(r!.envelope).toMatchObject(extra);
        expect(JSON.parse(r!.raw)).toMatchObject(extra);
        fail = false;
        await q.hospital.retry({ ids: [r!.hid] });
        await poll(() => seen.length).toBe(2);
        expect(seen[1]).toMatchObject({ ...extra, id: env.id, body: { n: 1 } });
      });

      test('an envelope of a newer version (v: 2) is rejected as invalid and sent to the hospital; the consumer survives', async () => {
        const q = await open();
        await q.createTopic('ev2', { maxAttempts: 5 });
        const future = rawEnvelope('ev2', { v: ENVELOPE_VERSION + 1 });
        await expectCode(async () => parseEnvelope(JSON.stringify(future)), 'BAD_MESSAGE', /\bv\b.*newer/);
        const handled: string[] = [];
        const c = consume(q, 'ev2', { group: 'g' }, (m) => { handled.push(m.id); });
        await q.driver.ensureGroup('ev2', 'g');
        await q.driver.publish([future], { durable: true });
        await poll(async () => (await q.hospital.list()).map((r) => `${r.id}:${r.reason}`)).toEqual([`${future.id}:invalid`]);
        const [r] = await q.hospital.list();
        expect(r!.envelope).toBeUndefined();
        expect(JSON.parse(r!.raw)).toMatchObject({ v: ENVELOPE_VERSION + 1, id: future.id });
        expect(r!.errors[0]!.message).toMatch(/newer/);
        await q.publish('ev2', 'next', { id: 'next' });
        await poll(() => handled).toEqual(['next']);
        await poll(() => ({ ...c.counts })).toMatchObject({ done: 1, hospital: 1 });
        expect(errors).toEqual([]);
      });
    });
  });
}
