#!/usr/bin/env node
// Installs what the tests need beyond npm packages (the librdkafka mock broker's headers), builds,
// runs every test with vitest, and ends with one countable line: `tests: N passed, N failed, N skipped`.
// Exit code: non-zero when anything failed or when no test ran.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });

// 1. System packages the test servers need (Debian): librdkafka's mock cluster for the Kafka tests.
const installers = ['test/kafka-mock/install-deps.sh'].filter((f) => existsSync(join(root, f)));
for (const script of installers) {
  const r = run('bash', [script]);
  if (r.status !== 0) {
    console.error(`error: ${script} failed; the tests that need it cannot run`);
    process.exit(1);
  }
}

// 2. Build the packages (child processes in the tests run dist/).
const tsc = join(root, 'node_modules/typescript/bin/tsc');
if (run(process.execPath, [tsc, '-b', 'tsconfig.build.json']).status !== 0) {
  console.error('error: the TypeScript build failed');
  console.log('tests: 0 passed, 1 failed, 0 skipped');
  process.exit(1);
}

// 3. Type-check the tests and examples too (the build above covers only the packages' sources).
const typecheck = run(process.execPath, [tsc, '-p', 'tsconfig.json', '--noEmit']);
if (typecheck.status !== 0) console.error('error: the type check of tests and examples failed (see above)');

// 4. Every test, with a JSON report beside the usual output.
mkdirSync(join(root, '.ci-out'), { recursive: true });
const report = join(root, '.ci-out/vitest.json');
const vitest = join(root, 'node_modules/vitest/vitest.mjs');
const args = [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)];
const result = run(process.execPath, args);

let passed = 0, failed = 0, skipped = 0;
if (existsSync(report)) {
  const json = JSON.parse(readFileSync(report, 'utf8'));
  passed = json.numPassedTests ?? 0;
  failed = json.numFailedTests ?? 0;
  skipped = (json.numPendingTests ?? 0) + (json.numTodoTests ?? 0);
  // A file that failed to load has no tests to count: count it as a failure so it cannot hide.
  for (const file of json.testResults ?? []) {
    if (file.status === 'failed' && (file.assertionResults ?? []).length === 0) failed++;
  }
} else {
  failed = 1;
}
if (typecheck.status !== 0) failed++;
console.log(`tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 || result.status !== 0 ? 1 : 0);
