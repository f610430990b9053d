import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Child processes in multi-process tests run the built JavaScript (dist/), so build once first.
// Every temporary directory of the run (the tests', their child processes', the servers') goes under one
// fresh TMPDIR that is removed at the end: a test killed by a timeout, or one that forgets its cleanup,
// must not leave its files behind on a shared node's /tmp run after run.
export default function setup(): () => void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-b', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  const previous = process.env.TMPDIR;
  const runDir = mkdtempSync(join(tmpdir(), 'lading-tests-'));
  process.env.TMPDIR = runDir; // os.tmpdir() reads it on every call; the test workers and their children inherit it
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    if (process.env.LADING_TEST_KEEP_TMP) console.error(`kept the tests' temporary files in ${runDir}`);
    else rmSync(runDir, { recursive: true, force: true, maxRetries: 3 });
  };
}
