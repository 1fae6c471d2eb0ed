#!/usr/bin/env node
// Runs the Rust core's tests (fidelity against the Hugging Face references, analysis invariants)
// with the libtorch environment that scripts/setup.mjs found. Release profile, so the test build
// reuses the addon build's compiled dependencies instead of compiling libtorch bindings twice.
import { spawnSync } from 'node:child_process';
import { cargoEnv, root } from './cargo-env.mjs';

const { env, host, buildEnv } = cargoEnv('cargo-test');
// Test binaries carry no rpath to libtorch (only the addon does).
env.LD_LIBRARY_PATH = [buildEnv.PRISMA_LIBTORCH_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
const args = ['test', '--release', '-p', 'prisma-core', ...(host ? ['--target', host] : []), ...process.argv.slice(2)];
process.stderr.write(`[cargo-test] cargo ${args.join(' ')}\n`);
const r = spawnSync('cargo', args, { cwd: root, env, stdio: 'inherit' });
process.exit(r.status ?? 1);
