#!/usr/bin/env node
// Runs the Rust core's tests (fidelity against the Hugging Face references, analysis invariants)
// with the libtorch environment that scripts/setup.mjs found. Release profile, so the test build
// reuses the addon build's compiled dependencies instead of compiling libtorch bindings twice.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
let buildEnv;
try {
  buildEnv = JSON.parse(readFileSync(join(root, 'native', '.build-env.json'), 'utf8'));
} catch {
  process.stderr.write('[cargo-test] run `node scripts/setup.mjs` first (no native/.build-env.json)\n');
  process.exit(1);
}
const env = { ...process.env, ...buildEnv };
// Test binaries carry no rpath to libtorch (only the addon does).
env.LD_LIBRARY_PATH = [buildEnv.PRISMA_LIBTORCH_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
// @napi-rs/cli builds with an explicit `--target <host triple>`; passing the same one lets the
// tests reuse the addon build's compiled libtorch bindings instead of building them again.
const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '')?.[1];
const args = ['test', '--release', '-p', 'prisma-core', ...(host ? ['--target', host] : []), ...process.argv.slice(2)];
process.stderr.write(`[cargo-test] cargo ${args.join(' ')}\n`);
const r = spawnSync('cargo', args, { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
