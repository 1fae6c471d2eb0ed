#!/usr/bin/env node
// Runs one of the Rust core's examples (`node scripts/cargo-example.mjs NAME -- ARGS...`) with the
// libtorch environment that scripts/setup.mjs found, in the release profile the addon build uses.
import { spawnSync } from 'node:child_process';
import { cargoEnv, root } from './cargo-env.mjs';

const [name, ...rest] = process.argv.slice(2);
if (!name) {
  process.stderr.write('usage: node scripts/cargo-example.mjs NAME [-- ARGS...]\n');
  process.exit(2);
}
const { env, host, buildEnv } = cargoEnv('cargo-example');
// Example binaries carry no rpath to libtorch (only the addon does).
env.LD_LIBRARY_PATH = [buildEnv.PRISMA_LIBTORCH_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
const args = ['run', '--quiet', '--release', '-p', 'prisma-core', ...(host ? ['--target', host] : []), '--example', name, ...rest];
const r = spawnSync('cargo', args, { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
