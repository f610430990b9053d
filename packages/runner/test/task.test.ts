import { expect, test } from 'vitest';
import { TaskSchema, readTask } from '@lading/runner';

/** readTask (the worker's hot-path check) accepts exactly what TaskSchema accepts, and yields the same task. */

const valid = () => ({
  kind: 'lading.shard',
  job: 'j1',
  jobName: 'count',
  shard: { id: 's1', index: 3, input: 'file:/d/in/a.jsonl', storeUri: 'file:/d/in', key: 'a.jsonl', start: 0, end: 100, objectSize: 250, etag: '1-2-3', align: 'newline' },
  handler: 'file:///d/h.mjs',
  output: 'file:/d/out',
  params: { n: 1, nested: { a: [1, 'x', null, true] } },
  timeoutMs: 5000,
});

type Body = Record<string, unknown> & { shard: Record<string, unknown> };
const mutations: [string, (b: Body) => void][] = [
  ['no kind', (b) => { delete b.kind; }],
  ['other kind', (b) => { b.kind = 'other'; }],
  ['empty job', (b) => { b.job = ''; }],
  ['numeric job', (b) => { b.job = 7; }],
  ['jobName a number', (b) => { b.jobName = 7; }],
  ['no jobName', (b) => { delete b.jobName; }],
  ['no handler', (b) => { delete b.handler; }],
  ['empty output', (b) => { b.output = ''; }],
  ['params an array', (b) => { b.params = [1]; }],
  ['params null', (b) => { b.params = null; }],
  ['no params', (b) => { delete b.params; }],
  ['timeout 0', (b) => { b.timeoutMs = 0; }],
  ['timeout negative', (b) => { b.timeoutMs = -1; }],
  ['timeout a string', (b) => { b.timeoutMs = '5'; }],
  ['timeout fractional', (b) => { b.timeoutMs = 0.5; }],
  ['no timeout', (b) => { delete b.timeoutMs; }],
  ['shard missing', (b) => { delete (b as Record<string, unknown>).shard; }],
  ['shard an array', (b) => { (b as Record<string, unknown>).shard = []; }],
  ['shard id empty', (b) => { b.shard.id = ''; }],
  ['index negative', (b) => { b.shard.index = -1; }],
  ['index fractional', (b) => { b.shard.index = 1.5; }],
  ['start a string', (b) => { b.shard.start = '0'; }],
  ['end unsafe', (b) => { b.shard.end = 2 ** 60; }],
  ['objectSize missing', (b) => { delete b.shard.objectSize; }],
  ['etag empty', (b) => { b.shard.etag = ''; }],
  ['etag a number', (b) => { b.shard.etag = 1; }],
  ['align other', (b) => { b.shard.align = 'lines'; }],
  ['align none', (b) => { b.shard.align = 'none'; }],
  ['storeUri empty', (b) => { b.shard.storeUri = ''; }],
  ['extra fields', (b) => { b.extra = 'x'; b.shard.extra = 1; }],
];

test('a valid body: the same task as TaskSchema gives, without unknown fields', () => {
  const body = valid();
  expect(readTask(body)).toEqual(TaskSchema.parse(body));
});

test.each(mutations)('%s: readTask agrees with TaskSchema', (_name, mutate) => {
  const body = valid() as unknown as Body;
  mutate(body);
  const parsed = TaskSchema.safeParse(body);
  const fast = readTask(body);
  if (parsed.success) expect(fast).toEqual(parsed.data);
  else expect(fast).toBeUndefined();
});

test('not an object', () => {
  for (const b of [null, undefined, 1, 'x', [], true]) expect(readTask(b)).toBeUndefined();
});
