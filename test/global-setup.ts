import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Child processes in multi-process tests run the built JavaScript (dist/), so build once first.
export default function setup(): void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-b', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
}
