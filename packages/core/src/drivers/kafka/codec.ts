// How lading messages look on Kafka: key = ordering key (or the message id), value = envelope JSON,
// a few `lading-*` headers. Retry records carry the delivery state that SQLite keeps in a row.
import type { AttemptError } from '../../driver.js';
import { parseEnvelope, type Envelope, type JsonValue } from '../../envelope.js';

/** One record as the driver handles it, whichever kafkajs API read it. */
export interface KafkaRecord {
  topic: string;
  partition: number;
  offset: number;
  key: string | undefined;
  value: string | null;
  headers: Record<string, string>;
  timestamp: number;
}

export const H = {
  id: 'lading-id',
  /** Retry topic: the group the record is for (other groups skip it). */
  group: 'lading-group',
  /** Retry topic: epoch ms before which the record is not handed out. */
  due: 'lading-due',
  /** Retry topic: the delivery number of the next attempt. */
  attempt: 'lading-attempt',
  /** Retry topic: JSON AttemptError[] of the earlier attempts. */
  errors: 'lading-errors',
  checkpoint: 'lading-checkpoint',
  /** Retry topic: a token the producing member uses to keep the key held until the record comes back. */
  token: 'lading-token',
  /** Retry topic: `<partition>:<offset>` of the original record. */
  origin: 'lading-origin',
} as const;

type RawHeaders = Record<string, Buffer | string | (Buffer | string)[] | undefined> | undefined;

export function decodeHeaders(raw: RawHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined) continue;
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (last !== undefined) out[k] = last.toString();
  }
  return out;
}

export function toRecord(topic: string, partition: number, m: { offset: string; key?: Buffer | null; value: Buffer | null; headers?: RawHeaders; timestamp: string }): KafkaRecord {
  return {
    topic,
    partition,
    offset: Number(m.offset),
    key: m.key ? m.key.toString() : undefined,
    value: m.value ? m.value.toString() : null,
    headers: decodeHeaders(m.headers),
    timestamp: Number(m.timestamp),
  };
}

/** The Kafka key of an envelope: its ordering key, else its id (one id always lands in one partition). */
export function kafkaKey(env: Envelope): string {
  return env.key ?? env.id;
}

export interface Decoded {
  id: string;
  raw: string;
  envelope: Envelope | undefined;
  invalid: string | undefined;
  /** Ordering key (only when the envelope has one). */
  key: string | undefined;
}

export function decodeValue(r: KafkaRecord): Decoded {
  const raw = r.value ?? '';
  let envelope: Envelope | undefined;
  let invalid: string | undefined;
  try {
    envelope = parseEnvelope(raw);
  } catch (e) {
    invalid = (e as Error).message;
  }
  let id = envelope?.id ?? r.headers[H.id];
  if (!id) {
    try {
      const loose = JSON.parse(raw) as { id?: unknown };
      if (typeof loose.id === 'string' && loose.id) id = loose.id;
    } catch { /* not JSON */ }
  }
  return { id: id ?? r.key ?? `${r.topic}/${r.partition}/${r.offset}`, raw, envelope, invalid, key: envelope?.key };
}

export function jsonHeader<T>(value: string | undefined, fallback: T): T {
  if (value === undefined) return fallback;
  try {
    return JSON.parse(value) as T;
  } catch {
    return fallback;
  }
}

export interface RetryState {
  group: string;
  due: number;
  attempt: number;
  errors: AttemptError[];
  checkpoint: JsonValue | undefined;
  token: string | undefined;
}

export function retryHeaders(s: RetryState, origin: string): Record<string, string> {
  const h: Record<string, string> = {
    [H.group]: s.group,
    [H.due]: String(s.due),
    [H.attempt]: String(s.attempt),
    [H.errors]: JSON.stringify(s.errors),
    [H.origin]: origin,
  };
  if (s.checkpoint !== undefined) h[H.checkpoint] = JSON.stringify(s.checkpoint);
  if (s.token) h[H.token] = s.token;
  return h;
}

export function readRetryState(r: KafkaRecord): RetryState {
  return {
    group: r.headers[H.group] ?? '',
    due: Number(r.headers[H.due] ?? 0) || 0,
    attempt: Number(r.headers[H.attempt] ?? 0) || 0,
    errors: jsonHeader<AttemptError[]>(r.headers[H.errors], []),
    checkpoint: jsonHeader<JsonValue | undefined>(r.headers[H.checkpoint], undefined),
    token: r.headers[H.token],
  };
}
