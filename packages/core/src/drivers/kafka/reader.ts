// Reads a topic from given offsets up to its high watermark, outside any consumer group (no rebalance,
// no commit). Used for the state topics (topic policies, groups, the hospital) and for stats.
import type { Cluster, Kafka } from 'kafkajs';
import { createCluster } from './client.js';
import { toRecord, type KafkaRecord } from './codec.js';

interface FetchPartition {
  partition: number;
  errorCode: number;
  highWatermark: string;
  messages: { offset: string; key?: Buffer | null; value: Buffer | null; headers?: Record<string, Buffer | string | (Buffer | string)[] | undefined>; timestamp: string }[];
}
interface FetchResponse {
  responses: { topicName: string; partitions: FetchPartition[] }[];
}
interface FetchingBroker {
  fetch(request: Record<string, unknown>): Promise<FetchResponse>;
}

export class TopicReader {
  private cluster: Cluster | undefined;
  private connecting: Promise<Cluster> | undefined;

  constructor(private readonly kafka: Kafka) {}

  private async connected(): Promise<Cluster> {
    if (this.cluster?.isConnected()) return this.cluster;
    this.connecting ??= (async () => {
      const c = this.cluster ?? createCluster(this.kafka);
      this.cluster = c;
      await c.connect();
      return c;
    })().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  /** Partition ids of a topic (creating it when the brokers auto-create topics). */
  async partitions(topic: string): Promise<number[]> {
    const c = await this.connected();
    await c.addTargetTopic(topic);
    let meta = c.findTopicPartitionMetadata(topic);
    if (meta.length === 0) {
      await c.refreshMetadata();
      meta = c.findTopicPartitionMetadata(topic);
    }
    return meta.map((m) => m.partitionId).sort((a, b) => a - b);
  }

  /**
   * Records of `topic` from `from` (per partition; missing = 0) up to the high watermark seen by the first
   * fetch, at most `limit` per partition. Returns the records and the next offset per partition.
   */
  async read(topic: string, from: Map<number, number>, options: { limit?: number; partitions?: number[] } = {}): Promise<{ records: KafkaRecord[]; next: Map<number, number>; high: Map<number, number> }> {
    const c = await this.connected();
    const parts = options.partitions ?? (await this.partitions(topic));
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const next = new Map<number, number>(parts.map((p) => [p, from.get(p) ?? 0]));
    const high = new Map<number, number>();
    const taken = new Map<number, number>();
    const records: KafkaRecord[] = [];
    let open = [...parts];
    for (let round = 0; open.length > 0 && round < 100_000; round++) {
      const byLeader = c.findLeaderForPartitions(topic, open);
      const results = await Promise.all(Object.entries(byLeader).map(async ([leader, ps]) => {
        const broker = (await c.findBroker({ nodeId: leader })) as unknown as FetchingBroker;
        return broker.fetch({
          replicaId: -1, isolationLevel: 1, maxWaitTime: 0, minBytes: 1, maxBytes: 16 << 20,
          topics: [{ topic, partitions: ps.map((p) => ({ partition: p, fetchOffset: String(next.get(p) ?? 0), maxBytes: 4 << 20 })) }],
        });
      }));
      const stillOpen: number[] = [];
      for (const res of results) {
        for (const t of res.responses) {
          for (const p of t.partitions) {
            const hw = Number(p.highWatermark);
            if (!high.has(p.partition)) high.set(p.partition, hw);
            const target = high.get(p.partition)!;
            let pos = next.get(p.partition) ?? 0;
            for (const m of p.messages) {
              const off = Number(m.offset);
              if (off < pos || off >= target) continue;
              if ((taken.get(p.partition) ?? 0) >= limit) break;
              records.push(toRecord(topic, p.partition, m));
              taken.set(p.partition, (taken.get(p.partition) ?? 0) + 1);
              pos = off + 1;
            }
            // Compacted or deleted ranges: when a fetch returns nothing below the target, the log starts later.
            if (p.messages.length > 0) pos = Math.max(pos, Math.min(target, Number(p.messages[p.messages.length - 1]!.offset) + 1));
            next.set(p.partition, pos);
            if (pos < target && (taken.get(p.partition) ?? 0) < limit && p.messages.length > 0) stillOpen.push(p.partition);
            else if (pos < target && p.messages.length === 0 && p.errorCode === 0) next.set(p.partition, target);
          }
        }
      }
      open = stillOpen;
    }
    return { records, next, high };
  }

  async close(): Promise<void> {
    const c = this.cluster;
    this.cluster = undefined;
    await c?.disconnect().catch(() => undefined);
  }
}
