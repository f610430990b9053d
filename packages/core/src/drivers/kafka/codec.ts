// How lading messages look on Kafka: key = ordering key (or the message id), value = envelope JSON,
// a few `lading-*` headers. Retry records carry the delivery state that SQLite keeps in a row.
import type { AttemptError } from '../../driver.js';
import { ENVELOPE_VERSION, parseEnvelope, type Envelope, type JsonValue } from '../../envelope.js';

/** One record as the driver handles it, whichever kafkajs API read it. */
export interface KafkaRecord {
  topic: string;
  partition: number;
  offset: number;
  key: string | undefined;
  value: string | null;
  headers: Record<string, string>;
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
  /**
   * `0` on a message whose id the Queue generated (it cannot be published again): no consumer-dedup
   * bookkeeping for it. Absent (caller-given ids, other producers): dedup as usual.
   */
  dedup: 'lading-dedup',
} as const;

type RawHeaders = Record<string, Buffer | string | (Buffer | string)[] | undefined> | undefined;

export function decodeHeaders(raw: RawHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const k in raw) {
    const v = raw[k];
    if (v === undefined) continue;
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (last !== undefined) out[k] = last.toString();
  }
  return out;
}

type RawMessage = { offset: string; key?: Buffer | null; value: Buffer | null; headers?: RawHeaders };

/**
 * A fetched record that converts its key, value and headers from kafkajs' buffers only when read: a member
 * buffers thousands of records per partition, and most of them are read once, when handed out.
 *
 * The common record (value, key and headers `lading-id` / `lading-dedup` only, all views of one fetch
 * response) keeps no kafkajs object at all: only byte ranges into one view of that response, shared by the
 * records of a batch. Buffered records outlive a few young-generation collections, and the garbage collector
 * copies every object that survives one: kafkajs' message with its key, value, headers and header buffers,
 * offset and timestamp strings was eight objects per record, now there is none. Anything else keeps
 * kafkajs' message as it is.
 */
class FetchedRecord implements KafkaRecord {
  readonly offset: number;
  /** False for a record its publisher marked as not needing consumer dedup (a generated id, H.dedup). */
  readonly dedup: boolean;
  private readonly m: RawMessage | undefined;
  private readonly src: Buffer | undefined;
  /** Byte ranges in `src` (start -1: null): value, key, id header (start -1: absent). */
  private readonly vs: number;
  private readonly ve: number;
  private readonly ks: number;
  private readonly ke: number;
  private readonly is: number;
  private readonly ie: number;
  private k: string | null | undefined;
  private v: string | null | undefined;
  private h: Record<string, string> | undefined;

  constructor(readonly topic: string, readonly partition: number, m: RawMessage, src: Buffer | undefined) {
    this.offset = Number(m.offset);
    this.vs = this.ve = this.ks = this.ke = this.is = this.ie = -1;
    if (src === undefined) {
      this.m = m;
      this.src = undefined;
      const d = m.headers?.[H.dedup];
      const last = Array.isArray(d) ? d[d.length - 1] : d;
      this.dedup = last === undefined || last.toString() !== '0';
      return;
    }
    // compactView() checked that every buffer below is a view of `src`'s memory.
    this.m = undefined;
    this.src = src;
    const base = src.byteOffset;
    if (m.value) { this.vs = m.value.byteOffset - base; this.ve = this.vs + m.value.length; }
    if (m.key) { this.ks = m.key.byteOffset - base; this.ke = this.ks + m.key.length; }
    const id = m.headers?.[H.id] as Buffer | undefined;
    if (id) { this.is = id.byteOffset - base; this.ie = this.is + id.length; }
    this.dedup = m.headers?.[H.dedup] === undefined; // compactView let only the value '0' through
  }

  get key(): string | undefined {
    if (this.k === undefined) this.k = this.m ? (this.m.key ? this.m.key.toString() : null) : this.ks < 0 ? null : this.src!.toString('utf8', this.ks, this.ke);
    return this.k ?? undefined;
  }

  get value(): string | null {
    if (this.v === undefined) this.v = this.m ? (this.m.value ? this.m.value.toString() : null) : this.vs < 0 ? null : this.src!.toString('utf8', this.vs, this.ve);
    return this.v;
  }

  get headers(): Record<string, string> {
    if (this.h) return this.h;
    if (this.m) return (this.h = decodeHeaders(this.m.headers));
    const h: Record<string, string> = {};
    if (this.is >= 0) h[H.id] = this.src!.toString('utf8', this.is, this.ie);
    if (!this.dedup) h[H.dedup] = '0';
    return (this.h = h);
  }
}

/** False for a record its publisher marked as not needing consumer dedup (a generated id). */
export function needsDedup(r: KafkaRecord): boolean {
  return r instanceof FetchedRecord ? r.dedup : r.headers[H.dedup] !== '0';
}

/**
 * A view over the whole memory of `m`'s buffers when the record fits the compact form (see FetchedRecord):
 * `last` is reused while consecutive records share that memory (the records of one fetch response do).
 */
function compactView(m: RawMessage, last: Buffer | undefined): Buffer | undefined {
  const ab = m.value ? m.value.buffer : m.key ? m.key.buffer : undefined;
  if (ab === undefined) return undefined;
  if (m.value && m.value.buffer !== ab) return undefined;
  if (m.key && m.key.buffer !== ab) return undefined;
  const h = m.headers;
  if (h) {
    for (const name in h) {
      if (name !== H.id && name !== H.dedup) return undefined;
      const v = h[name];
      if (!Buffer.isBuffer(v) || v.buffer !== ab) return undefined;
      if (name === H.dedup && !(v.length === 1 && v[0] === 48 /* '0' */)) return undefined; // `headers` rebuilds only '0'
    }
  }
  return last !== undefined && last.buffer === ab ? last : Buffer.from(ab);
}

export function toRecord(topic: string, partition: number, m: RawMessage): KafkaRecord {
  return new FetchedRecord(topic, partition, m, undefined);
}

/** The records of one fetched batch, in the compact form where possible. */
export function toRecords(topic: string, partition: number, messages: RawMessage[]): KafkaRecord[] {
  const out: KafkaRecord[] = new Array(messages.length);
  let view: Buffer | undefined;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const v = compactView(m, view);
    if (v !== undefined) view = v;
    out[i] = new FetchedRecord(topic, partition, m, v);
  }
  return out;
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
  let loose: unknown;
  try {
    loose = JSON.parse(raw);
  } catch {
    loose = undefined;
  }
  try {
    envelope = loose !== undefined && isPlainEnvelope(loose) ? loose : parseEnvelope(loose === undefined ? raw : loose);
  } catch (e) {
    invalid = (e as Error).message;
  }
  let id = envelope?.id ?? r.headers[H.id];
  if (!id && loose !== null && typeof loose === 'object' && typeof (loose as { id?: unknown }).id === 'string' && (loose as { id: string }).id) {
    id = (loose as { id: string }).id;
  }
  return { id: id ?? r.key ?? `${r.topic}/${r.partition}/${r.offset}`, raw, envelope, invalid, key: envelope?.key };
}

const TOPIC_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const epochMs = (x: unknown): boolean => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/**
 * The common case of a record read back from Kafka, checked by hand instead of by zod (a per-record cost
 * on the consume path): true only when `EnvelopeSchema` would accept the value and return the same fields.
 * Anything else (a claim-check ref, a missing `headers`, a newer version, any doubt) goes to zod, which
 * also gives the error text of an invalid message. Fills in `attempt` (zod's default) when absent.
 */
function isPlainEnvelope(x: unknown): x is Envelope {
  if (x === null || typeof x !== 'object' || Array.isArray(x)) return false;
  const e = x as Record<string, unknown>;
  if (e.v !== ENVELOPE_VERSION) return false;
  if (typeof e.id !== 'string' || e.id.length === 0 || e.id.length > 512) return false;
  if (typeof e.topic !== 'string' || !TOPIC_NAME.test(e.topic)) return false;
  if (e.key !== undefined && (typeof e.key !== 'string' || e.key.length > 1024)) return false;
  if (e.type !== undefined && (typeof e.type !== 'string' || e.type.length > 256)) return false;
  if (e.ref !== undefined) return false;
  const h = e.headers;
  if (h === null || typeof h !== 'object' || Array.isArray(h)) return false;
  for (const k in h) if (typeof (h as Record<string, unknown>)[k] !== 'string') return false;
  if (e.attempt !== undefined && !epochMs(e.attempt)) return false;
  if (!epochMs(e.publishedAt)) return false;
  if (e.notBefore !== undefined && !epochMs(e.notBefore)) return false;
  if (e.expiresAt !== undefined && !epochMs(e.expiresAt)) return false;
  if (e.traceparent !== undefined && (typeof e.traceparent !== 'string' || !TRACEPARENT.test(e.traceparent))) return false;
  if (e.attempt === undefined) e.attempt = 0;
  return true;
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
