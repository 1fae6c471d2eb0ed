import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    // Spawned CLI tests load libtorch per process; keep parallelism modest.
    maxWorkers: 4,
  },
});
