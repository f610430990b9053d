import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { z } from 'zod';
import type { AttemptError, Delivery, HospitalReason, HospitalRecord } from './driver.js';
import { describeZodError, type Envelope, type JsonValue } from './envelope.js';
import { LadingError, toErrorRecord } from './errors.js';
import type { Queue } from './queue.js';
import { BackoffSchema, backoffDelay, type TopicPolicy } from './topic.js';

/** Throw from a handler to send the message straight to the hospital as `invalid` (no retries). */
export class InvalidMessageError extends Error {
  override readonly name = 'InvalidMessageError';
}

/** Throw from a handler to stop retrying: the message goes to the hospital as `failed` at once. */
export class UnrecoverableError extends Error {
  override readonly name = 'UnrecoverableError';
}

/** A delivered message as a handler sees it. */
export class Message<T = unknown> {
  constructor(
    readonly envelope: Envelope,
    private readonly queue: Queue,
    private readonly resolved?: { body: T },
  ) {}

  get id(): string { return this.envelope.id; }
  get topic(): string { return this.envelope.topic; }
  get key(): string | undefined { return this.envelope.key; }
  get type(): string | undefined { return this.envelope.type; }
  get headers(): Record<string, string> { return this.envelope.headers; }
  /** 0 on first delivery. */
  get attempt(): number { return this.envelope.attempt; }
  /** True when the body travels by claim check (use `json()` or `stream()`). */
  get isClaimCheck(): boolean { return this.envelope.ref !== undefined; }

  /** The inline body (validated when the consumer has a schema); undefined for a claim check. */
  get body(): T {
    return (this.resolved ? this.resolved.body : this.envelope.body) as T;
  }

  /** The body, resolving a claim check from the store (verified against its checksum). */
  async json(): Promise<T> {
    if (this.resolved) return this.resolved.body;
    if (this.envelope.ref) return (await this.queue.resolvePayload(this.envelope.ref)) as T;
    return this.envelope.body as T;
  }

  /** The payload bytes as a stream, without buffering (for big claim-check bodies). */
  async stream(): Promise<Readable> {
    if (this.envelope.ref) return this.queue.openPayload(this.envelope.ref);
    return Readable.from([Buffer.from(JSON.stringify(this.envelope.body ?? null))]);
  }
}

export interface HandlerContext {
  /** Aborted when the lease is lost, the consumer is closed past its grace, or the timeout hits. */
  signal: AbortSignal;
  /** Checkpoint saved by an earlier attempt (resume from here), if any. */
  checkpoint: JsonValue | undefined;
  /** Save progress with the lease; a retried delivery gets it back as `checkpoint`. */
  saveCheckpoint(state: JsonValue): Promise<void>;
  /** Extend the lease now (it is also extended automatically while the handler runs). */
  extendLease(ms?: number): Promise<void>;
  worker: string;
}

export type Handler<T = unknown> = (message: Message<T>, context: HandlerContext) => unknown;

export interface ConsumeOptions<T = unknown> {
  /** Consumer group: every group sees every message; inside one group each message goes to one consumer. */
  group: string;
  /** Messages handled at once by this consumer. Default 1. */
  concurrency?: number;
  /** Lease length; default the topic's `leaseMs`. Renewed every third of it while the handler runs. */
  leaseMs?: number;
  /** A handler running longer than this is aborted and the attempt counts as failed. */
  timeoutMs?: number;
  /** Body schema: a message whose body does not satisfy it goes to the hospital as `invalid`. */
  schema?: z.ZodType<T>;
  /** Longest pause between polls when idle. Default 200 ms. */
  maxPollMs?: number;
  /** On close: how long in-flight handlers may run before they are aborted and handed back. Default 30 s. */
  graceMs?: number;
}

interface InFlight {
  delivery: Delivery;
  controller: AbortController;
  checkpoint: JsonValue | undefined;
  done: Promise<void>;
}

export interface ConsumerCounts {
  done: number;
  retried: number;
  hospital: number;
  deduped: number;
}

/**
 * A member of a consumer group. Pulls leased deliveries from the driver, runs the handler with bounded
 * concurrency, and settles each one: ack, retry with backoff (delayed visibility, never a sleep here),
 * or the hospital. Events: `done`, `retry`, `hospital`, `error`, `closed`.
 */
export class Consumer<T = unknown> extends EventEmitter {
  readonly counts: ConsumerCounts = { done: 0, retried: 0, hospital: 0, deduped: 0 };
  private readonly inFlight = new Map<string, InFlight>();
  private readonly concurrency: number;
  private readonly maxPollMs: number;
  private stopping = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private slotFree: (() => void) | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private policy!: TopicPolicy;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly queue: Queue,
    readonly topic: string,
    private readonly options: ConsumeOptions<T>,
    private readonly handler: Handler<T>,
  ) {
    super();
    if (!options.group || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(options.group)) {
      throw new LadingError('BAD_ARGUMENT', `consumer group ${JSON.stringify(options.group)} is not valid`, { hint: 'a group name is letters, digits, ".", "_" or "-", e.g. thumbnails' });
    }
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? 1));
    this.maxPollMs = options.maxPollMs ?? 200;
  }

  get group(): string {
    return this.options.group;
  }

  get active(): number {
    return this.inFlight.size;
  }

  start(): void {
    this.loop = this.run().catch((e: unknown) => {
      this.emit('error', e);
    });
  }

  private get leaseMs(): number {
    return this.options.leaseMs ?? this.policy.leaseMs;
  }

  private async run(): Promise<void> {
    this.policy = (await this.queue.topic(this.topic)).policy;
    await this.queue.driver.ensureGroup(this.topic, this.group);
    const onPublished = (t: string) => { if (t === this.topic) this.wake?.(); };
    this.queue.events.on('published', onPublished);
    this.heartbeat = setInterval(() => void this.renewLeases(), Math.max(50, Math.floor(this.leaseMs / 3)));
    this.heartbeat.unref();
    let idle = 5;
    let lastPolicyRefresh = Date.now();
    let lastGc = 0;
    try {
      while (!this.stopping) {
        if (this.inFlight.size >= this.concurrency) {
          await new Promise<void>((resolve) => { this.slotFree = resolve; });
          // Let the handlers finishing in this same turn free their slots too: one fetch then
          // leases many messages instead of one fetch (one write transaction) per message.
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        const room = this.concurrency - this.inFlight.size;
        if (Date.now() - lastPolicyRefresh > 2000) {
          this.policy = (await this.queue.topic(this.topic)).policy;
          lastPolicyRefresh = Date.now();
        }
        const deliveries = await this.queue.driver.fetch({ topic: this.topic, group: this.group, consumer: this.queue.identity.label, max: room, leaseMs: this.leaseMs });
        if (deliveries.length === 0) {
          if (Date.now() - lastGc > 5000) {
            lastGc = Date.now();
            await this.queue.collectPayloads().catch((e: unknown) => this.emit('error', e));
          }
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, idle);
            this.wake = () => { clearTimeout(t); resolve(); };
          });
          this.wake = undefined;
          idle = Math.min(this.maxPollMs, idle * 2);
          continue;
        }
        idle = 5;
        for (const d of deliveries) this.startOne(d);
      }
    } finally {
      this.queue.events.off('published', onPublished);
    }
  }

  private startOne(delivery: Delivery): void {
    const controller = new AbortController();
    const entry: InFlight = { delivery, controller, checkpoint: delivery.checkpoint, done: Promise.resolve() };
    this.inFlight.set(delivery.receipt, entry);
    entry.done = this.handle(entry)
      .catch((e: unknown) => { this.emit('error', e); })
      .finally(() => {
        this.inFlight.delete(delivery.receipt);
        this.slotFree?.();
        this.slotFree = undefined;
      });
  }

  private async handle(entry: InFlight): Promise<void> {
    const d = entry.delivery;
    const driver = this.queue.driver;
    if (!d.envelope) return void (await this.admit(d, 'invalid', new InvalidMessageError(d.invalid ?? 'message is not a valid envelope')));
    const envelope: Envelope = { ...d.envelope, attempt: d.attempt };
    if (envelope.expiresAt !== undefined && envelope.expiresAt <= Date.now()) {
      if (this.policy.onExpired === 'drop') await driver.ack(d);
      else await this.admit(d, 'expired', new LadingError('BAD_MESSAGE', `message expired at ${new Date(envelope.expiresAt).toISOString()} before it was handled`));
      return;
    }
    let message: Message<T>;
    if (this.options.schema) {
      let body: unknown;
      try {
        body = envelope.ref ? await this.queue.resolvePayload(envelope.ref) : envelope.body;
      } catch (e) {
        return void (await this.fail(entry, e));
      }
      const parsed = this.options.schema.safeParse(body);
      if (!parsed.success) return void (await this.admit(d, 'invalid', new InvalidMessageError(`body does not match the consumer's schema: ${describeZodError(parsed.error)}`)));
      message = new Message<T>(envelope, this.queue, { body: parsed.data });
    } else {
      message = new Message<T>(envelope, this.queue);
    }

    const context: HandlerContext = {
      signal: entry.controller.signal,
      checkpoint: d.checkpoint,
      worker: this.queue.identity.label,
      saveCheckpoint: async (state) => {
        entry.checkpoint = state;
        if (!(await driver.extend(d, { leaseMs: this.leaseMs, checkpoint: state }))) this.leaseLost(entry);
      },
      extendLease: async (ms) => {
        if (!(await driver.extend(d, { leaseMs: ms ?? this.leaseMs, checkpoint: entry.checkpoint }))) this.leaseLost(entry);
      },
    };
    // The handler is raced against its signal: a lost lease, a timeout or a shutdown past the grace
    // period settles the delivery even if the handler ignores the signal.
    const aborted = new Promise<never>((_, reject) => {
      entry.controller.signal.addEventListener('abort', () => reject(entry.controller.signal.reason), { once: true });
    });
    aborted.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    if (this.options.timeoutMs) {
      const timeoutMs = this.options.timeoutMs;
      timer = setTimeout(() => {
        const err = new Error(`handler timed out after ${timeoutMs} ms`);
        err.name = 'TimeoutError';
        entry.controller.abort(err);
      }, timeoutMs);
    }
    try {
      await Promise.race([Promise.resolve().then(() => this.handler(message, context)), aborted]);
    } catch (e) {
      clearTimeout(timer);
      const reason: unknown = entry.controller.signal.reason;
      if (entry.controller.signal.aborted && reason instanceof LadingError && reason.code === 'CONFLICT') return; // lease lost: another consumer owns it now
      if (entry.controller.signal.aborted && this.stopping && reason instanceof LadingError && reason.code === 'CLOSED') {
        await driver.release(d); // handed back on shutdown: not the message's fault
        return;
      }
      await this.fail(entry, e);
      return;
    }
    clearTimeout(timer);
    if (await driver.ack(d)) {
      this.counts.done++;
      this.emit('done', message);
    }
  }

  private async fail(entry: InFlight, e: unknown): Promise<void> {
    const d = entry.delivery;
    if (e instanceof InvalidMessageError) return void (await this.admit(d, 'invalid', e));
    if (e instanceof LadingError && e.code === 'NOT_FOUND' && d.envelope?.ref) {
      return void (await this.admit(d, 'invalid', e)); // the claim-check payload is gone: a case for a human
    }
    const error = this.attemptError(d, e);
    const { maxAttempts, backoff } = this.retryPolicy(d);
    if (e instanceof UnrecoverableError || d.attempt + 1 >= maxAttempts) {
      return void (await this.admit(d, 'failed', e));
    }
    const delayMs = backoffDelay(backoff, d.attempt + 1);
    if (await this.queue.driver.retry(d, { delayMs, error, checkpoint: entry.checkpoint })) {
      this.counts.retried++;
      this.emit('retry', { id: d.id, attempt: d.attempt, delayMs, error });
    }
  }

  /** The topic's retry policy, unless the message carries its own (like BullMQ's per-job attempts/backoff). */
  private retryPolicy(d: Delivery): Pick<TopicPolicy, 'maxAttempts' | 'backoff'> {
    const h = d.envelope?.headers ?? {};
    const maxAttempts = Number(h['lading-max-attempts']) || this.policy.maxAttempts;
    let backoff = this.policy.backoff;
    if (h['lading-backoff']) {
      const parsed = BackoffSchema.safeParse(safeJson(h['lading-backoff']));
      if (parsed.success) backoff = parsed.data;
    }
    return { maxAttempts, backoff };
  }

  private attemptError(d: Delivery, e: unknown): AttemptError {
    return { ...toErrorRecord(e), attempt: d.attempt, worker: this.queue.identity.label, host: this.queue.identity.host, at: Date.now() };
  }

  private async admit(d: Delivery, reason: HospitalReason, e: unknown): Promise<HospitalRecord> {
    const record = await this.queue.driver.deadLetter(d, { reason, error: this.attemptError(d, e) });
    this.counts.hospital++;
    this.emit('hospital', record);
    return record;
  }

  private leaseLost(entry: InFlight): void {
    if (!entry.controller.signal.aborted) entry.controller.abort(new LadingError('CONFLICT', `lease on message ${entry.delivery.id} was lost`));
  }

  private async renewLeases(): Promise<void> {
    for (const entry of this.inFlight.values()) {
      if (entry.controller.signal.aborted) continue;
      try {
        if (!(await this.queue.driver.extend(entry.delivery, { leaseMs: this.leaseMs, checkpoint: entry.checkpoint }))) this.leaseLost(entry);
      } catch (e) {
        this.emit('error', e);
      }
    }
  }

  /**
   * Stop taking new messages; let in-flight handlers finish within `graceMs`, then abort them and hand
   * their messages back (not counted as attempts). Resolves when nothing is in flight.
   */
  close(options: { graceMs?: number } = {}): Promise<void> {
    this.closing ??= (async () => {
      this.stopping = true;
      this.wake?.();
      this.slotFree?.();
      await this.loop;
      const grace = options.graceMs ?? this.options.graceMs ?? 30_000;
      const all = Promise.all([...this.inFlight.values()].map((e) => e.done));
      const timedOut = await Promise.race([all.then(() => false), sleep(grace, true, { ref: false })]);
      if (timedOut) {
        for (const e of this.inFlight.values()) e.controller.abort(new LadingError('CLOSED', 'consumer closed: handing the message back'));
        await all;
      }
      clearInterval(this.heartbeat);
      await this.queue.driver.leaveGroup?.(this.topic, this.group).catch((e: unknown) => { this.emit('error', e); });
      this.emit('closed');
    })();
    return this.closing;
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
