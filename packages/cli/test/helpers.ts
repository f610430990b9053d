import { spawn } from 'node:child_process';
import { mkdtempSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The built CLI: tests run it as a real process, the way users do (vitest's globalSetup builds dist/). */
export const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd: string;
  env?: Record<string, string | undefined>;
  input?: string;
  timeoutMs?: number;
}

/** A fresh temporary directory (real path, so mount detection sees what the CLI sees). */
export function tempDir(prefix = 'lading-cli-'): string {
  return realpathSync(mkdtempSync(join(tmpdir(), prefix)));
}

/** Environment for the child: none of the caller's LADING_* settings leak in; the queue lives in `cwd`. */
export function cliEnv(cwd: string, extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LADING_') && !k.startsWith('npm_') && v !== undefined) env[k] = v;
  env.LADING_QUEUE = `sqlite:${join(cwd, 'queue.db')}`;
  env.NO_COLOR = '1';
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

export function lading(args: string[], options: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: options.cwd, env: cliEnv(options.cwd, options.env), stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`lading ${args.join(' ')} did not finish in ${options.timeoutMs ?? 30_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, options.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? '');
  });
}

/** A user mistake: exit 2, `error:` and `hint:` on stderr, never a stack trace. */
export function expectUserError(r: RunResult): void {
  const problems: string[] = [];
  if (r.code !== 2) problems.push(`exit code ${r.code}, expected 2`);
  if (!/^error: /m.test(r.stderr)) problems.push('no "error:" line');
  if (!/^(hint|see): /m.test(r.stderr)) problems.push('no "hint:" / "see:" line');
  if (r.stderr.includes('    at ')) problems.push('a stack trace');
  if (r.stderr.includes('internal error')) problems.push('"internal error"');
  if (problems.length) throw new Error(`expected a user error, got ${problems.join(', ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}
