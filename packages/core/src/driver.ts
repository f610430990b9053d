import type { Envelope, JsonValue } from './envelope.js';
import type { ErrorRecord } from './errors.js';
import type { TopicInfo, TopicPolicyInput } from './topic.js';

/** One failed attempt, as the hospital keeps it. */
export interface AttemptError extends ErrorRecord {
  /** 0-based delivery number that failed. */
  attempt: number;
  /** Worker identity: `host:pid` and, under Slurm, `slurm:<job>.<proc>`. */
  worker: string;
  host: string;
  /** Epoch ms. */
  at: number;
}

export type HospitalReason = 'failed' | 'expired' | 'invalid' | 'poison';
export type HospitalState = 'open' | 'retried' | 'ignored';

export interface HospitalRecord {
  /** Hospital record id (not the message id: one message can be admitted more than once). */
  hid: string;
  /** Message id, as published. */
  id: string;
  topic: string;
  group: string;
  reason: HospitalReason;
  state: HospitalState;
  /** The original envelope when it parsed; `raw` always holds the text as it was received. */
  envelope: Envelope | undefined;
  raw: string;
  errors: AttemptError[];
  admittedAt: number;
  resolvedAt?: number | undefined;
  /** What the resolving act said: `retried to <topic>`, an ignore note, ... */
  resolution?: string | undefined;
}

export interface HospitalFilter {
  /** Hospital record ids or message ids. */
  ids?: string[];
  topic?: string;
  group?: string;
  reason?: HospitalReason;
  /** Default `open`. `resolved` is retried or ignored; `any` matches every state. */
  state?: HospitalState | 'resolved' | 'any';
  /** Admitted at or after (epoch ms). */
  since?: number;
  until?: number;
  /** Substring of any attempt's error message or name (case-insensitive). */
  text?: string;
  /** Records of one runner job (header `lading-job`). */
  job?: string;
  limit?: number;
}

/** A leased message handed to a consumer. The lease must be acked, retried, extended or dead-lettered. */
export interface Delivery {
  topic: string;
  group: string;
  /** Message id (from the envelope when it parsed, else what the driver knows of it). */
  id: string;
  /** Opaque driver handle of this lease. */
  receipt: string;
  /** The envelope text as stored. */
  raw: string;
  /** Parsed envelope, or undefined with `invalid` saying why. */
  envelope: Envelope | undefined;
  invalid?: string | undefined;
  /** 0-based delivery number (how many times it was handed out before). */
  attempt: number;
  /** Errors of the earlier attempts. */
  errors: AttemptError[];
  /** Last checkpoint a handler saved with its lease, for resuming. */
  checkpoint: JsonValue | undefined;
  leaseUntil: number;
}

export interface PublishOutcome {
  id: string;
  topic: string;
  /** True when the id was already published on the topic inside the dedup window: nothing was written. */
  duplicate: boolean;
}

export interface FetchRequest {
  topic: string;
  group: string;
  consumer: string;
  max: number;
  leaseMs: number;
}

export interface GroupStats {
  topic: string;
  group: string;
  /** Ready now. */
  ready: number;
  /** Waiting for a retry delay or a notBefore. */
  delayed: number;
  /** Leased by a consumer right now. */
  leased: number;
  /** In the hospital, open. */
  hospital: number;
}

/**
 * The queue port. The embedded SQLite driver and the Kafka driver implement it; everything above it
 * (Queue, Consumer, Hospital, the runner) is written once against it.
 */
export interface QueueDriver {
  readonly kind: string;
  readonly uri: string;

  ensureTopic(name: string, policy?: TopicPolicyInput, options?: { update?: boolean }): Promise<TopicInfo>;
  getTopic(name: string): Promise<TopicInfo | undefined>;
  listTopics(): Promise<TopicInfo[]>;
  /** Register a consumer group on a topic. A new group starts from the oldest message the queue still holds. */
  ensureGroup(topic: string, group: string): Promise<void>;

  /** Publish envelopes. With `durable`, resolves once they survive a crash (fsync / acks=-1). */
  /**
   * `dedup[i] === false` says envelope i has a freshly generated id that cannot repeat: the driver may
   * skip idempotent-publish and consumer-dedup bookkeeping for it. `texts[i]`, when given, is envelope i
   * already serialised (equal to JSON.stringify of it, field order aside): a driver may store it as is.
   */
  publish(envelopes: Envelope[], options: { durable: boolean; dedup?: boolean[] | undefined; texts?: (string | undefined)[] | undefined }): Promise<PublishOutcome[]>;

  /** Lease up to `max` deliverable messages of a group, honouring visibility, TTL, per-key order and consumer dedup. */
  fetch(request: FetchRequest): Promise<Delivery[]>;
  /** Done: never delivered to this group again. False when the lease had been lost. */
  ack(delivery: Delivery): Promise<boolean>;
  /** Failed: hand it out again after `delayMs`, keeping the error in its history. */
  retry(delivery: Delivery, options: { delayMs: number; error: AttemptError; checkpoint?: JsonValue | undefined }): Promise<boolean>;
  /** Heartbeat: keep the lease `leaseMs` longer and store a checkpoint with it. False when it had been lost. */
  extend(delivery: Delivery, options: { leaseMs: number; checkpoint?: JsonValue | undefined }): Promise<boolean>;
  /** Hand back without counting an attempt (shutdown, drain): visible again at once. */
  release(delivery: Delivery): Promise<boolean>;
  /** Admit to the hospital, removing it from the group's queue in one step. */
  deadLetter(delivery: Delivery, options: { reason: HospitalReason; error?: AttemptError | undefined }): Promise<HospitalRecord>;

  hospitalList(filter: HospitalFilter): Promise<HospitalRecord[]>;
  /** Re-enqueue open records: to their own group with attempts reset, or as new messages to `toTopic`. */
  hospitalRetry(hid: string, options: { toTopic?: string | undefined; note?: string | undefined }): Promise<HospitalRecord | undefined>;
  hospitalIgnore(hid: string, note?: string): Promise<HospitalRecord | undefined>;
  hospitalPurge(hid: string): Promise<boolean>;

  /** Claim-check payload URIs no group needs any more; the caller deletes them and confirms. */
  releasedPayloads(limit: number): Promise<string[]>;
  confirmPayloadsDeleted(uris: string[]): Promise<void>;

  /**
   * Optional: this process stops consuming `topic` as `group` (a Consumer closed after its in-flight work
   * settled). Drivers with group membership (Kafka) leave the group so its partitions move to the other
   * members at once; drivers without it (SQLite) need not implement it.
   */
  leaveGroup?(topic: string, group: string): Promise<void>;

  /** Per-group counts; with `job`, only that runner job's messages (header `lading-job`). */
  stats(topic?: string, options?: { job?: string; group?: string }): Promise<GroupStats[]>;
  close(): Promise<void>;
}
