import type { Readable } from 'node:stream';
import type { JsonValue } from '@lading/core';
import type { BlobStore, WriteResult } from '@lading/storage';
import type { ShardDescriptor } from './planner.js';

/** What a handler gets: the shard, streaming reads of its input, atomic writes of its outputs. */
export interface ShardContext {
  job: { id: string; name?: string | undefined };
  shard: ShardDescriptor;
  params: Record<string, JsonValue>;
  /** 0 on the first run of this shard. */
  attempt: number;
  /** The last checkpoint a previous attempt saved (resume from here), if any. */
  resumeFrom: JsonValue | undefined;
  /** Aborted when the worker drains or the task is cancelled: stop soon, outputs are discarded. */
  signal: AbortSignal;
  log: { info(message: string): void; warn(message: string): void; error(message: string): void };
  /** Stream the shard's raw byte range, or another range of the same input object. */
  read(range?: { start?: number; end?: number }): Promise<Readable>;
  /** The shard's lines (records), newline-aligned: the lines that start inside its range. `from` skips ahead. */
  lines(options?: { from?: number }): AsyncGenerator<{ line: string; offset: number }>;
  /** Write an output object under the job's output prefix; atomic (never seen half-written). */
  write(name: string, body: Readable | Uint8Array | string, options?: { contentType?: string }): Promise<WriteResult>;
  /** Full URI an output name will have. */
  outputUri(name: string): string;
  /** Report progress (e.g. bytes or records done). */
  progress(done: number, total?: number): void;
  /** Save resumable state with the lease; a retried shard gets it as `resumeFrom`. */
  checkpoint(state: JsonValue): void;
  /** The input and output stores, for anything beyond the helpers above. */
  stores: { input: BlobStore; output: BlobStore };
}

export type ShardHandler = (ctx: ShardContext) => unknown;

/**
 * Lines of [start, end) aligned on newlines, like Hadoop's line records: a shard that does not start
 * at 0 skips the partial line it starts in (it belongs to the previous shard) and reads past `end` to
 * finish the last line that starts inside it. `from` resumes at a byte offset that is a line start.
 */
export async function* alignedLines(
  open: (start: number, end: number) => Promise<Readable>,
  shard: Pick<ShardDescriptor, 'start' | 'end' | 'objectSize'>,
  from?: number,
): AsyncGenerator<{ line: string; offset: number }> {
  const begin = from !== undefined && from > shard.start ? from : shard.start;
  const resuming = begin !== shard.start;
  // Read one byte before the start, to know whether the start is a line start.
  const readFrom = begin > 0 && !resuming ? begin - 1 : begin;
  if (readFrom >= shard.objectSize) return;
  const stream = await open(readFrom, shard.objectSize);
  let pos = readFrom; // file offset of buf[0]
  let buf: Buffer = Buffer.alloc(0);
  let skipping = begin > 0 && !resuming; // until the first newline at or after begin-1
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let lineStart = 0;
      let nl = buf.indexOf(10);
      while (nl >= 0) {
        const offset = pos + lineStart;
        if (skipping) {
          skipping = false;
        } else {
          if (offset >= shard.end) return;
          yield { line: buf.toString('utf8', lineStart, nl > lineStart && buf[nl - 1] === 13 ? nl - 1 : nl), offset };
        }
        lineStart = nl + 1;
        nl = buf.indexOf(10, lineStart);
      }
      pos += lineStart;
      buf = buf.subarray(lineStart);
      if (!skipping && pos >= shard.end) return;
    }
    // Last line without a trailing newline.
    if (!skipping && buf.length > 0 && pos < shard.end) yield { line: buf.toString('utf8'), offset: pos };
  } finally {
    stream.destroy();
  }
}
