import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { expectUserError, lading, tempDir } from './helpers.js';

describe('config file errors name the file and the field (exit 2)', () => {
  test('YAML: a bad topic policy value and an unknown field', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.yaml'), 'topics:\n  images:\n    onExpired: later\n    maxAttempt: 3\n');
    const r = await lading(['topics', 'list'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('error: lading.config.yaml: topics.images.onExpired: expected "hospital" or "drop"');
    expect(r.stderr).toContain('lading.config.yaml: topics.images.maxAttempt: unknown field (did you mean maxAttempts?)');
  });

  test('JSON: wrong types, bad durations, unknown top-level fields, all at once', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ queue: 5, topics: { a: { ttlMs: 'soon', backoff: { initialMs: '2s', foo: 1 } } }, extra: true }));
    const r = await lading(['topics', 'list'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('lading.config.json: queue: expected string, received number');
    expect(r.stderr).toContain('lading.config.json: topics.a.ttlMs: "soon" is not a duration');
    expect(r.stderr).toContain('lading.config.json: topics.a.backoff.foo: unknown field');
    expect(r.stderr).toContain('lading.config.json: extra: unknown field');
    expect(r.stderr).not.toContain('backoff.initialMs'); // "2s" is a valid duration
  });

  test('JSON and YAML syntax errors', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.json'), '{\n  "queue": "sqlite:./q.db",\n}\n');
    const json = await lading(['topics', 'list'], { cwd });
    expectUserError(json);
    expect(json.stderr).toContain('error: lading.config.json: not valid JSON (line 3, column 1: trailing comma before "}")');
    writeFileSync(join(cwd, 'other.yml'), 'queue: [\n');
    const yaml = await lading(['--config', 'other.yml', 'topics', 'list'], { cwd });
    expectUserError(yaml);
    expect(yaml.stderr).toMatch(/error: other\.yml: not valid YAML \(line \d\)/);
  });

  test('bad values: queue URI, byte sizes, webhook URL', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ queue: 'mysql://db/x' }));
    const q = await lading(['topics', 'list'], { cwd, env: { LADING_QUEUE: undefined } });
    expectUserError(q);
    expect(q.stderr).toContain('error: lading.config.json: queue: queue URI "mysql://db/x" has an unknown scheme "mysql:"');
    writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ inlineLimit: 'lots' }));
    const size = await lading(['topics', 'list'], { cwd });
    expectUserError(size);
    expect(size.stderr).toContain('lading.config.json: inlineLimit: "lots" is not a byte size');
    writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ hospital: { webhook: 'not a url' } }));
    const hook = await lading(['topics', 'list'], { cwd });
    expectUserError(hook);
    expect(hook.stderr).toContain('lading.config.json: hospital.webhook: Invalid URL');
  });

  test('two config files, or a --config that does not exist', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.json'), '{}');
    writeFileSync(join(cwd, 'lading.config.yaml'), '{}');
    const two = await lading(['topics', 'list'], { cwd });
    expectUserError(two);
    expect(two.stderr).toContain('more than one config file');
    const missing = await lading(['--config', 'nope.yaml', 'topics', 'list'], { cwd });
    expectUserError(missing);
    expect(missing.stderr).toContain('config file nope.yaml (from --config) does not exist');
    const env = await lading(['topics', 'list'], { cwd, env: { LADING_CONFIG: 'gone.json' } });
    expectUserError(env);
    expect(env.stderr).toContain('(from LADING_CONFIG)');
  });
});

describe('config sources: flags > env > config file > defaults', () => {
  test('the queue comes from the highest source given; relative config paths are relative to the file', async () => {
    const cwd = tempDir();
    mkdirSync(join(cwd, 'conf'));
    writeFileSync(join(cwd, 'conf', 'lading.yaml'), 'queue: sqlite:./from-config.db\n');
    const noEnv = { LADING_QUEUE: undefined, LADING_CONFIG: 'conf/lading.yaml' };
    expect((await lading(['topics', 'list'], { cwd, env: noEnv })).code).toBe(0);
    expect(existsSync(join(cwd, 'conf', 'from-config.db'))).toBe(true);
    expect((await lading(['topics', 'list'], { cwd, env: { ...noEnv, LADING_QUEUE: 'sqlite:./from-env.db' } })).code).toBe(0);
    expect(existsSync(join(cwd, 'from-env.db'))).toBe(true);
    expect((await lading(['--queue', 'sqlite:./from-flag.db', 'topics', 'list'], { cwd, env: { ...noEnv, LADING_QUEUE: 'sqlite:./from-env.db' } })).code).toBe(0);
    expect(existsSync(join(cwd, 'from-flag.db'))).toBe(true);
    // Nothing given at all: the embedded default.
    const bare = tempDir();
    expect((await lading(['topics', 'list'], { cwd: bare, env: { LADING_QUEUE: undefined } })).code).toBe(0);
    expect(existsSync(join(bare, '.lading', 'queue.db'))).toBe(true);
  });

  test('topic policies from the config file are applied to the queue', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'lading.config.yaml'), 'topics:\n  images:\n    maxAttempts: 7\n    ttlMs: 1h\n    backoff:\n      initialMs: 2s\n');
    const r = await lading(['topics', 'list', '--json'], { cwd });
    expect(r.code).toBe(0);
    const [images] = JSON.parse(r.stdout) as { name: string; policy: { maxAttempts: number; ttlMs: number; backoff: { initialMs: number; maxMs: number } } }[];
    expect(images).toMatchObject({ name: 'images', policy: { maxAttempts: 7, ttlMs: 3_600_000, backoff: { initialMs: 2000, maxMs: 300_000 } } });
  });
});

describe('bad addresses and unsafe locations', () => {
  test('--queue mysql://x → exit 2, error and hint, no stack trace', async () => {
    const cwd = tempDir();
    const r = await lading(['--queue', 'mysql://x', 'topics', 'list'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('error: --queue: queue URI "mysql://x" has an unknown scheme "mysql:"');
    expect(r.stderr).toContain('hint: queue URIs look like sqlite:');
  });

  test('LADING_QUEUE with a bad value names the variable; --json gives a JSON error', async () => {
    const cwd = tempDir();
    const r = await lading(['publish', 't', '1', '--json'], { cwd, env: { LADING_QUEUE: 'kafka:broker' } });
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain('    at ');
    const err = (JSON.parse(r.stderr) as { error: { code: string; message: string; hint: string } }).error;
    expect(err.code).toBe('BAD_URI');
    expect(err.message).toContain('LADING_QUEUE: queue URI "kafka:broker"');
    expect(err.hint).toContain('kafka://');
  });

  test('a bad store URI is a user error', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'big.json'), JSON.stringify({ data: 'x'.repeat(70_000) }));
    const r = await lading(['--store', 'ftp://host/x', 'publish', 't', '--file', 'big.json'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('ftp://host/x');
  });

  test('--debug shows no stack for a user mistake either', async () => {
    const cwd = tempDir();
    const r = await lading(['--debug', '--queue', 'mysql://x', 'topics', 'list'], { cwd });
    expectUserError(r);
  });

  test('a queue database on NFS is refused with a clear message', async () => {
    const cwd = tempDir();
    writeFileSync(join(cwd, 'mountinfo'), `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n98 22 0:52 / ${cwd} rw,relatime shared:50 - nfs4 filer:/export/home rw,vers=4.2\n`);
    const r = await lading(['publish', 't', '{}'], { cwd, env: { LADING_MOUNTINFO_FILE: join(cwd, 'mountinfo') } });
    expectUserError(r);
    expect(r.stderr).toMatch(/error: the queue database .*queue\.db would be on an NFS mount \(.*, nfs4\)/);
    expect(r.stderr).toContain("SQLite's locks are not reliable on NFS");
    expect(r.stderr).toContain('hint: put the queue database on a local disk');
    expect(existsSync(join(cwd, 'queue.db'))).toBe(false);
  });
});

describe('topics', () => {
  test('create with every policy option, update, list with groups and counts', async () => {
    const cwd = tempDir();
    const c = await lading(['topics', 'create', 'images', '--max-attempts', '3', '--backoff-initial', '1s', '--backoff-max', '5m', '--ttl', '1h', '--on-expired', 'drop', '--dedup-window', '24h', '--lease', '30s', '--partitions', '4', '--route', 'type=video->videos', '--route', 'headers.tenant=acme,body.size=3->small'], { cwd });
    expect(c.stderr).toBe('');
    expect(c.code).toBe(0);
    expect(c.stdout).toContain('created topic images: maxAttempts 3, backoff 1s..5m x2 (jitter 0.2), ttl 1h then drop, dedup 1d, lease 30s, 4 partitions');
    expect(c.stdout).toContain('route type=video -> videos');
    expect(c.stdout).toContain('route headers.tenant=acme,body.size=3 -> small');
    const u = await lading(['topics', 'create', 'images', '--backoff-initial', '2s', '--json'], { cwd });
    const info = JSON.parse(u.stdout) as { created: boolean; policy: { maxAttempts: number; backoff: { initialMs: number; maxMs: number }; routes: unknown[] } };
    expect(info.created).toBe(false);
    expect(info.policy).toMatchObject({ maxAttempts: 3, backoff: { initialMs: 2000, maxMs: 300_000 } });
    expect(info.policy.routes).toHaveLength(2);

    await lading(['publish', 'images', '{"a":1}'], { cwd });
    await lading(['consume', 'images', '--group', 'thumbs', '--max', '1'], { cwd });
    await lading(['publish', 'images', '{"a":2}'], { cwd });
    const list = await lading(['topics', 'list'], { cwd });
    expect(list.stdout).toMatch(/^TOPIC\s+ATTEMPTS\s+BACKOFF\s+TTL\s+ROUTES\s+GROUPS/);
    expect(list.stdout).toMatch(/images\s+3\s+2s\.\.5m x2\s+1h \(drop\)\s+type=video -> videos; headers\.tenant=acme,body\.size=3 -> small\s+thumbs 1\/0\/0\/0/);
    const json = JSON.parse((await lading(['topics', 'list', '--json'], { cwd })).stdout) as { name: string; groups: { group: string; ready: number }[] }[];
    expect(json.find((t) => t.name === 'images')!.groups).toEqual([{ group: 'thumbs', ready: 1, delayed: 0, leased: 0, hospital: 0 }]);
  });

  test('unknown policy values and bad routes → exit 2 naming the field', async () => {
    const cwd = tempDir();
    const choice = await lading(['topics', 'create', 'x', '--on-expired', 'later'], { cwd });
    expectUserError(choice);
    expect(choice.stderr).toContain("option '--on-expired <action>' argument 'later' is invalid. Allowed choices are hospital, drop.");
    const ttl = await lading(['topics', 'create', 'x', '--ttl', 'forever'], { cwd });
    expectUserError(ttl);
    expect(ttl.stderr).toContain('--ttl "forever" is not a duration');
    const jitter = await lading(['topics', 'create', 'x', '--backoff-jitter', '3'], { cwd });
    expectUserError(jitter);
    expect(jitter.stderr).toContain('topic x: backoff.jitter');
    const route = await lading(['topics', 'create', 'x', '--route', 'type=image'], { cwd });
    expectUserError(route);
    expect(route.stderr).toContain('--route "type=image": no "->TOPIC" target');
    const field = await lading(['topics', 'create', 'x', '--route', 'color=red->y'], { cwd });
    expectUserError(field);
    expect(field.stderr).toContain('routes.0.when.color');
    const name = await lading(['topics', 'create', 'bad name'], { cwd });
    expectUserError(name);
    expect(name.stderr).toContain('topic name "bad name" is not valid');
  });
});

describe('hospital report webhook', () => {
  test('POSTs to --webhook or the config file webhook; --no-webhook does not', async () => {
    const { createServer } = await import('node:http');
    const posts: { url: string; body: { text: string; report: { total: number } } }[] = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        posts.push({ url: req.url ?? '', body: JSON.parse(body) as (typeof posts)[number]['body'] });
        res.end('ok');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      const cwd = tempDir();
      const flag = await lading(['hospital', 'report', '--webhook', `http://127.0.0.1:${port}/flag`], { cwd });
      expect(flag.code).toBe(0);
      expect(flag.stderr).toContain(`posted the report to http://127.0.0.1:${port}/flag`);
      writeFileSync(join(cwd, 'lading.config.json'), JSON.stringify({ hospital: { webhook: `http://127.0.0.1:${port}/config` } }));
      expect((await lading(['hospital', 'report'], { cwd })).code).toBe(0);
      expect((await lading(['hospital', 'report', '--no-webhook'], { cwd })).code).toBe(0);
      expect(posts.map((p) => p.url)).toEqual(['/flag', '/config']);
      expect(posts[0]!.body.report.total).toBe(0);
      expect(posts[0]!.body.text).toContain('# lading error hospital');
      // A webhook that answers with an error is a runtime failure: exit 1, no stack.
      const down = await lading(['hospital', 'report', '--webhook', 'http://127.0.0.1:1/nothing'], { cwd });
      expect(down.code).toBe(1);
      expect(down.stderr).toContain('error: webhook http://127.0.0.1:1/nothing did not answer');
      expect(down.stderr).not.toContain('    at ');
    } finally {
      server.close();
    }
  });
});
