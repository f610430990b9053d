import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { LadingError } from './errors.js';

/**
 * The message envelope: the bill of lading. Small metadata travels on the queue; a large body travels
 * as a claim-check `ref` to an object in the store. This zod schema is the single source of the type.
 *
 * Versioning: `v` is the envelope's major version. A reader accepts every version up to its own and
 * rejects a newer one as `invalid` (it cannot know what a newer field means). Unknown extra fields at the
 * top level are kept as they are (so a message written by a newer minor release round-trips through
 * the hospital unchanged) but are never interpreted.
 */
export const ENVELOPE_VERSION = 1 as const;

export const TopicNameSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/, 'a topic name is 1-200 characters of letters, digits, ".", "_" or "-", starting with a letter or digit');

export const ClaimCheckRefSchema = z.object({
  /** Store URI of the payload object (e.g. `file:/mnt/lustre/proj/.lading/payloads/sha256/ab/abcd…`). */
  uri: z.string().min(1),
  size: z.number().int().nonnegative(),
  /** `sha256:<hex>` of the payload bytes. */
  checksum: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  contentType: z.string().default('application/json'),
});
export type ClaimCheckRef = z.infer<typeof ClaimCheckRefSchema>;

const epochMs = z.number().int().nonnegative();

export const EnvelopeSchema = z
  .looseObject({
    v: z.number().int().min(1),
    id: z.string().min(1).max(512),
    topic: TopicNameSchema,
    key: z.string().max(1024).optional(),
    type: z.string().max(256).optional(),
    /** Any JSON value (checked by serialising it on publish). */
    body: z.unknown().optional(),
    ref: ClaimCheckRefSchema.optional(),
    headers: z.record(z.string(), z.string()).default({}),
    /** How many times this message has been handed to a handler before (0 on first delivery). */
    attempt: z.number().int().nonnegative().default(0),
    publishedAt: epochMs,
    notBefore: epochMs.optional(),
    expiresAt: epochMs.optional(),
    traceparent: z.string().regex(/^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/).optional(),
  })
  .refine((e) => e.v <= ENVELOPE_VERSION, {
    message: `envelope version is newer than this lading understands (${ENVELOPE_VERSION}); upgrade the consumer`,
    path: ['v'],
  })
  .refine((e) => !(e.body !== undefined && e.ref !== undefined), { message: 'an envelope has a body or a ref, not both', path: ['ref'] });

export type Envelope = z.infer<typeof EnvelopeSchema>;
export type JsonValue = z.infer<ReturnType<typeof z.json>>;

/** What a publisher gives; the rest of the envelope is filled in on publish. */
export interface PublishInput {
  body?: unknown;
  id?: string;
  key?: string;
  type?: string;
  headers?: Record<string, string>;
  /** Deliver no earlier than this many ms from now. */
  delayMs?: number;
  /** Time to live: never handled after this many ms from now. */
  ttlMs?: number;
  traceparent?: string;
}

/**
 * A new message id: a UUIDv7 (RFC 9562), time-ordered, so ids generated together sit together in
 * id-keyed indexes instead of scattering writes over random pages.
 */
export function newMessageId(): string {
  // Built on randomUUID (v4), which draws from a cached pool of entropy: randomBytes(16) per id asked
  // OpenSSL for bytes every time, a tenth of the CPU of a publish. The v4's first 48 bits become the
  // millisecond time and its version nibble a 7; the variant and the other 74 random bits stay.
  const r = randomUUID(); // xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx
  const t = Date.now().toString(16).padStart(12, '0');
  return `${t.slice(0, 8)}-${t.slice(8, 12)}-7${r.slice(15)}`;
}

/**
 * JSON.stringify(env), reusing the body's JSON text when the caller has it already (the publish path
 * serialises the body once to measure it against the inline limit). Same fields; the body comes last.
 */
export function envelopeJson(env: Envelope, bodyText?: string): string {
  if (bodyText === undefined || env.body === undefined) return JSON.stringify(env);
  const { body: _body, ...rest } = env;
  const head = JSON.stringify(rest);
  return `${head.slice(0, -1)},"body":${bodyText}}`;
}

/** Describe a zod error as `field: problem; field: problem` for users. */
export function describeZodError(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

/**
 * Parse an envelope read back from a queue: a plain shape check for the common case (an envelope this
 * version wrote), the full zod validation for anything unusual — so bad input still gets zod's errors.
 */
export function readEnvelope(text: string): Envelope {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return parseEnvelope(text);
  }
  const e = value as Record<string, unknown> | null;
  if (
    e !== null && typeof e === 'object' && e.v === ENVELOPE_VERSION &&
    typeof e.id === 'string' && e.id.length > 0 && e.id.length <= 512 &&
    typeof e.topic === 'string' && typeof e.publishedAt === 'number' &&
    (e.attempt === undefined || typeof e.attempt === 'number') &&
    (e.key === undefined || typeof e.key === 'string') && (e.type === undefined || typeof e.type === 'string') &&
    e.headers !== null && typeof e.headers === 'object' && !Array.isArray(e.headers) && stringValues(e.headers as Record<string, unknown>) &&
    (e.notBefore === undefined || typeof e.notBefore === 'number') && (e.expiresAt === undefined || typeof e.expiresAt === 'number') &&
    e.ref === undefined && e.traceparent === undefined
  ) {
    if (e.attempt === undefined) e.attempt = 0;
    return e as Envelope;
  }
  return parseEnvelope(value);
}

/** Every own value a string (a loop, not Object.values(): no array per message read). */
function stringValues(record: Record<string, unknown>): boolean {
  for (const k in record) if (typeof record[k] !== 'string') return false;
  return true;
}

/** Parse untrusted text (from the wire, a file, a CLI argument) into an envelope, or throw BAD_MESSAGE. */
export function parseEnvelope(raw: string | unknown): Envelope {
  let value: unknown = raw;
  if (typeof raw === 'string') {
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw new LadingError('BAD_MESSAGE', `message is not valid JSON: ${(e as Error).message}`, {
        hint: 'a lading message is a JSON envelope; publish with the SDK or `lading publish`',
      });
    }
  }
  const result = EnvelopeSchema.safeParse(value);
  if (!result.success) {
    throw new LadingError('BAD_MESSAGE', `message is not a valid lading envelope: ${describeZodError(result.error)}`, {
      hint: 'see the envelope fields in the README (id, topic, body or ref, publishedAt, ...)',
    });
  }
  return result.data;
}
