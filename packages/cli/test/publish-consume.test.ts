import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { BIN, cliEnv, expectUserError, lading, tempDir } from './helpers.js';

interface Printed {
  id: string;
  topic: string;
  key?: string;
  type?: string;
  headers: Record<string, string>;
  attempt: number;
  body?: unknown;
  ref?: { uri: string; size: number; checksum: string };
}

function jsonLines(text: string): Printed[] {
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Printed);
}

describe('publish and consume', () => {
  test('round trip: publish with id, key, type, headers; consume prints and acks', async () => {
    const cwd = tempDir();
    // Two consumer groups exist before the messages are published: each will see every message.
    for (const group of ['thumbs', 'audit']) expect((await lading(['consume', 'images', '--group', group, '--idle-exit', '50ms'], { cwd })).code).toBe(0);
    const p = await lading(['publish', 'images', '{"path":"cat.png"}', '--id', 'img-1', '--key', 'cat', '--type', 'image', '-H', 'tenant=acme', '--header', 'prio=high'], { cwd });
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    expect(p.stdout.trim()).toBe('published img-1 to images');

    const second = await lading(['publish', 'images', '"just a string"', '--json'], { cwd });
    expect(second.code).toBe(0);
    const result = JSON.parse(second.stdout) as { topic: string; published: number; duplicates: number; messages: { id: string; duplicate: boolean }[] };
    expect(result).toMatchObject({ topic: 'images', published: 1, duplicates: 0 });
    expect(result.messages[0]!.id).toMatch(/^[0-9a-f-]{36}$/);

    const c = await lading(['consume', 'images', '--group', 'thumbs', '--json', '--idle-exit', '500ms'], { cwd });
    expect(c.code).toBe(0);
    const got = jsonLines(c.stdout);
    expect(got).toHaveLength(2);
    expect(got[0]).toMatchObject({ id: 'img-1', topic: 'images', key: 'cat', type: 'image', headers: { tenant: 'acme', prio: 'high' }, attempt: 0, body: { path: 'cat.png' } });
    expect(got[1]!.body).toBe('just a string');

    // Acked: the same group gets nothing more; another group sees everything (pub/sub).
    const again = await lading(['consume', 'images', '--group', 'thumbs', '--json', '--idle-exit', '300ms'], { cwd });
    expect(jsonLines(again.stdout)).toHaveLength(0);
    const other = await lading(['consume', 'images', '--group', 'audit', '--idle-exit', '300ms'], { cwd });
    expect(other.code).toBe(0);
    expect(other.stdout).toContain('img-1 [type=image key=cat tenant=acme prio=high] {"path":"cat.png"}');
    expect(other.stderr).toContain('consumed 2 messages from images as group audit');
  });

  test('the same id twice within the dedup window is a no-op', async () => {
    const cwd = tempDir();
    expect((await lading(['publish', 't', '1', '--id', 'once'], { cwd })).code).toBe(0);
    const dup = await lading(['publish', 't', '2', '--id', 'once'], { cwd });
    expect(dup.code).toBe(0);
    expect(dup.stdout).toContain('already published to t within the dedup window');
    const c = await lading(['consume', 't', '--group', 'g', '--json', '--idle-exit', '300ms'], { cwd });
    expect(jsonLines(c.stdout).map((m) => m.body)).toEqual([1]);
  });

  test('--fire-and-forget still lands before the process exits', async () => {
    const cwd = tempDir();
    const p = await lading(['publish', 't', '{"n":1}', '--id', 'ff', '--fire-and-forget'], { cwd });
    expect(p.code).toBe(0);
    expect(p.stdout).toContain('sent ff to t (fire and forget');
    const c = await lading(['consume', 't', '--group', 'g', '--json', '--max', '1', '--idle-exit', '2s'], { cwd });
    expect(jsonLines(c.stdout).map((m) => m.id)).toEqual(['ff']);
  });

  test('publish --lines from stdin: one message per line, in one go; consume --max stops after N', async () => {
    const cwd = tempDir();
    const input = Array.from({ length: 50 }, (_, i) => JSON.stringify({ n: i })).join('\n') + '\n\n';
    const p = await lading(['publish', 'tasks', '-', '--lines', '--type', 'task', '--batch', '7'], { cwd, input });
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    expect(p.stdout.trim()).toBe('published 50 messages to tasks');

    const first = await lading(['consume', 'tasks', '--group', 'w', '--json', '--max', '20', '--concurrency', '4'], { cwd });
    expect(first.code).toBe(0);
    expect(jsonLines(first.stdout)).toHaveLength(20);
    const rest = await lading(['consume', 'tasks', '--group', 'w', '--json', '--idle-exit', '500ms'], { cwd });
    const all = [...jsonLines(first.stdout), ...jsonLines(rest.stdout)];
    expect(all).toHaveLength(50);
    expect(new Set(all.map((m) => (m.body as { n: number }).n)).size).toBe(50);
    expect(all.every((m) => m.type === 'task')).toBe(true);
  });

  test('publish --lines --file, and --json output', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'tasks.jsonl'), '{"a":1}\r\n{"a":2}\r\n');
    const p = await lading(['publish', 'tasks', '--file', 'tasks.jsonl', '--lines', '--json'], { cwd });
    expect(p.code).toBe(0);
    const result = JSON.parse(p.stdout) as { published: number; messages: unknown[] };
    expect(result.published).toBe(2);
    expect(result.messages).toHaveLength(2);
  });

  test('routing: a topic route sends messages of a type to another topic', async () => {
    const cwd = tempDir();
    const t = await lading(['topics', 'create', 'uploads', '--route', 'type=image->images'], { cwd });
    expect(t.code).toBe(0);
    const p = await lading(['publish', 'uploads', '{"path":"cat.png"}', '--type', 'image', '--id', 'u1'], { cwd });
    expect(p.stdout.trim()).toBe('published u1 to uploads (routed to images)');
    const c = await lading(['consume', 'images', '--group', 'g', '--json', '--max', '1', '--idle-exit', '2s'], { cwd });
    expect(jsonLines(c.stdout)[0]).toMatchObject({ id: 'u1', topic: 'images', headers: { 'lading-routed-from': 'uploads' } });
  });

  test('a 100 KiB body travels by claim check through the default store', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'big.json'), JSON.stringify({ data: 'x'.repeat(100 * 1024) }));
    const p = await lading(['publish', 'blobs', '--file', 'big.json', '--json'], { cwd });
    expect(p.stderr).toBe('');
    expect(p.code).toBe(0);
    const ref = (JSON.parse(p.stdout) as { messages: { ref: { uri: string; size: number } }[] }).messages[0]!.ref;
    expect(ref.uri).toMatch(/^file:\/.*\.lading\/store\/\.lading\/payloads\/sha256\//);
    expect(ref.size).toBe(100 * 1024 + 11);
    const c = await lading(['consume', 'blobs', '--group', 'g', '--json', '--max', '1', '--idle-exit', '2s'], { cwd });
    expect(jsonLines(c.stdout)[0]!.ref).toMatchObject({ uri: ref.uri, size: ref.size });
  });
});

describe('bad input publishes nothing', () => {
  async function nothingPublished(cwd: string, topic: string): Promise<void> {
    const c = await lading(['consume', topic, '--group', 'check', '--json', '--idle-exit', '300ms'], { cwd });
    expect(c.code).toBe(0);
    expect(jsonLines(c.stdout)).toHaveLength(0);
  }

  test('malformed JSON body → exit 2 with a hint', async () => {
    const cwd = tempDir();
    const r = await lading(['publish', 't', '{"path": cat.png}'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('error: the body is not valid JSON (column 10: unexpected "c"); nothing was published');
    expect(r.stderr).toContain(`hint: quote the body for your shell`);
    await nothingPublished(cwd, 't');
  });

  test('malformed JSON in --file names the file and line', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'body.json'), '{\n  "a": 1,\n  "b": oops\n}\n');
    const r = await lading(['publish', 't', '--file', 'body.json'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('error: body.json is not valid JSON (line 3, column 8: unexpected "o"); nothing was published');
  });

  test('--lines: one bad line names its number and nothing is published', async () => {
    const cwd = tempDir();
    const r = await lading(['publish', 't', '-', '--lines'], { cwd, input: '{"a":1}\n{"a":2}\n{"a":\n{"a":4}\n' });
    expectUserError(r);
    expect(r.stderr).toContain('error: stdin: 1 line is not valid JSON (line 3, column 6: unexpected end of input); nothing was published');
    await nothingPublished(cwd, 't');
  });

  test('a missing --file and a missing body are user errors', async () => {
    const cwd = tempDir();
    const missing = await lading(['publish', 't', '--file', 'nope.json'], { cwd });
    expectUserError(missing);
    expect(missing.stderr).toContain('--file nope.json does not exist');
    const none = await lading(['publish', 't'], { cwd });
    expectUserError(none);
    expect(none.stderr).toContain('no message body given');
    const header = await lading(['publish', 't', '1', '--header', 'novalue'], { cwd });
    expectUserError(header);
    expect(header.stderr).toContain('--header "novalue" is not name=value');
    const ttl = await lading(['publish', 't', '1', '--ttl', 'soon'], { cwd });
    expectUserError(ttl);
    expect(ttl.stderr).toContain('--ttl "soon" is not a duration');
  });

  test('a body over the inline limit with no store → TOO_LARGE, exit 2', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'big.json'), JSON.stringify({ data: 'x'.repeat(100 * 1024) }));
    const r = await lading(['--no-store', 'publish', 't', '--file', 'big.json'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('error: message body is 100.0 KiB, over the inline limit of 64.0 KiB, and no store is configured for the claim check');
    expect(r.stderr).toContain('hint: configure a store');
    const json = await lading(['publish', 't', '--file', 'big.json', '--json'], { cwd, env: { LADING_STORE: 'none' } });
    expect(json.code).toBe(2);
    expect((JSON.parse(json.stderr) as { error: { code: string } }).error.code).toBe('TOO_LARGE');
    await nothingPublished(cwd, 't');
  });

  test('inlineLimit from the config file, with store: none', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ inlineLimit: '1KiB', store: 'none' }));
    const small = await lading(['publish', 't', JSON.stringify({ s: 'x'.repeat(500) })], { cwd });
    expect(small.code).toBe(0);
    const r = await lading(['publish', 't', '-', '--lines'], { cwd, input: `${JSON.stringify({ s: 'ok' })}\n${JSON.stringify({ s: 'x'.repeat(2000) })}\n` });
    expectUserError(r);
    expect(r.stderr).toContain('stdin line 2: message body is 2.0 KiB, over the inline limit of 1.0 KiB');
    const c = await lading(['consume', 't', '--group', 'check', '--json', '--idle-exit', '300ms'], { cwd });
    expect(jsonLines(c.stdout)).toHaveLength(1); // only the small one from before
  });
});

describe('consume --handler', () => {
  test('runs the module on each message; a missing or broken module is a user error', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'ok.mjs'), "import { appendFileSync } from 'node:fs';\nexport async function handler(message, ctx) { appendFileSync('seen.txt', message.id + ' ' + ctx.worker.length + '\\n'); }\n");
    writeFileSync(join(cwd, 'syntax.mjs'), 'export default function (m) { return m. }\n');
    writeFileSync(join(cwd, 'noexport.mjs'), 'export const x = 1;\n');
    await lading(['publish', 't', '1', '--id', 'a'], { cwd });
    await lading(['publish', 't', '2', '--id', 'b'], { cwd });
    const r = await lading(['consume', 't', '--group', 'g', '--handler', './ok.mjs', '--idle-exit', '500ms'], { cwd });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('done      a');
    expect(r.stdout).toContain('done      b');
    expect(r.stderr).toContain('handled 2 messages from t as group g: 2 done, 0 to retry, 0 to the hospital');

    const missing = await lading(['consume', 't', '--group', 'g', '--handler', './nope.js'], { cwd });
    expectUserError(missing);
    expect(missing.stderr).toContain('handler module ./nope.js does not exist');
    const syntax = await lading(['consume', 't', '--group', 'g', '--handler', 'syntax.mjs'], { cwd });
    expectUserError(syntax);
    expect(syntax.stderr).toContain('handler module syntax.mjs failed to load: SyntaxError');
    const noexport = await lading(['consume', 't', '--group', 'g', '--handler', 'noexport.mjs'], { cwd });
    expectUserError(noexport);
    expect(noexport.stderr).toContain('exports no handler function (exports: x)');
  });

  test('SIGTERM drains: the in-flight handler finishes and is acked', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'slow.mjs'), "import { appendFileSync } from 'node:fs';\nexport default async function (m) { appendFileSync('started.txt', m.id + '\\n'); await new Promise((r) => setTimeout(r, 800)); appendFileSync('finished.txt', m.id + '\\n'); }\n");
    await lading(['publish', 't', '1', '--id', 'slow-1'], { cwd });
    const { spawn } = await import('node:child_process');
    const { BIN, cliEnv } = await import('./helpers.js');
    const { existsSync, readFileSync } = await import('node:fs');
    const child = spawn(process.execPath, [BIN, 'consume', 't', '--group', 'g', '--handler', 'slow.mjs'], { cwd, env: cliEnv(cwd) });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const deadline = Date.now() + 15_000;
    while (!existsSync(join(cwd, 'started.txt')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    expect(stderr).toContain('SIGTERM: finishing in-flight messages');
    expect(readFileSync(join(cwd, 'finished.txt'), 'utf8')).toBe('slow-1\n');
    const again = await lading(['consume', 't', '--group', 'g', '--json', '--idle-exit', '300ms'], { cwd });
    expect(again.stdout).toBe(''); // it was acked, not handed back
  });
});

const hasScript = (() => {
  try {
    execFileSync('script', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!hasScript)('progress bar', () => {
  // `script` runs the CLI on a pseudo-terminal, as when a person runs it.
  const onTty = (cwd: string, args: string[]) =>
    spawnSync('script', ['-qec', [process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' '), '/dev/null'], { cwd, env: cliEnv(cwd), encoding: 'utf8', timeout: 30_000 });

  test('publish --lines shows progress on a terminal, never with --json or in a pipe', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'many.jsonl'), Array.from({ length: 300 }, (_, i) => `{"n":${i}}`).join('\n'));
    const tty = onTty(cwd, ['publish', 'many', '--file', 'many.jsonl', '--lines', '--batch', '50']);
    expect(tty.status).toBe(0);
    expect(tty.stdout).toContain('publishing to many [');
    expect(tty.stdout).toContain('300/300 100%');
    expect(tty.stdout).toContain('published 300 messages to many');
    const json = onTty(cwd, ['publish', 'many2', '--file', 'many.jsonl', '--lines', '--json']);
    expect(json.stdout).not.toContain('publishing to many2 [');
    const piped = await lading(['publish', 'many3', '--file', 'many.jsonl', '--lines'], { cwd });
    expect(piped.stdout + piped.stderr).not.toContain('[');
  });
});
