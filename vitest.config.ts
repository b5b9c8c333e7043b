import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 30_000,
    // Tests start real relays and nodes as processes; on a 2-core machine two files at a time is plenty.
    maxWorkers: 2,
    pool: 'forks',
    // Fails the run if anything rebuilt dist/ while the tests were starting commands from it.
    globalSetup: ['test/helpers/dist-guard.ts'],
  },
});
