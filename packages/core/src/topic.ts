import { z } from 'zod';
import { TopicNameSchema } from './envelope.js';

/** A match on one field path: `type`, `key`, `headers.<name>`, `body.<a.b.c>`. */
export const MatchValueSchema = z.union([
  z.string(),
  z.number(),
  z.boolean(),
  z.array(z.union([z.string(), z.number(), z.boolean()])).min(1),
  z.object({ exists: z.boolean() }).strict(),
]);
export type MatchValue = z.infer<typeof MatchValueSchema>;

export const MatchSchema = z
  .record(z.string().regex(/^(type|key|id|headers\.[^.]+|body(\.[^.]+)+)$/, 'a match field is type, key, id, headers.<name> or body.<path>'), MatchValueSchema)
  .refine((m) => Object.keys(m).length > 0, 'a match needs at least one field');
export type Match = z.infer<typeof MatchSchema>;

/** Content-based routing rule on a topic: a message published to the topic that matches goes to `to` instead. */
export const RouteRuleSchema = z.object({ when: MatchSchema, to: TopicNameSchema }).strict();
export type RouteRule = z.infer<typeof RouteRuleSchema>;

export const BackoffSchema = z
  .object({
    /** Delay before the first retry. */
    initialMs: z.number().int().nonnegative().default(1000),
    multiplier: z.number().min(1).default(2),
    maxMs: z.number().int().nonnegative().default(300_000),
    /** Fraction of the delay that is randomised (0 = none, 1 = full jitter). */
    jitter: z.number().min(0).max(1).default(0.2),
  })
  .strict();
export type Backoff = z.infer<typeof BackoffSchema>;

/** Per-topic policy, stored with the topic and shared by every process that uses it. */
export const TopicPolicySchema = z
  .object({
    /** Deliveries before a failing message is admitted to the hospital. */
    maxAttempts: z.number().int().min(1).max(1000).default(5),
    backoff: BackoffSchema.default({ initialMs: 1000, multiplier: 2, maxMs: 300_000, jitter: 0.2 }),
    /** Default time to live of a message on this topic (none when absent). */
    ttlMs: z.number().int().positive().optional(),
    /** What happens to a message past its `expiresAt`. */
    onExpired: z.enum(['hospital', 'drop']).default('hospital'),
    /** Window of idempotent publish (same id on the topic is a no-op) and of consumer dedup. */
    dedupWindowMs: z.number().int().nonnegative().default(24 * 3600_000),
    /** How long a delivery stays leased without a heartbeat before it is handed to another consumer. */
    leaseMs: z.number().int().min(100).default(30_000),
    /** How long a message is kept while its topic has no consumer group yet (a group created later starts from the oldest one kept). Once every existing group is done with a message it is deleted. */
    retentionMs: z.number().int().positive().default(7 * 24 * 3600_000),
    /** Kafka: partitions of the topic. */
    partitions: z.number().int().min(1).max(10_000).default(1),
    routes: z.array(RouteRuleSchema).default([]),
  })
  .strict();
export type TopicPolicy = z.infer<typeof TopicPolicySchema>;
export type TopicPolicyInput = z.input<typeof TopicPolicySchema>;

export interface TopicInfo {
  name: string;
  policy: TopicPolicy;
  createdAt: number;
  groups: string[];
}

/** Read a dotted field of an envelope-like object: `type`, `headers.tenant`, `body.meta.kind`. */
export function fieldAt(message: { id?: string; type?: string | undefined; key?: string | undefined; headers?: Record<string, string>; body?: unknown }, path: string): unknown {
  const [head, ...rest] = path.split('.');
  let value: unknown = (message as Record<string, unknown>)[head!];
  for (const part of rest) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<string, unknown>)[part];
  }
  return value;
}

export function matches(message: Parameters<typeof fieldAt>[0], match: Match): boolean {
  for (const [path, want] of Object.entries(match)) {
    const got = fieldAt(message, path);
    if (Array.isArray(want)) {
      if (!want.some((w) => w === got)) return false;
    } else if (typeof want === 'object') {
      if ((got !== undefined) !== want.exists) return false;
    } else if (got !== want) return false;
  }
  return true;
}

/** Delay before retry number `attempt` (1-based): exponential, capped, with jitter. */
export function backoffDelay(backoff: Backoff, attempt: number, random: () => number = Math.random): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.multiplier ** Math.max(0, attempt - 1));
  const jitter = base * backoff.jitter;
  return Math.max(0, Math.round(base - jitter + random() * jitter * 2));
}
