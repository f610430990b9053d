// Shared state without a node-local database: small compacted topics, read to their high watermark and
// folded in memory (a KTable in Kafka Streams terms). Keyed records, the latest per key wins, null = deleted.
import type { HospitalRecord } from '../../driver.js';
import type { KafkaRecord } from './codec.js';
import type { TopicReader } from './reader.js';

export class StateTopic<V> {
  private readonly positions = new Map<number, number>();
  readonly values = new Map<string, V>();
  private syncing: Promise<void> | undefined;
  private lastSync = 0;

  constructor(
    readonly topic: string,
    private readonly reader: TopicReader,
    private readonly parse: (value: string) => V | undefined,
  ) {}

  /** Catch up with the topic, unless the last catch-up started less than `maxAgeMs` ago. */
  async sync(maxAgeMs = 0): Promise<void> {
    if (maxAgeMs > 0 && Date.now() - this.lastSync < maxAgeMs && !this.syncing) return;
    if (this.syncing) {
      // A sync that started before the caller's write may miss it: wait for it, then run one more.
      await this.syncing;
      if (maxAgeMs > 0) return;
    }
    this.syncing = this.run().finally(() => { this.syncing = undefined; });
    await this.syncing;
  }

  private async run(): Promise<void> {
    const started = Date.now();
    const { records, next } = await this.reader.read(this.topic, this.positions);
    for (const r of records) this.apply(r);
    for (const [p, o] of next) this.positions.set(p, o);
    this.lastSync = started;
  }

  private apply(r: KafkaRecord): void {
    if (r.key === undefined) return;
    if (r.value === null) {
      this.values.delete(r.key);
      return;
    }
    const v = this.parse(r.value);
    if (v !== undefined) this.values.set(r.key, v);
  }

  /** A write of this process, applied at once (the next sync reads it again, with the same result). */
  local(key: string, value: V | undefined): void {
    if (value === undefined) this.values.delete(key);
    else this.values.set(key, value);
  }
}

export interface TopicEntry {
  kind: 'topic';
  name: string;
  policy: unknown;
  createdAt: number;
}
export interface GroupEntry {
  kind: 'group';
  topic: string;
  group: string;
  createdAt: number;
}
export type RegistryEntry = TopicEntry | GroupEntry;

export const topicKey = (name: string) => `topic:${name}`;
export const groupKey = (topic: string, group: string) => `group:${topic}/${group}`;

export function parseRegistry(value: string): RegistryEntry | undefined {
  try {
    const v = JSON.parse(value) as RegistryEntry;
    return v.kind === 'topic' || v.kind === 'group' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A hospital record as stored: the port's record plus where the message came from on Kafka. */
export interface StoredHospitalRecord extends HospitalRecord {
  job?: string | undefined;
  origin?: { partition: number; offset: number; kafkaKey: string | undefined } | undefined;
}

export function parseHospital(value: string): StoredHospitalRecord | undefined {
  try {
    const v = JSON.parse(value) as StoredHospitalRecord;
    return typeof v.hid === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
