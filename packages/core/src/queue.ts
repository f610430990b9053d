import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Readable } from 'node:stream';
import { text as readText } from 'node:stream/consumers';
import type { PayloadStore } from './claim-check.js';
import { Consumer, type ConsumeOptions, type Handler } from './consumer.js';
import type { PublishOutcome, QueueDriver } from './driver.js';
import { ENVELOPE_VERSION, TopicNameSchema, describeZodError, envelopeJson, newMessageId, type ClaimCheckRef, type Envelope, type PublishInput } from './envelope.js';
import { LadingError } from './errors.js';
import { Hospital } from './hospital.js';
import { workerIdentity, type WorkerIdentity } from './identity.js';
import { TopicPolicySchema, matches, type TopicInfo, type TopicPolicyInput } from './topic.js';
import { formatBytes } from './units.js';
import { openQueueDriver } from './uri.js';

export const DEFAULT_QUEUE_URI = 'sqlite:./.lading/queue.db';
export const DEFAULT_INLINE_LIMIT = 64 * 1024;
const PAYLOAD_PREFIX = '.lading/payloads/sha256';

export interface QueueOptions {
  /** Queue URI: `sqlite:PATH` (default `sqlite:./.lading/queue.db`) or `kafka://host:9092,...`. */
  uri?: string;
  /** An already opened driver (tests, custom backends); wins over `uri`. */
  driver?: QueueDriver;
  /** Store for claim-check payloads. Without one, a body over `inlineLimit` is refused. */
  store?: PayloadStore;
  /** Bodies larger than this (serialised JSON bytes) travel by claim check. Default 64 KiB. */
  inlineLimit?: number;
  identity?: WorkerIdentity;
}

export interface PublishOptions extends Omit<PublishInput, 'body'> {
  /** Return at once without waiting for durability (completion is not guaranteed). */
  fireAndForget?: boolean;
}

export interface PublishResult extends PublishOutcome {
  /** Set when the body travelled by claim check. */
  ref?: ClaimCheckRef | undefined;
}

/**
 * The public face of the queue (BullMQ's Queue + Worker + QueueEvents in one small object):
 * publish, consume, topics, the hospital. One Queue per process is plenty; it is safe to share.
 */
export class Queue {
  readonly driver: QueueDriver;
  readonly hospital: Hospital;
  readonly store: PayloadStore | undefined;
  readonly inlineLimit: number;
  readonly identity: WorkerIdentity;
  /** Emits `published` (topic) so local consumers wake up at once instead of at their next poll. */
  readonly events = new EventEmitter();
  private readonly consumers = new Set<Consumer>();
  private topicCache = new Map<string, { info: TopicInfo; at: number }>();
  private closed = false;

  constructor(driver: QueueDriver, options: Omit<QueueOptions, 'uri' | 'driver'> = {}) {
    this.driver = driver;
    this.store = options.store;
    this.inlineLimit = options.inlineLimit ?? DEFAULT_INLINE_LIMIT;
    this.identity = options.identity ?? workerIdentity();
    this.hospital = new Hospital(this);
    this.events.setMaxListeners(0);
  }

  get uri(): string {
    return this.driver.uri;
  }

  /** Create a topic or change its policy. */
  async createTopic(name: string, policy: TopicPolicyInput = {}, options: { update?: boolean } = {}): Promise<TopicInfo> {
    this.assertOpen();
    checkTopicName(name);
    const parsed = TopicPolicySchema.safeParse(policy);
    if (!parsed.success) {
      throw new LadingError('BAD_CONFIG', `topic ${name}: ${describeZodError(parsed.error)}`, {
        hint: 'policy fields: maxAttempts, backoff {initialMs, multiplier, maxMs, jitter}, ttlMs, onExpired (hospital|drop), dedupWindowMs, leaseMs, retentionMs, partitions, routes',
      });
    }
    for (const r of parsed.data.routes) if (r.to === name) throw new LadingError('BAD_CONFIG', `topic ${name}: a route cannot send a topic's messages to itself`);
    const info = await this.driver.ensureTopic(name, policy, { update: options.update ?? true });
    this.topicCache.set(name, { info, at: Date.now() });
    return info;
  }

  async topics(): Promise<TopicInfo[]> {
    this.assertOpen();
    return this.driver.listTopics();
  }

  /** Topic info, created with default policy on first use (like Kafka's auto-create). Cached briefly. */
  async topic(name: string): Promise<TopicInfo> {
    const hit = this.cachedTopic(name);
    if (hit) return hit;
    checkTopicName(name);
    const info = (await this.driver.getTopic(name)) ?? (await this.driver.ensureTopic(name, {}, { update: false }));
    this.topicCache.set(name, { info, at: Date.now() });
    return info;
  }

  /** Publish one message. Acknowledged (durable) unless `fireAndForget`. */
  async publish(topic: string, body: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    const [result] = await this.publishMany(topic, [{ ...options, body }], { fireAndForget: options.fireAndForget });
    return result!;
  }

  /** The topic's info when the cache holds it fresh: the publish path then needs no await per message. */
  private cachedTopic(name: string): TopicInfo | undefined {
    const hit = this.topicCache.get(name);
    return hit && Date.now() - hit.at < 2000 ? hit.info : undefined;
  }

  /** Publish a batch in one durable write. */
  async publishMany(topic: string, inputs: PublishInput[], options: { fireAndForget?: boolean | undefined } = {}): Promise<PublishResult[]> {
    this.assertOpen();
    const n = inputs.length;
    const envelopes: Envelope[] = new Array(n);
    const texts: (string | undefined)[] = new Array(n);
    const refs: (ClaimCheckRef | undefined)[] = new Array(n);
    // Only caller-given ids can repeat: generated ones skip the dedup bookkeeping.
    const dedup: boolean[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const input = inputs[i]!;
      // Awaits only when needed (topic not cached, claim check, routes): each await is a few
      // microtask hops per message.
      const info = this.cachedTopic(topic) ?? (await this.topic(topic));
      let draft = this.draft(topic, info, input);
      if (draft instanceof Promise) draft = await draft;
      const env = draft.env;
      const target = info.policy.routes.length === 0 ? env : await this.route(env);
      envelopes[i] = target;
      refs[i] = env.ref;
      // Serialised here, where the body's JSON text is at hand (the driver would serialise it again).
      texts[i] = envelopeJson(target, draft.bodyText);
      dedup[i] = input.id !== undefined;
    }
    const write = this.driver.publish(envelopes, { durable: !options.fireAndForget, dedup, texts }).then((outcomes) => {
      let woken: string | undefined;
      for (const e of envelopes) {
        if (e.topic !== woken) this.events.emit('published', (woken = e.topic)); // a repeat only wakes a consumer twice
      }
      for (let i = 0; i < outcomes.length; i++) (outcomes[i] as PublishResult).ref = refs[i];
      return outcomes as PublishResult[];
    });
    if (options.fireAndForget) {
      // Fire and forget: the caller moves on; a failure is reported as an event, not thrown.
      write.catch((error: unknown) => this.events.emit('error', error));
      return envelopes.map((e, i) => ({ id: e.id, topic: e.topic, duplicate: false, ref: refs[i] }));
    }
    return write;
  }

  /** Envelope from a caller's input: ids, times, TTL from the topic policy, claim check for big bodies. */
  async buildEnvelope(topic: string, input: PublishInput): Promise<Envelope> {
    return (await this.draft(topic, await this.topic(topic), input)).env;
  }

  /**
   * buildEnvelope's work, with the body's JSON text (for envelopeJson). Synchronous unless the body goes
   * by claim check.
   */
  private draft(topic: string, info: TopicInfo, input: PublishInput): { env: Envelope; bodyText: string | undefined } | Promise<{ env: Envelope; bodyText: string | undefined }> {
    const now = Date.now();
    const ttlMs = input.ttlMs ?? info.policy.ttlMs;
    const candidate: Record<string, unknown> = {
      v: ENVELOPE_VERSION,
      id: input.id ?? newMessageId(),
      topic,
      headers: input.headers ?? {},
      attempt: 0,
      publishedAt: now,
    };
    if (input.key !== undefined) candidate.key = input.key;
    if (input.type !== undefined) candidate.type = input.type;
    if (input.delayMs) candidate.notBefore = now + input.delayMs;
    if (ttlMs !== undefined) candidate.expiresAt = now + ttlMs;
    if (input.traceparent !== undefined) candidate.traceparent = input.traceparent;
    if (input.body !== undefined) {
      let text: string | undefined;
      try {
        text = JSON.stringify(input.body);
      } catch (e) {
        throw new LadingError('BAD_MESSAGE', `message body cannot be serialised as JSON: ${(e as Error).message}`);
      }
      if (text === undefined) throw new LadingError('BAD_MESSAGE', 'message body is not JSON (a function or undefined?)', { hint: 'publish plain JSON data; put large bytes in the store and publish their URI' });
      // A string's UTF-8 size is at most 3 bytes per UTF-16 unit: count the bytes only when it could matter.
      // Over it maybe: encode once, and that one buffer is measured, hashed and written (a 100 MiB body
      // is not walked three times).
      const bytes = text.length * 3 <= this.inlineLimit ? undefined : Buffer.from(text);
      checkPublishInput(topic, input);
      if (bytes !== undefined && bytes.length > this.inlineLimit) {
        return this.checkIn(bytes).then((ref) => {
          candidate.ref = ref;
          return { env: candidate as Envelope, bodyText: undefined };
        });
      }
      candidate.body = input.body;
      return { env: candidate as Envelope, bodyText: text };
    }
    checkPublishInput(topic, input);
    return { env: candidate as Envelope, bodyText: undefined };
  }

  /** Claim check: the body goes to the store, content-addressed; only its reference travels. */
  private async checkIn(bytes: Buffer): Promise<ClaimCheckRef> {
    const size = bytes.length;
    if (!this.store) {
      throw new LadingError('TOO_LARGE', `message body is ${formatBytes(size)}, over the inline limit of ${formatBytes(this.inlineLimit)}, and no store is configured for the claim check`, {
        hint: 'configure a store (--store, LADING_STORE, or `store` in lading.config) so large bodies travel by reference, or raise inlineLimit',
      });
    }
    const hex = createHash('sha256').update(bytes).digest('hex');
    const key = `${PAYLOAD_PREFIX}/${hex.slice(0, 2)}/${hex}`;
    const checksum = `sha256:${hex}`;
    const existing = await this.store.stat(key);
    if (!existing || existing.size !== size) await this.store.write(key, bytes, { contentType: 'application/json', expectedChecksum: checksum });
    return { uri: joinUri(this.store.uri, key), size, checksum, contentType: 'application/json' };
  }

  /** Resolve a claim-check reference to a stream of its bytes. A missing payload is a NOT_FOUND error. */
  async openPayload(ref: ClaimCheckRef): Promise<Readable> {
    if (!this.store) throw new LadingError('BAD_CONFIG', `message payload ${ref.uri} needs a store, and none is configured`, { hint: 'give the consumer the same store as the publisher (--store or LADING_STORE)' });
    const key = keyInStore(this.store.uri, ref.uri);
    return this.store.read(key);
  }

  /** Read and verify a claim-checked JSON body. */
  async resolvePayload(ref: ClaimCheckRef): Promise<unknown> {
    const text = await readText(await this.openPayload(ref));
    const got = `sha256:${createHash('sha256').update(text).digest('hex')}`;
    if (got !== ref.checksum) throw new LadingError('CHECKSUM_MISMATCH', `payload ${ref.uri} does not match its checksum (${got} != ${ref.checksum})`);
    return JSON.parse(text) as unknown;
  }

  /** Delete claim-check payloads no group needs any more. Called by consumers now and then. */
  async collectPayloads(limit = 100): Promise<number> {
    const store = this.store;
    if (!store) return 0;
    const uris = await this.driver.releasedPayloads(limit);
    const done: string[] = [];
    for (const uri of uris) {
      try {
        await store.delete(keyInStore(store.uri, uri));
        done.push(uri);
      } catch (e) {
        if ((e as LadingError).code === 'BAD_URI') done.push(uri); // not ours to delete
      }
    }
    await this.driver.confirmPayloadsDeleted(done);
    return done.length;
  }

  /** Content-based routing: the first rule of the topic that matches sends the message to its target. */
  private async route(env: Envelope, depth = 0): Promise<Envelope> {
    const info = await this.topic(env.topic);
    const rule = info.policy.routes.find((r) => matches(env, r.when));
    if (!rule) return env;
    if (depth >= 8) throw new LadingError('BAD_CONFIG', `routing loop: message ${env.id} was routed more than 8 times (last to ${rule.to})`, { hint: 'check the routes of your topics with `lading topics list`' });
    const target = await this.topic(rule.to);
    const routed: Envelope = { ...env, topic: rule.to, headers: { ...env.headers, 'lading-routed-from': env.topic } };
    if (routed.expiresAt === undefined && target.policy.ttlMs !== undefined) routed.expiresAt = routed.publishedAt + target.policy.ttlMs;
    return this.route(routed, depth + 1);
  }

  /** Start consuming a topic as a member of a consumer group. */
  consume<T = unknown>(topic: string, options: ConsumeOptions<T>, handler: Handler<T>): Consumer<T> {
    this.assertOpen();
    checkTopicName(topic);
    const consumer = new Consumer<T>(this, topic, options, handler);
    this.consumers.add(consumer as Consumer);
    consumer.once('closed', () => this.consumers.delete(consumer as Consumer));
    consumer.start();
    return consumer;
  }

  stats(topic?: string) {
    return this.driver.stats(topic);
  }

  /** Close consumers (draining in-flight work within their grace period), then the driver. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.consumers].map((c) => c.close()));
    await this.driver.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new LadingError('CLOSED', 'this queue is closed');
  }
}

/** The caller's fields, checked once here (the rest of the envelope is built by this code). */
function checkPublishInput(topic: string, input: PublishInput): void {
  const bad = (field: string, why: string) => new LadingError('BAD_MESSAGE', `cannot publish to ${topic}: ${field} ${why}`, {
    hint: 'id up to 512 characters, key up to 1024, type up to 256, headers a map of strings, traceparent a W3C trace context',
  });
  if (input.id !== undefined && (typeof input.id !== 'string' || input.id.length === 0 || input.id.length > 512)) throw bad('id', 'must be a string of 1 to 512 characters');
  if (input.key !== undefined && (typeof input.key !== 'string' || input.key.length > 1024)) throw bad('key', 'must be a string of at most 1024 characters');
  if (input.type !== undefined && (typeof input.type !== 'string' || input.type.length > 256)) throw bad('type', 'must be a string of at most 256 characters');
  if (input.headers !== undefined) {
    if (input.headers === null || typeof input.headers !== 'object' || Array.isArray(input.headers)) throw bad('headers', 'must be an object');
    for (const [k, v] of Object.entries(input.headers)) if (typeof v !== 'string') throw bad(`headers.${k}`, 'must be a string');
  }
  if (input.traceparent !== undefined && !/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(input.traceparent)) throw bad('traceparent', 'is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)');
  for (const [field, v] of [['delayMs', input.delayMs], ['ttlMs', input.ttlMs]] as const) {
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 0)) throw bad(field, 'must be a non-negative number of milliseconds');
  }
}

function checkTopicName(name: string): void {
  const r = TopicNameSchema.safeParse(name);
  if (!r.success) throw new LadingError('BAD_ARGUMENT', `topic name ${JSON.stringify(name)} is not valid: ${r.error.issues[0]?.message ?? ''}`, { hint: 'use e.g. images, train.tokenize, jobs-2024' });
}

function joinUri(root: string, key: string): string {
  return root.endsWith('/') ? `${root}${key}` : `${root}/${key}`;
}

function keyInStore(root: string, uri: string): string {
  const base = root.endsWith('/') ? root : `${root}/`;
  if (!uri.startsWith(base)) throw new LadingError('BAD_URI', `payload ${uri} is not in the configured store ${root}`, { hint: 'consumers must use the same store URI as the publisher' });
  return uri.slice(base.length);
}

/** Open a queue from a URI (or `LADING_QUEUE`, or the embedded default). */
export async function openQueue(options: QueueOptions = {}): Promise<Queue> {
  const driver = options.driver ?? (await openQueueDriver(options.uri ?? process.env.LADING_QUEUE ?? DEFAULT_QUEUE_URI));
  return new Queue(driver, options);
}

