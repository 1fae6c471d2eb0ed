#!/usr/bin/env node
// One-time (and idempotent) set-up for a fresh clone, run by `npm test`, `npm run demo` and
// `npm run setup`. Each step says what it does and is skipped when already done:
//   1. Node dependencies      (npm ci when node_modules is missing or older than the lock file)
//   2. the TypeScript layer   (tsc -> dist/)
//   3. libtorch 2.11.0        ($LIBTORCH first; else a Python whose torch is 2.11.0; else pip-install
//                              torch==2.11.0 into a venv under ~/.cache/vit-prisma, shared by all clones
//                              and installed copies), recorded in that cache
//   4. the native addon       (cargo release build via @napi-rs/cli -> native/prisma.node)
// Steps 3 and 4 are the library's own set-up (src/setup/), which an installed package runs on first
// use: the same code, messages and cache. Steps 1 and 2 use only Node built-ins, since they run
// before dependencies and dist/ exist.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const quiet = process.argv.includes('--quiet');

function step(msg) {
  process.stderr.write(`[setup] ${msg}\n`);
}
function must(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    step(`FAILED: ${cmd} ${args.join(' ')}`);
    process.exit(1);
  }
}
/** Newest modification time of the files under `paths` (recursive), skipping `skip` names. */
function newest(paths, skip = new Set(['node_modules', 'target', '.git'])) {
  let t = 0;
  const walk = (p) => {
    if (!existsSync(p)) return;
    const s = statSync(p);
    if (s.isDirectory()) {
      for (const e of readdirSync(p)) if (!skip.has(e)) walk(join(p, e));
    } else t = Math.max(t, s.mtimeMs);
  };
  paths.forEach(walk);
  return t;
}
const mtime = (p) => (existsSync(p) ? statSync(p).mtimeMs : 0);

// 1. Node dependencies ------------------------------------------------------------------------
{
  const marker = join(root, 'node_modules', '.package-lock.json');
  if (!existsSync(marker) || mtime(marker) < mtime(join(root, 'package-lock.json'))) {
    step('installing Node dependencies (npm ci)');
    must('npm', ['ci', '--no-audit', '--no-fund']);
  } else if (!quiet) step('Node dependencies: up to date');
}

// 2. TypeScript -------------------------------------------------------------------------------
{
  const out = join(root, 'dist', 'cli', 'main.js');
  if (!existsSync(out) || mtime(out) < newest([join(root, 'src'), join(root, 'tsconfig.json')])) {
    step('compiling TypeScript (tsc)');
    must('npx', ['tsc', '-p', 'tsconfig.json']);
    // tsc may leave older outputs untouched when unchanged; mark the build time.
    const now = new Date();
    utimesSync(out, now, now);
  } else if (!quiet) step('TypeScript: up to date');
}

// 3. libtorch, 4. native addon: the library's set-up ------------------------------------------
const { PrismaError } = await import('../dist/errors.js');
const { setUpLibtorch, cargoEnv } = await import('../dist/setup/libtorch.js');
const { buildAddon } = await import('../dist/setup/addon.js');
const { cacheDir } = await import('../dist/setup/cache.js');
const { VERSION } = await import('../dist/version.js');
try {
  const torch = setUpLibtorch({ log: step, quiet });
  const addon = join(root, 'native', 'prisma.node');
  const stampFile = join(root, 'native', '.build-stamp');
  const stamp = JSON.stringify({ lib: torch.lib, version: VERSION, layout: 'no-rpath' });
  const sourcesNewest = newest([join(root, 'crates'), join(root, 'Cargo.toml'), join(root, 'Cargo.lock')]);
  const upToDate = existsSync(addon) && mtime(addon) >= sourcesNewest && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp;
  if (upToDate) {
    if (!quiet) step('native addon: up to date');
  } else {
    buildAddon({ root, outDir: join(root, 'native'), torch, log: step });
    writeFileSync(stampFile, stamp);
  }
  // The Rust test runner (scripts/cargo-test.mjs) needs the same libtorch environment.
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(cacheDir(), 'target');
  writeFileSync(join(root, 'native', '.build-env.json'), JSON.stringify({ ...cargoEnv(torch), CARGO_TARGET_DIR: targetDir }, null, 2));
} catch (err) {
  if (!(err instanceof PrismaError)) throw err;
  step(`${err.code}: ${err.message}`);
  if (err.hint) step(`hint: ${err.hint}`);
  process.exit(1);
}
