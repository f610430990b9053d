import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const src = (p: string) => fileURLToPath(new URL(`./packages/${p}/src/index.ts`, import.meta.url));

export default defineConfig({
  resolve: {
    alias: {
      '@lading/core': src('core'),
      '@lading/storage': src('storage'),
      '@lading/runner': src('runner'),
      '@lading/cli': src('cli'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts', 'examples/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Multi-process tests spawn real children; two cores here, keep the fan-out modest.
    maxWorkers: 2,
    globalSetup: ['test/global-setup.ts'],
  },
});
