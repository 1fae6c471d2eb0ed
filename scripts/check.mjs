#!/usr/bin/env node
// Formatting and lint, run by `npm test` before the tests: Biome (TypeScript/JavaScript format and
// lint), rustfmt (`cargo fmt --check`) and clippy with warnings as errors, in the libtorch
// environment scripts/setup.mjs recorded. Fix with `npm run fmt`.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
let buildEnv;
try {
  buildEnv = JSON.parse(readFileSync(join(root, 'native', '.build-env.json'), 'utf8'));
} catch {
  process.stderr.write('[check] run `node scripts/setup.mjs` first (no native/.build-env.json)\n');
  process.exit(1);
}
const env = { ...process.env, ...buildEnv };
const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '')?.[1];
const steps = [
  ['npx', ['biome', 'check', '.']],
  ['cargo', ['fmt', '--all', '--check']],
  ['cargo', ['clippy', '--release', '--workspace', '--all-targets', ...(host ? ['--target', host] : []), '--', '-D', 'warnings']],
];
for (const [cmd, args] of steps) {
  process.stderr.write(`[check] ${cmd} ${args.join(' ')}\n`);
  const r = spawnSync(cmd, args, { cwd: root, env, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`[check] failed: ${cmd} ${args.join(' ')} (\`npm run fmt\` fixes formatting)\n`);
    process.exit(r.status ?? 1);
  }
}
