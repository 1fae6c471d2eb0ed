#!/usr/bin/env node
// Builds the GPU kit's native half (crates/prisma-core/examples/gpu_kit.rs) with the libtorch that
// scripts/setup.mjs found (torch 2.11.0, cxx11 ABI), strips it into bench/gpu/kit/gpu_kit (ignored
// by git; carried to the device) and checks it can run on another machine's torch: no RPATH or
// RUNPATH (it must load that machine's torch/lib, never this machine's cache) and libtorch's C++
// symbols in the cxx11 ABI that torch 2.11.0's wheels use. Prints one JSON line.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const env = { ...process.env, ...JSON.parse(readFileSync(join(root, 'native', '.build-env.json'), 'utf8')) };
const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '')?.[1];
if (!host) throw new Error('rustc -vV gave no host triple');
// The same --target as the addon build, so the compiled libtorch bindings are reused.
const args = ['build', '--release', '-p', 'prisma-core', '--target', host, '--example', 'gpu_kit'];
const r = spawnSync('cargo', args, { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] });
if (r.status !== 0) process.exit(r.status ?? 1);
const targetDir = env.CARGO_TARGET_DIR ?? join(root, 'target');
const built = join(targetDir, host, 'release', 'examples', 'gpu_kit');
const out = join(root, 'bench', 'gpu', 'kit', 'gpu_kit');
mkdirSync(dirname(out), { recursive: true });
copyFileSync(built, `${out}.tmp`);
const strip = spawnSync('strip', [`${out}.tmp`]);
if (strip.status !== 0) throw new Error(`strip failed: ${strip.stderr}`);
renameSync(`${out}.tmp`, out);

const dynamic = spawnSync('readelf', ['-d', out], { encoding: 'utf8' }).stdout;
const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
const runpath = /\((RPATH|RUNPATH)\)/.test(dynamic);
const symbols = spawnSync('nm', ['-D', '--undefined-only', out], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
const cxx11 = symbols.split('\n').filter((l) => l.includes('__cxx11')).length;
const report = { path: 'bench/gpu/kit/gpu_kit', bytes: statSync(out).size, needed, runpath, cxx11Symbols: cxx11 };
process.stdout.write(`${JSON.stringify(report)}\n`);
if (runpath || cxx11 === 0 || !needed.includes('libtorch_cpu.so')) {
  process.stderr.write('gpu kit: the binary carries a library path, or is not linked against a cxx11-ABI libtorch\n');
  process.exit(1);
}
