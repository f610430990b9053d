// One assigned partition of a group member: the records fetched and not yet committed, each waiting,
// leased or done, and the contiguous-prefix commit rule (a crash never skips an unfinished record).
import type { AttemptError } from '../../driver.js';
import type { JsonValue } from '../../envelope.js';
import { decodeValue, needsDedup, readRetryState, type Decoded, type KafkaRecord } from './codec.js';
import { encodeMetadata, type LeaseMark } from './commit-metadata.js';

export type EntryState = 'waiting' | 'leased' | 'done';

/** One fetched record of a partition and how it stands. Decoded (JSON, envelope check) on first use. */
export class Entry {
  /** Delivery number of the next (or current) hand-out. */
  attempt = 0;
  errors: AttemptError[] = NO_ERRORS;
  checkpoint: JsonValue | undefined = undefined;
  /** Leases of this record that ran out: [attempt, worker]. */
  expired: [number, string][] = NO_EXPIRED;
  token: string | undefined = undefined;
  leaseUntil = 0;
  leaseMs = 0;
  worker = '';
  /** Retry records: the token of the retry() that produced it. */
  retryToken: string | undefined = undefined;
  private s: EntryState = 'waiting';
  private d: Decoded | undefined = undefined;
  private dueAt = -1;
  private dd: boolean | undefined = undefined;

  constructor(readonly rec: KafkaRecord, readonly retry: boolean, readonly owner: PartitionState) {}

  get decoded(): Decoded {
    return (this.d ??= decodeValue(this.rec));
  }

  /**
   * Drop the decoded envelope of a finished record (it is decoded again if asked for): a finished record
   * stays in the buffer until the head moves past it, and a parsed envelope that lives through a young
   * collection is copied by the garbage collector.
   */
  forgetDecoded(): void {
    this.d = undefined;
  }

  /** Epoch ms before which it is not handed out (notBefore, retry due time). */
  get due(): number {
    if (this.dueAt < 0) this.dueAt = this.decoded.envelope?.notBefore ?? 0;
    return this.dueAt;
  }

  set due(at: number) {
    this.dueAt = at;
  }

  /** Consumer dedup applies (false for a message with a generated id, see H.dedup). */
  get dedup(): boolean {
    return (this.dd ??= needsDedup(this.rec));
  }

  get state(): EntryState {
    return this.s;
  }

  /** Keeps the partition's counts of waiting and leased records (read on every ack and batch) exact. */
  set state(next: EntryState) {
    const prev = this.s;
    if (prev === next) return;
    this.s = next;
    const o = this.owner;
    if (prev === 'waiting') o.waitingCount--;
    else if (prev === 'leased') o.leasedCount--;
    if (next === 'waiting') o.waitingCount++;
    else if (next === 'leased') o.leasedCount++;
  }
}

/** Shared empty histories of fresh records (frozen: every change assigns a new array). */
const NO_ERRORS = Object.freeze([]) as unknown as AttemptError[];
const NO_EXPIRED = Object.freeze([]) as unknown as [number, string][];

/**
 * loading: assigned, committed offset not read yet. waiting: the previous owner still holds live leases.
 * active: ours. custody: revoked, but handlers of ours still run on some of its records (we finish them
 * and commit; the new owner waits for our leases to go).
 */
export type PartitionStatus = 'loading' | 'waiting' | 'active' | 'custody';

export class PartitionState {
  /** Fetched records in offset order; the first `head` of them are done (see prune). */
  entries: Entry[] = [];
  head = 0;
  /** Next offset to ingest; -1 before the first record. */
  next = -1;
  /** Committed offset as last read or written (-1: none). */
  committed = -1;
  status: PartitionStatus = 'loading';
  /** Leases and finished offsets inherited from the previous owner, for records not fetched yet. */
  inherited = new Map<number, LeaseMark>();
  inheritedDone = new Set<number>();
  dirty = false;
  paused = false;
  /** Retry partitions: the high watermark when assigned; main records wait until it is read. */
  fence = -1;
  /** Consumer dedup: ids completed in this partition (the key of a message is its id when it has none). */
  readonly completed = new Map<string, number>();
  generation = 0;
  /** Expired leases of a previous owner, watched for a renewal before they are taken over. */
  watch: { since: number; text: string | null } | undefined;

  /** `topic:partition`, the key of this partition in its member's map. */
  readonly key: string;
  /** Start of the receipts of this partition's deliveries (set by the member that owns it). */
  receiptPrefix: string | undefined = undefined;

  constructor(readonly topic: string, readonly partition: number, readonly retry: boolean, readonly group: string) {
    this.key = `${topic}:${partition}`;
  }

  /** Records in `entries` waiting / leased (kept by Entry's state setter; recount() after dropping entries). */
  waitingCount = 0;
  leasedCount = 0;

  recount(): void {
    let w = 0;
    let l = 0;
    for (const e of this.entries) {
      if (e.state === 'waiting') w++;
      else if (e.state === 'leased') l++;
    }
    this.waitingCount = w;
    this.leasedCount = l;
  }

  /** Keep only the records at or after `offset` (a committed offset read at activation). */
  dropBefore(offset: number): void {
    this.entries = this.entries.filter((e) => e.rec.offset >= offset);
    this.head = 0;
    this.recount();
  }

  /** Add fetched records (duplicates of what we already have are skipped). Returns the new entries. */
  ingest(records: KafkaRecord[]): Entry[] {
    const added: Entry[] = [];
    for (const r of records) {
      if (this.next >= 0 && r.offset < this.next) continue;
      this.next = r.offset + 1;
      if (this.committed >= 0 && r.offset < this.committed && this.status !== 'loading') continue;
      const entry = new Entry(r, this.retry, this);
      this.waitingCount++;
      if (this.retry) {
        const s = readRetryState(r);
        // Records for other groups are not ours to handle: done at once (they only move our commit along).
        if (s.group !== this.group) entry.state = 'done';
        entry.due = s.due;
        entry.attempt = s.attempt;
        entry.errors = s.errors;
        entry.checkpoint = s.checkpoint;
        entry.retryToken = s.token;
      }
      if (this.status !== 'loading' && this.status !== 'waiting') this.applyInherited(entry);
      this.entries.push(entry);
      if (entry.state !== 'done') added.push(entry);
    }
    this.prune();
    return added;
  }

  /** Apply what the previous owner left in the commit metadata to one record. */
  applyInherited(e: Entry): void {
    const off = e.rec.offset;
    if (this.inheritedDone.delete(off)) {
      e.state = 'done';
      return;
    }
    const mark = this.inherited.get(off);
    if (!mark) return;
    this.inherited.delete(off);
    expire(e, mark.attempt, mark.worker, Date.now(), mark.expired);
    if (mark.checkpoint !== undefined) e.checkpoint = mark.checkpoint;
  }

  /**
   * Finished records at the head are behind the commit point: skip them (`head`) and drop them from the
   * array in chunks (an ack usually finishes one record: splicing the array each time costs O(buffer)).
   */
  prune(): void {
    const entries = this.entries;
    let i = this.head;
    while (i < entries.length && entries[i]!.state === 'done') i++;
    if (i === entries.length) {
      entries.length = 0;
      i = 0;
    } else if (i >= 256) {
      entries.splice(0, i);
      i = 0;
    }
    this.head = i;
  }

  /** The offset to commit: the first record not done, or the next to fetch when all are done. */
  commitOffset(): number {
    const entries = this.entries;
    for (let i = this.head; i < entries.length; i++) if (entries[i]!.state !== 'done') return entries[i]!.rec.offset;
    return this.next >= 0 ? this.next : this.committed;
  }

  metadata(member: string, offset: number): string {
    const leases: LeaseMark[] = [];
    const done: number[] = [];
    // Only leased and done records are written: stop once all of them were seen (the rest are waiting).
    const entries = this.entries;
    let left = entries.length - this.head - this.waitingCount;
    for (let i = this.head; i < entries.length && left > 0; i++) {
      const e = entries[i]!;
      if (e.state === 'waiting') continue;
      left--;
      if (e.rec.offset < offset) continue;
      if (e.state === 'leased') leases.push({ offset: e.rec.offset, attempt: e.attempt, until: e.leaseUntil, ms: e.leaseMs, worker: e.worker, expired: e.expired, checkpoint: e.checkpoint });
      else if (e.state === 'done') done.push(e.rec.offset);
    }
    return encodeMetadata(offset, { member, leases, done });
  }

  find(offset: number): Entry | undefined {
    // Entries are in offset order: binary search.
    let lo = 0;
    let hi = this.entries.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const o = this.entries[mid]!.rec.offset;
      if (o === offset) return this.entries[mid];
      if (o < offset) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  rememberCompleted(id: string, at: number, windowMs: number): void {
    if (windowMs <= 0) return;
    this.completed.set(id, at);
    if (this.completed.size > 100_000) {
      // Bounded memory: forget the oldest (Map keeps insertion order).
      let n = this.completed.size - 90_000;
      for (const k of this.completed.keys()) {
        if (n-- <= 0) break;
        this.completed.delete(k);
      }
    }
  }
}

/** A lease ran out (holder died, hung or lost the partition): the attempt counts, with an error saying so. */
export function expire(e: Entry, attempt: number, worker: string, now: number, history: [number, string][] = e.expired): void {
  e.expired = [...history, [attempt, worker]];
  const errors = [...e.errors];
  for (const [a, w] of e.expired) {
    if (errors.some((x) => x.name === 'LeaseExpired' && x.attempt === a)) continue;
    errors.push({ name: 'LeaseExpired', message: `lease held by ${w} expired without an ack (the consumer died, hung or lost its connection)`, attempt: a, worker: w, host: w.split(':')[0] ?? w, at: now });
  }
  e.errors = errors.sort((x, y) => x.attempt - y.attempt);
  e.attempt = Math.max(e.attempt, attempt + 1);
  e.state = 'waiting';
  e.token = undefined;
}
