import { setTimeout as sleep } from 'node:timers/promises';
import { text } from 'node:stream/consumers';
import { LadingError, type PublishInput, type Queue } from '@lading/core';
import type { BlobStore } from '@lading/storage';
import { StoreCache, listInput } from './inputs.js';
import { ShardPlanner } from './planner.js';
import type { JobSpec } from './spec.js';
import type { Task } from './task.js';
import { WORKER_GROUP } from './worker.js';

/** What is kept of a submitted job in the store (`.lading/jobs/<id>.json`). */
export interface JobRecord {
  id: string;
  name?: string | undefined;
  topic: string;
  output: string;
  shards: number;
  inputs: number;
  bytes: number;
  submittedAt: string;
  spec: JobSpec;
}

export interface JobStatus {
  id: string;
  name?: string | undefined;
  total: number;
  queued: number;
  /** Waiting for a retry after a failure. */
  retrying: number;
  running: number;
  done: number;
  hospital: number;
  finished: boolean;
  /** Finished with nothing in the hospital. */
  ok: boolean;
  /** Shards per second since the previous status of this Job handle, when known. */
  throughput?: number | undefined;
  /** Seconds to go at that throughput. */
  etaSeconds?: number | undefined;
}

const jobKey = (id: string) => `.lading/jobs/${id}.json`;

export interface SubmitOptions {
  queue: Queue;
  /** Store holding job records (the configured store, e.g. LADING_STORE). */
  store: BlobStore;
  /** Stores for inputs / outputs, opened by URI. */
  stores?: StoreCache;
  onShard?: (count: number) => void;
}

/**
 * Submit a job: list the inputs (streamed), cut shards with deterministic ids, publish one small task per
 * shard (batched; ids `<job>:<shard>` make a resubmit a no-op), and record the job.
 */
export async function submit(spec: JobSpec, options: SubmitOptions): Promise<Job> {
  const { queue, store } = options;
  const stores = options.stores ?? new StoreCache();
  const ownStores = !options.stores;
  try {
    await stores.get(spec.output).catch((e: unknown) => {
      throw new LadingError('BAD_JOB_SPEC', `output ${spec.output}: ${(e as Error).message}`, { hint: 'output is a store URI prefix, e.g. file:/mnt/lustre/out or s3://bucket/out' });
    });
    await queue.createTopic(spec.topic, {}, { update: false });
    // Register the worker group first so every task is counted as queued before any worker starts.
    await queue.driver.ensureGroup(spec.topic, WORKER_GROUP);
    const planner = new ShardPlanner(spec.id, spec.sharding, stores);
    const headers: Record<string, string> = { 'lading-job': spec.id, 'lading-max-attempts': String(spec.retries.maxAttempts) };
    if (spec.retries.backoff) headers['lading-backoff'] = JSON.stringify(spec.retries.backoff);
    let batch: PublishInput[] = [];
    let shards = 0;
    let inputs = 0;
    let bytes = 0;
    let duplicates = 0;
    const flush = async () => {
      if (batch.length) duplicates += (await queue.publishMany(spec.topic, batch)).filter((r) => r.duplicate).length;
      batch = [];
    };
    for (const pattern of spec.inputs) {
      for await (const object of listInput(pattern, stores)) {
        inputs++;
        bytes += object.size;
        for await (const shard of planner.shards(object)) {
          const task: Task = { kind: 'lading.shard', job: spec.id, jobName: spec.name, shard, handler: spec.handler, output: spec.output, params: spec.params, timeoutMs: spec.timeout };
          batch.push({ id: `${spec.id}:${shard.id}`, type: 'lading.shard', headers, body: task, ttlMs: spec.ttl });
          shards++;
          if (batch.length >= 500) {
            await flush();
            options.onShard?.(shards);
          }
        }
      }
    }
    await flush();
    options.onShard?.(shards);
    const record: JobRecord = { id: spec.id, name: spec.name, topic: spec.topic, output: spec.output, shards, inputs, bytes, submittedAt: new Date().toISOString(), spec };
    await store.write(jobKey(spec.id), JSON.stringify(record, null, 2), { contentType: 'application/json' });
    const job = new Job(record, queue, store);
    job.submission = { published: shards - duplicates, duplicates };
    return job;
  } finally {
    if (ownStores) await stores.close();
  }
}

/** A submitted job: status and wait. */
export class Job {
  private last: { at: number; done: number } | undefined;
  /**
   * Set on the Job `submit` returns: tasks newly published, and tasks dropped as duplicates of an earlier
   * submit of the same spec (deterministic shard ids), so a resubmit shows `published: 0`.
   */
  submission: { published: number; duplicates: number } | undefined;

  constructor(readonly record: JobRecord, private readonly queue: Queue, private readonly store: BlobStore) {}

  get id(): string {
    return this.record.id;
  }

  static async open(id: string, queue: Queue, store: BlobStore): Promise<Job> {
    let raw: string;
    try {
      raw = await text(await store.read(jobKey(id)));
    } catch (e) {
      if ((e as LadingError).code === 'NOT_FOUND') throw new LadingError('NOT_FOUND', `no job ${JSON.stringify(id)} in ${store.uri}`, { hint: 'list jobs with `lading status`; use the same --store as the submit' });
      throw e;
    }
    return new Job(JSON.parse(raw) as JobRecord, queue, store);
  }

  static async list(queue: Queue, store: BlobStore): Promise<Job[]> {
    const jobs: Job[] = [];
    for await (const o of store.list('.lading/jobs/')) {
      if (!o.key.endsWith('.json')) continue;
      jobs.push(await Job.open(o.key.slice('.lading/jobs/'.length, -'.json'.length), queue, store));
    }
    return jobs;
  }

  async status(): Promise<JobStatus> {
    const [g] = await this.queue.driver.stats(this.record.topic, { job: this.id, group: WORKER_GROUP });
    const queued = g?.ready ?? 0;
    const retrying = g?.delayed ?? 0;
    const running = g?.leased ?? 0;
    const hospital = g?.hospital ?? 0;
    const total = this.record.shards;
    const done = Math.max(0, total - queued - retrying - running - hospital);
    const now = Date.now();
    let throughput: number | undefined;
    if (this.last && now > this.last.at) throughput = ((done - this.last.done) * 1000) / (now - this.last.at);
    if (!this.last || now - this.last.at > 1000) this.last = { at: now, done };
    const finished = queued + retrying + running === 0;
    const left = total - done - hospital;
    return {
      id: this.id, name: this.record.name, total, queued, retrying, running, done, hospital, finished, ok: finished && hospital === 0,
      throughput, etaSeconds: throughput && throughput > 0 ? left / throughput : undefined,
    };
  }

  /** Resolve when no shard is queued, retrying or running. Check `ok`: false when shards are in the hospital. */
  async wait(options: { onProgress?: (s: JobStatus) => void; pollMs?: number; signal?: AbortSignal } = {}): Promise<JobStatus> {
    for (;;) {
      const s = await this.status();
      options.onProgress?.(s);
      if (s.finished) return s;
      if (options.signal?.aborted) throw options.signal.reason;
      await sleep(options.pollMs ?? 500);
    }
  }
}
