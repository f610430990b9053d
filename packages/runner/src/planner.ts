import { createHash } from 'node:crypto';
import type { Sharding } from './spec.js';
import type { InputObject, StoreCache } from './inputs.js';

/** What one task describes: a byte range of one input object. Only this crosses into a worker thread. */
export interface ShardDescriptor {
  id: string;
  index: number;
  /** Input object URI (store URI + key). */
  input: string;
  storeUri: string;
  key: string;
  /** Byte range [start, end). */
  start: number;
  end: number;
  objectSize: number;
  etag: string;
  /** `newline`: the shard owns the lines that start inside [start, end). */
  align: 'none' | 'newline';
}

/**
 * Cuts inputs into shards with deterministic ids: the same job and the same input bytes (etag) give the
 * same ids, so a resubmit publishes the same task ids and idempotent publish drops the duplicates.
 */
export class ShardPlanner {
  private index = 0;
  constructor(private readonly jobId: string, private readonly sharding: Sharding, private readonly stores: StoreCache) {}

  async *shards(object: InputObject): AsyncGenerator<ShardDescriptor> {
    const s = this.sharding;
    if (s.by === 'file' || object.size === 0) {
      yield this.shard(object, 0, object.size, 'none');
    } else if (s.by === 'bytes') {
      for (let start = 0; start < object.size; start += s.size) yield this.shard(object, start, Math.min(object.size, start + s.size), s.align);
    } else {
      for await (const [start, end] of this.recordRanges(object, s.count)) yield this.shard(object, start, end, 'newline');
    }
  }

  private shard(o: InputObject, start: number, end: number, align: 'none' | 'newline'): ShardDescriptor {
    const id = createHash('sha256').update(`${this.jobId}\0${o.uri}\0${o.etag}\0${start}\0${end}`).digest('hex').slice(0, 20);
    return { id, index: this.index++, input: o.uri, storeUri: o.storeUri, key: o.key, start, end, objectSize: o.size, etag: o.etag, align };
  }

  /** One streaming pass over the object: the byte offset after every `count`-th newline. */
  private async *recordRanges(o: InputObject, count: number): AsyncGenerator<[number, number]> {
    const store = await this.stores.get(o.storeUri);
    const stream = await store.read(o.key);
    let pos = 0;
    let start = 0;
    let lines = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      let i = chunk.indexOf(10);
      while (i >= 0) {
        if (++lines === count) {
          const end = pos + i + 1;
          yield [start, end];
          start = end;
          lines = 0;
        }
        i = chunk.indexOf(10, i + 1);
      }
      pos += chunk.length;
    }
    if (start < pos) yield [start, pos];
  }
}
