// Build @lading/core (tsc -b is incremental: a no-op costs ~0.5 s) so the bench always measures the
// current sources through the BUILT package, as users run it.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const built = new Set();

/** Run `tsc -b` for one workspace package (e.g. 'core'); returns the path of its dist/index.js. */
export function ensureBuilt(pkg, log = () => {}) {
  const project = join(ROOT, 'packages', pkg);
  const entry = join(project, 'dist', 'index.js');
  if (built.has(pkg)) return entry;
  let tsc;
  try {
    tsc = createRequire(join(ROOT, 'package.json')).resolve('typescript/bin/tsc');
  } catch {
    if (existsSync(entry)) {
      log(`typescript is not installed: using the existing build of packages/${pkg}`);
      built.add(pkg);
      return entry;
    }
    throw new Error(`packages/${pkg} is not built and typescript is not installed: run \`npx -y pnpm@10 install\` first`);
  }
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [tsc, '-b', join(project, 'tsconfig.json')], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) {
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
    if (!existsSync(entry)) throw new Error(`building packages/${pkg} failed:\n${out}`);
    log(`warning: building packages/${pkg} failed; measuring the previous build in dist/:\n${out.split('\n').slice(0, 10).join('\n')}`);
  } else {
    log(`packages/${pkg} built (tsc -b, ${Date.now() - t0} ms)`);
  }
  built.add(pkg);
  return entry;
}
