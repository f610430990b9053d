import { describe, expect, test } from 'vitest';
import { LadingError } from '@lading/core';
import { loadConfig, validateConfig } from '../src/config.js';
import { exitCodeForError, scanGlobalFlags } from '../src/errors.js';
import { locateJsonError } from '../src/json.js';
import { parseRoute } from '../src/commands/topics.js';
import { parseRate } from '../src/commands/hospital.js';
import { parseLines } from '../src/commands/publish.js';

describe('JSON error positions', () => {
  test.each([
    ['{"a": x}', 1, 7, 'unexpected "x"'],
    ['{"a":1,}', 1, 8, 'trailing comma before "}"'],
    ['[1,2,]', 1, 6, 'trailing comma before "]"'],
    ["{'a':1}", 1, 2, 'expected a quoted property name, found "\'"'],
    ['{\n  "a": 1\n  "b": 2\n}', 3, 3, 'expected "," or "}", found "\\""'],
    ['"abc', 1, 5, 'unterminated string'],
    ['{"a":1} {"b":2}', 1, 9, 'unexpected "{" after the end of the JSON value'],
    ['', 1, 1, 'unexpected end of input'],
    ['-', 1, 1, 'unexpected "-"'],
  ])('%j → line %i, column %i: %s', (text, line, column, message) => {
    expect(locateJsonError(text)).toEqual({ line, column, message });
  });

  test('valid JSON has no error', () => {
    for (const t of ['{}', '[]', '0', '-1.5e3', '"\\u00e9\\n"', 'true', 'null', ' {"a":[1,{"b":null}]} ']) expect(locateJsonError(t)).toBeUndefined();
  });

  test('JSON Lines: every bad line is counted, the first three are named', () => {
    expect(() => parseLines('1\nx\n2\ny\nz\nw\n', 'in.jsonl', LadingError)).toThrow(/in\.jsonl: 4 lines are not valid JSON \(line 2, column 1: unexpected "x"; line 4, .*; line 5, .*; …\)/);
    expect(parseLines('1\n\n  \n2\r\n', 'x', LadingError).map((b) => [b.line, b.value])).toEqual([[1, 1], [4, 2]]);
  });
});

describe('option parsers', () => {
  test('routes', () => {
    expect(parseRoute('type=image->images', LadingError)).toEqual({ when: { type: 'image' }, to: 'images' });
    expect(parseRoute('headers.tenant=acme,body.size=3,body.ok=true->small', LadingError)).toEqual({ when: { 'headers.tenant': 'acme', 'body.size': 3, 'body.ok': true }, to: 'small' });
    expect(parseRoute('type=image|photo->images', LadingError)).toEqual({ when: { type: ['image', 'photo'] }, to: 'images' });
    expect(parseRoute('type=123->t', LadingError)).toEqual({ when: { type: '123' }, to: 't' });
    expect(() => parseRoute('type=image', LadingError)).toThrow(/no "->TOPIC" target/);
    expect(() => parseRoute('image->x', LadingError)).toThrow(/is not FIELD=VALUE/);
  });

  test('rates', () => {
    expect(parseRate('50/s', LadingError)).toBe(50);
    expect(parseRate('20', LadingError)).toBe(20);
    expect(parseRate('600/m', LadingError)).toBe(10);
    expect(parseRate('3600/h', LadingError)).toBe(1);
    expect(() => parseRate('0', LadingError)).toThrow(LadingError);
    expect(() => parseRate('fast', LadingError)).toThrow(/--rate "fast" is not a rate/);
  });
});

describe('config resolution', () => {
  test('defaults, then config, env and flags in order', () => {
    const cwd = '/nonexistent-dir-for-lading-test';
    expect(loadConfig({ cwd, env: {} })).toMatchObject({ queue: 'sqlite:./.lading/queue.db', store: 'file:./.lading/store', sources: { queue: 'default', store: 'default' } });
    expect(loadConfig({ cwd, env: { LADING_QUEUE: 'sqlite:/e.db', LADING_STORE: 'none' } })).toMatchObject({ queue: 'sqlite:/e.db', store: undefined, sources: { queue: 'env', store: 'env' } });
    expect(loadConfig({ cwd, env: { LADING_QUEUE: 'sqlite:/e.db' }, flags: { queue: 'sqlite:/f.db', store: false } })).toMatchObject({ queue: 'sqlite:/f.db', store: undefined, sources: { queue: 'flag', store: 'flag' } });
    expect(loadConfig({ cwd, env: { LADING_CACHE_DIR: 'cache' } }).cacheDir).toBe('/nonexistent-dir-for-lading-test/cache');
  });

  test('validateConfig keeps only the topic policy fields that were written, durations in ms', () => {
    const config = validateConfig({ topics: { images: { ttlMs: '1h', backoff: { maxMs: '5m' } } }, cache: { max: '200GiB' } }, 'x.yaml');
    expect(config.topics).toEqual({ images: { ttlMs: 3_600_000, backoff: { maxMs: 300_000 } } });
    expect(() => validateConfig({ topics: { 'bad name': {} } }, 'x.yaml')).toThrow(/x\.yaml: topics\.bad name/);
    expect(() => validateConfig([], 'x.yaml')).toThrow(/x\.yaml: \(top level\): expected object/);
  });
});

describe('errors', () => {
  test('user mistakes exit 2, runtime failures and bugs exit 1', () => {
    for (const code of ['BAD_URI', 'BAD_CONFIG', 'BAD_MESSAGE', 'BAD_ARGUMENT', 'NOT_FOUND', 'UNSAFE_LOCATION', 'UNSAFE_KEY', 'TOO_LARGE', 'CONFLICT'] as const) expect(exitCodeForError(new LadingError(code, 'x'))).toBe(2);
    for (const code of ['BACKEND', 'CHECKSUM_MISMATCH', 'CLOSED', 'UNSUPPORTED'] as const) expect(exitCodeForError(new LadingError(code, 'x'))).toBe(1);
    expect(exitCodeForError(new TypeError('x'))).toBe(1);
  });

  test('--json and --debug are seen before parsing; not after --', () => {
    expect(scanGlobalFlags(['publish', '--json'], {})).toEqual({ json: true, debug: false });
    expect(scanGlobalFlags(['publish', '--', '--json'], { LADING_DEBUG: '1' })).toEqual({ json: false, debug: true });
    expect(scanGlobalFlags([], { LADING_DEBUG: '0' })).toEqual({ json: false, debug: false });
  });
});

describe('how errors are printed', async () => {
  const { reportError, reportUsageError } = await import('../src/errors.js');
  const capture = (fn: (write: (t: string) => void) => number) => {
    let text = '';
    const code = fn((t) => (text += t));
    return { code, text };
  };

  test('a LadingError: error and hint, no stack, even with --debug for a user mistake', () => {
    const e = new LadingError('BAD_URI', 'queue URI "x" has no scheme', { hint: 'use sqlite:PATH' });
    for (const debug of [false, true]) {
      const r = capture((write) => reportError(e, { json: false, debug, write }));
      expect(r).toEqual({ code: 2, text: 'error: queue URI "x" has no scheme\nhint: use sqlite:PATH\n' });
    }
    const json = capture((write) => reportError(e, { json: true, debug: false, write }));
    expect(JSON.parse(json.text)).toEqual({ error: { code: 'BAD_URI', message: 'queue URI "x" has no scheme', hint: 'use sqlite:PATH' } });
  });

  test('a runtime failure exits 1; its stack only with --debug', () => {
    const e = new LadingError('BACKEND', 'disk on fire');
    expect(capture((write) => reportError(e, { json: false, debug: false, write }))).toEqual({ code: 1, text: 'error: disk on fire\n' });
    expect(capture((write) => reportError(e, { json: false, debug: true, write })).text).toContain('    at ');
  });

  test('anything else is a bug: "internal error", the stack only with --debug', () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'x')");
    const plain = capture((write) => reportError(bug, { json: false, debug: false, write }));
    expect(plain.code).toBe(1);
    expect(plain.text).toContain("internal error: Cannot read properties of undefined (reading 'x')");
    expect(plain.text).toContain('rerun with --debug');
    expect(plain.text).not.toContain('    at ');
    const debug = capture((write) => reportError(bug, { json: false, debug: true, write }));
    expect(debug.text).toContain('    at ');
    const json = JSON.parse(capture((write) => reportError(bug, { json: true, debug: false, write })).text) as { error: { code: string; stack?: string } };
    expect(json.error.code).toBe('INTERNAL');
    expect(json.error.stack).toBeUndefined();
  });

  test('usage errors', () => {
    expect(capture((write) => reportUsageError("error: unknown option '--x'\n", 'lading publish', { json: false, debug: false, write }))).toEqual({ code: 2, text: "error: unknown option '--x'\nsee: lading publish --help\n" });
  });
});
