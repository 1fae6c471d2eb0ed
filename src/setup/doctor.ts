/**
 * `prisma doctor`: what the tool runs on (Node and platform, the cache, libtorch, the addon and its
 * build, CUDA) and the first thing that is missing. It only looks: it installs, builds and records
 * nothing (that is `prisma setup`, or the first command that needs the addon).
 */
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

import { PrismaError, errorJson, type ErrorJson } from '../errors.js';
import { PACKAGE_NAME, PACKAGE_ROOT, VERSION } from '../version.js';
import {
  type Addon,
  type AddonBuild,
  checkAddonFits,
  findRust,
  locateAddon,
  platformName,
  platformPackage,
  sourceBuildDir,
} from './addon.js';
import { DOCTOR_HINT, cacheDir } from './cache.js';
import {
  type Libtorch,
  TORCH_VERSION,
  cachedVenv,
  chosenLibtorch,
  findExecutable,
  findLibtorch,
  noPython,
  readRecord,
  recordPath,
} from './libtorch.js';
import { type PrepareOptions, loadAddon, loadNative } from './load.js';

export interface DoctorItem {
  name: 'node' | 'package' | 'cache' | 'libtorch' | 'addon' | 'loads' | 'cuda';
  ok: boolean;
  detail: string;
}

export interface DoctorReport {
  ok: boolean;
  items: DoctorItem[];
  node: { version: string; platform: string; glibc: string | null };
  package: { name: string; version: string; root: string };
  cache: { dir: string; writable: boolean; record: string; recorded: boolean };
  libtorch: Libtorch | null;
  addon: (Addon & { build: AddonBuild | null }) | null;
  cuda: { available: boolean; reason: string } | null;
  /** The first problem, with its hint; absent when everything is set up. */
  error?: ErrorJson;
}

interface Binding {
  cudaAvailable(): boolean;
  libtorchVersion(): string;
}

function glibcVersion(): string | null {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report?.header?.glibcVersionRuntime ?? null;
}

/** Whether `dir` can be written (or created): the nearest existing folder on its path decides. */
function writable(dir: string): boolean {
  let d = dir;
  while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
  try {
    if (!statSync(d).isDirectory()) return false;
    accessSync(d, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function describeSource(t: Libtorch): string {
  switch (t.source.kind) {
    case 'LIBTORCH':
      return `$LIBTORCH=${t.source.libtorch}`;
    case 'python':
      return `torch of ${t.source.python}`;
    case 'build':
      return 'the libtorch this addon was built against';
  }
}

function describeAddon(a: Addon): string {
  const kind = { local: 'built in this clone', prebuilt: `prebuilt, ${platformPackage()}`, source: 'built from source into the cache' }[
    a.kind
  ];
  const build = a.build
    ? `${a.build.version} for ${a.build.target}, built for libtorch ${a.build.libtorch}`
    : 'no prisma.build.json beside it: build unknown';
  return `${a.path} (${kind}; ${build})`;
}

/** Why CUDA is or is not usable, in one line. */
function cudaReason(t: Libtorch, available: boolean): string {
  if (available) return `yes (libtorch built for CUDA ${t.cuda})`;
  if (t.cuda === null) return 'no: libtorch is a CPU-only build';
  const driverFile = '/proc/driver/nvidia/version';
  if (process.platform === 'linux' && !existsSync(driverFile)) {
    return `no: libtorch is a CUDA ${t.cuda} build, but this machine has no NVIDIA driver (${driverFile} is missing)`;
  }
  let driver = '';
  try {
    driver = / (\d+\.\d+(?:\.\d+)?) /.exec(readFileSync(driverFile, 'utf8'))?.[1] ?? '';
  } catch {}
  return `no: libtorch is a CUDA ${t.cuda} build and NVIDIA driver ${driver || '(version unknown)'} is present, but no GPU is usable (a driver too old for CUDA ${t.cuda}? run nvidia-smi)`;
}

function libtorchMissing(env: NodeJS.ProcessEnv): PrismaError {
  if (!findExecutable('python3', env) && !findExecutable('python', env)) return noPython();
  return new PrismaError('E_LIBTORCH', `libtorch ${TORCH_VERSION} is not set up yet`, {
    hint: `run \`prisma setup\` (or any command that needs it): it installs torch ${TORCH_VERSION} with pip into ${cachedVenv(env)} (a few GB, once); or set PRISMA_PYTHON or LIBTORCH to an existing torch ${TORCH_VERSION}`,
  });
}

/** Looks at everything the tool needs; never throws for a missing piece (the report says). */
export function doctor(options: PrepareOptions = {}): DoctorReport {
  const env = options.env ?? process.env;
  const log = options.log ?? (() => {});
  const items: DoctorItem[] = [];
  let error: PrismaError | undefined;
  const fail = (err: unknown): void => {
    error ??= err instanceof PrismaError ? err : new PrismaError('E_INTERNAL', String(err));
  };

  const packageRoot = PACKAGE_ROOT.replace(/[\\/]$/, '');
  const node = { version: process.version, platform: platformName(), glibc: glibcVersion() };
  items.push({ name: 'node', ok: true, detail: `${node.version} on ${node.platform}${node.glibc ? ` (glibc ${node.glibc})` : ''}` });
  items.push({ name: 'package', ok: true, detail: `${PACKAGE_NAME} ${VERSION} in ${packageRoot}` });

  // libtorch, and whether the cache must be written to set it up.
  let addon: Addon | undefined;
  let torch: Libtorch | undefined;
  let recorded = false;
  try {
    addon = locateAddon(PACKAGE_ROOT, env);
  } catch (err) {
    fail(err);
  }
  try {
    torch = chosenLibtorch({ env, log, builtAgainst: addon?.build?.libtorchLib });
    recorded = torch !== undefined;
    torch ??= findLibtorch({ env, log, quiet: true });
  } catch (err) {
    fail(err);
  }
  const dir = cacheDir(env);
  const canWrite = writable(dir);
  const needsWriting = !recorded || !addon;
  items.push({
    name: 'cache',
    ok: canWrite || !needsWriting,
    detail: `${dir} (${canWrite ? 'writable' : needsWriting ? 'NOT writable, and the set-up needs to write there' : 'read-only; enough, since nothing needs setting up'})`,
  });
  if (!canWrite && needsWriting) {
    fail(
      new PrismaError('E_CACHE', `the cache directory ${dir} cannot be written`, {
        hint: `set PRISMA_CACHE_DIR to a writable folder; ${DOCTOR_HINT}`,
      }),
    );
  }
  if (torch) {
    const where = recorded ? describeSource(torch) : `${describeSource(torch)}; found now, recorded on first use`;
    items.push({ name: 'libtorch', ok: true, detail: `${torch.version} in ${torch.lib} (${where})` });
  } else {
    if (!error) fail(libtorchMissing(env));
    items.push({ name: 'libtorch', ok: false, detail: error?.message ?? 'not found' });
  }

  // The addon, and whether it fits that libtorch.
  if (addon) {
    let fits = true;
    if (torch) {
      try {
        checkAddonFits(addon, torch);
      } catch (err) {
        fits = false;
        fail(err);
      }
    }
    items.push({ name: 'addon', ok: fits, detail: describeAddon(addon) });
  } else {
    const rust = findRust(env) !== undefined;
    const detail = `no addon for ${node.platform} (no ${platformPackage()}, no source build in ${sourceBuildDir(env)})`;
    items.push({ name: 'addon', ok: false, detail });
    fail(
      new PrismaError('E_NATIVE_MISSING', detail, {
        hint: rust
          ? 'run `prisma setup` (or any command that needs it) to build it from source (Rust found)'
          : `install ${PACKAGE_NAME} with its optional dependencies for a prebuilt addon, or install Rust (https://rustup.rs) to build one`,
      }),
    );
  }

  // Loading it for real, then what it says about CUDA.
  let cuda: DoctorReport['cuda'] = null;
  if (addon && torch && !error) {
    try {
      const b = loadAddon({ addon, torch }) as Binding;
      items.push({ name: 'loads', ok: true, detail: `yes (the addon reports libtorch ${b.libtorchVersion()})` });
      const available = b.cudaAvailable();
      cuda = { available, reason: cudaReason(torch, available) };
      items.push({ name: 'cuda', ok: true, detail: cuda.reason });
    } catch (err) {
      fail(err);
      items.push({ name: 'loads', ok: false, detail: err instanceof Error ? err.message : String(err) });
    }
  }

  const report: DoctorReport = {
    ok: error === undefined,
    items,
    node,
    package: { name: PACKAGE_NAME, version: VERSION, root: packageRoot },
    cache: { dir, writable: canWrite, record: recordPath(env), recorded: readRecord(env) !== undefined },
    libtorch: torch ?? null,
    addon: addon ?? null,
    cuda,
  };
  if (error) report.error = errorJson(error);
  return report;
}

/** `prisma setup`: sets up whatever is missing (as the first use would), then reports like doctor. */
export function setUp(options: PrepareOptions = {}): DoctorReport {
  loadNative(options);
  return doctor(options);
}
