import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FileStore, withCache } from '@lading/storage';
import { startS3Server, type S3TestServer } from '../../../test/servers/s3.js';
import { BIN, cliEnv, expectUserError, lading, tempDir, type RunResult } from './helpers.js';

/**
 * `lading store ls|stat|cp|cat|rm` and `lading cache stats|evict` as users run them: the built CLI in a real
 * process, against real directories and a real S3-compatible server (s3rver on 127.0.0.1).
 */

const MiB = 1024 * 1024;
/** Each test runs many CLI processes (each loads the SDKs); on a busy two-core machine that takes a while. */
const SLOW = 240_000;
const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const explain = (r: RunResult) => `exit ${r.code}\nstdout: ${r.stdout.slice(0, 2000)}\nstderr: ${r.stderr.slice(0, 2000)}`;

/** Exit 0, nothing alarming on stderr. */
function ok(r: RunResult): RunResult {
  expect(r.code, explain(r)).toBe(0);
  expect(r.stderr, explain(r)).not.toMatch(/error|warning|    at /i);
  return r;
}

/** A user mistake reported on exactly one `error:` line (plus its hint), exit 2, no stack trace. */
function oneLineError(r: RunResult, pattern: RegExp): void {
  expectUserError(r);
  const lines = r.stderr.trim().split('\n');
  expect(lines.filter((l) => l.startsWith('error: ')), explain(r)).toHaveLength(1);
  expect(lines.every((l) => /^(error|hint): /.test(l)), explain(r)).toBe(true);
  expect(lines.find((l) => l.startsWith('error: '))).toMatch(pattern);
  expect(r.stdout).toBe('');
}

/** The object's bytes as `lading store cat` writes them (binary-safe). */
function catBytes(args: string[], cwd: string, env: Record<string, string> = {}): Promise<{ code: number | null; out: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'store', 'cat', ...args], { cwd, env: cliEnv(cwd, env), stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out: Buffer.concat(out), stderr }));
  });
}

/** A tree of small files: d/a.txt, d/sub/b.txt, d/sub/deep/c.txt, d/z.bin. */
function tree(cwd: string): Record<string, Buffer> {
  const files: Record<string, Buffer> = {
    'a.txt': Buffer.from('alpha\n'),
    'sub/b.txt': Buffer.from('bravo bravo\n'),
    'sub/deep/c.txt': Buffer.from('charlie\n'),
    'z.bin': randomBytes(70_000),
  };
  for (const [k, v] of Object.entries(files)) {
    mkdirSync(join(cwd, 'd', k, '..'), { recursive: true });
    writeFileSync(join(cwd, 'd', k), v);
  }
  return files;
}

function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('lading store on file: URIs', () => {
  test('cp file → file: same bytes, into a directory under the source name, --json says what was checked', async () => {
    const cwd = tempDir('lading-store-');
    const body = randomBytes(3 * MiB + 17);
    writeFileSync(join(cwd, 'src.bin'), body);

    const r = ok(await lading(['store', 'cp', 'file:./src.bin', 'file:./out/copy.bin', '--json'], { cwd }));
    const j = JSON.parse(r.stdout) as { src: string; dst: string; size: number; checksum: string; verified: string[] };
    expect(j.src).toBe(`file:${join(cwd, 'src.bin')}`);
    expect(j.dst).toBe(`file:${join(cwd, 'out', 'copy.bin')}`);
    expect(j.size).toBe(body.length);
    expect(j.checksum).toBe(sha(body));
    expect(j.verified).toContain('length');
    expect(readFileSync(join(cwd, 'out', 'copy.bin')).equals(body)).toBe(true);

    // A destination ending in / (or an existing directory) receives the object under its own name.
    ok(await lading(['store', 'cp', 'file:./src.bin', 'file:./out/'], { cwd }));
    expect(readFileSync(join(cwd, 'out', 'src.bin')).equals(body)).toBe(true);
    mkdirSync(join(cwd, 'existing'));
    const v = ok(await lading(['store', 'cp', 'file:./src.bin', 'file:./existing', '--verify', '--json'], { cwd }));
    expect((JSON.parse(v.stdout) as { verified: string[] }).verified).toContain('reread');
    expect(readFileSync(join(cwd, 'existing', 'src.bin')).equals(body)).toBe(true);
    // No temp files are left next to the copies.
    expect(readdirSync(join(cwd, 'out')).sort()).toEqual(['copy.bin', 'src.bin']);
  }, SLOW);

  test('cp --recursive copies every object under a prefix, nested keys kept; a summary line counts them', async () => {
    const cwd = tempDir('lading-store-');
    const files = tree(cwd);
    const r = ok(await lading(['store', 'cp', 'file:./d/', 'file:./copy/', '--recursive', '--json'], { cwd }));
    const lines = jsonLines(r.stdout);
    const summary = lines.at(-1) as { copied: number; bytes: number };
    expect(summary.copied).toBe(4);
    expect(summary.bytes).toBe(Object.values(files).reduce((n, b) => n + b.length, 0));
    expect(lines.slice(0, -1).map((l) => l['dst']).sort()).toEqual(Object.keys(files).map((k) => `file:${join(cwd, 'copy', k)}`).sort());
    for (const [k, v] of Object.entries(files)) expect(readFileSync(join(cwd, 'copy', k)).equals(v), k).toBe(true);

    // Without --recursive a prefix is refused with a pointer to the flag.
    oneLineError(await lading(['store', 'cp', 'file:./d/', 'file:./copy2/'], { cwd }), /names a prefix/);
    expect(existsSync(join(cwd, 'copy2'))).toBe(false);
  }, SLOW);

  test('cat: whole object, --range FIRST-LAST / FIRST- / -N, binary-safe; a range past the end is an error', async () => {
    const cwd = tempDir('lading-store-');
    const body = randomBytes(100_000);
    writeFileSync(join(cwd, 'x.bin'), body);
    const whole = await catBytes(['file:./x.bin'], cwd);
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.out.equals(body)).toBe(true);

    const mid = await catBytes(['file:./x.bin', '--range', '1000-1999'], cwd);
    expect(mid.code, mid.stderr).toBe(0);
    expect(mid.out.equals(body.subarray(1000, 2000))).toBe(true);
    const tail = await catBytes(['file:./x.bin', '--range', '-300'], cwd);
    expect(tail.out.equals(body.subarray(body.length - 300))).toBe(true);
    const from = await catBytes(['file:./x.bin', '--range', '90000-'], cwd);
    expect(from.out.equals(body.subarray(90_000))).toBe(true);
    const units = await catBytes(['file:./x.bin', '--range', '1KiB-2KiB'], cwd);
    expect(units.out.equals(body.subarray(1024, 2049))).toBe(true);

    oneLineError(await lading(['store', 'cat', 'file:./x.bin', '--range', '200000-'], { cwd }), /past its end/);
    oneLineError(await lading(['store', 'cat', 'file:./x.bin', '--range', '9-3'], { cwd }), /--range "9-3"/);
    oneLineError(await lading(['store', 'cat', 'file:./x.bin', '--range', 'abc'], { cwd }), /--range "abc"/);
  }, SLOW);

  test('stat --json: size, etag, mtime, checksum (stored or --checksum computed), store and key', async () => {
    const cwd = tempDir('lading-store-');
    const body = Buffer.from('stat me\n');
    writeFileSync(join(cwd, 'obj.txt'), body);
    const r = ok(await lading(['store', 'stat', 'file:./obj.txt', '--json'], { cwd }));
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(j['uri']).toBe(`file:${join(cwd, 'obj.txt')}`);
    expect(j['size']).toBe(body.length);
    expect(typeof j['etag']).toBe('string');
    expect(String(j['etag'])).not.toBe('');
    expect(Math.abs(Date.parse(String(j['mtime'])) - Date.now())).toBeLessThan(10 * 60_000);
    expect(j['checksum']).toBeNull(); // a POSIX file stores none
    expect(j['checksumComputed']).toBe(false);
    expect(j['store']).toBe(`file:${cwd}`);
    expect(j['key']).toBe('obj.txt');

    const c = JSON.parse(ok(await lading(['store', 'stat', 'file:./obj.txt', '--checksum', '--json'], { cwd })).stdout) as Record<string, unknown>;
    expect(c['checksum']).toBe(sha(body));
    expect(c['checksumComputed']).toBe(true);

    const text = ok(await lading(['store', 'stat', 'file:./obj.txt'], { cwd }));
    expect(text.stdout).toMatch(/^size\s+8 \(8 B\)$/m);
    expect(text.stdout).toMatch(/^checksum\s+unknown/m);
  }, SLOW);

  test('ls: first level with DIR/ lines, --recursive every key in byte order, --json one object per line, an object as itself', async () => {
    const cwd = tempDir('lading-store-');
    const files = tree(cwd);
    const top = ok(await lading(['store', 'ls', 'file:./d/'], { cwd }));
    const names = top.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).at(-1));
    expect(names).toEqual(['a.txt', 'sub/', 'z.bin']);
    expect(top.stdout).toMatch(/^\s+DIR\s+sub\/$/m);
    expect(top.stdout).toMatch(/^\s+70000\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+z\.bin$/m);

    const all = ok(await lading(['store', 'ls', 'file:./d/', '--recursive'], { cwd }));
    expect(all.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).at(-1))).toEqual(Object.keys(files).sort());

    const json = jsonLines(ok(await lading(['store', 'ls', 'file:./d', '-r', '--json'], { cwd })).stdout);
    expect(json.map((o) => o['name'])).toEqual(Object.keys(files).sort());
    for (const o of json) {
      expect(o['size']).toBe(files[String(o['name'])]!.length);
      expect(o['uri']).toBe(`file:${join(cwd, 'd', String(o['name']))}`);
    }
    const dirLine = jsonLines(ok(await lading(['store', 'ls', 'file:./d/', '--json'], { cwd })).stdout).find((o) => o['prefix'] === true);
    expect(dirLine).toEqual({ name: 'sub/', uri: `file:${join(cwd, 'd', 'sub')}/`, prefix: true });

    const one = ok(await lading(['store', 'ls', 'file:./d/a.txt'], { cwd }));
    expect(one.stdout.trim()).toMatch(/^6\s+\S+\s+a\.txt$/);

    // An empty (missing) prefix lists nothing and says so on stderr; a missing object name is an error.
    const none = await lading(['store', 'ls', 'file:./nothing-here/'], { cwd });
    expect(none.code).toBe(0);
    expect(none.stdout).toBe('');
    expect(none.stderr).toMatch(/nothing under/);
    oneLineError(await lading(['store', 'ls', 'file:./d/nope.txt'], { cwd }), /no such object or prefix/);
  }, SLOW);

  test('ls streams: a 3000-object listing is complete, and a reader that stops early (| head) ends it cleanly', async () => {
    const cwd = tempDir('lading-store-');
    mkdirSync(join(cwd, 'many'));
    for (let i = 0; i < 3000; i++) writeFileSync(join(cwd, 'many', `f${String(i).padStart(5, '0')}`), String(i));
    const all = ok(await lading(['store', 'ls', 'file:./many/', '--json'], { cwd }));
    const lines = jsonLines(all.stdout);
    expect(lines).toHaveLength(3000);
    expect(lines[0]!['name']).toBe('f00000');
    expect(lines[2999]!['name']).toBe('f02999');

    // Like `lading store ls … | head -1`: the pipe closes after the first line.
    const r = await new Promise<{ code: number | null; first: string; stderr: string }>((resolve, reject) => {
      const child = spawn(process.execPath, [BIN, 'store', 'ls', 'file:./many/'], { cwd, env: cliEnv(cwd), stdio: ['ignore', 'pipe', 'pipe'] });
      let first = '';
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      child.stdout.setEncoding('utf8').once('data', (d: string) => {
        first = d.split('\n')[0]!;
        child.stdout.destroy();
      });
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, first, stderr }));
    });
    expect(r.first).toMatch(/f00000$/);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/error|    at /);
  }, SLOW);

  test('rm: an object; a prefix needs --recursive and --yes; --force for a missing one; empty directories go', async () => {
    const cwd = tempDir('lading-store-');
    const files = tree(cwd);
    const one = JSON.parse(ok(await lading(['store', 'rm', 'file:./d/a.txt', '--json'], { cwd })).stdout) as Record<string, unknown>;
    expect(one).toEqual({ deleted: 1, bytes: files['a.txt']!.length, uri: `file:${join(cwd, 'd', 'a.txt')}` });
    expect(existsSync(join(cwd, 'd', 'a.txt'))).toBe(false);

    oneLineError(await lading(['store', 'rm', 'file:./d/sub/'], { cwd }), /needs --recursive --yes/);
    oneLineError(await lading(['store', 'rm', 'file:./d/sub/', '--recursive'], { cwd }), /without --yes/);
    oneLineError(await lading(['store', 'rm', 'file:./d/sub'], { cwd }), /is a directory/);
    expect(existsSync(join(cwd, 'd', 'sub', 'b.txt'))).toBe(true);
    expect(existsSync(join(cwd, 'd', 'sub', 'deep', 'c.txt'))).toBe(true);

    const r = JSON.parse(ok(await lading(['store', 'rm', 'file:./d/sub/', '-r', '--yes', '--json'], { cwd })).stdout) as Record<string, unknown>;
    expect(r).toEqual({ deleted: 2, bytes: files['sub/b.txt']!.length + files['sub/deep/c.txt']!.length });
    expect(existsSync(join(cwd, 'd', 'sub'))).toBe(false); // emptied directories are pruned
    expect(readFileSync(join(cwd, 'd', 'z.bin')).equals(files['z.bin']!)).toBe(true); // outside the prefix: kept

    oneLineError(await lading(['store', 'rm', 'file:./d/a.txt'], { cwd }), /no such object/);
    expect(JSON.parse(ok(await lading(['store', 'rm', 'file:./d/a.txt', '--force', '--json'], { cwd })).stdout)).toEqual({ deleted: 0, bytes: 0 });
  }, SLOW);

  test('user mistakes: one clear error line and a hint, exit 2, no stack trace; --json errors are JSON', async () => {
    const cwd = tempDir('lading-store-');
    writeFileSync(join(cwd, 'x.txt'), 'x');
    mkdirSync(join(cwd, 'dir'));
    const cases: [string[], RegExp][] = [
      [['store', 'cat', 'x.txt'], /no scheme \(for a local file write file:\.\/x\.txt\)/],
      [['store', 'ls', 'gopher://host/x'], /unknown scheme `gopher:`/],
      [['store', 'stat', 's3:/bucket/x'], /write s3:\/\/bucket\/key/],
      [['store', 'ls', 's3://Not_A_Bucket/x'], /not an object URI: "Not_A_Bucket" is not a valid bucket name/],
      [['store', 'cat', 'file:'], /the path is empty/],
      [['store', 'cat', 'file:./missing.bin'], /file:\.\/missing\.bin: no such object/],
      [['store', 'stat', 'file:./missing.bin'], /no such object/],
      [['store', 'cp', 'file:./missing.bin', 'file:./y.bin'], /no such object/],
      [['store', 'cat', 'file:./dir'], /is a directory/],
      [['store', 'stat', 'file:./dir/'], /names a prefix/],
      [['store', 'cp', 'file:./x.txt', 'file:./x.txt'], /same object/],
      // A key may never escape its root: `..` inside a path is refused, never resolved.
      [['store', 'cat', `file:${cwd}/dir/../../../etc/passwd`], /`\.\.` segment would climb out/],
      [['store', 'cat', 'file:/tmp/x/../../etc/passwd'], /`\.\.` segment would climb out/],
      [['store', 'cp', 'file:./x.txt', 'file:./dir/../../escaped.txt'], /`\.\.` segment/],
      [['store', 'cat', 's3://bucket/a/../../etc/passwd'], /`\.\.` segment/],
      [['store', 'rm', 'file:///tmp/../etc/hosts'], /`\.\.` segment/],
    ];
    for (const [args, pattern] of cases) oneLineError(await lading(args, { cwd }), pattern);
    expect(existsSync(join(cwd, '..', 'escaped.txt'))).toBe(false);

    const j = await lading(['store', 'cat', 'file:/tmp/x/../../etc/passwd', '--json'], { cwd });
    expect(j.code).toBe(2);
    expect(j.stdout).toBe('');
    const err = (JSON.parse(j.stderr) as { error: { code: string; message: string; hint: string } }).error;
    expect(err.code).toBe('UNSAFE_KEY');
    expect(err.hint).toMatch(/without `\.\.`/);

    // A leading `..` of a relative path names a sibling of the working directory, as in a shell.
    mkdirSync(join(cwd, 'w'));
    const up = await catBytes(['file:../x.txt'], join(cwd, 'w'));
    expect(up.code, up.stderr).toBe(0);
    expect(up.out.toString()).toBe('x');
  }, SLOW);
});

describe('lading store against S3 (s3rver)', () => {
  let server: S3TestServer;
  let env: Record<string, string>;
  const s3 = (key: string) => `s3://${server.bucket}/${key}?endpoint=${server.endpoint}&region=us-east-1`;

  beforeAll(async () => {
    server = await startS3Server({ bucket: 'lading-cli' });
    env = { AWS_ACCESS_KEY_ID: server.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey };
  });
  afterAll(async () => {
    await server?.stop();
  });

  test('cp file → s3 (multipart) and s3 → file: identical bytes, stat --json, cat --range on S3, server-side copy', async () => {
    const cwd = tempDir('lading-store-s3-');
    const body = randomBytes(20 * MiB + 123); // two 16 MiB parts
    writeFileSync(join(cwd, 'big.bin'), body);

    const up = JSON.parse(ok(await lading(['store', 'cp', 'file:./big.bin', s3('up/big.bin'), '--json'], { cwd, env })).stdout) as Record<string, unknown>;
    expect(up['size']).toBe(body.length);
    expect(up['checksum']).toBe(sha(body));
    expect(up['dst']).toMatch(/^s3:\/\/lading-cli\/up\/big\.bin\?endpoint=/);

    const st = JSON.parse(ok(await lading(['store', 'stat', s3('up/big.bin'), '--json'], { cwd, env })).stdout) as Record<string, unknown>;
    expect(st['size']).toBe(body.length);
    expect(st['key']).toBe('up/big.bin');
    expect(String(st['etag'])).toMatch(/^[0-9a-f]{32}(-\d+)?$/);
    const withSum = JSON.parse(ok(await lading(['store', 'stat', s3('up/big.bin'), '--checksum', '--json'], { cwd, env })).stdout) as Record<string, unknown>;
    expect(withSum['checksum']).toBe(sha(body));

    const down = JSON.parse(ok(await lading(['store', 'cp', s3('up/big.bin'), 'file:./back/', '--json'], { cwd, env })).stdout) as Record<string, unknown>;
    expect(down['size']).toBe(body.length);
    expect(readFileSync(join(cwd, 'back', 'big.bin')).equals(body)).toBe(true);

    const range = await catBytes([s3('up/big.bin'), '--range', '16777210-16777229'], cwd, env); // across the part boundary
    expect(range.code, range.stderr).toBe(0);
    expect(range.out.equals(body.subarray(16_777_210, 16_777_230))).toBe(true);

    // A small object uploaded whole carries its sha256; a copy inside the bucket is server-side and keeps it.
    writeFileSync(join(cwd, 'small.txt'), 'small object\n');
    ok(await lading(['store', 'cp', 'file:./small.txt', s3('up/small.txt')], { cwd, env }));
    const same = JSON.parse(ok(await lading(['store', 'cp', s3('up/small.txt'), s3('up/small-copy.txt'), '--verify', '--json'], { cwd, env })).stdout) as { verified: string[]; checksum: string };
    expect(same.verified).toEqual(['length', 'server-side', 'source-checksum', 'reread']);
    expect(same.checksum).toBe(sha('small object\n'));
    expect((await catBytes([s3('up/small-copy.txt')], cwd, env)).out.toString()).toBe('small object\n');
  }, SLOW);

  test('recursive cp file → s3 → file, ls on S3, rm --recursive --yes of an S3 prefix', async () => {
    const cwd = tempDir('lading-store-s3-');
    const files = tree(cwd);
    const total = Object.values(files).reduce((n, b) => n + b.length, 0);
    const upload = jsonLines(ok(await lading(['store', 'cp', 'file:./d/', s3('tree/'), '-r', '--json'], { cwd, env })).stdout);
    expect(upload.at(-1)).toMatchObject({ copied: 4, bytes: total });

    const top = ok(await lading(['store', 'ls', s3('tree/')], { cwd, env }));
    expect(top.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).at(-1))).toEqual(['a.txt', 'sub/', 'z.bin']);
    const all = jsonLines(ok(await lading(['store', 'ls', s3('tree'), '--recursive', '--json'], { cwd, env })).stdout);
    expect(all.map((o) => o['name'])).toEqual(Object.keys(files).sort());
    expect(all.map((o) => o['size'])).toEqual(Object.keys(files).sort().map((k) => files[k]!.length));

    const download = jsonLines(ok(await lading(['store', 'cp', s3('tree/'), 'file:./back/', '--recursive', '--json'], { cwd, env })).stdout);
    expect(download.at(-1)).toMatchObject({ copied: 4, bytes: total });
    for (const [k, v] of Object.entries(files)) expect(readFileSync(join(cwd, 'back', k)).equals(v), k).toBe(true);

    oneLineError(await lading(['store', 'rm', s3('tree/'), '-r'], { cwd, env }), /without --yes/);
    expect(jsonLines(ok(await lading(['store', 'ls', s3('tree/'), '-r', '--json'], { cwd, env })).stdout)).toHaveLength(4);
    const rm = JSON.parse(ok(await lading(['store', 'rm', s3('tree/sub/'), '-r', '--yes', '--json'], { cwd, env })).stdout) as Record<string, unknown>;
    expect(rm).toEqual({ deleted: 2, bytes: files['sub/b.txt']!.length + files['sub/deep/c.txt']!.length });
    expect(jsonLines(ok(await lading(['store', 'ls', s3('tree/'), '-r', '--json'], { cwd, env })).stdout).map((o) => o['name'])).toEqual(['a.txt', 'z.bin']);
  }, SLOW);

  test('S3 mistakes: missing object, missing prefix, `..` in a key — one error line, exit 2, and no SDK noise', async () => {
    const cwd = tempDir('lading-store-s3-');
    oneLineError(await lading(['store', 'cat', s3('nope/missing.bin')], { cwd, env }), /no such object/);
    oneLineError(await lading(['store', 'stat', s3('nope/missing.bin'), '--checksum'], { cwd, env }), /no such object/);
    oneLineError(await lading(['store', 'cp', s3('nope/'), 'file:./x/', '-r'], { cwd, env }), /no such object or prefix/);
    oneLineError(await lading(['store', 'cp', 'file:./nope.bin', s3('x.bin')], { cwd, env }), /no such object/);
    oneLineError(await lading(['store', 'rm', s3('nope/missing.bin')], { cwd, env }), /no such object/);
    oneLineError(await lading(['store', 'cat', s3('a/../../x')], { cwd, env }), /`\.\.` segment/);
  }, SLOW);
});

describe('lading cache stats|evict on a cache filled by reads through it', () => {
  let server: S3TestServer;
  let env: Record<string, string>;
  const s3 = (key: string) => `s3://${server.bucket}/${key}?endpoint=${server.endpoint}&region=us-east-1`;

  beforeAll(async () => {
    server = await startS3Server({ bucket: 'lading-cache' });
    env = { AWS_ACCESS_KEY_ID: server.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey };
  });
  afterAll(async () => {
    await server?.stop();
  });

  interface StatsJson {
    dir: string;
    source: string;
    exists: boolean;
    maxBytes: number;
    blockSize: number;
    bytes: number;
    blocks: number;
    objects: number;
  }
  const stats = async (cwd: string, args: string[] = [], extraEnv: Record<string, string> = {}): Promise<StatsJson> =>
    JSON.parse(ok(await lading(['cache', 'stats', '--json', ...args], { cwd, env: { ...env, ...extraEnv } })).stdout) as StatsJson;

  test('reads through the cache (store cat/cp --cache, the SDK) fill it; stats counts blocks and objects; evict --prefix, --to, --all', async () => {
    const cwd = tempDir('lading-cache-');
    const cacheDir = join(cwd, 'cache');
    const big = randomBytes(20 * MiB + 5); // 3 blocks of 8 MiB
    writeFileSync(join(cwd, 'big.bin'), big);
    ok(await lading(['store', 'cp', 'file:./big.bin', s3('data/big.bin')], { cwd, env }));

    // Before anything is cached the directory does not exist, and stats does not create it.
    const before = await stats(cwd, ['--cache-dir', cacheDir]);
    expect(before).toMatchObject({ exists: false, bytes: 0, blocks: 0, source: '--cache-dir' });
    expect(existsSync(cacheDir)).toBe(false);

    // A ranged read through the cache fetches only the block it touches.
    const part = await catBytes([s3('data/big.bin'), '--range', '9MiB-9437194', '--cache-dir', cacheDir], cwd, env);
    expect(part.code, part.stderr).toBe(0);
    expect(part.out.equals(big.subarray(9 * MiB, 9_437_195))).toBe(true);
    expect(await stats(cwd, ['--cache-dir', cacheDir])).toMatchObject({ exists: true, blocks: 1, objects: 1, bytes: 8 * MiB, blockSize: 8 * MiB });

    // A whole read through the cache (LADING_CACHE_DIR this time) fills the rest and returns the same bytes.
    const whole = await catBytes([s3('data/big.bin'), '--cache'], cwd, { ...env, LADING_CACHE_DIR: cacheDir });
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.out.equals(big)).toBe(true);
    const full = await stats(cwd, [], { LADING_CACHE_DIR: cacheDir });
    expect(full).toMatchObject({ dir: cacheDir, source: 'LADING_CACHE_DIR', blocks: 3, objects: 1, bytes: big.length });

    // Read again from the cache: same bytes, nothing new cached.
    const again = await catBytes([s3('data/big.bin'), '--cache-dir', cacheDir], cwd, env);
    expect(again.out.equals(big)).toBe(true);
    expect((await stats(cwd, ['--cache-dir', cacheDir])).blocks).toBe(3);

    // A copy from a file: store through the cache, and a read through the SDK's cache layer, add two objects.
    const small = randomBytes(100_000);
    writeFileSync(join(cwd, 'small.bin'), small);
    const cp = ok(await lading(['store', 'cp', 'file:./small.bin', 'file:./copied.bin', '--cache-dir', cacheDir], { cwd, env }));
    expect(cp.stdout).toMatch(/^copied /);
    expect(readFileSync(join(cwd, 'copied.bin')).equals(small)).toBe(true);
    mkdirSync(join(cwd, 'sdk', 'other'), { recursive: true });
    writeFileSync(join(cwd, 'sdk', 'other', 'o.bin'), Buffer.alloc(50_000, 7));
    const cached = await withCache(await FileStore.open(join(cwd, 'sdk')), { dir: cacheDir });
    let n = 0;
    for await (const chunk of await cached.read('other/o.bin')) n += (chunk as Buffer).length;
    expect(n).toBe(50_000);
    await cached.close();
    const three = await stats(cwd, ['--cache-dir', cacheDir, '--cache-max', '1GiB']);
    expect(three).toMatchObject({ objects: 3, blocks: 5, bytes: big.length + small.length + 50_000, maxBytes: 1024 * MiB });

    // --prefix (limited to one store with the global --store) removes only that store's matching objects.
    const byPrefix = await lading(['cache', 'evict', '--prefix', 'other/', '--store', `file:${join(cwd, 'sdk')}`, '--cache-dir', cacheDir, '--json'], { cwd, env });
    expect(JSON.parse(ok(byPrefix).stdout)).toMatchObject({ evictedBlocks: 1, evictedBytes: 50_000, remainingBytes: big.length + small.length });
    const none = JSON.parse(ok(await lading(['cache', 'evict', '--prefix', 'data/', '--store', 'file:./elsewhere', '--cache-dir', cacheDir, '--json'], { cwd, env })).stdout) as { evictedBlocks: number };
    expect(none.evictedBlocks).toBe(0);
    expect((await stats(cwd, ['--cache-dir', cacheDir])).objects).toBe(2);

    // --to: least recently used blocks go first until at most that much is left.
    const to = JSON.parse(ok(await lading(['cache', 'evict', '--to', '17MiB', '--cache-dir', cacheDir, '--json'], { cwd, env })).stdout) as { evictedBlocks: number; remainingBytes: number };
    expect(to.evictedBlocks).toBeGreaterThanOrEqual(1);
    expect(to.remainingBytes).toBeLessThanOrEqual(17 * MiB);
    expect((await stats(cwd, ['--cache-dir', cacheDir])).bytes).toBe(to.remainingBytes);

    // --all empties it; the text output says how much went.
    const all = ok(await lading(['cache', 'evict', '--all', '--cache-dir', cacheDir], { cwd, env }));
    expect(all.stdout).toMatch(/^evicted \d+ blocks? \(.+\) from .+; 0 B remain cached$/m);
    expect(await stats(cwd, ['--cache-dir', cacheDir])).toMatchObject({ exists: true, bytes: 0, blocks: 0, objects: 0 });

    // The cached reads never changed the sources.
    const check = await catBytes([s3('data/big.bin')], cwd, env);
    expect(sha(check.out)).toBe(sha(big));
  }, SLOW);

  test('cache mistakes: nothing or two things to evict, a bad size; one error line, exit 2', async () => {
    const cwd = tempDir('lading-cache-');
    const cacheDir = join(cwd, 'cache');
    oneLineError(await lading(['cache', 'evict', '--cache-dir', cacheDir], { cwd }), /say what to evict/);
    oneLineError(await lading(['cache', 'evict', '--all', '--to', '1GiB', '--cache-dir', cacheDir], { cwd }), /cannot be combined/);
    oneLineError(await lading(['cache', 'evict', '--to', 'lots', '--cache-dir', cacheDir], { cwd }), /--to/);
    oneLineError(await lading(['cache', 'stats', '--cache-max', 'huge', '--cache-dir', cacheDir], { cwd }), /cache-max|huge/);
    writeFileSync(join(cwd, 'x.bin'), 'x');
    oneLineError(await lading(['store', 'cat', 'file:./x.bin', '--cache-dir', cacheDir, '--cache-max', '1KiB'], { cwd }), /smaller than one block/);
    expect(existsSync(cacheDir)).toBe(false);
  }, SLOW);
});
