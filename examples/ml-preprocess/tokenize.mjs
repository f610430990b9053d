// @ts-check
/**
 * lading shard handler: clean + tokenize one shard of a JSONL text corpus.
 *
 * Runs inside a lading worker thread, once per shard (a newline-aligned byte range of one input file).
 * For every line: JSON.parse (malformed lines are counted and skipped, never fatal), normalise the
 * `text` field (NFKC, lowercase, control characters out, whitespace collapsed), tokenize it (words and
 * punctuation, no model download) and drop exact duplicates within the shard (by a hash of the
 * normalised text).
 *
 * Outputs, under the job's output prefix (atomic writes: never seen half-written):
 *   <shard-id>.jsonl       one {"id", "h", "tokens"} per kept record (h: content hash, for a global dedup later)
 *   <shard-id>.stats.json  counts, the shard's vocabulary (token -> count), a few malformed samples
 *
 * Long shards resume: every `checkpointEvery` records the records so far go to a part object and the
 * byte offset reached is saved with `ctx.checkpoint`; a retried shard (worker killed, node lost)
 * continues from there instead of from the start.
 *
 * Params (job spec `params`): checkpointEvery (default 1000), textField (default "text"),
 * idField (default "id"), crashOnce (testing: fail shard 0 once after its first checkpoint).
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';

/** @typedef {import('@lading/runner').ShardContext} ShardContext */

/**
 * @typedef {object} Counts
 * @property {number} recordsIn   non-blank lines seen
 * @property {number} malformed   not JSON, or no string text field
 * @property {number} empty       text empty after normalisation
 * @property {number} duplicates  same normalised text as an earlier record of this shard
 * @property {number} recordsOut  records written
 * @property {number} tokens      tokens written
 */

// Control characters except tab / newline / carriage return (those become spaces below).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200d\ufeff]/g;
const SPACE = /\s+/gu;
/** A word (letters / digits, with inner apostrophes: don't, l'eau) or one punctuation / symbol character. */
const TOKEN = /[\p{L}\p{N}]+(?:['’][\p{L}\p{N}]+)*|[^\s\p{L}\p{N}]/gu;

/** Normalise text for training: NFKC, lowercase, no control characters, single spaces, trimmed. @param {string} text */
export function normalise(text) {
  return text.normalize('NFKC').toLowerCase().replace(CONTROL, '').replace(SPACE, ' ').trim();
}

/** Split normalised text into word and punctuation tokens. @param {string} text @returns {string[]} */
export function tokenize(text) {
  return text.match(TOKEN) ?? [];
}

/** 64-bit content hash (hex) of normalised text: the dedup key. @param {string} text */
export function contentHash(text) {
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}

/**
 * Parse and clean one JSONL line.
 * @param {string} line
 * @returns {{ id: unknown, text: string } | { reason: string }} the record, or why the line is malformed
 */
export function parseRecord(line, textField = 'text', idField = 'id') {
  let value;
  try {
    value = JSON.parse(line);
  } catch (e) {
    return { reason: `not JSON: ${/** @type {Error} */ (e).message}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { reason: 'not a JSON object' };
  const text = value[textField];
  if (typeof text !== 'string') return { reason: `field "${textField}" is ${text === undefined ? 'missing' : `a ${typeof text}`}` };
  return { id: value[idField] ?? null, text: normalise(text) };
}

/** @param {ShardContext} ctx */
export default async function tokenizeShard(ctx) {
  const every = Number(ctx.params.checkpointEvery ?? 1000);
  const textField = String(ctx.params.textField ?? 'text');
  const idField = String(ctx.params.idField ?? 'id');
  const id = ctx.shard.id;
  const partKey = (/** @type {number} */ n) => `_parts/${id}/${String(n).padStart(5, '0')}.jsonl`;
  const out = ctx.stores.output;

  /** @type {Counts} */
  let counts = { recordsIn: 0, malformed: 0, empty: 0, duplicates: 0, recordsOut: 0, tokens: 0 };
  /** @type {Map<string, number>} */
  const vocab = new Map();
  /** @type {Set<string>} */
  const seen = new Set();
  /** @type {{ offset: number, reason: string }[]} */
  const malformedSamples = [];
  let parts = 0;
  let from;

  // Resume: the checkpoint says which parts are written and where in the input they end.
  const resume = /** @type {any} */ (ctx.resumeFrom);
  if (resume && typeof resume.offset === 'number') {
    try {
      for (let n = 0; n < resume.parts; n++) {
        for await (const line of linesOf(await out.read(partKey(n)))) {
          const r = JSON.parse(line);
          seen.add(r.h);
          for (const t of r.tokens) vocab.set(t, (vocab.get(t) ?? 0) + 1);
        }
      }
      ({ counts } = resume);
      parts = resume.parts;
      from = resume.offset;
      malformedSamples.push(...(resume.malformedSamples ?? []));
      ctx.log.info(`resuming shard ${id} at byte ${from} (${parts} part(s), ${counts.recordsOut} records already written)`);
    } catch (e) {
      // A part is missing or unreadable: start the shard over, from its first byte.
      ctx.log.warn(`cannot resume shard ${id} (${/** @type {Error} */ (e).message}); starting over`);
      seen.clear();
      vocab.clear();
      counts = { recordsIn: 0, malformed: 0, empty: 0, duplicates: 0, recordsOut: 0, tokens: 0 };
      parts = 0;
      from = undefined;
    }
  }

  /** @type {string[]} */
  let buffer = []; // output lines since the last part
  let sinceCheckpoint = 0;
  const flush = async (/** @type {number} */ offset) => {
    await out.write(partKey(parts), buffer.join(''), { contentType: 'application/x-ndjson' });
    parts++;
    buffer = [];
    sinceCheckpoint = 0;
    ctx.checkpoint({ offset, parts, counts, malformedSamples });
    if (ctx.params.crashOnce && ctx.attempt === 0 && ctx.shard.index === 0) {
      throw new Error(`simulated crash in shard ${id} after its checkpoint at byte ${offset} (crashOnce)`);
    }
  };

  const size = ctx.shard.end - ctx.shard.start;
  for await (const { line, offset } of ctx.lines(from === undefined ? {} : { from })) {
    if (ctx.signal.aborted) throw ctx.signal.reason; // the worker is draining: the retry resumes from the checkpoint
    // Everything before this line is in a part and the checkpoint says so: a retry resumes here.
    if (sinceCheckpoint >= every) await flush(offset);
    if (line.trim() === '') continue;
    counts.recordsIn++;
    sinceCheckpoint++;
    const rec = parseRecord(line, textField, idField);
    if ('reason' in rec) {
      counts.malformed++;
      if (malformedSamples.length < 5) malformedSamples.push({ offset, reason: rec.reason });
      continue;
    }
    if (rec.text === '') {
      counts.empty++;
      continue;
    }
    const h = contentHash(rec.text);
    if (seen.has(h)) {
      counts.duplicates++;
      continue;
    }
    seen.add(h);
    const tokens = tokenize(rec.text);
    for (const t of tokens) vocab.set(t, (vocab.get(t) ?? 0) + 1);
    counts.recordsOut++;
    counts.tokens += tokens.length;
    buffer.push(`${JSON.stringify({ id: rec.id, h, tokens })}\n`);
    if (counts.recordsIn % 256 === 0) ctx.progress(offset - ctx.shard.start, size);
  }

  // The shard's output: straight from memory when it fitted in one part, else the parts concatenated (streamed).
  if (parts === 0) {
    await ctx.write(`${id}.jsonl`, buffer.join(''), { contentType: 'application/x-ndjson' });
  } else {
    if (buffer.length) {
      await out.write(partKey(parts), buffer.join(''), { contentType: 'application/x-ndjson' });
      parts++;
    }
    const total = parts;
    async function* concat() {
      for (let n = 0; n < total; n++) yield* await out.read(partKey(n));
    }
    await ctx.write(`${id}.jsonl`, Readable.from(concat()), { contentType: 'application/x-ndjson' });
  }
  const stats = {
    shard: id,
    input: ctx.shard.input,
    start: ctx.shard.start,
    end: ctx.shard.end,
    attempt: ctx.attempt,
    resumedFrom: from ?? null,
    ...counts,
    malformedSamples,
    vocab: Object.fromEntries([...vocab].sort((a, b) => b[1] - a[1])),
  };
  await ctx.write(`${id}.stats.json`, JSON.stringify(stats), { contentType: 'application/json' });
  for (let n = 0; n < parts; n++) await out.delete(partKey(n)).catch(() => false);
  ctx.progress(size, size);
  // The return value is kept in the shard's commit marker.
  return counts;
}

/** Lines of a stream (for reading parts back). */
async function* linesOf(/** @type {AsyncIterable<Buffer>} */ stream) {
  const decoder = new TextDecoder();
  let rest = '';
  for await (const chunk of stream) {
    const text = rest + decoder.decode(chunk, { stream: true });
    const lines = text.split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) if (l) yield l;
  }
  rest += decoder.decode();
  if (rest) yield rest;
}
