import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BackoffSchema, LadingError, describeZodError, parseBytes, parseDuration } from '@lading/core';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

const bytes = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  try {
    const n = parseBytes(v);
    if (n <= 0) throw new Error('must be positive');
    return n;
  } catch {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a byte size (e.g. 256MiB)` });
    return z.NEVER;
  }
});
const duration = z.union([z.number().nonnegative(), z.string()]).transform((v, ctx) => {
  try {
    return parseDuration(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(v)} is not a duration (e.g. 30s, 2h)` });
    return z.NEVER;
  }
});

export const ShardingSchema = z.discriminatedUnion('by', [
  /** One shard per input object. */
  z.object({ by: z.literal('file') }).strict(),
  /** Fixed byte ranges; with `align: newline` no record (line) is cut: a shard owns the lines that start in it. */
  z.object({ by: z.literal('bytes'), size: bytes, align: z.enum(['none', 'newline']).default('newline') }).strict(),
  /** N lines (JSONL, CSV) per shard; boundaries found by one streaming pass at submit. */
  z.object({ by: z.literal('records'), count: z.number().int().positive() }).strict(),
]);
export type Sharding = z.infer<typeof ShardingSchema>;

/** A job spec, as written by a user in JSON or YAML. */
export const JobSpecSchema = z
  .object({
    /** Stable job id; default: derived from the spec, so the same spec resubmitted is the same job. */
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/, 'an id is letters, digits, ".", "_" or "-"').optional(),
    name: z.string().max(200).optional(),
    /** Module exporting `default async function (ctx)`: a path (relative to the spec file) or a package name. */
    handler: z.string().min(1),
    /** Input object URIs, with globs (`*`, `**`, `?`, `[ab]`, `{a,b}`) in the key part. */
    inputs: z.array(z.string().min(1)).min(1),
    sharding: ShardingSchema.default({ by: 'file' }),
    /** Store URI prefix under which outputs are written. */
    output: z.string().min(1),
    params: z.record(z.string(), z.json()).default({}),
    retries: z
      .object({ maxAttempts: z.number().int().min(1).max(100).default(3), backoff: BackoffSchema.optional() })
      .strict()
      .default({ maxAttempts: 3 }),
    /** A shard running longer than this is aborted (its thread terminated) and retried. */
    timeout: duration.optional(),
    /** Tasks not started within this time go to the hospital as expired. */
    ttl: duration.optional(),
    /** Hint: worker threads per node for this job. */
    concurrency: z.number().int().positive().max(1024).optional(),
    /** Queue topic the tasks go to (workers consume it). */
    topic: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/).default('lading.tasks'),
  })
  .strict();
export type JobSpecInput = z.input<typeof JobSpecSchema>;
export type JobSpec = z.infer<typeof JobSpecSchema> & { id: string };

/** Validate a spec object; relative handler paths are resolved against `baseDir`. */
export function parseJobSpec(input: unknown, options: { baseDir?: string; source?: string } = {}): JobSpec {
  const parsed = JobSpecSchema.safeParse(input);
  const where = options.source ? `${options.source}: ` : '';
  if (!parsed.success) {
    throw new LadingError('BAD_JOB_SPEC', `${where}${describeSpecError(parsed.error)}`, {
      hint: 'a job spec needs handler, inputs, output; sharding is {by: file} | {by: bytes, size: 256MiB, align: newline} | {by: records, count: 10000}',
    });
  }
  const spec = parsed.data;
  const baseDir = options.baseDir ?? process.cwd();
  const handler = resolveHandler(spec.handler, baseDir);
  // Relative `file:` inputs and output are relative to the spec (like the handler), and made absolute here:
  // workers on other nodes or in other directories must see the same paths.
  const withHandler = { ...spec, handler, inputs: spec.inputs.map((u) => resolveFileUri(u, baseDir)), output: resolveFileUri(spec.output, baseDir) };
  return { ...withHandler, id: spec.id ?? jobIdOf(withHandler) };
}

/** Read a spec file (.json, .yaml, .yml). */
export async function loadJobSpec(file: string): Promise<JobSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new LadingError('NOT_FOUND', `cannot read job spec ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`, { hint: 'give the path of a .yaml or .json job spec' });
  }
  let value: unknown;
  try {
    value = /\.ya?ml$/i.test(file) ? parseYaml(text) : JSON.parse(text);
  } catch (e) {
    const yaml = /\.ya?ml$/i.test(file);
    throw new LadingError('BAD_JOB_SPEC', `${file} is not valid ${yaml ? 'YAML' : 'JSON'}: ${(e as Error).message.split('\n')[0]!.replace(/:\s*$/, '')}`, {
      hint: yaml ? 'fix the YAML syntax (indent with spaces, close brackets, quote strings with ":" in them)' : 'fix the JSON syntax (double quotes, no trailing commas), or write the spec as .yaml',
    });
  }
  return parseJobSpec(value, { baseDir: dirname(resolve(file)), source: file });
}

function resolveHandler(handler: string, baseDir: string): string {
  if (handler.startsWith('file:') || handler.startsWith('node:')) return handler;
  if (handler.startsWith('.') || isAbsolute(handler)) return pathToFileURL(isAbsolute(handler) ? handler : resolve(baseDir, handler)).href;
  return handler; // a package name, resolved by the worker
}

/** `file:./data/*.jsonl` → `file:/abs/spec/dir/data/*.jsonl`; absolute paths and other schemes unchanged. */
function resolveFileUri(uri: string, baseDir: string): string {
  if (!uri.startsWith('file:') || uri.startsWith('file://')) return uri;
  const q = uri.indexOf('?');
  const path = q >= 0 ? uri.slice(5, q) : uri.slice(5);
  if (path === '' || isAbsolute(path)) return uri;
  return `file:${resolve(baseDir, path)}${/[/\\]$/.test(path) ? '/' : ''}${q >= 0 ? uri.slice(q) : ''}`;
}

const SPEC_FIELDS: Record<string, readonly string[]> = {
  '': Object.keys(JobSpecSchema.shape),
  retries: ['maxAttempts', 'backoff'],
  'retries.backoff': Object.keys(BackoffSchema.shape),
  sharding: ['by', 'size', 'align', 'count'],
};

/** Zod issues as `field: problem`, with unknown fields named one by one. */
function describeSpecError(error: z.ZodError): string {
  const lines: string[] = [];
  for (const issue of error.issues) {
    const at = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      const known = SPEC_FIELDS[at];
      for (const k of issue.keys) lines.push(`${at ? `${at}.` : ''}${k}: unknown field${known ? ` (known: ${known.join(', ')})` : ''}`);
    } else if (issue.code === 'invalid_type' && /received undefined$/.test(issue.message)) {
      lines.push(`${at || '(root)'}: required (missing)`);
    } else {
      lines.push(`${at || '(root)'}: ${issue.message.replace(/^Invalid input:\s*/, '')}`);
    }
  }
  return lines.join('; ') || describeZodError(error);
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().filter((k) => (value as Record<string, unknown>)[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Deterministic job id: the same spec gives the same id, so a resubmit does not duplicate work. */
export function jobIdOf(spec: Omit<JobSpec, 'id'>): string {
  const slug = (spec.name ?? 'job').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40) || 'job';
  return `${slug}-${createHash('sha256').update(canonical(spec)).digest('hex').slice(0, 12)}`;
}
