// What a member writes next to each committed offset (the OffsetCommit `metadata` string): the leases it
// holds beyond the committed offset and the offsets it finished beyond it. The next owner of the partition
// (after a rebalance or a crash) reads it back: a live lease is waited for, an expired one counts as a
// failed attempt (poison detection), a finished offset is not handled again.
import type { JsonValue } from '../../envelope.js';

export interface LeaseMark {
  offset: number;
  /** Delivery number of the lease. */
  attempt: number;
  /** Epoch ms until which the holder promised to renew it. */
  until: number;
  /** Lease length (the holder renews it before `until`, every third of it). */
  ms: number;
  /** Worker label of the holder. */
  worker: string;
  /** Earlier leases of this message that ran out: [attempt, worker]. */
  expired: [number, string][];
  checkpoint?: JsonValue | undefined;
}

export interface CommitMetadata {
  /** Member instance that wrote it. */
  member: string;
  leases: LeaseMark[];
  done: number[];
}

/** Kafka's default offset.metadata.max.bytes is 4096. */
const MAX = 3800;

export function encodeMetadata(committed: number, m: CommitMetadata): string {
  const lease = (l: LeaseMark, full: boolean) => {
    const out: JsonValue[] = [l.offset - committed, l.attempt, l.until, l.worker, l.ms];
    if (full) {
      out.push(l.expired.slice(-8) as unknown as JsonValue);
      if (l.checkpoint !== undefined) out.push(l.checkpoint);
    }
    return out;
  };
  const build = (full: boolean, leases: LeaseMark[], done: number[]) =>
    JSON.stringify({ v: 1, i: m.member, l: leases.map((l) => lease(l, full)), d: done.map((o) => o - committed) });
  let text = build(true, m.leases, m.done);
  if (text.length <= MAX) return text;
  text = build(false, m.leases, m.done); // without histories and checkpoints
  if (text.length <= MAX) return text;
  // Too much to say: keep the leases (they prevent double handling), drop finished offsets (redelivered).
  let leases = m.leases;
  while (leases.length > 0 && (text = build(false, leases, [])).length > MAX) leases = leases.slice(0, Math.floor(leases.length / 2));
  return build(false, leases, []);
}

export function decodeMetadata(committed: number, text: string | null | undefined): CommitMetadata | undefined {
  if (!text) return undefined;
  try {
    const v = JSON.parse(text) as { v?: number; i?: string; l?: unknown[][]; d?: number[] };
    if (v.v !== 1 || typeof v.i !== 'string') return undefined;
    const leases: LeaseMark[] = (v.l ?? []).map((e) => ({
      offset: committed + Number(e[0]),
      attempt: Number(e[1]) || 0,
      until: Number(e[2]) || 0,
      worker: String(e[3] ?? 'unknown'),
      ms: Number(e[4]) || 0,
      expired: Array.isArray(e[5]) ? (e[5] as [number, string][]) : [],
      checkpoint: e.length > 6 ? (e[6] as JsonValue) : undefined,
    }));
    return { member: v.i, leases, done: (v.d ?? []).map((d) => committed + Number(d)) };
  } catch {
    return undefined;
  }
}
