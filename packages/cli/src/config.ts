import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { z } from 'zod';
import { describeJsonProblem, parseJson } from './json.js';
import { BackoffSchema, DEFAULT_QUEUE_URI, LadingError, TopicNameSchema, TopicPolicySchema, parseBytes, parseDuration, parseQueueUri, type TopicPolicyInput } from '@lading/core';

/**
 * Configuration: flags > environment (LADING_QUEUE, LADING_STORE, LADING_CACHE_DIR, LADING_CONFIG) >
 * config file (`lading.config.json`, `lading.config.yaml` / `.yml` in the working directory, or
 * `--config PATH`) > defaults. The zod schema below is the single source of the config file's type.
 */

export const DEFAULT_STORE_URI = 'file:./.lading/store';
export const CONFIG_FILE_NAMES = ['lading.config.json', 'lading.config.yaml', 'lading.config.yml'] as const;

/** A byte size: a number of bytes or a string with a unit (`64KiB`, `200GiB`). */
const ByteSize = z.union([z.string(), z.number().nonnegative()]);

export const ConfigSchema = z.strictObject({
  /** Queue URI, e.g. `sqlite:./.lading/queue.db` or `kafka://host:9092`. */
  queue: z.string().min(1).optional(),
  /** Store URI for claim-check payloads (and later jobs), e.g. `file:/mnt/lustre/proj`; `none` for no store. */
  store: z.string().min(1).optional(),
  cache: z
    .strictObject({
      /** Local directory of the read-through cache. */
      dir: z.string().min(1).optional(),
      /** Byte budget of the cache, e.g. `200GiB`. */
      max: ByteSize.optional(),
    })
    .optional(),
  /** Bodies larger than this travel by claim check (default 64 KiB). */
  inlineLimit: ByteSize.optional(),
  /** Topic policies, applied when a command opens the queue (durations may be written as `30s`, `1h`). */
  topics: z.record(TopicNameSchema, TopicPolicySchema).optional(),
  hospital: z
    .strictObject({
      /** Default webhook of `lading hospital report`. */
      webhook: z.url().optional(),
    })
    .optional(),
});

/** The config file as written (what users type). */
export type LadingConfigInput = z.input<typeof ConfigSchema>;
/** The config file after validation (topic policies with their defaults). */
export type LadingConfig = z.output<typeof ConfigSchema>;

export type Source = 'flag' | 'env' | 'config' | 'default';

/** Everything a command needs to know, resolved from all sources. */
export interface ResolvedConfig {
  queue: string;
  /** Undefined when no store is configured (`--no-store`, `LADING_STORE=none`, `store: none`). */
  store: string | undefined;
  cacheDir: string | undefined;
  cacheMax: number | undefined;
  inlineLimit: number | undefined;
  /** Policies as written in the config file (only the fields given), durations already in ms. */
  topics: Record<string, TopicPolicyInput>;
  webhook: string | undefined;
  /** The config file that was read, if any. */
  file: string | undefined;
  sources: { queue: Source; store: Source; cacheDir: Source };
}

export interface ConfigFlags {
  queue?: string | undefined;
  /** `false` from `--no-store`. */
  store?: string | false | undefined;
  config?: string | undefined;
  cacheDir?: string | undefined;
}

export interface LoadConfigOptions {
  flags?: ConfigFlags;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

const NO_STORE = new Set(['none', 'off', 'false', '']);

export function loadConfig(options: LoadConfigOptions = {}): ResolvedConfig {
  const flags = options.flags ?? {};
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();

  const file = findConfigFile(cwd, flags.config ?? (env.LADING_CONFIG || undefined), flags.config !== undefined ? '--config' : 'LADING_CONFIG');
  const fileConfig = file ? readConfigFile(file, cwd) : undefined;
  const label = file ? displayPath(file, cwd) : '';
  const base = file ? dirname(file) : cwd;

  let queue: string;
  let queueSource: Source;
  if (flags.queue !== undefined) [queue, queueSource] = [checkQueue(flags.queue, '--queue'), 'flag'];
  else if (env.LADING_QUEUE) [queue, queueSource] = [checkQueue(env.LADING_QUEUE, 'LADING_QUEUE'), 'env'];
  else if (fileConfig?.queue !== undefined) [queue, queueSource] = [resolveQueueUri(checkQueue(fileConfig.queue, `${label}: queue`), base), 'config'];
  else [queue, queueSource] = [DEFAULT_QUEUE_URI, 'default'];

  let store: string | undefined;
  let storeSource: Source;
  if (flags.store === false) [store, storeSource] = [undefined, 'flag'];
  else if (flags.store !== undefined) [store, storeSource] = [NO_STORE.has(flags.store) ? undefined : flags.store, 'flag'];
  else if (env.LADING_STORE !== undefined) [store, storeSource] = [NO_STORE.has(env.LADING_STORE) ? undefined : env.LADING_STORE, 'env'];
  else if (fileConfig?.store !== undefined) [store, storeSource] = [NO_STORE.has(fileConfig.store) ? undefined : resolveFileUri(fileConfig.store, base), 'config'];
  else [store, storeSource] = [DEFAULT_STORE_URI, 'default'];

  let cacheDir: string | undefined;
  let cacheSource: Source;
  if (flags.cacheDir !== undefined) [cacheDir, cacheSource] = [resolve(cwd, flags.cacheDir), 'flag'];
  else if (env.LADING_CACHE_DIR) [cacheDir, cacheSource] = [resolve(cwd, env.LADING_CACHE_DIR), 'env'];
  else if (fileConfig?.cache?.dir !== undefined) [cacheDir, cacheSource] = [resolve(base, fileConfig.cache.dir), 'config'];
  else [cacheDir, cacheSource] = [undefined, 'default'];

  const cacheMax = fileConfig?.cache?.max === undefined ? undefined : bytesField(fileConfig.cache.max, label, 'cache.max');
  const inlineLimit = fileConfig?.inlineLimit === undefined ? undefined : bytesField(fileConfig.inlineLimit, label, 'inlineLimit');

  return {
    queue,
    store,
    cacheDir,
    cacheMax,
    inlineLimit,
    topics: fileConfig?.topics ?? {},
    webhook: fileConfig?.hospital?.webhook,
    file,
    sources: { queue: queueSource, store: storeSource, cacheDir: cacheSource },
  };
}

/** The config file to read: an explicit path (must exist), or the one in `cwd`, or none. */
export function findConfigFile(cwd: string, explicit: string | undefined, from = '--config'): string | undefined {
  if (explicit !== undefined) {
    const path = resolve(cwd, explicit);
    if (!existsSync(path)) throw new LadingError('NOT_FOUND', `config file ${explicit} (from ${from}) does not exist`, { hint: `create it, or drop ${from} to use ${CONFIG_FILE_NAMES.join(' / ')} in the working directory` });
    return path;
  }
  const found = CONFIG_FILE_NAMES.map((n) => resolve(cwd, n)).filter((p) => existsSync(p));
  if (found.length > 1) {
    throw new LadingError('BAD_CONFIG', `more than one config file in ${cwd}: ${found.map((p) => displayPath(p, cwd)).join(', ')}`, { hint: 'keep one of them, or choose with --config PATH' });
  }
  return found[0];
}

/** Read, parse and validate one config file. Every error names the file and the field. */
export function readConfigFile(path: string, cwd = process.cwd()): LadingConfig {
  const label = displayPath(path, cwd);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new LadingError('NOT_FOUND', `${label}: cannot read the config file: ${(e as Error).message}`, { hint: 'check the path and its permissions' });
  }
  const raw = /\.ya?ml$/i.test(path) ? parseYamlText(text, label) : parseJsonText(text, label);
  return validateConfig(raw ?? {}, label);
}

export function validateConfig(raw: unknown, label: string): LadingConfig {
  const problems: string[] = [];
  const input = normaliseDurations(raw, problems);
  const parsed = ConfigSchema.safeParse(input);
  if (!parsed.success) for (const issue of parsed.error.issues) problems.push(...describeIssue(issue));
  if (problems.length > 0) {
    const shown = problems.slice(0, 5).map((p) => `${label}: ${p}`);
    if (problems.length > 5) shown.push(`… and ${problems.length - 5} more`);
    throw new LadingError('BAD_CONFIG', shown.join('\n'), {
      hint: `fields: ${Object.keys(ConfigSchema.shape).join(', ')}; topic policy fields: ${Object.keys(TopicPolicySchema.shape).join(', ')} (see the README's configuration section)`,
    });
  }
  // Keep only the policy fields that were written, so applying them does not reset the others.
  const config = parsed.data!;
  const written = (input as { topics?: Record<string, TopicPolicyInput> }).topics;
  if (config.topics && written) config.topics = Object.fromEntries(Object.keys(config.topics).map((name) => [name, written[name]!])) as LadingConfig['topics'];
  return config;
}

function parseJsonText(text: string, label: string): unknown {
  if (text.trim() === '') return {};
  const parsed = parseJson(text);
  if (parsed.ok) return parsed.value;
  throw new LadingError('BAD_CONFIG', `${label}: not valid JSON (${describeJsonProblem(parsed.problem, true)})`, { hint: 'fix the syntax (JSON allows no comments or trailing commas), or write the config as YAML (lading.config.yaml)' });
}

function parseYamlText(text: string, label: string): unknown {
  // yaml is only needed for YAML configs; loaded here so a JSON config or none costs nothing.
  const doc = yamlParseDocument(text);
  const error = doc.errors[0];
  if (error) {
    const line = error.linePos?.[0]?.line;
    throw new LadingError('BAD_CONFIG', `${label}: not valid YAML${line ? ` (line ${line})` : ''}: ${error.message.split('\n')[0]!.replace(/:\s*$/, '')}`, { hint: 'fix the YAML syntax (indent with spaces, quote strings with ":" in them)' });
  }
  return doc.toJS() as unknown;
}

// `yaml` is small but not free to load: required lazily through createRequire so this stays synchronous.
type YamlModule = typeof import('yaml');
let yamlModule: YamlModule | undefined;
function yamlParseDocument(text: string): ReturnType<YamlModule['parseDocument']> {
  yamlModule ??= createRequire(import.meta.url)('yaml') as YamlModule;
  return yamlModule.parseDocument(text, { prettyErrors: true });
}

const POLICY_DURATIONS = ['ttlMs', 'dedupWindowMs', 'leaseMs', 'retentionMs'];
const BACKOFF_DURATIONS = ['initialMs', 'maxMs'];

/** Topic policy durations may be written `"30s"`, `"1h"`: turned into ms here, named in errors otherwise. */
function normaliseDurations(raw: unknown, problems: string[]): unknown {
  if (!isRecord(raw) || !isRecord(raw.topics)) return raw;
  const topics: Record<string, unknown> = {};
  for (const [name, policy] of Object.entries(raw.topics)) {
    if (!isRecord(policy)) {
      topics[name] = policy;
      continue;
    }
    const p: Record<string, unknown> = { ...policy };
    const fix = (obj: Record<string, unknown>, key: string, path: string) => {
      const v = obj[key];
      if (typeof v !== 'string') return;
      try {
        obj[key] = Math.round(parseDuration(v));
      } catch {
        problems.push(`${path}: ${JSON.stringify(v)} is not a duration (write ms or e.g. 30s, 5m, 1h, 7d)`);
        delete obj[key];
      }
    };
    for (const k of POLICY_DURATIONS) fix(p, k, `topics.${name}.${k}`);
    if (isRecord(p.backoff)) {
      const b: Record<string, unknown> = { ...p.backoff };
      for (const k of BACKOFF_DURATIONS) fix(b, k, `topics.${name}.backoff.${k}`);
      p.backoff = b;
    }
    topics[name] = p;
  }
  return { ...raw, topics };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Field names known at a config path, for "unknown field" messages. */
function knownFields(path: readonly PropertyKey[]): string[] {
  if (path.length === 0) return Object.keys(ConfigSchema.shape);
  if (path[0] === 'cache' && path.length === 1) return ['dir', 'max'];
  if (path[0] === 'hospital' && path.length === 1) return ['webhook'];
  if (path[0] === 'topics' && path.length === 2) return Object.keys(TopicPolicySchema.shape);
  if (path[0] === 'topics' && path[2] === 'backoff' && path.length === 3) return Object.keys(BackoffSchema.shape);
  return [];
}

function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

function quoteList(values: readonly unknown[]): string {
  const q = values.map((v) => JSON.stringify(v));
  if (q.length <= 1) return q.join('');
  return `${q.slice(0, -1).join(', ')} or ${q.at(-1)}`;
}

function fieldPath(path: readonly PropertyKey[]): string {
  return path.length ? path.map(String).join('.') : '(top level)';
}

/** One zod issue as `field: problem` lines a user can act on. */
export function describeIssue(issue: z.core.$ZodIssue): string[] {
  const at = fieldPath(issue.path);
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((k) => {
        const known = knownFields(issue.path);
        const guess = closest(k, known);
        return `${fieldPath([...issue.path, k])}: unknown field${guess ? ` (did you mean ${guess}?)` : known.length ? ` (known: ${known.join(', ')})` : ''}`;
      });
    case 'invalid_value':
      return [`${at}: expected ${issue.values.length > 2 ? 'one of ' : ''}${quoteList(issue.values)}`];
    case 'invalid_type':
      return [`${at}: ${issue.message.replace(/^Invalid input:\s*/, '')}`];
    case 'invalid_union':
      if (at === 'inlineLimit' || at === 'cache.max') return [`${at}: expected a byte size such as 65536 or "64KiB"`];
      return [`${at}: ${issue.message}`];
    case 'invalid_key':
      return [`${at}: ${issue.issues[0]?.message ?? issue.message}`];
    default:
      return [`${at}: ${issue.message}`];
  }
}

function checkQueue(uri: string, label: string): string {
  try {
    parseQueueUri(uri);
  } catch (e) {
    if (e instanceof LadingError) throw new LadingError(e.code, `${label}: ${e.message}`, { hint: e.hint });
    throw e;
  }
  return uri;
}

function bytesField(value: string | number, label: string, field: string): number {
  try {
    return parseBytes(value, field);
  } catch {
    throw new LadingError('BAD_CONFIG', `${label}: ${field}: ${JSON.stringify(value)} is not a byte size`, { hint: 'write a number of bytes or a number with a unit, e.g. 65536, 64KiB, 1MiB' });
  }
}

/** A relative `sqlite:` path in a config file is relative to that file's directory. */
function resolveQueueUri(uri: string, base: string): string {
  const address = parseQueueUri(uri);
  if (address.kind !== 'sqlite' || isAbsolute(address.path)) return uri;
  const q = uri.indexOf('?');
  return `sqlite:${resolve(base, address.path)}${q >= 0 ? uri.slice(q) : ''}`;
}

/** A relative `file:` store in a config file is relative to that file's directory. */
function resolveFileUri(uri: string, base: string): string {
  if (!uri.startsWith('file:') || uri.startsWith('file://')) return uri;
  const q = uri.indexOf('?');
  const path = q >= 0 ? uri.slice(5, q) : uri.slice(5);
  if (path === '' || isAbsolute(path)) return uri;
  return `file:${resolve(base, path)}${q >= 0 ? uri.slice(q) : ''}`;
}

export function displayPath(path: string, cwd: string): string {
  const rel = relative(cwd, path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}
