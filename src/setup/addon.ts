/**
 * Where the native addon is, what it was built for, and building it from source.
 *
 * napi-rs conventions: a prebuilt addon per platform in an optional package
 * (`vit-prisma-linux-x64-gnu`, made from npm/linux-x64-gnu by scripts/pack.mjs) that npm installs
 * only on its platform. Looked for in this order:
 *   1. `native/prisma.node` in the package root: a clone's own build (scripts/setup.mjs);
 *   2. the platform package;
 *   3. a source build in the cache (`<cache>/addon/<version>-<platform>/prisma.node`), made on first
 *      use when neither exists (needs Rust; the package ships the crates for it).
 * Beside each addon, `prisma.build.json` says what it was built from (AddonBuild).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import { PrismaError } from '../errors.js';
import { PACKAGE_NAME, PACKAGE_ROOT, VERSION } from '../version.js';
import { DOCTOR_HINT, type SetupLog, cacheDir, ensureCacheDir, readJson, writeJsonAtomic } from './cache.js';
import { type Libtorch, baseVersion, cargoEnv, findExecutable, sharedLibrary } from './libtorch.js';

export const BUILD_INFO_FILE = 'prisma.build.json';

export interface AddonBuild {
  /** The vit-prisma version it was built from. */
  version: string;
  /** Rust target triple. */
  target: string;
  /** The libtorch it was compiled against ('2.11.0+cu130'). */
  libtorch: string;
  /** A local build's libtorch folder, loaded at run time when nothing else says where libtorch is. */
  libtorchLib?: string;
}

export interface Addon {
  path: string;
  /** local: a clone's build in native/; prebuilt: the platform package; source: built into the cache. */
  kind: 'local' | 'prebuilt' | 'source';
  /** null when the addon has no prisma.build.json beside it (built before it was written). */
  build: AddonBuild | null;
}

/** napi-rs's platform name: linux-x64-gnu, linux-arm64-gnu, darwin-arm64, win32-x64-msvc, … */
export function platformName(platform: NodeJS.Platform = process.platform, arch: string = process.arch): string {
  if (platform === 'linux') {
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
    return `linux-${arch}-${report?.header?.glibcVersionRuntime ? 'gnu' : 'musl'}`;
  }
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

export function platformPackage(platform: string = platformName()): string {
  return `${PACKAGE_NAME}-${platform}`;
}

/** Where a source build for this platform goes in the cache. */
export function sourceBuildDir(env: NodeJS.ProcessEnv = process.env, platform: string = platformName()): string {
  return join(cacheDir(env), 'addon', `${VERSION}-${platform}`);
}

export function readBuildInfo(addonPath: string): AddonBuild | null {
  const b = readJson(join(dirname(addonPath), BUILD_INFO_FILE)) as Partial<AddonBuild> | undefined;
  if (!b || typeof b.version !== 'string' || typeof b.libtorch !== 'string' || typeof b.target !== 'string') return null;
  return b as AddonBuild;
}

function platformPackageAddon(root: string): string | undefined {
  const name = platformPackage();
  let manifest: string;
  try {
    manifest = createRequire(join(root, 'package.json')).resolve(`${name}/package.json`);
  } catch {
    return undefined;
  }
  const pkg = readJson(manifest) as { version?: string; main?: string } | undefined;
  if (pkg?.version !== VERSION) {
    throw new PrismaError('E_NATIVE_MISMATCH', `${name} is version ${pkg?.version ?? 'unknown'}, but ${PACKAGE_NAME} is ${VERSION}`, {
      hint: `install matching versions (npm install ${PACKAGE_NAME}@${VERSION}); ${DOCTOR_HINT}`,
    });
  }
  return join(dirname(manifest), pkg.main ?? `prisma.${platformName()}.node`);
}

/** The addon this package would load, or undefined when there is none yet. */
export function locateAddon(root: string = PACKAGE_ROOT, env: NodeJS.ProcessEnv = process.env): Addon | undefined {
  const local = join(root, 'native', 'prisma.node');
  if (existsSync(local)) return { path: local, kind: 'local', build: readBuildInfo(local) };
  const prebuilt = platformPackageAddon(root);
  if (prebuilt && existsSync(prebuilt)) return { path: prebuilt, kind: 'prebuilt', build: readBuildInfo(prebuilt) };
  const built = join(sourceBuildDir(env), 'prisma.node');
  if (existsSync(built)) return { path: built, kind: 'source', build: readBuildInfo(built) };
  return undefined;
}

/** E_NATIVE_MISMATCH when the addon was built for another libtorch release than `t`. */
export function checkAddonFits(addon: Addon, t: Libtorch): void {
  if (!addon.build || t.version === 'unknown') return;
  if (baseVersion(addon.build.libtorch) !== baseVersion(t.version)) {
    throw new PrismaError(
      'E_NATIVE_MISMATCH',
      `the native addon ${addon.path} was built for libtorch ${addon.build.libtorch}, but the libtorch set up is ${t.version} (${t.lib})`,
      {
        hint: `reinstall ${PACKAGE_NAME} (or run \`npm run setup\` in a clone) so the addon matches; ${DOCTOR_HINT}`,
      },
    );
  }
}

function hostTarget(env: NodeJS.ProcessEnv): string | undefined {
  const r = spawnSync('rustc', ['-vV'], { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'ignore'] });
  return r.status === 0 ? /host: (\S+)/.exec(r.stdout ?? '')?.[1] : undefined;
}

/** cargo and the host's target triple, when a Rust toolchain runs (rustup's needs its RUSTUP_HOME). */
export function findRust(env: NodeJS.ProcessEnv): { cargo: string; target: string } | undefined {
  const cargo = findExecutable('cargo', env);
  const target = cargo ? hostTarget(env) : undefined;
  return cargo && target ? { cargo, target } : undefined;
}

/** findRust, or E_NATIVE_MISSING without a Rust toolchain. */
function rustToolchain(env: NodeJS.ProcessEnv): { cargo: string; target: string } {
  const rust = findRust(env);
  if (!rust) {
    throw new PrismaError('E_NATIVE_MISSING', `no prebuilt native addon for ${platformName()}, and no Rust toolchain to build one`, {
      hint: `install Rust (https://rustup.rs) and run again: the addon is then built from source once; ${DOCTOR_HINT}`,
    });
  }
  return rust;
}

export interface BuildOptions {
  /** The source tree: Cargo.toml and crates/ (a clone, or an installed package, which ships them). */
  root: string;
  /** Folder that receives prisma.node and prisma.build.json. */
  outDir: string;
  torch: Libtorch;
  env?: NodeJS.ProcessEnv;
  log: SetupLog;
}

/**
 * Builds the addon (cargo, release) against `torch` into `outDir`. With @napi-rs/cli installed (a
 * clone's dev dependencies) it runs `napi build`, which also writes the TypeScript declarations;
 * an installed package has no dev dependencies and runs cargo directly.
 */
export function buildAddon(options: BuildOptions): Addon {
  const env = options.env ?? process.env;
  const { cargo, target } = rustToolchain(env);
  const buildEnv = {
    ...env,
    ...cargoEnv(options.torch, env),
    CARGO_TARGET_DIR: env.CARGO_TARGET_DIR ?? join(cacheDir(env), 'target'),
  };
  mkdirSync(options.outDir, { recursive: true });
  const out = join(options.outDir, 'prisma.node');
  const napi = join(options.root, 'node_modules', '.bin', 'napi');
  options.log('building the native addon (cargo --release; the first build takes a few minutes)');
  const run = (cmd: string, args: string[]) =>
    spawnSync(cmd, args, { cwd: options.root, env: buildEnv, stdio: ['ignore', 2, 2] }).status === 0;
  let ok: boolean;
  if (existsSync(napi)) {
    const args = ['build', '--release', '--target', target, '--manifest-path', 'crates/prisma-node/Cargo.toml'];
    ok = run(napi, [...args, '--package-json-path', 'package.json', '--output-dir', options.outDir, '--no-js', '--dts', 'prisma.d.ts']);
    // napi names the file after package.json's napi.binaryName (+ platform when asked); normalise.
    const built = ok ? readdirSync(options.outDir).find((f) => f.endsWith('.node') && f !== 'prisma.node') : undefined;
    if (built) copyFileSync(join(options.outDir, built), out);
  } else {
    ok = run(cargo, ['build', '--release', '--locked', '--target', target, '-p', 'prisma-node']);
    if (ok) copyFileSync(join(buildEnv.CARGO_TARGET_DIR, target, 'release', sharedLibrary('prisma_node')), out);
  }
  if (!ok) {
    throw new PrismaError('E_NATIVE_MISSING', 'building the native addon failed (cargo output above)', {
      hint: `a C++ compiler and Rust are needed; ${DOCTOR_HINT}`,
    });
  }
  const build: AddonBuild = { version: VERSION, target, libtorch: options.torch.version, libtorchLib: options.torch.lib };
  writeJsonAtomic(options.outDir, join(options.outDir, BUILD_INFO_FILE), build);
  return { path: out, kind: options.outDir === join(options.root, 'native') ? 'local' : 'source', build };
}

/** First use on a platform without a prebuilt addon: build one into the cache. */
export function buildAddonIntoCache(torch: Libtorch, log: SetupLog, env: NodeJS.ProcessEnv = process.env): Addon {
  ensureCacheDir(cacheDir(env));
  if (!existsSync(join(PACKAGE_ROOT, 'crates', 'prisma-node', 'Cargo.toml'))) {
    throw new PrismaError('E_NATIVE_MISSING', `no native addon for ${platformName()} in this package, and no sources to build one`, {
      hint: `reinstall ${PACKAGE_NAME} with its optional dependencies (npm install --include=optional); ${DOCTOR_HINT}`,
    });
  }
  rustToolchain(env);
  log(`native addon: no prebuilt addon for ${platformName()}; building it from source into ${sourceBuildDir(env)}`);
  return buildAddon({ root: PACKAGE_ROOT, outDir: sourceBuildDir(env), torch, env, log });
}
