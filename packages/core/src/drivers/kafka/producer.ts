// The one producer of a driver: idempotent (no duplicates from its own retries, order kept per partition),
// acks -1 (the write is on every in-sync replica before it resolves). Sends of one event-loop turn go out
// as one sendBatch.
import { Partitioners, type Kafka, type Message, type Producer, type RecordMetadata } from 'kafkajs';
import { backendError } from './client.js';

export interface OutRecord {
  topic: string;
  key: string | undefined;
  value: string | Buffer | null;
  headers?: Record<string, string>;
  partition?: number;
}

interface Pending {
  records: OutRecord[];
  resolve: (offsets: (number | undefined)[]) => void;
  reject: (e: unknown) => void;
}

export class Publisher {
  private producer: Producer | undefined;
  private connecting: Promise<Producer> | undefined;
  private pending: Pending[] = [];
  private scheduled = false;
  private closed = false;

  constructor(private readonly kafka: Kafka, private readonly brokers: string[]) {}

  private async connected(): Promise<Producer> {
    if (this.producer) return this.producer;
    this.connecting ??= (async () => {
      const p = this.kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: true });
      try {
        await p.connect();
      } catch (e) {
        await p.disconnect().catch(() => undefined);
        throw e;
      }
      this.producer = p;
      return p;
    })().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  /** Send records; resolves with the offset each got (when the broker says) once all are acknowledged. */
  send(records: OutRecord[]): Promise<(number | undefined)[]> {
    if (records.length === 0) return Promise.resolve([]);
    if (this.closed) return Promise.reject(backendError('publish', this.brokers, new Error('the queue driver is closed')));
    return new Promise((resolve, reject) => {
      this.pending.push({ records, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const batch = this.pending.splice(0);
    if (batch.length === 0) return;
    const byTopic = new Map<string, Message[]>();
    for (const p of batch) {
      for (const r of p.records) {
        // A record with a key and headers is a kafkajs message already (kafkajs reads key, value, headers
        // and partition; the extra `topic` is ignored): sent as it is, not copied.
        let m: Message;
        if (r.key !== undefined && r.headers !== undefined) m = r;
        else {
          m = { key: r.key ?? null, value: r.value, headers: r.headers ?? {} };
          if (r.partition !== undefined) m.partition = r.partition;
        }
        let list = byTopic.get(r.topic);
        if (!list) byTopic.set(r.topic, (list = []));
        list.push(m);
      }
    }
    let meta: RecordMetadata[];
    try {
      const producer = await this.connected();
      meta = await producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
    } catch (e) {
      const err = backendError(`publish to ${[...byTopic.keys()].join(', ')}`, this.brokers, e);
      for (const p of batch) p.reject(err);
      return;
    }
    // Offsets: kafkajs reports the base offset per topic-partition; records of one partition are in order.
    const base = new Map<string, number>();
    for (const m of meta) base.set(`${m.topicName}:${m.partition}`, Number(m.baseOffset ?? NaN));
    for (const p of batch) {
      p.resolve(p.records.map((r) => {
        if (r.partition === undefined) return undefined;
        const k = `${r.topic}:${r.partition}`;
        const b = base.get(k);
        if (b === undefined || Number.isNaN(b)) return undefined;
        base.set(k, b + 1);
        return b;
      }));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.pending.length) await this.flush();
    const p = this.producer;
    this.producer = undefined;
    await p?.disconnect().catch(() => undefined);
  }
}
