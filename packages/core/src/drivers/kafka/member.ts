// One member of a Kafka consumer group: this process's consumer of one lading (topic, group).
//
// kafkajs heartbeats only between batches and rejoins a rebalance only after the running batch is done
// (its issues #1600, #1396), so handlers never run inside kafkajs' callback: eachBatch copies the records
// into per-partition buffers and returns at once; the lading Consumer takes them with fetch() and settles
// them with ack/retry/deadLetter. A partition whose buffer is full is paused, and resumed once drained.
// Commits carry the contiguous finished prefix of each partition plus, in the commit metadata, the leases
// and finished offsets beyond it (see commit-metadata.ts).
import { randomBytes } from 'node:crypto';
import type { Consumer, Kafka } from 'kafkajs';
import type { AttemptError, Delivery } from '../../driver.js';
import type { Envelope, JsonValue } from '../../envelope.js';
import { coPartitionedAssigner } from './assigner.js';
import { toRecords } from './codec.js';
import { decodeMetadata, type CommitMetadata } from './commit-metadata.js';
import { kafkaGroupId, retryTopicOf, type KafkaDriverOptions } from './options.js';
import { PartitionState, expire, type Entry } from './partition.js';

/** Buffered records per partition above which it is paused, and below which it is resumed. */
const HIGH_WATER = 2000;
const LOW_WATER = 1000;

export interface MemberHost {
  kafka: Kafka;
  options: KafkaDriverOptions;
  /** Committed offset and metadata per `topic:partition` of a Kafka group. */
  committed(groupId: string, topics: string[]): Promise<Map<string, { offset: number; metadata: string | null }>>;
  /** High and low watermark per partition. */
  watermarks(topic: string): Promise<Map<number, { high: number; low: number }>>;
}

interface Holder {
  entry?: Entry | undefined;
  /** A retry() in flight: the key waits for its retry record to come back. */
  token?: string | undefined;
  part: string;
}

/** Hidden fields of the Delivery objects a member hands out: ack/retry/extend find the entry without parsing. */
const ENTRY = Symbol('lading.kafka.entry');
const MEMBER = Symbol('lading.kafka.member');
interface Handle {
  [ENTRY]?: Entry;
  [MEMBER]?: GroupMember;
}

/**
 * A Delivery as a member hands it out. A class rather than an object literal: V8 may allocate a literal
 * straight in the old generation once many of them lived long (allocation-site pretenuring, e.g. after a
 * burst of slow handlers), and an old object holding the record's envelope keeps it alive through every
 * young collection. The entry and the member are symbol-keyed: JSON and callers do not see them.
 */
class MemberDelivery implements Delivery {
  readonly topic: string;
  readonly group: string;
  id: string;
  receipt: string;
  raw: string;
  envelope: Envelope | undefined;
  invalid: string | undefined;
  attempt: number;
  errors: AttemptError[];
  checkpoint: JsonValue | undefined;
  leaseUntil: number;
  readonly [ENTRY]: Entry;
  readonly [MEMBER]: GroupMember;

  constructor(member: GroupMember, st: PartitionState, e: Entry) {
    const decoded = e.decoded;
    this.topic = member.topic;
    this.group = member.group;
    this.id = decoded.id;
    this.receipt = `${st.receiptPrefix ??= `${member.id}|${st.retry ? 'r' : 'm'}|${st.partition}|`}${e.rec.offset}|${e.token ?? ''}`;
    this.raw = decoded.raw;
    this.envelope = decoded.envelope;
    this.invalid = decoded.invalid;
    this.attempt = e.attempt;
    // Error histories are never changed in place (every change assigns a new array): shared, not copied.
    this.errors = e.errors;
    this.checkpoint = e.checkpoint;
    this.leaseUntil = e.leaseUntil;
    this[ENTRY] = e;
    this[MEMBER] = member;
  }
}

/** The member that handed out `d` (undefined for a Delivery that did not come from this process's driver). */
export function memberOf(d: Delivery): GroupMember | undefined {
  return (d as Delivery & Handle)[MEMBER];
}

export interface TakePolicy {
  maxAttempts: number;
  dedupWindowMs: number;
}

export class GroupMember {
  readonly id = randomBytes(6).toString('hex');
  readonly retryTopic: string;
  readonly groupId: string;
  /** Key of this member in the driver's map. */
  readonly key: string;
  readonly parts = new Map<string, PartitionState>();
  private readonly holders = new Map<string, Holder>();
  private consumer: Consumer | undefined;
  private starting: Promise<void> | undefined;
  crashed: Error | undefined;
  private stopped = false;
  private flushChain: Promise<void> = Promise.resolve();
  private flushQueued: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private sentWaiters: (() => void)[] = [];
  private flushing = false;
  private rr = 0;
  /** Lease tokens: unique inside this member (receipts also name the member). */
  private tokens = 0;
  lastUsed = Date.now();
  /** Ids skipped by consumer dedup (for tests and stats). */
  deduped = 0;

  constructor(private readonly host: MemberHost, readonly topic: string, readonly group: string) {
    this.retryTopic = retryTopicOf(topic);
    this.groupId = kafkaGroupId(topic, group);
    this.key = memberKey(topic, group);
  }

  start(): Promise<void> {
    this.starting ??= this.run().catch((e: unknown) => {
      this.crashed = e instanceof Error ? e : new Error(String(e));
    });
    return this.starting;
  }

  private async run(): Promise<void> {
    const o = this.host.options;
    const consumer = this.host.kafka.consumer({
      groupId: this.groupId,
      sessionTimeout: o.sessionTimeoutMs,
      rebalanceTimeout: Math.max(60_000, o.sessionTimeoutMs * 2),
      heartbeatInterval: o.heartbeatIntervalMs,
      maxWaitTimeInMs: 100,
      allowAutoTopicCreation: true,
      partitionAssigners: [coPartitionedAssigner(this.topic, this.retryTopic)],
      retry: { retries: Math.max(o.retries, 5), initialRetryTime: 200, maxRetryTime: 2000 },
    });
    this.consumer = consumer;
    consumer.on(consumer.events.GROUP_JOIN, (e) => this.onAssignment(e.payload.memberAssignment));
    consumer.on(consumer.events.CRASH, (e) => {
      if (!e.payload.restart) this.crashed = e.payload.error;
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [this.topic, this.retryTopic], fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: true,
      eachBatch: async ({ batch }) => {
        if (this.stopped) return;
        const key = `${batch.topic}:${batch.partition}`;
        const st = this.parts.get(key);
        if (!st || st.status === 'custody') return; // not (or no longer) ours
        const added = st.ingest(toRecords(batch.topic, batch.partition, batch.messages));
        if (st.retry) for (const e of added) this.claimKeyForRetry(st, e);
        if (added.length) this.notify();
        if (!st.paused && st.waitingCount >= HIGH_WATER) {
          st.paused = true;
          consumer.pause([{ topic: st.topic, partitions: [st.partition] }]);
        }
      },
    });
  }

  private waiters: (() => void)[] = [];

  private notify(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when new records were buffered, or after `ms` (a short long-poll for fetch). */
  waitForData(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.waiters.push(done);
    });
  }

  // ---- assignment ----------------------------------------------------------------------------

  private onAssignment(assignment: Record<string, number[]>): void {
    const now = new Set<string>();
    for (const [t, ps] of Object.entries(assignment)) for (const p of ps) now.add(`${t}:${p}`);
    for (const [k, st] of this.parts) {
      if (!now.has(k) && st.status !== 'custody') this.revoke(st);
    }
    const fresh: PartitionState[] = [];
    for (const k of now) {
      const [t, pText] = splitKey(k);
      const st = this.parts.get(k);
      if (st && st.status === 'custody') {
        st.status = 'active'; // back to us before our handlers were done: still ours
        continue;
      }
      if (st) continue; // kept through the rebalance: kafkajs refetches from the commit, ingest skips what we have
      const created = new PartitionState(t, Number(pText), t === this.retryTopic, this.group);
      this.parts.set(k, created);
      fresh.push(created);
      if (this.consumer) this.consumer.resume([{ topic: t, partitions: [Number(pText)] }]);
    }
    if (fresh.length) void this.load(fresh);
    this.commitSoon().catch(() => undefined);
  }

  /** We lost the partition: keep what our handlers still run (custody), forget the rest. */
  private revoke(st: PartitionState): void {
    const key = `${st.topic}:${st.partition}`;
    for (const [k, h] of this.holders) {
      if (h.part === key && (!h.entry || h.entry.state !== 'leased')) this.holders.delete(k);
    }
    if (st.leasedCount > 0) {
      st.status = 'custody';
      st.dirty = true;
    } else {
      this.parts.delete(key);
    }
  }

  private async load(fresh: PartitionState[], attempt = 0): Promise<void> {
    try {
      const committed = await this.host.committed(this.groupId, [this.topic, this.retryTopic]);
      const needsFence = fresh.some((s) => s.retry);
      const marks = needsFence ? await this.host.watermarks(this.retryTopic) : new Map<number, { high: number; low: number }>();
      const waiting: PartitionState[] = [];
      for (const st of fresh) {
        if (this.parts.get(`${st.topic}:${st.partition}`) !== st) continue;
        const c = committed.get(`${st.topic}:${st.partition}`);
        const offset = c?.offset ?? -1;
        if (st.retry) {
          // Read up to here before main records go out; nothing to wait for when the start is already there.
          const m = marks.get(st.partition);
          st.fence = m && Math.max(offset, m.low) < m.high ? m.high : -1;
        }
        if (!this.activate(st, offset, c?.metadata ?? null)) waiting.push(st);
      }
      if (waiting.length && !this.stopped) setTimeout(() => void this.load(waiting), 250).unref();
    } catch {
      if (!this.stopped) setTimeout(() => void this.load(fresh, attempt + 1), Math.min(2000, 200 * (attempt + 1))).unref();
    }
  }

  /**
   * Take over a partition from its committed state. False while the previous owner still holds live leases
   * (it keeps custody of them until its handlers finish). A lease that looks expired is watched for one more
   * lease length first: its holder cannot renew it while the group rebalances (commits are refused then).
   */
  private activate(st: PartitionState, committed: number, text: string | null): boolean {
    const now = Date.now();
    const md: CommitMetadata | undefined = decodeMetadata(committed, text);
    const foreign = md && md.member !== this.id ? md : undefined;
    if (foreign && foreign.leases.length > 0) {
      if (foreign.leases.some((l) => l.until > now)) {
        st.watch = undefined;
        st.status = 'waiting';
        return false;
      }
      if (!st.watch || st.watch.text !== text) st.watch = { since: now, text };
      const grace = Math.max(...foreign.leases.map((l) => l.ms || 0));
      if (now < st.watch.since + grace) {
        st.status = 'waiting';
        return false;
      }
    }
    st.watch = undefined;
    st.committed = committed;
    st.inherited = new Map((foreign?.leases ?? []).map((l) => [l.offset, l]));
    st.inheritedDone = new Set(foreign?.done ?? []);
    if (committed >= 0) st.dropBefore(committed);
    st.status = 'active';
    for (const e of st.entries) st.applyInherited(e);
    st.prune();
    if (st.retry) for (const e of st.entries) this.claimKeyForRetry(st, e);
    return true;
  }

  /** Retry partitions must be read up to their high watermark at assignment before main records go out. */
  private fenceOpen(main: PartitionState): boolean {
    const rs = this.parts.get(`${this.retryTopic}:${main.partition}`);
    if (!rs) return true;
    if (rs.status !== 'active') return false;
    return rs.fence < 0 || rs.fence <= rs.next;
  }

  private claimKeyForRetry(st: PartitionState, e: Entry): void {
    if (e.state === 'done') return;
    const k = e.decoded.key;
    if (!k) return;
    const h = this.holders.get(k);
    if (!h || (h.token !== undefined && h.token === e.retryToken)) this.holders.set(k, { entry: e, part: `${st.topic}:${st.partition}` });
  }

  // ---- hand-out --------------------------------------------------------------------------------

  take(max: number, leaseMs: number, worker: string, policy: TakePolicy): { deliveries: Delivery[]; poison: { st: PartitionState; e: Entry }[] } {
    this.lastUsed = Date.now();
    const now = Date.now();
    const deliveries: Delivery[] = [];
    const poison: { st: PartitionState; e: Entry }[] = [];
    const list = [...this.parts.values()].filter((s) => s.status === 'active');
    if (list.length === 0) return { deliveries, poison };
    const start = this.rr++ % list.length;
    for (let i = 0; i < list.length && deliveries.length < max; i++) {
      const st = list[(start + i) % list.length]!;
      if (!st.retry && !this.fenceOpen(st)) continue;
      const blocked = new Set<string>();
      let touched = false;
      const entries = st.entries;
      for (let j = st.head; j < entries.length; j++) {
        if (deliveries.length >= max) break;
        const e = entries[j]!;
        if (e.state === 'done') continue;
        const k = e.decoded.key;
        if (e.state === 'leased') {
          if (e.leaseUntil >= now || e.token === 'poison') {
            if (k) blocked.add(k);
            continue;
          }
          expire(e, e.attempt, e.worker, now); // our own handler did not renew in time
        }
        if (k) {
          if (blocked.has(k)) continue;
          const h = this.holders.get(k);
          if (h && h.entry !== e) {
            blocked.add(k);
            continue;
          }
        }
        if (e.due > now) {
          if (k) blocked.add(k);
          continue;
        }
        if (!e.retry && e.attempt === 0 && e.expired.length === 0 && policy.dedupWindowMs > 0 && e.dedup) {
          const at = st.completed.get(e.decoded.id);
          if (at !== undefined && at > now - policy.dedupWindowMs) {
            e.state = 'done'; // consumer dedup: the group completed this id inside the window
            e.forgetDecoded();
            this.deduped++;
            touched = true;
            continue;
          }
        }
        const last = e.expired[e.expired.length - 1];
        if (last && last[0] === e.attempt - 1 && e.attempt >= policy.maxAttempts) {
          e.state = 'leased';
          e.token = 'poison';
          if (k) {
            blocked.add(k);
            this.holders.set(k, { entry: e, part: `${st.topic}:${st.partition}` });
          }
          poison.push({ st, e });
          continue;
        }
        e.state = 'leased';
        e.token = (++this.tokens).toString(36);
        e.leaseUntil = now + leaseMs;
        e.leaseMs = leaseMs;
        e.worker = worker;
        if (k) {
          blocked.add(k);
          this.holders.set(k, { entry: e, part: `${st.topic}:${st.partition}` });
        }
        touched = true;
        deliveries.push(new MemberDelivery(this, st, e));
      }
      if (touched) {
        st.dirty = true;
        st.prune();
      }
      this.maybeResume(st);
    }
    return { deliveries, poison };
  }

  /** The leased entry a delivery names, if this member still holds that lease (its partition is `e.owner`). */
  lookup(d: Delivery): Entry | undefined {
    // Fast path: the Delivery object this member handed out carries its entry (no receipt parsing).
    const e = (d as Delivery & Handle)[ENTRY];
    if (e !== undefined && (d as Delivery & Handle)[MEMBER] === this) {
      const st = e.owner;
      const token = e.token;
      const r = d.receipt;
      const live = e.state === 'leased' && token !== undefined && this.parts.get(st.key) === st && (st.status === 'active' || st.status === 'custody');
      return live && r.endsWith(token) && r.charCodeAt(r.length - token.length - 1) === 124 /* | */ ? e : undefined;
    }
    return this.lookupReceipt(d.receipt);
  }

  /** The leased entry a receipt names (a Delivery rebuilt from its fields), if this member still holds that lease. */
  private lookupReceipt(receipt: string): Entry | undefined {
    const [member, kind, p, off, token] = receipt.split('|');
    if (member !== this.id || !token) return undefined;
    const st = this.parts.get(`${kind === 'r' ? this.retryTopic : this.topic}:${p}`);
    if (!st || (st.status !== 'active' && st.status !== 'custody')) return undefined;
    const e = st.find(Number(off));
    if (!e || e.state !== 'leased' || e.token !== token) return undefined;
    return e;
  }

  /** Done with a record (acked, retried elsewhere, in the hospital): it counts towards the commit. */
  settle(st: PartitionState, e: Entry, completed: { windowMs: number } | undefined): Promise<void> {
    e.state = 'done';
    e.token = undefined;
    const k = e.decoded.key;
    if (k && this.holders.get(k)?.entry === e) this.holders.delete(k);
    if (completed) st.rememberCompleted(e.decoded.id, Date.now(), completed.windowMs);
    e.forgetDecoded();
    st.prune();
    st.dirty = true;
    this.maybeResume(st);
    return this.commitSoon();
  }

  /** Keep the key of `e` for a retry record that is on its way (only when the retry partition is ours). */
  holdForRetry(e: Entry, token: string, retryPartition: number): void {
    const k = e.decoded.key;
    if (!k) return;
    const part = `${this.retryTopic}:${retryPartition}`;
    if (!this.parts.has(part)) return;
    this.holders.set(k, { token, part });
  }

  unhold(e: Entry, token: string): void {
    const k = e.decoded.key;
    if (k && this.holders.get(k)?.token === token) this.holders.set(k, { entry: e, part: '' });
  }

  extend(st: PartitionState, e: Entry, leaseMs: number, checkpoint: JsonValue | undefined): Promise<void> {
    e.leaseUntil = Date.now() + leaseMs;
    e.leaseMs = leaseMs;
    if (checkpoint !== undefined) e.checkpoint = checkpoint;
    st.dirty = true;
    return this.commitSoon();
  }

  release(st: PartitionState, e: Entry): Promise<void> {
    e.state = 'waiting';
    e.token = undefined;
    e.leaseUntil = 0;
    st.dirty = true;
    return this.commitSoon();
  }

  private maybeResume(st: PartitionState): void {
    if (st.paused && st.waitingCount < LOW_WATER && this.consumer) {
      st.paused = false;
      this.consumer.resume([{ topic: st.topic, partitions: [st.partition] }]);
    }
  }

  // ---- commits -----------------------------------------------------------------------------------

  /** Commit what changed, batched per event-loop turn and serialised. Never rejects: a failed commit is retried. */
  commitSoon(): Promise<void> {
    if (this.flushQueued) return this.flushQueued;
    const queued = this.flushChain.then(() => new Promise<void>((resolve) => setImmediate(resolve))).then(() => {
      if (this.flushQueued === queued) this.flushQueued = undefined;
      return this.flush();
    });
    this.flushQueued = queued;
    this.flushChain = queued.catch(() => undefined);
    return queued;
  }

  /** True when no commit is being written or waiting to be: a new one would go out at once. */
  get commitIdle(): boolean {
    return !this.flushing && this.flushQueued === undefined;
  }

  /**
   * Commit now and resolve once the request is on the wire (not acknowledged): fetch() uses it when the
   * commit path is idle, so a lease is on record before its handler starts (a member killed at once still
   * counts the attempt) at the price of one event-loop turn, not a round trip.
   */
  leasesSent(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.sentWaiters.push(resolve);
      void this.commitSoon();
    });
  }

  private async flush(): Promise<void> {
    const consumer = this.consumer;
    const waiters = this.sentWaiters.splice(0);
    // Resolved after this turn's microtasks, in which kafkajs writes the request (its coordinator is cached).
    if (waiters.length) setImmediate(() => { for (const w of waiters) w(); });
    const batch: { st: PartitionState; offset: number; metadata: string }[] = [];
    for (const st of this.parts.values()) {
      if (!st.dirty || (st.status !== 'active' && st.status !== 'custody')) continue;
      const offset = st.commitOffset();
      st.dirty = false;
      if (offset < 0) continue;
      batch.push({ st, offset, metadata: st.metadata(this.id, offset) });
    }
    if (batch.length > 0 && consumer) {
      this.flushing = true;
      try {
        await consumer.commitOffsets(batch.map((b) => ({ topic: b.st.topic, partition: b.st.partition, offset: String(b.offset), metadata: b.metadata })));
        for (const b of batch) b.st.committed = Math.max(b.st.committed, b.offset);
      } catch {
        // Rebalance in progress, coordinator moved, broker down: try again shortly (or after the next join).
        for (const b of batch) b.st.dirty = true;
        if (!this.retryTimer && !this.stopped) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            this.commitSoon().catch(() => undefined);
          }, 500);
          this.retryTimer.unref();
        }
      }
    }
    this.flushing = false;
    // Custody ends once our last handler on a revoked partition is done and committed.
    for (const [k, st] of this.parts) {
      if (st.status === 'custody' && st.leasedCount === 0 && !st.dirty) this.parts.delete(k);
    }
  }

  /** Hand back every lease, commit, and leave the group (its partitions go to the other members). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    for (const st of this.parts.values()) {
      for (const e of st.entries) {
        if (e.state === 'leased' && e.token !== 'poison') {
          e.state = 'waiting';
          e.token = undefined;
          st.dirty = true;
        }
      }
    }
    await this.commitSoon().catch(() => undefined);
    this.stopped = true;
    this.notify();
    clearTimeout(this.retryTimer);
    await this.starting?.catch(() => undefined);
    await this.consumer?.disconnect().catch(() => undefined);
    this.parts.clear();
    this.holders.clear();
  }

  /** Local view of one partition for stats: how each offset stands, or undefined when not known here. */
  localState(kafkaTopic: string, partition: number): PartitionState | undefined {
    const st = this.parts.get(`${kafkaTopic}:${partition}`);
    return st && (st.status === 'active' || st.status === 'custody') ? st : undefined;
  }
}

export function memberKey(topic: string, group: string): string {
  return `${topic}\u0000${group}`;
}

function splitKey(k: string): [string, string] {
  const i = k.lastIndexOf(':');
  return [k.slice(0, i), k.slice(i + 1)];
}
