#!/usr/bin/env node
// Compiles mock-broker.c into build/mock-broker when the binary is missing or
// older than the source. Needs a C compiler and librdkafka headers
// (apt-get install -y librdkafka-dev, or ./install-deps.sh).
// Usage: node test/kafka-mock/build.mjs   (prints the binary path on stdout)
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'mock-broker.c');
const out = join(here, 'build', 'mock-broker');
const header = '/usr/include/librdkafka/rdkafka_mock.h';

function fail(msg) {
  process.stderr.write(`kafka-mock build: ${msg}\n`);
  process.exit(1);
}

const fresh = existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs;
if (!fresh) {
  if (!existsSync(header)) {
    fail(
      `librdkafka headers not found (${header}).\n` +
        '  Install them with:  apt-get install -y librdkafka-dev\n' +
        `  (or run ${join(here, 'install-deps.sh')})`,
    );
  }
  mkdirSync(dirname(out), { recursive: true });
  // Build to a unique temp name and rename: concurrent test workers may race.
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    execFileSync(
      process.env.CC || 'cc',
      ['-O2', '-Wall', '-rdynamic', '-o', tmp, src, '-lrdkafka'],
      { stdio: ['ignore', 'inherit', 'inherit'] },
    );
    renameSync(tmp, out);
  } catch (err) {
    rmSync(tmp, { force: true });
    fail(`compiling ${src} failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}
process.stdout.write(`${out}\n`);
