#!/usr/bin/env node
// One-time (and idempotent) set-up for a fresh clone, run by `npm test`, `npm run demo` and
// `npm run setup`. Each step says what it does and is skipped when already done:
//   1. Node dependencies      (npm ci when node_modules is missing or older than the lock file)
//   2. libtorch 2.11.0        ($LIBTORCH first; else a Python whose torch is 2.11.0; else pip-install
//                              torch==2.11.0 into a venv under ~/.cache/vit-prisma, shared by all clones)
//   3. the native addon       (cargo release build via @napi-rs/cli -> native/prisma.node, rpath to libtorch)
//   4. the TypeScript layer   (tsc -> dist/)
// Only Node built-ins are used here, since this runs before dependencies exist.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, copyFileSync, writeFileSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const TORCH_VERSION = '2.11.0';
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cacheDir = process.env.PRISMA_CACHE_DIR ?? join(homedir(), '.cache', 'vit-prisma');
const quiet = process.argv.includes('--quiet');

function step(msg) {
  process.stderr.write(`[setup] ${msg}\n`);
}
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, {
    cwd: root,
    stdio: opts.capture ? ['ignore', 'pipe', 'pipe'] : 'inherit',
    encoding: 'utf8',
    env: opts.env ?? process.env,
  });
  if (r.error) return { ok: false, out: '', err: String(r.error) };
  return { ok: r.status === 0, out: r.stdout ?? '', err: r.stderr ?? '' };
}
function must(cmd, args, opts) {
  const r = run(cmd, args, opts);
  if (!r.ok) {
    step(`FAILED: ${cmd} ${args.join(' ')}`);
    if (r.err) process.stderr.write(r.err);
    process.exit(1);
  }
  return r;
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

// 2. libtorch ---------------------------------------------------------------------------------
function pythonTorch(python) {
  const r = run(
    python,
    [
      '-c',
      'import sys, os, torch; print(torch.__version__); print(sys.prefix); print(os.path.join(os.path.dirname(torch.__file__), "lib"))',
    ],
    { capture: true },
  );
  if (!r.ok) return null;
  const [version, prefix, lib] = r.out.trim().split('\n');
  return { python, version, prefix, lib };
}
function findLibtorch() {
  if (process.env.LIBTORCH) {
    const lib = join(process.env.LIBTORCH, 'lib');
    if (!existsSync(join(lib, 'libtorch_cpu.so')) && !existsSync(join(lib, 'libtorch_cpu.dylib'))) {
      step(`LIBTORCH=${process.env.LIBTORCH} has no lib/libtorch_cpu.*; fix it or unset LIBTORCH`);
      process.exit(1);
    }
    const versionFile = join(process.env.LIBTORCH, 'build-version');
    const version = existsSync(versionFile) ? readFileSync(versionFile, 'utf8').trim() : 'unknown';
    if (!version.startsWith(TORCH_VERSION) && version !== 'unknown') {
      step(`LIBTORCH is version ${version}; this build needs ${TORCH_VERSION}`);
      process.exit(1);
    }
    step(`libtorch: using $LIBTORCH=${process.env.LIBTORCH} (${version})`);
    return { env: { LIBTORCH: process.env.LIBTORCH, PRISMA_LIBTORCH_LIB: lib }, lib };
  }
  const cachedVenv = join(cacheDir, `torch-${TORCH_VERSION}`);
  const candidates = [process.env.PRISMA_PYTHON, join(cachedVenv, 'bin', 'python'), 'python3', 'python'].filter(Boolean);
  for (const py of candidates) {
    if (py.includes('/') && !existsSync(py)) continue;
    const t = pythonTorch(py);
    if (t && t.version.split('+')[0] === TORCH_VERSION) {
      if (!quiet) step(`libtorch: torch ${t.version} from ${t.python}`);
      return pythonEnv(t);
    }
  }
  step(`libtorch: no torch ${TORCH_VERSION} found; installing it with pip into ${cachedVenv} (once, shared by all clones; a few GB)`);
  mkdirSync(cacheDir, { recursive: true });
  if (!existsSync(join(cachedVenv, 'bin', 'python'))) must('python3', ['-m', 'venv', cachedVenv]);
  must(join(cachedVenv, 'bin', 'pip'), ['install', '--disable-pip-version-check', `torch==${TORCH_VERSION}`]);
  const t = pythonTorch(join(cachedVenv, 'bin', 'python'));
  if (!t) {
    step('torch installed but cannot be imported');
    process.exit(1);
  }
  return pythonEnv(t);
}
function pythonEnv(t) {
  // torch-sys runs `python` (with VIRTUAL_ENV set) from PATH to ask torch for its paths.
  const binDir = dirname(
    t.python.includes('/') ? t.python : run('sh', ['-c', `command -v ${t.python}`], { capture: true }).out.trim() || t.python,
  );
  return {
    env: { LIBTORCH_USE_PYTORCH: '1', VIRTUAL_ENV: t.prefix, PATH: `${binDir}:${process.env.PATH}`, PRISMA_LIBTORCH_LIB: t.lib },
    lib: t.lib,
  };
}

// 3. Native addon -----------------------------------------------------------------------------
const addon = join(root, 'native', 'prisma.node');
const stampFile = join(root, 'native', '.build-stamp');
const torch = findLibtorch();
{
  const stamp = JSON.stringify({ lib: torch.lib });
  const sourcesNewest = newest([join(root, 'crates'), join(root, 'Cargo.toml'), join(root, 'Cargo.lock')]);
  const upToDate = existsSync(addon) && mtime(addon) >= sourcesNewest && existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp;
  if (upToDate) {
    if (!quiet) step('native addon: up to date');
  } else {
    step('building the native addon (cargo --release; the first build takes a few minutes)');
    const env = { ...process.env, ...torch.env, CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR ?? join(cacheDir, 'target') };
    mkdirSync(join(root, 'native'), { recursive: true });
    must(
      'npx',
      [
        'napi',
        'build',
        '--release',
        '--manifest-path',
        'crates/prisma-node/Cargo.toml',
        '--package-json-path',
        'package.json',
        '--output-dir',
        'native',
        '--no-js',
        '--dts',
        'prisma.d.ts',
      ],
      { env },
    );
    // napi names the file after package.json's napi.binaryName (+ platform when asked); normalise.
    const built = readdirSync(join(root, 'native')).find((f) => f.endsWith('.node') && f !== 'prisma.node');
    if (built) copyFileSync(join(root, 'native', built), addon);
    writeFileSync(stampFile, stamp);
  }
  // The Rust test runner (scripts/cargo-test.mjs) needs the same libtorch environment.
  writeFileSync(
    join(root, 'native', '.build-env.json'),
    JSON.stringify({ ...torch.env, CARGO_TARGET_DIR: process.env.CARGO_TARGET_DIR ?? join(cacheDir, 'target') }, null, 2),
  );
}

// 4. TypeScript -------------------------------------------------------------------------------
{
  const out = join(root, 'dist', 'cli', 'main.js');
  if (!existsSync(out) || mtime(out) < newest([join(root, 'src'), join(root, 'tsconfig.json')])) {
    step('compiling TypeScript (tsc)');
    must('npx', ['tsc', '-p', 'tsconfig.json']);
    // tsc may leave older outputs untouched when unchanged; mark the build time.
    writeFileSync(join(root, 'dist', '.build-stamp'), new Date().toISOString());
    const now = new Date();
    try {
      const { utimesSync } = await import('node:fs');
      utimesSync(out, now, now);
    } catch {}
  } else if (!quiet) step('TypeScript: up to date');
}
