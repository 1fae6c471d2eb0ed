#!/usr/bin/env node
// Formatting and lint, run by `npm test` before the tests: Biome (TypeScript/JavaScript format and
// lint), no import cycle between TypeScript modules (dpdm, type-only imports included), none
// between the Rust crates' modules (scripts/rust-cycles.mjs), the committed binding contract
// against the build (scripts/contract.mjs), rustfmt (`cargo fmt --check`) and clippy with
// warnings as errors, in the libtorch environment scripts/setup.mjs recorded. Fix formatting with
// `npm run fmt`.
import { spawnSync } from 'node:child_process';
import { cargoEnv, root } from './cargo-env.mjs';

const { env, host } = cargoEnv('check');
const steps = [
  ['npx', ['biome', 'check', '.']],
  ['npx', ['dpdm', '--no-tree', '--no-warning', '--no-progress', '--exit-code', 'circular:1', 'src/**/*.ts']],
  ['node', ['scripts/rust-cycles.mjs']],
  ['node', ['scripts/contract.mjs']],
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
