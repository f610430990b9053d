// @ts-check
/**
 * lading shard handler: checksum one byte range of a large file.
 *
 * The job cuts the file into fixed byte ranges (`sharding: { by: bytes, size: 8MiB, align: none }`);
 * each shard streams its range with `ctx.read()` — the worker thread opens the store itself, only the
 * descriptor (URI, start, end) travels on the queue — and computes, in bounded memory:
 *   sha256 of the range, a byte histogram (256 counts), the number of newlines.
 * It writes `<job-id>/range-<index>.json` under the job's output prefix; run.mjs combines them.
 *
 * Nothing here depends on the range being small: a 1 GiB range streams in the same memory as 8 MiB.
 */
import { createHash } from 'node:crypto';

/** @param {import('@lading/runner').ShardContext} ctx */
export default async function checksumRange(ctx) {
  const { shard } = ctx;
  const size = shard.end - shard.start;
  const hash = createHash('sha256');
  const histogram = new Float64Array(256); // Float64: exact counts up to 2^53, for ranges of any size
  let bytes = 0;
  let reported = 0;
  const stream = await ctx.read(); // exactly [shard.start, shard.end)
  for await (const chunk of /** @type {AsyncIterable<Buffer>} */ (stream)) {
    if (ctx.signal.aborted) throw ctx.signal.reason; // draining: hand the shard back
    hash.update(chunk);
    for (let i = 0; i < chunk.length; i++) histogram[chunk[i]]++;
    bytes += chunk.length;
    if (bytes - reported >= 4 << 20) {
      ctx.progress(bytes, size);
      reported = bytes;
    }
  }
  if (bytes !== size) throw new Error(`range ${shard.start}-${shard.end} of ${shard.input}: read ${bytes} bytes, expected ${size} (did the file change?)`);
  const result = {
    input: shard.input,
    etag: shard.etag,
    index: shard.index,
    start: shard.start,
    end: shard.end,
    bytes,
    sha256: hash.digest('hex'),
    lines: histogram[10],
    histogram: Array.from(histogram),
  };
  await ctx.write(`${ctx.job.id}/range-${String(shard.index).padStart(6, '0')}.json`, JSON.stringify(result), { contentType: 'application/json' });
  ctx.progress(size, size);
  return { index: shard.index, sha256: result.sha256 };
}
