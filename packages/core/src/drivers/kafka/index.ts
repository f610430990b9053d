import { randomBytes } from 'node:crypto';
import type { Admin, Kafka } from 'kafkajs';
import type { AttemptError, Delivery, FetchRequest, GroupStats, HospitalFilter, HospitalReason, HospitalRecord, PublishOutcome, QueueDriver } from '../../driver.js';
import { parseEnvelope, type Envelope, type JsonValue } from '../../envelope.js';
import { LadingError } from '../../errors.js';
import { TopicPolicySchema, type TopicInfo, type TopicPolicy, type TopicPolicyInput } from '../../topic.js';
import { backendError, createKafka, isUnsupportedApi } from './client.js';
import { H, decodeValue, kafkaKey, readRetryState, retryHeaders } from './codec.js';
import { decodeMetadata } from './commit-metadata.js';
import { GroupMember, memberKey, memberOf, type MemberHost } from './member.js';
import { kafkaGroupId, kafkaOptions, retryTopicOf, type KafkaDriverOptions } from './options.js';
import type { PartitionState } from './partition.js';
import { Publisher, type OutRecord } from './producer.js';
import { TopicReader } from './reader.js';
import { StateTopic, groupKey, parseHospital, parseRegistry, topicKey, type GroupEntry, type RegistryEntry, type StoredHospitalRecord, type TopicEntry } from './state.js';

/** Records per partition stats reads to classify (ready / delayed / leased); beyond it, the rest counts as ready. */
const STATS_READ_LIMIT = 20_000;
/** How long fetch() waits for records when none is ready. */
const FETCH_WAIT_MS = 50;
const TRUE = Promise.resolve(true);
const FALSE = Promise.resolve(false);
/** Ids remembered per topic for idempotent publish (in this process). */
const PUBLISH_LRU = 100_000;

/**
 * The Kafka driver of the queue port (kafkajs 2.2). See NOTES.md in this folder for what holds on Kafka
 * and why. In short: topics are Kafka topics, a lading consumer group of a topic is one Kafka consumer group
 * (`lading/<topic>/<group>`), retries go through `<topic>.lading-retry`, and the shared state (topic
 * policies, groups, the hospital) lives in two compacted topics, `lading.topics` and `lading.hospital`.
 */
export class KafkaQueueDriver implements QueueDriver {
  readonly kind = 'kafka';
  private readonly kafka: Kafka;
  private readonly publisher: Publisher;
  private readonly reader: TopicReader;
  private readonly registry: StateTopic<RegistryEntry>;
  private readonly hospital: StateTopic<StoredHospitalRecord>;
  private readonly members = new Map<string, GroupMember>();
  private readonly published = new Map<string, Map<string, number>>();
  private readonly policies = new Map<string, { policy: TopicPolicy; at: number }>();
  private readonly created = new Set<string>();
  private readonly partitionCounts = new Map<string, { n: number; at: number }>();
  private admin: Admin | undefined;
  private adminConnecting: Promise<Admin> | undefined;
  private stateReady: Promise<void> | undefined;
  private readonly host: MemberHost;
  private readonly worker = `${process.pid}`;
  private closed = false;

  static async open(uri: string, brokers: string[], query: Record<string, string>): Promise<KafkaQueueDriver> {
    return new KafkaQueueDriver(uri, kafkaOptions(uri, brokers, query));
  }

  constructor(readonly uri: string, readonly options: KafkaDriverOptions) {
    this.kafka = createKafka(options);
    this.publisher = new Publisher(this.kafka, options.brokers);
    this.reader = new TopicReader(this.kafka);
    this.registry = new StateTopic(`${options.statePrefix}.topics`, this.reader, parseRegistry);
    this.hospital = new StateTopic(`${options.statePrefix}.hospital`, this.reader, parseHospital);
    this.host = {
      kafka: this.kafka,
      options,
      committed: (groupId, topics) => this.committed(groupId, topics),
      watermarks: async (topic) => new Map((await this.offsets(topic)).map((o) => [o.partition, { high: o.high, low: o.low }])),
    };
  }

  // ---- plumbing ------------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new LadingError('CLOSED', 'the queue driver is closed');
  }

  private async adminClient(): Promise<Admin> {
    if (this.admin) return this.admin;
    this.adminConnecting ??= (async () => {
      const a = this.kafka.admin({ retry: { retries: this.options.retries, initialRetryTime: 100, maxRetryTime: 1000 } });
      try {
        await a.connect();
      } catch (e) {
        throw backendError('connect', this.options.brokers, e);
      }
      this.admin = a;
      return a;
    })().finally(() => { this.adminConnecting = undefined; });
    return this.adminConnecting;
  }

  private async wrap<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw backendError(what, this.options.brokers, e);
    }
  }

  private async committed(groupId: string, topics: string[]): Promise<Map<string, { offset: number; metadata: string | null }>> {
    const admin = await this.adminClient();
    const res = await admin.fetchOffsets({ groupId, topics });
    const out = new Map<string, { offset: number; metadata: string | null }>();
    for (const t of res) for (const p of t.partitions) out.set(`${t.topic}:${p.partition}`, { offset: Number(p.offset), metadata: p.metadata ?? null });
    return out;
  }

  private async offsets(topic: string): Promise<{ partition: number; high: number; low: number }[]> {
    const admin = await this.adminClient();
    const res = await admin.fetchTopicOffsets(topic);
    return res.map((r) => ({ partition: r.partition, high: Number(r.high), low: Number(r.low) }));
  }

  private async partitionCount(topic: string): Promise<number> {
    const hit = this.partitionCounts.get(topic);
    if (hit && Date.now() - hit.at < 30_000) return hit.n;
    const n = (await this.reader.partitions(topic)).length;
    this.partitionCounts.set(topic, { n, at: Date.now() });
    return n;
  }

  /** The state topics: compacted, one partition (total order; operator-scale volumes). */
  private ensureStateTopics(): Promise<void> {
    this.stateReady ??= (async () => {
      const admin = await this.adminClient();
      try {
        await admin.createTopics({
          waitForLeaders: true,
          topics: [this.registry.topic, this.hospital.topic].map((topic) => ({
            topic, numPartitions: 1, replicationFactor: this.options.replicationFactor ?? -1,
            configEntries: [{ name: 'cleanup.policy', value: 'compact' }],
          })),
        });
      } catch (e) {
        if (!isUnsupportedApi(e) && !/already exists/i.test((e as Error).message)) throw backendError(`create the state topics ${this.registry.topic}, ${this.hospital.topic}`, this.options.brokers, e);
        // The broker refuses CreateTopics (e.g. the librdkafka mock): auto-creation on first metadata request.
      }
    })().catch((e: unknown) => {
      this.stateReady = undefined;
      throw e;
    });
    return this.stateReady;
  }

  private async syncRegistry(maxAgeMs: number): Promise<void> {
    await this.ensureStateTopics();
    await this.wrap(`read ${this.registry.topic}`, () => this.registry.sync(maxAgeMs));
  }

  private async syncHospital(maxAgeMs = 0): Promise<void> {
    await this.ensureStateTopics();
    await this.wrap(`read ${this.hospital.topic}`, () => this.hospital.sync(maxAgeMs));
  }

  private async writeState(topic: string, key: string, value: unknown): Promise<void> {
    await this.ensureStateTopics();
    await this.publisher.send([{ topic, key, value: value === null ? null : JSON.stringify(value) }]);
  }

  // ---- topics and groups -----------------------------------------------------------------------

  private info(entry: TopicEntry): TopicInfo {
    const groups: string[] = [];
    for (const v of this.registry.values.values()) if (v.kind === 'group' && v.topic === entry.name) groups.push(v.group);
    return { name: entry.name, policy: TopicPolicySchema.parse(entry.policy ?? {}), createdAt: entry.createdAt, groups: groups.sort() };
  }

  private async policy(topic: string): Promise<TopicPolicy> {
    const hit = this.policies.get(topic);
    if (hit && Date.now() - hit.at < 2000) return hit.policy;
    await this.syncRegistry(1000);
    const entry = this.registry.values.get(topicKey(topic));
    const policy = entry?.kind === 'topic' ? TopicPolicySchema.parse(entry.policy ?? {}) : TopicPolicySchema.parse({});
    this.policies.set(topic, { policy, at: Date.now() });
    return policy;
  }

  /** Create the Kafka topic and its retry topic (same partition count), or accept auto-creation where the broker refuses the admin API. */
  private async createKafkaTopics(name: string, input: TopicPolicyInput): Promise<void> {
    const wanted = input.partitions ?? this.options.partitions;
    if (this.created.has(name) && input.partitions === undefined) return;
    const admin = await this.adminClient();
    const rf = this.options.replicationFactor ?? -1;
    const configEntries = input.retentionMs !== undefined ? [{ name: 'retention.ms', value: String(input.retentionMs) }] : [];
    let refused: unknown;
    try {
      await admin.createTopics({ waitForLeaders: true, topics: [{ topic: name, numPartitions: wanted ?? -1, replicationFactor: rf, configEntries }] });
      this.partitionCounts.delete(name);
      const n = await this.partitionCount(name);
      await admin.createTopics({ waitForLeaders: true, topics: [{ topic: retryTopicOf(name), numPartitions: n, replicationFactor: rf }] });
    } catch (e) {
      if (!isUnsupportedApi(e)) {
        throw new LadingError('BACKEND', `Kafka refused to create topic ${name}: ${(e as Error).message}`, {
          hint: `create ${name} and ${retryTopicOf(name)} (same partition count) with your Kafka tools, or grant this client CreateTopics`, cause: e,
        });
      }
      refused = e;
      // The broker does not implement CreateTopics: topics are auto-created (broker default partitions).
      await this.reader.partitions(name);
      await this.reader.partitions(retryTopicOf(name));
    }
    this.partitionCounts.delete(name);
    if (refused && input.partitions !== undefined) {
      const n = await this.partitionCount(name);
      if (n !== input.partitions) {
        throw new LadingError('UNSUPPORTED', `topic ${name} has ${n} partitions, not ${input.partitions}: the Kafka brokers refuse the CreateTopics admin API, so lading cannot create or change it`, {
          hint: `create ${name} and ${retryTopicOf(name)} with ${input.partitions} partitions with the broker's own tools (kafka-topics.sh --create), then run this again`,
        });
      }
    }
    this.created.add(name);
  }

  async ensureTopic(name: string, input: TopicPolicyInput = {}, options: { update?: boolean } = {}): Promise<TopicInfo> {
    this.assertOpen();
    await this.syncRegistry(0);
    const existing = this.registry.values.get(topicKey(name));
    let entry: TopicEntry;
    if (existing?.kind === 'topic') {
      if (!(options.update && Object.keys(input).length > 0)) {
        await this.wrap(`create topic ${name}`, () => this.createKafkaTopics(name, {}));
        return this.info(existing);
      }
      entry = { ...existing, policy: TopicPolicySchema.parse({ ...(existing.policy as object), ...input }) };
    } else {
      entry = { kind: 'topic', name, policy: TopicPolicySchema.parse(input), createdAt: Date.now() };
    }
    await this.wrap(`create topic ${name}`, () => this.createKafkaTopics(name, input));
    await this.writeState(this.registry.topic, topicKey(name), entry);
    await this.syncRegistry(0);
    this.policies.delete(name);
    const now = this.registry.values.get(topicKey(name));
    return this.info(now?.kind === 'topic' ? now : entry);
  }

  async getTopic(name: string): Promise<TopicInfo | undefined> {
    await this.syncRegistry(500);
    const e = this.registry.values.get(topicKey(name));
    return e?.kind === 'topic' ? this.info(e) : undefined;
  }

  async listTopics(): Promise<TopicInfo[]> {
    await this.syncRegistry(0);
    const out: TopicInfo[] = [];
    for (const v of this.registry.values.values()) if (v.kind === 'topic') out.push(this.info(v));
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async ensureGroup(topic: string, group: string): Promise<void> {
    this.assertOpen();
    await this.syncRegistry(1000);
    if (!this.registry.values.has(topicKey(topic))) await this.ensureTopic(topic, {}, { update: false });
    if (this.registry.values.has(groupKey(topic, group))) return;
    const entry: GroupEntry = { kind: 'group', topic, group, createdAt: Date.now() };
    await this.writeState(this.registry.topic, groupKey(topic, group), entry);
    await this.syncRegistry(0);
  }

  // ---- publish ------------------------------------------------------------------------------------

  async publish(envelopes: Envelope[], options: { durable: boolean; dedup?: boolean[] | undefined; texts?: (string | undefined)[] | undefined }): Promise<PublishOutcome[]> {
    this.assertOpen();
    const outcomes: PublishOutcome[] = [];
    const records: OutRecord[] = [];
    const marked: [Map<string, number>, string][] = [];
    const now = Date.now();
    let last: { topic: string; policy: TopicPolicy } | undefined;
    for (let i = 0; i < envelopes.length; i++) {
      const env = envelopes[i]!;
      // One policy look-up per topic of the batch (not an await per envelope).
      const policy = last?.topic === env.topic ? last.policy : (last = { topic: env.topic, policy: await this.policy(env.topic) }).policy;
      // Ids generated by the Queue cannot repeat (options.dedup[i] === false): no bookkeeping for them.
      if (policy.dedupWindowMs > 0 && options.dedup?.[i] !== false) {
        let seen = this.published.get(env.topic);
        if (!seen) this.published.set(env.topic, (seen = new Map()));
        const at = seen.get(env.id);
        if (at !== undefined && at > now - policy.dedupWindowMs) {
          outcomes.push({ id: env.id, topic: env.topic, duplicate: true });
          continue;
        }
        seen.delete(env.id);
        seen.set(env.id, now);
        marked.push([seen, env.id]);
        if (seen.size > PUBLISH_LRU) for (const k of seen.keys()) { seen.delete(k); break; }
      }
      // A generated id cannot come again: tell consumers to skip the dedup bookkeeping (as SQLite's dedup column).
      const headers: Record<string, string> = options.dedup?.[i] === false ? { [H.id]: env.id, [H.dedup]: '0' } : { [H.id]: env.id };
      // The value goes as UTF-8 bytes: the envelope text (often a concatenation of pieces) and its pieces die
      // here instead of living through young collections until the broker acknowledges the batch.
      records.push({ topic: env.topic, key: kafkaKey(env), value: Buffer.from(options.texts?.[i] ?? JSON.stringify(env)), headers });
      outcomes.push({ id: env.id, topic: env.topic, duplicate: false });
    }
    // Not awaited here: this frame (the envelopes, their texts) is not kept alive for the round trip.
    return this.sendPublished(records, outcomes, marked, now);
  }

  private async sendPublished(records: OutRecord[], outcomes: PublishOutcome[], marked: [Map<string, number>, string][], now: number): Promise<PublishOutcome[]> {
    try {
      await this.publisher.send(records);
    } catch (e) {
      for (const [seen, id] of marked) if (seen.get(id) === now) seen.delete(id);
      throw e;
    }
    return outcomes;
  }

  // ---- consume ------------------------------------------------------------------------------------

  private member(topic: string, group: string): GroupMember {
    const key = memberKey(topic, group);
    let m = this.members.get(key);
    if (m?.crashed) {
      void m.stop();
      this.members.delete(key);
      m = undefined;
    }
    if (!m) {
      m = new GroupMember(this.host, topic, group);
      this.members.set(key, m);
      void m.start();
    }
    return m;
  }

  private existingMember(topic: string, group: string): GroupMember | undefined {
    return this.members.get(memberKey(topic, group));
  }

  async fetch(req: FetchRequest): Promise<Delivery[]> {
    this.assertOpen();
    const policy = await this.policy(req.topic);
    const m = this.member(req.topic, req.group);
    let { deliveries, poison } = m.take(req.max, req.leaseMs, req.consumer, policy);
    if (deliveries.length === 0 && poison.length === 0) {
      // A short long-poll: hand out what arrives meanwhile at once instead of at the caller's next poll.
      await m.waitForData(FETCH_WAIT_MS);
      if (this.closed) return [];
      ({ deliveries, poison } = m.take(req.max, req.leaseMs, req.consumer, policy));
    }
    for (const { st, e } of poison) {
      const record = this.hospitalRecord(req.topic, req.group, e.decoded.id, e.decoded.raw, 'poison', e.errors, st, e.rec.offset, e.rec.key);
      try {
        await this.writeState(this.hospital.topic, record.hid, record);
        await m.settle(st, e, undefined);
      } catch {
        e.state = 'waiting'; // try again on a later fetch
        e.token = undefined;
      }
    }
    // The leases go on record with the next commit, batched with the acks. When no commit is in flight,
    // fetch() returns once that commit is on the wire (one event-loop turn, not a round trip): a member
    // SIGKILLed as its handler starts still has the lease on record. Under load a commit is in flight and
    // the leases follow it (not awaited: waiting for it, or making each delivery wait for it, halved consume
    // throughput in `bench kafka`): a member SIGKILLed in that instant (≈ one commit round trip after the
    // hand-out) loses the record of the lease, and that one delivery does not count as an attempt (it is
    // still redelivered).
    if (deliveries.length > 0) {
      if (m.commitIdle) await m.leasesSent();
      else void m.commitSoon();
    }
    return deliveries;
  }

  private found(d: Delivery): { m: GroupMember; st: PartitionState; e: PartitionState['entries'][number] } | undefined {
    // A Delivery handed out here names its member; it must still be the registered one for (topic, group).
    const hinted = memberOf(d);
    const m = hinted !== undefined && this.members.get(hinted.key) === hinted ? hinted : this.existingMember(d.topic, d.group);
    const e = m?.lookup(d);
    return m && e ? { m, st: e.owner, e } : undefined;
  }

  ack(d: Delivery): Promise<boolean> {
    const f = this.found(d);
    if (!f) return FALSE;
    // The policy fetch() used (a stale one is fine for the dedup window): ack resolves without I/O.
    const policy = this.policies.get(d.topic)?.policy;
    if (policy === undefined) return this.policy(d.topic).then((p) => this.settleAck(f, p));
    return this.settleAck(f, policy);
  }

  private settleAck(f: { m: GroupMember; st: PartitionState; e: PartitionState['entries'][number] }, policy: TopicPolicy): Promise<boolean> {
    // The commit follows within a turn of the event loop (batched with the others); a crash before it
    // only means a redelivery. Reads in this process see the ack at once.
    void f.m.settle(f.st, f.e, f.e.dedup ? { windowMs: policy.dedupWindowMs } : undefined);
    return TRUE;
  }

  private async retryPartition(topic: string, partition: number): Promise<number> {
    const n = await this.partitionCount(retryTopicOf(topic));
    return partition < n ? partition : partition % Math.max(1, n);
  }

  async retry(d: Delivery, options: { delayMs: number; error: AttemptError; checkpoint?: JsonValue | undefined }): Promise<boolean> {
    const f = this.found(d);
    if (!f) return false;
    const { m, st, e } = f;
    const partition = await this.wrap('retry', () => this.retryPartition(d.topic, st.partition));
    const token = randomBytes(6).toString('hex');
    const headers = retryHeaders({
      group: d.group, due: Date.now() + options.delayMs, attempt: e.attempt + 1, errors: [...e.errors, options.error],
      checkpoint: options.checkpoint ?? e.checkpoint, token,
    }, st.retry ? e.rec.headers[H.origin] ?? `${st.partition}:${e.rec.offset}` : `${st.partition}:${e.rec.offset}`);
    headers[H.id] = e.decoded.id;
    if (!e.dedup) headers[H.dedup] = '0';
    m.holdForRetry(e, token, partition);
    try {
      await this.publisher.send([{ topic: retryTopicOf(d.topic), key: e.rec.key, value: e.rec.value, headers, partition }]);
    } catch (err) {
      m.unhold(e, token);
      throw err;
    }
    await m.settle(st, e, undefined);
    return true;
  }

  async extend(d: Delivery, options: { leaseMs: number; checkpoint?: JsonValue | undefined }): Promise<boolean> {
    const f = this.found(d);
    if (!f) return false;
    await f.m.extend(f.st, f.e, options.leaseMs, options.checkpoint);
    return true;
  }

  async release(d: Delivery): Promise<boolean> {
    const f = this.found(d);
    if (!f) return false;
    await f.m.release(f.st, f.e);
    return true;
  }

  /** This process stops consuming (topic, group): leave the Kafka group so its partitions move to the others. */
  async leaveGroup(topic: string, group: string): Promise<void> {
    const key = memberKey(topic, group);
    const m = this.members.get(key);
    if (!m) return;
    this.members.delete(key);
    await m.stop();
  }

  private hospitalRecord(topic: string, group: string, id: string, raw: string, reason: HospitalReason, errors: AttemptError[], st: PartitionState | undefined, offset: number, kafkaKeyValue: string | undefined): StoredHospitalRecord {
    let envelope: Envelope | undefined;
    try {
      envelope = parseEnvelope(raw);
    } catch {
      envelope = undefined;
    }
    const admittedAt = Date.now();
    const hid = `${admittedAt.toString(36).padStart(9, '0')}${randomBytes(4).toString('hex')}`;
    return {
      hid, id, topic, group, reason, state: 'open', envelope, raw, errors, admittedAt,
      job: envelope?.headers['lading-job'],
      origin: st ? { partition: st.retry ? Number((st.entries.find((x) => x.rec.offset === offset)?.rec.headers[H.origin] ?? `${st.partition}:`).split(':')[0]) : st.partition, offset, kafkaKey: kafkaKeyValue } : undefined,
    };
  }

  async deadLetter(d: Delivery, options: { reason: HospitalReason; error?: AttemptError | undefined }): Promise<HospitalRecord> {
    const f = this.found(d);
    if (!f) throw new LadingError('CONFLICT', `cannot admit message ${d.id} to the hospital: its lease was lost to another consumer`);
    const { m, st, e } = f;
    const errors = options.error ? [...e.errors, options.error] : e.errors;
    const record = this.hospitalRecord(d.topic, d.group, d.id, e.decoded.raw, options.reason, errors, st, e.rec.offset, e.rec.key);
    await this.writeState(this.hospital.topic, record.hid, record);
    await m.settle(st, e, undefined);
    return publicRecord(record);
  }

  // ---- hospital --------------------------------------------------------------------------------------

  async hospitalList(filter: HospitalFilter): Promise<HospitalRecord[]> {
    await this.syncHospital(0);
    const state = filter.state ?? 'open';
    const ids = filter.ids?.length ? new Set(filter.ids) : undefined;
    const text = filter.text?.toLowerCase();
    let out = [...this.hospital.values.values()].filter((r) => {
      if (state === 'resolved' ? r.state === 'open' : state !== 'any' && r.state !== state) return false;
      if (ids && !ids.has(r.hid) && !ids.has(r.id)) return false;
      if (filter.topic && r.topic !== filter.topic) return false;
      if (filter.group && r.group !== filter.group) return false;
      if (filter.reason && r.reason !== filter.reason) return false;
      if (filter.since !== undefined && r.admittedAt < filter.since) return false;
      if (filter.until !== undefined && r.admittedAt > filter.until) return false;
      if (text && !JSON.stringify(r.errors).toLowerCase().includes(text)) return false;
      if (filter.job && r.job !== filter.job) return false;
      return true;
    });
    out.sort((a, b) => (a.hid < b.hid ? -1 : a.hid > b.hid ? 1 : 0));
    if (ids) out.reverse();
    out = out.slice(0, Math.max(0, Math.min(filter.limit ?? 1000, 1_000_000)));
    return out.map(publicRecord);
  }

  private async resolve(hid: string, state: 'retried' | 'ignored', resolution: string): Promise<HospitalRecord | undefined> {
    const r = this.hospital.values.get(hid);
    if (!r) return undefined;
    const updated: StoredHospitalRecord = { ...r, state, resolvedAt: Date.now(), resolution };
    await this.writeState(this.hospital.topic, hid, updated);
    await this.syncHospital(0);
    return publicRecord(this.hospital.values.get(hid) ?? updated);
  }

  async hospitalRetry(hid: string, options: { toTopic?: string | undefined; note?: string | undefined }): Promise<HospitalRecord | undefined> {
    await this.syncHospital(0);
    const r = this.hospital.values.get(hid);
    if (!r || r.state !== 'open') return undefined;
    const toTopic = options.toTopic ?? r.topic;
    if (toTopic === r.topic) {
      // Back to the group it failed in, attempts reset: through the retry topic, for that group only.
      await this.ensureGroup(r.topic, r.group);
      const kafkaKeyValue = r.origin?.kafkaKey ?? (r.envelope ? kafkaKey(r.envelope) : r.id);
      const partition = r.origin ? await this.retryPartition(r.topic, r.origin.partition) : undefined;
      const headers = retryHeaders({ group: r.group, due: Date.now(), attempt: 0, errors: [], checkpoint: undefined, token: undefined }, r.origin ? `${r.origin.partition}:${r.origin.offset}` : '');
      headers[H.id] = r.id;
      await this.publisher.send([{ topic: retryTopicOf(r.topic), key: kafkaKeyValue, value: r.raw, headers, ...(partition === undefined ? {} : { partition }) }]);
    } else {
      let env: Envelope;
      try {
        env = parseEnvelope(r.raw);
      } catch (e) {
        throw new LadingError('BAD_MESSAGE', `hospital record ${hid} holds an invalid message and cannot be re-published to ${toTopic}: ${(e as Error).message}`, { hint: 'ignore it, or fix the producer and publish again' });
      }
      const copy: Envelope = { ...env, topic: toTopic, attempt: 0, publishedAt: Date.now(), headers: { ...env.headers, 'lading-retried-from': `${r.topic}/${r.group}` } };
      delete copy.notBefore;
      await this.publisher.send([{ topic: toTopic, key: kafkaKey(copy), value: JSON.stringify(copy), headers: { [H.id]: copy.id } }]);
    }
    return this.resolve(hid, 'retried', `retried to ${toTopic}${toTopic === r.topic ? `/${r.group}` : ''}${options.note ? `: ${options.note}` : ''}`);
  }

  async hospitalIgnore(hid: string, note?: string): Promise<HospitalRecord | undefined> {
    await this.syncHospital(0);
    const r = this.hospital.values.get(hid);
    if (!r || r.state !== 'open') return undefined;
    return this.resolve(hid, 'ignored', note ?? 'ignored');
  }

  async hospitalPurge(hid: string): Promise<boolean> {
    await this.syncHospital(0);
    if (!this.hospital.values.has(hid)) return false;
    await this.writeState(this.hospital.topic, hid, null);
    await this.syncHospital(0);
    return true;
  }

  // ---- payloads, stats, close --------------------------------------------------------------------------

  /**
   * On Kafka no process knows when every group is done with a claim-check payload (groups are independent
   * and a new group may read from the oldest retained record). Payloads are left to the store's own
   * lifecycle rule, set to at least the topic's retention (see NOTES.md).
   */
  async releasedPayloads(_limit: number): Promise<string[]> {
    return [];
  }

  async confirmPayloadsDeleted(_uris: string[]): Promise<void> {}

  async stats(topic?: string, options: { job?: string; group?: string } = {}): Promise<GroupStats[]> {
    this.assertOpen();
    await this.syncRegistry(0);
    await this.syncHospital(0);
    const groups = [...this.registry.values.values()]
      .filter((v): v is GroupEntry => v.kind === 'group' && (topic === undefined || v.topic === topic) && (options.group === undefined || v.group === options.group))
      .sort((a, b) => (a.topic === b.topic ? a.group.localeCompare(b.group) : a.topic.localeCompare(b.topic)));
    return this.wrap('stats', () => Promise.all(groups.map((g) => this.groupStats(g.topic, g.group, options.job))));
  }

  private async groupStats(topic: string, group: string, job: string | undefined): Promise<GroupStats> {
    const s: GroupStats = { topic, group, ready: 0, delayed: 0, leased: 0, hospital: 0 };
    const now = Date.now();
    const retryTopic = retryTopicOf(topic);
    const committed = await this.committed(kafkaGroupId(topic, group), [topic, retryTopic]);
    const member = this.existingMember(topic, group);
    for (const kafkaTopic of [topic, retryTopic]) {
      const isRetry = kafkaTopic === retryTopic;
      for (const o of await this.offsets(kafkaTopic)) {
        const c = committed.get(`${kafkaTopic}:${o.partition}`);
        const offset = c && c.offset >= 0 ? c.offset : -1;
        const start = Math.max(offset >= 0 ? offset : o.low, o.low);
        if (o.high <= start) continue;
        const local = member?.localState(kafkaTopic, o.partition);
        const md = decodeMetadata(offset, c?.metadata ?? null);
        const mdDone = new Set(md?.done ?? []);
        const mdLeased = new Set((md?.leases ?? []).filter((l) => l.until > now).map((l) => l.offset));
        const { records } = await this.reader.read(kafkaTopic, new Map([[o.partition, start]]), { partitions: [o.partition], limit: STATS_READ_LIMIT });
        const localHead = local ? local.entries[0]?.rec.offset ?? local.next : -1;
        for (const r of records) {
          let due: number;
          if (isRetry) {
            const rs = readRetryState(r);
            if (rs.group !== group) continue;
            due = rs.due;
          } else {
            due = 0;
          }
          const decoded = decodeValue(r);
          if (job !== undefined && decoded.envelope?.headers['lading-job'] !== job) continue;
          if (!isRetry) due = decoded.envelope?.notBefore ?? 0;
          if (local && local.next > r.offset) {
            if (r.offset < localHead || (local.committed >= 0 && r.offset < local.committed)) continue; // done here
            const e = local.find(r.offset);
            if (!e || e.state === 'done') continue;
            if (e.state === 'leased') { s.leased++; continue; }
            if (e.due > now) s.delayed++;
            else s.ready++;
            continue;
          }
          if (mdDone.has(r.offset)) continue;
          if (mdLeased.has(r.offset)) { s.leased++; continue; }
          if (due > now) s.delayed++;
          else s.ready++;
        }
        const unread = o.high - start - records.length;
        if (records.length >= STATS_READ_LIMIT && unread > 0 && !isRetry && job === undefined) s.ready += unread;
      }
    }
    for (const r of this.hospital.values.values()) {
      if (r.topic === topic && r.group === group && r.state === 'open' && (job === undefined || r.job === job)) s.hospital++;
    }
    return s;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.members.values()].map((m) => m.stop()));
    this.members.clear();
    await this.publisher.close();
    await this.reader.close();
    await this.admin?.disconnect().catch(() => undefined);
  }
}

function publicRecord(r: StoredHospitalRecord): HospitalRecord {
  const { job: _job, origin: _origin, ...rest } = r;
  let envelope: Envelope | undefined;
  try {
    envelope = parseEnvelope(r.raw);
  } catch {
    envelope = undefined;
  }
  return { ...rest, envelope };
}
