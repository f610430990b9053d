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

/**
 * Throw from a handler that has not started the work to hand the message back untouched: released at once,
 * not counted as an attempt (like a hand-back on close). The runner uses it for tasks leased ahead when it drains.
 */
export class HandBackError extends Error {
  override readonly name = 'HandBackError';
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
  /**
   * Call `listener` once, with the reason, at the moment `signal` would abort (at once, in a microtask, if it
   * has already). Returns a function that removes it. For code that needs only a callback: no AbortSignal is
   * made (with its listener, ~9 µs per message on the runner's path, a sixth of its main-thread cost).
   */
  onAbort(listener: (reason: unknown) => void): () => void;
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

const SETTLED: Promise<void> = Promise.resolve();

/** One delivery being handled. A class, not a literal, for the reason given at DeliveryContext. */
class InFlight {
  /**
   * Made on first use (a handler reading `ctx.signal`): most handlers never look at it, and an
   * AbortController with its listener was a measurable share of the cost of a message.
   */
  controller: AbortController | undefined = undefined;
  /** Set once by abortEntry (lease lost, timeout, shutdown past the grace period); `reason` is the signal's reason. */
  aborted = false;
  reason: unknown = undefined;
  /** Rejects the wait on a handler's promise when the entry is aborted. */
  onAbort: ((reason: unknown) => void) | undefined = undefined;
  /** Listeners registered with the context's onAbort. */
  listeners: ((reason: unknown) => void)[] | undefined = undefined;
  checkpoint: JsonValue | undefined;
  /** The handler succeeded and only its ack is left: the slot is free already (see `handlerDone`). */
  settling = false;
  done: Promise<void> = SETTLED;

  constructor(readonly delivery: Delivery) {
    this.checkpoint = delivery.checkpoint;
  }
}

/** What a DeliveryContext needs from its consumer (one object per consumer, not per delivery). */
interface LeaseKeeper {
  extend(entry: InFlight, ms: number | undefined, checkpoint: JsonValue | undefined): Promise<void>;
}

/**
 * The HandlerContext of one delivery. A class rather than an object literal with a getter and two arrow
 * functions: V8 may allocate such literals straight in the old generation (allocation-site pretenuring),
 * and an old object whose closures hold a delivery keeps all of that delivery's young objects (envelope,
 * Message, record) alive through every young collection until the next full one. On the Kafka consume path
 * that tripled the bytes the garbage collector copied per message.
 */
class DeliveryContext implements HandlerContext {
  readonly checkpoint: JsonValue | undefined;

  constructor(private readonly keeper: LeaseKeeper, private readonly entry: InFlight, readonly worker: string) {
    this.checkpoint = entry.delivery.checkpoint;
  }

  get signal(): AbortSignal {
    return signalOf(this.entry);
  }

  onAbort(listener: (reason: unknown) => void): () => void {
    const entry = this.entry;
    if (entry.aborted) {
      queueMicrotask(() => listener(entry.reason));
      return noop;
    }
    (entry.listeners ??= []).push(listener);
    return () => {
      const i = entry.listeners?.indexOf(listener) ?? -1;
      if (i >= 0) entry.listeners!.splice(i, 1);
    };
  }

  saveCheckpoint(state: JsonValue): Promise<void> {
    this.entry.checkpoint = state;
    return this.keeper.extend(this.entry, undefined, state);
  }

  extendLease(ms?: number): Promise<void> {
    return this.keeper.extend(this.entry, ms, this.entry.checkpoint);
  }
}

/** The entry's AbortSignal, made on demand (already aborted if the entry was). */
function signalOf(entry: InFlight): AbortSignal {
  if (!entry.controller) {
    entry.controller = new AbortController();
    if (entry.aborted) entry.controller.abort(entry.reason);
  }
  return entry.controller.signal;
}

const noop = (): void => undefined;

function abortEntry(entry: InFlight, reason: unknown): void {
  if (entry.aborted) return;
  entry.aborted = true;
  entry.reason = reason;
  entry.controller?.abort(reason);
  const listeners = entry.listeners;
  entry.listeners = undefined;
  if (listeners) for (const l of listeners) l(reason);
  entry.onAbort?.(reason);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<unknown>).then === 'function';
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
  private concurrency: number;
  private readonly maxPollMs: number;
  private stopping = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private slotFree: (() => void) | undefined;
  /** In-flight entries whose handler succeeded and whose ack is being written: they hold no slot. */
  private settling = 0;
  private heartbeat: NodeJS.Timeout | undefined;
  private policy!: TopicPolicy;
  private closing: Promise<void> | undefined;
  /** Lease renewals asked for by handlers (saveCheckpoint, extendLease). */
  private readonly leases: LeaseKeeper = {
    extend: async (entry, ms, checkpoint) => {
      if (!(await this.queue.driver.extend(entry.delivery, { leaseMs: ms ?? this.leaseMs, checkpoint }))) this.leaseLost(entry);
    },
  };

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

  /**
   * Change how many messages are handled at once, from now on (the runner raises it to lease short tasks
   * ahead of its threads). Lowering it takes no message back: the surplus in flight just finishes first.
   */
  setConcurrency(concurrency: number): void {
    this.concurrency = Math.max(1, Math.floor(concurrency));
    this.freeSlot();
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
        if (this.inFlight.size - this.settling >= this.concurrency) {
          // Woken through setImmediate (freeSlot): the handlers finishing in this same turn free
          // their slots too, so one fetch leases many messages instead of one fetch per message.
          await new Promise<void>((resolve) => { this.slotFree = resolve; });
          continue;
        }
        const room = this.concurrency - (this.inFlight.size - this.settling);
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
    const entry = new InFlight(delivery);
    this.inFlight.set(delivery.receipt, entry);
    entry.done = this.settle(entry);
  }

  /** Handle one delivery to its end, then free its slot (one async frame rather than a .catch().finally() chain). */
  private async settle(entry: InFlight): Promise<void> {
    try {
      await this.handle(entry);
    } catch (e) {
      this.emit('error', e);
    } finally {
      this.inFlight.delete(entry.delivery.receipt);
      if (entry.settling) this.settling--;
      else this.freeSlot();
    }
  }

  /**
   * Wake the fetch loop if it waits for a slot. Through setImmediate, registered now: the loop's next
   * fetch then runs before the group commit that this handler's ack is about to schedule, so the acks
   * and the next fetch share one transaction (one commit per round instead of two).
   */
  private freeSlot(): void {
    const wake = this.slotFree;
    if (!wake) return;
    this.slotFree = undefined;
    setImmediate(wake);
  }

  /** The handler succeeded: its slot is free for the next message while its ack is written. */
  private handlerDone(entry: InFlight): void {
    entry.settling = true;
    this.settling++;
    this.freeSlot();
  }

  private async handle(entry: InFlight): Promise<void> {
    const d = entry.delivery;
    const driver = this.queue.driver;
    if (!d.envelope) return void (await this.admit(d, 'invalid', new InvalidMessageError(d.invalid ?? 'message is not a valid envelope')));
    // The handler sees the delivery's attempt number (copy only when the stored envelope says otherwise).
    const envelope: Envelope = d.envelope.attempt === d.attempt ? d.envelope : { ...d.envelope, attempt: d.attempt };
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

    const context = new DeliveryContext(this.leases, entry, this.queue.identity.label);
    let timer: NodeJS.Timeout | undefined;
    if (this.options.timeoutMs) {
      const timeoutMs = this.options.timeoutMs;
      timer = setTimeout(() => {
        const err = new Error(`handler timed out after ${timeoutMs} ms`);
        err.name = 'TimeoutError';
        abortEntry(entry, err);
      }, timeoutMs);
    }
    try {
      const result = this.handler(message, context);
      // A promise is raced against the abort: a lost lease, a timeout or a shutdown past the grace
      // period settles the delivery even if the handler ignores its signal. A plain return value is
      // final already (nothing could abort it in the same turn), so it needs no promise at all.
      if (isThenable(result)) {
        await new Promise<unknown>((resolve, reject) => {
          entry.onAbort = reject;
          if (entry.aborted) reject(entry.reason);
          result.then(resolve, reject);
        });
      }
    } catch (e) {
      clearTimeout(timer);
      const reason: unknown = entry.reason;
      if (entry.aborted && reason instanceof LadingError && reason.code === 'CONFLICT') return; // lease lost: another consumer owns it now
      if (entry.aborted && this.stopping && reason instanceof LadingError && reason.code === 'CLOSED') {
        await driver.release(d); // handed back on shutdown: not the message's fault
        return;
      }
      if (e instanceof HandBackError) return void (await driver.release(d)); // not started: not an attempt
      await this.fail(entry, e);
      return;
    }
    clearTimeout(timer);
    this.handlerDone(entry);
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
    if (!entry.aborted) abortEntry(entry, new LadingError('CONFLICT', `lease on message ${entry.delivery.id} was lost`));
  }

  private async renewLeases(): Promise<void> {
    // All at once, not one after the other: the group commit then writes them in one transaction.
    await Promise.all([...this.inFlight.values()].map(async (entry) => {
      if (entry.aborted || entry.settling) return; // a settling entry is being acked
      try {
        if (!(await this.queue.driver.extend(entry.delivery, { leaseMs: this.leaseMs, checkpoint: entry.checkpoint }))) this.leaseLost(entry);
      } catch (e) {
        this.emit('error', e);
      }
    }));
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
        for (const e of this.inFlight.values()) abortEntry(e, new LadingError('CLOSED', 'consumer closed: handing the message back'));
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
