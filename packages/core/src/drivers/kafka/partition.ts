// One assigned partition of a group member: the records fetched and not yet committed, each waiting,
// leased or done, and the contiguous-prefix commit rule (a crash never skips an unfinished record).
import type { AttemptError } from '../../driver.js';
import type { JsonValue } from '../../envelope.js';
import { decodeValue, readRetryState, type Decoded, type KafkaRecord } from './codec.js';
import { encodeMetadata, type LeaseMark } from './commit-metadata.js';

export type EntryState = 'waiting' | 'leased' | 'done';

export interface Entry {
  rec: KafkaRecord;
  retry: boolean;
  decoded: Decoded;
  /** Epoch ms before which it is not handed out (notBefore, retry due time). */
  due: number;
  /** Delivery number of the next (or current) hand-out. */
  attempt: number;
  errors: AttemptError[];
  checkpoint: JsonValue | undefined;
  /** Leases of this record that ran out: [attempt, worker]. */
  expired: [number, string][];
  state: EntryState;
  token: string | undefined;
  leaseUntil: number;
  leaseMs: number;
  worker: string;
  /** Retry records: the token of the retry() that produced it. */
  retryToken: string | undefined;
}

/**
 * loading: assigned, committed offset not read yet. waiting: the previous owner still holds live leases.
 * active: ours. custody: revoked, but handlers of ours still run on some of its records (we finish them
 * and commit; the new owner waits for our leases to go).
 */
export type PartitionStatus = 'loading' | 'waiting' | 'active' | 'custody';

export class PartitionState {
  entries: Entry[] = [];
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

  constructor(readonly topic: string, readonly partition: number, readonly retry: boolean, readonly group: string) {}

  get waitingCount(): number {
    let n = 0;
    for (const e of this.entries) if (e.state === 'waiting') n++;
    return n;
  }

  get leasedCount(): number {
    let n = 0;
    for (const e of this.entries) if (e.state === 'leased') n++;
    return n;
  }

  /** Add fetched records (duplicates of what we already have are skipped). Returns the new entries. */
  ingest(records: KafkaRecord[]): Entry[] {
    const added: Entry[] = [];
    for (const r of records) {
      if (this.next >= 0 && r.offset < this.next) continue;
      this.next = r.offset + 1;
      if (this.committed >= 0 && r.offset < this.committed && this.status !== 'loading') continue;
      const decoded = decodeValue(r);
      const entry: Entry = {
        rec: r, retry: this.retry, decoded, due: decoded.envelope?.notBefore ?? 0, attempt: 0, errors: [], checkpoint: undefined,
        expired: [], state: 'waiting', token: undefined, leaseUntil: 0, leaseMs: 0, worker: '', retryToken: undefined,
      };
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

  /** Drop finished records at the head: they are behind the commit point now. */
  prune(): void {
    let i = 0;
    while (i < this.entries.length && this.entries[i]!.state === 'done') i++;
    if (i > 0) this.entries.splice(0, i);
  }

  /** The offset to commit: the first record not done, or the next to fetch when all are done. */
  commitOffset(): number {
    const head = this.entries.find((e) => e.state !== 'done');
    if (head) return head.rec.offset;
    return this.next >= 0 ? this.next : this.committed;
  }

  metadata(member: string, offset: number): string {
    const leases: LeaseMark[] = [];
    const done: number[] = [];
    for (const e of this.entries) {
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
