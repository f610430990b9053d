import { describe, expect, test } from 'vitest';
import { expectUserError, lading, tempDir } from './helpers.js';

const COMMANDS = [
  [],
  ['demo'],
  ['publish'],
  ['consume'],
  ['topics'],
  ['topics', 'create'],
  ['topics', 'list'],
  ['hospital'],
  ['hospital', 'list'],
  ['hospital', 'show'],
  ['hospital', 'retry'],
  ['hospital', 'ignore'],
  ['hospital', 'report'],
  ['hospital', 'purge'],
  ['submit'],
  ['worker'],
  ['status'],
  ['wait'],
];

describe('--help', () => {
  const cwd = tempDir();

  test.each(COMMANDS.map((c) => [c.join(' ') || '(root)', c] as const))('lading %s --help shows a description and an example', async (_name, cmd) => {
    const r = await lading([...cmd, '--help'], { cwd });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Usage: lading${cmd.length ? ` ${cmd.join(' ')}` : ''}`);
    expect(r.stdout).toMatch(/\nExample:\n {2}\$ lading /);
    if (cmd.length > 0) expect(r.stdout).toContain('--queue <uri>'); // global options are listed too
  });

  test('every leaf command takes --json', async () => {
    const leaves = COMMANDS.filter((c) => c.length > 0 && !(c.length === 1 && (c[0] === 'topics' || c[0] === 'hospital')));
    const results = await Promise.all(leaves.map((c) => lading([...c, '--help'], { cwd })));
    results.forEach((r, i) => expect(r.stdout, leaves[i]!.join(' ')).toContain('--json'));
  });

  test('lading --help documents the exit codes', async () => {
    const r = await lading(['--help'], { cwd });
    expect(r.stdout).toContain('Exit codes:');
    for (const code of ['0  ok', '1  failure', '2  usage or input error', '3  finished, but something is in the error hospital']) expect(r.stdout).toContain(code);
  });
});

describe('usage errors exit 2 and point at --help', () => {
  const cwd = tempDir();

  test('unknown command, with a suggestion', async () => {
    const r = await lading(['publsh'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain("unknown command 'publsh'");
    expect(r.stderr).toContain('see: lading --help');
  });

  test('missing argument names the command', async () => {
    const r = await lading(['publish'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain("missing required argument 'topic'");
    expect(r.stderr).toContain('see: lading publish --help');
  });

  test('missing required option', async () => {
    const r = await lading(['consume', 'images'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain('--group');
    expect(r.stderr).toContain('see: lading consume --help');
  });

  test('unknown option of a nested command', async () => {
    const r = await lading(['hospital', 'retry', '--frobnicate'], { cwd });
    expectUserError(r);
    expect(r.stderr).toContain("unknown option '--frobnicate'");
    expect(r.stderr).toContain('see: lading hospital retry --help');
  });

  test('a bad choice with --json is a JSON error on stderr', async () => {
    const r = await lading(['hospital', 'list', '--state', 'sideways', '--json'], { cwd });
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const parsed = JSON.parse(r.stderr) as { error: { code: string; message: string; hint: string } };
    expect(parsed.error.code).toBe('USAGE');
    expect(parsed.error.message).toContain('sideways');
    expect(parsed.error.hint).toBe('see: lading hospital list --help');
  });

  test('a command group without a subcommand prints its help and exits 2', async () => {
    const r = await lading(['hospital'], { cwd });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Usage: lading hospital');
  });

  test('--version', async () => {
    const r = await lading(['--version'], { cwd });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
