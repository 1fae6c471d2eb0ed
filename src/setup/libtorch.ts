/**
 * Finding libtorch 2.11.0 (the release tch 0.24 is built for), in this order:
 *   1. `LIBTORCH`: a libtorch folder with lib/ and include/;
 *   2. a Python whose torch is 2.11.0: `PRISMA_PYTHON`, the cache's venv, `python3`, `python`;
 *   3. else `pip install torch==2.11.0` into a venv in the cache (a few GB, once per user).
 * What was found is recorded in the cache (`libtorch-2.11.0.json`), so later runs load libtorch
 * without asking Python again. A clone's `npm run setup` (scripts/setup.mjs) and an installed package
 * on first use (src/setup/load.ts) both run this: the same steps, messages and cache.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, dirname, isAbsolute, join } from 'node:path';

import { PrismaError } from '../errors.js';
import { DOCTOR_HINT, type SetupLog, cacheDir, ensureCacheDir, readJson, writeJsonAtomic } from './cache.js';

export const TORCH_VERSION = '2.11.0';

/** What a libtorch folder holds, read from its files without loading it. */
export interface LibtorchInstall {
  /** The folder holding libtorch_cpu and libc10. */
  lib: string;
  /** As the install names itself ('2.11.0+cu130'), or 'unknown' (a LIBTORCH without build-version). */
  version: string;
  /** The CUDA version of a CUDA build ('13.0', or 'unknown'); null for a CPU-only build. */
  cuda: string | null;
}

export type LibtorchSource =
  /** The user's LIBTORCH folder. */
  | { kind: 'LIBTORCH'; libtorch: string }
  /** The torch package of a Python install (`prefix` is its sys.prefix). */
  | { kind: 'python'; python: string; prefix: string }
  /** The libtorch the addon was compiled against (a clone's build, or a source build in the cache). */
  | { kind: 'build' };

export interface Libtorch extends LibtorchInstall {
  source: LibtorchSource;
}

export interface FindOptions {
  env?: NodeJS.ProcessEnv;
  log: SetupLog;
  /** Leave out the lines that say what was found (a clone's set-up when everything is up to date). */
  quiet?: boolean;
}

export const baseVersion = (version: string): string => version.split('+')[0] ?? version;

export function sharedLibrary(name: string, platform: NodeJS.Platform = process.platform): string {
  if (platform === 'win32') return `${name}.dll`;
  return platform === 'darwin' ? `lib${name}.dylib` : `lib${name}.so`;
}

const WRONG_VERSION_HINT = `point LIBTORCH at a libtorch ${TORCH_VERSION} folder, or unset it to use torch ${TORCH_VERSION} from Python (pip-installed into the cache when none is found); ${DOCTOR_HINT}`;

/** `+cu130` -> '13.0'. */
function cudaFromSuffix(version: string): string | undefined {
  const m = /\+cu(\d+)(\d)$/.exec(version);
  return m ? `${m[1]}.${m[2]}` : undefined;
}

/** Reads what the libtorch in `lib` is; undefined when `lib` holds no libtorch. */
export function inspectLibtorch(lib: string): LibtorchInstall | undefined {
  if (!existsSync(join(lib, sharedLibrary('torch_cpu'))) || !existsSync(join(lib, sharedLibrary('c10')))) return undefined;
  let version = 'unknown';
  let cuda: string | undefined;
  // A libtorch download has build-version beside lib/; a Python torch package has version.py.
  const buildVersion = join(lib, '..', 'build-version');
  const versionPy = join(lib, '..', 'version.py');
  if (existsSync(buildVersion)) {
    version = readFileSync(buildVersion, 'utf8').trim() || 'unknown';
  } else if (existsSync(versionPy)) {
    const text = readFileSync(versionPy, 'utf8');
    version = /^__version__\s*=\s*['"]([^'"]+)['"]/m.exec(text)?.[1] ?? 'unknown';
    cuda = /^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]/m.exec(text)?.[1];
  }
  const hasCuda = existsSync(join(lib, sharedLibrary('torch_cuda')));
  return { lib, version, cuda: hasCuda ? (cuda ?? cudaFromSuffix(version) ?? 'unknown') : null };
}

export function versionMatches(install: LibtorchInstall): boolean {
  return install.version === 'unknown' || baseVersion(install.version) === TORCH_VERSION;
}

/** The libtorch named by LIBTORCH, checked; E_LIBTORCH / E_LIBTORCH_VERSION when it does not fit. */
export function fromLibtorchVariable(dir: string): Libtorch {
  const install = inspectLibtorch(join(dir, 'lib'));
  if (!install) {
    throw new PrismaError('E_LIBTORCH', `LIBTORCH=${dir} has no lib/${sharedLibrary('torch_cpu')}`, {
      hint: `point LIBTORCH at a libtorch ${TORCH_VERSION} folder (with lib/ and include/) or unset it; ${DOCTOR_HINT}`,
    });
  }
  if (!versionMatches(install)) {
    throw new PrismaError('E_LIBTORCH_VERSION', `LIBTORCH=${dir} is libtorch ${install.version}; vit-prisma needs ${TORCH_VERSION}`, {
      hint: WRONG_VERSION_HINT,
    });
  }
  return { ...install, source: { kind: 'LIBTORCH', libtorch: dir } };
}

/** An executable found on PATH (or the path itself when it has a slash), else undefined. */
export function findExecutable(name: string, env: NodeJS.ProcessEnv): string | undefined {
  const candidates = name.includes('/') ? [name] : (env.PATH ?? '').split(delimiter).map((d) => join(d || '.', name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return isAbsolute(c) ? c : join(process.cwd(), c);
    } catch {}
  }
  return undefined;
}

// Asks Python where torch is without importing it (an import takes seconds); the version is then
// read from torch/version.py like any other install.
const WHERE_IS_TORCH = 'import sys, importlib.util as u; s = u.find_spec("torch"); print(sys.prefix); print(s.origin if s else "")';

/** torch of the Python `python` (a path or a name on PATH), whatever its version; undefined without one. */
export function pythonTorch(python: string, env: NodeJS.ProcessEnv): Libtorch | undefined {
  const exe = findExecutable(python, env);
  if (!exe) return undefined;
  const r = spawnSync(exe, ['-c', WHERE_IS_TORCH], { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000 });
  if (r.status !== 0 || typeof r.stdout !== 'string') return undefined;
  const [prefix, origin] = r.stdout.trim().split('\n');
  if (!prefix || !origin) return undefined;
  const install = inspectLibtorch(join(dirname(origin), 'lib'));
  return install && { ...install, source: { kind: 'python', python: exe, prefix } };
}

export function cachedVenv(env: NodeJS.ProcessEnv): string {
  return join(cacheDir(env), `torch-${TORCH_VERSION}`);
}

/** Steps 1 and 2: LIBTORCH, else a Python with torch 2.11.0; undefined when neither is there. */
export function findLibtorch(options: FindOptions): Libtorch | undefined {
  const env = options.env ?? process.env;
  const say = (m: string) => {
    if (!options.quiet) options.log(m);
  };
  if (env.LIBTORCH) {
    const t = fromLibtorchVariable(env.LIBTORCH);
    say(`libtorch: using $LIBTORCH=${env.LIBTORCH} (${t.version})`);
    return t;
  }
  const pythons = [env.PRISMA_PYTHON, join(cachedVenv(env), 'bin', 'python'), 'python3', 'python'];
  for (const python of pythons) {
    if (!python) continue;
    const t = pythonTorch(python, env);
    if (t && baseVersion(t.version) === TORCH_VERSION) {
      say(`libtorch: torch ${t.version} from ${t.source.kind === 'python' ? t.source.python : python}`);
      return t;
    }
    if (python === env.PRISMA_PYTHON) {
      options.log(`PRISMA_PYTHON=${python} has ${t ? `torch ${t.version}` : 'no torch'}, not ${TORCH_VERSION}; looking further`);
    }
  }
  return undefined;
}

function runToStderr(cmd: string, args: string[], env: NodeJS.ProcessEnv): boolean {
  // The child's output goes to stderr: stdout belongs to the command's result (--json).
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 2, 2] });
  return r.status === 0;
}

/** Nothing to set libtorch up with: no LIBTORCH, no Python with torch 2.11.0, no Python to install it. */
export function noPython(): PrismaError {
  return new PrismaError(
    'E_LIBTORCH',
    `libtorch ${TORCH_VERSION} not found: LIBTORCH is not set, no Python has torch ${TORCH_VERSION}, and there is no python3 to pip-install it`,
    { hint: `install Python 3 (with pip and venv) and run again, or set LIBTORCH to a libtorch ${TORCH_VERSION} folder; ${DOCTOR_HINT}` },
  );
}

/** Step 3: pip-install torch 2.11.0 into the cache's venv. */
function pipInstall(options: FindOptions): Libtorch {
  const env = options.env ?? process.env;
  const venv = cachedVenv(env);
  const venvPython = join(venv, 'bin', 'python');
  const python3 = findExecutable('python3', env) ?? findExecutable('python', env);
  if (!python3 && !existsSync(venvPython)) throw noPython();
  options.log(
    `libtorch: no torch ${TORCH_VERSION} found; installing it with pip into ${venv} (once, shared by all clones and installs; a few GB)`,
  );
  ensureCacheDir(cacheDir(env));
  if (!existsSync(venvPython) && !runToStderr(python3 ?? 'python3', ['-m', 'venv', venv], env)) {
    throw new PrismaError('E_LIBTORCH', `could not create a Python venv at ${venv} (${python3} -m venv failed)`, {
      hint: `install Python's venv module (Debian: apt-get install python3-venv), or set LIBTORCH to a libtorch ${TORCH_VERSION} folder; ${DOCTOR_HINT}`,
    });
  }
  if (!runToStderr(join(venv, 'bin', 'pip'), ['install', '--disable-pip-version-check', `torch==${TORCH_VERSION}`], env)) {
    throw new PrismaError('E_LIBTORCH', `pip install torch==${TORCH_VERSION} into ${venv} failed (pip's output is above)`, {
      hint: `check the network and free disk space (a few GB), or set PRISMA_PYTHON or LIBTORCH to an existing torch ${TORCH_VERSION}; ${DOCTOR_HINT}`,
    });
  }
  const t = pythonTorch(venvPython, env);
  if (!t || baseVersion(t.version) !== TORCH_VERSION) {
    throw new PrismaError('E_LIBTORCH', `torch ${TORCH_VERSION} was installed into ${venv} but its Python does not find it`, {
      hint: `remove ${venv} and run again; ${DOCTOR_HINT}`,
    });
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// The record

interface LibtorchRecord extends Libtorch {
  schemaVersion: 1;
  torch: typeof TORCH_VERSION;
}

export function recordPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheDir(env), `libtorch-${TORCH_VERSION}.json`);
}

export function readRecord(env: NodeJS.ProcessEnv = process.env): Libtorch | undefined {
  const r = readJson(recordPath(env)) as Partial<LibtorchRecord> | undefined;
  if (!r || r.schemaVersion !== 1 || typeof r.lib !== 'string' || typeof r.version !== 'string' || !r.source) return undefined;
  return { lib: r.lib, version: r.version, cuda: r.cuda ?? null, source: r.source };
}

function writeRecord(t: Libtorch, env: NodeJS.ProcessEnv): void {
  const record: LibtorchRecord = { schemaVersion: 1, torch: TORCH_VERSION, ...t };
  writeJsonAtomic(cacheDir(env), recordPath(env), record);
}

/**
 * The whole set-up: find libtorch (pip-installing it when needed) and record it in the cache.
 * E_LIBTORCH, E_LIBTORCH_VERSION or E_CACHE, each with a hint, when that is not possible.
 */
export function setUpLibtorch(options: FindOptions): Libtorch {
  const env = options.env ?? process.env;
  const t = findLibtorch(options) ?? pipInstall(options);
  writeRecord(t, env);
  return t;
}

/**
 * The libtorch already chosen, without searching: LIBTORCH, else the one a locally built addon was built
 * against (`builtAgainst`), else the cache's record. A record that no longer fits (folder gone, torch
 * upgraded) is skipped, with a line saying so.
 */
export function chosenLibtorch(options: FindOptions & { builtAgainst?: string | undefined }): Libtorch | undefined {
  const env = options.env ?? process.env;
  if (env.LIBTORCH) return fromLibtorchVariable(env.LIBTORCH);
  if (options.builtAgainst) {
    const install = inspectLibtorch(options.builtAgainst);
    if (install && versionMatches(install)) return { ...install, source: { kind: 'build' } };
  }
  const record = readRecord(env);
  if (!record) return undefined;
  const install = inspectLibtorch(record.lib);
  if (install && versionMatches(install)) return { ...record, ...install };
  options.log(
    `libtorch: the recorded ${record.lib} ${install ? `is now ${install.version}` : 'is gone'} (${recordPath(env)}); setting up again`,
  );
  return undefined;
}

/** The libtorch to load at run time: the one chosen, else the set-up runs (first use of an installed package). */
export function resolveLibtorch(options: FindOptions & { builtAgainst?: string | undefined }): Libtorch {
  return chosenLibtorch(options) ?? setUpLibtorch(options);
}

/** The environment Cargo needs to build against `t` (torch-sys reads LIBTORCH, or asks Python). */
export function cargoEnv(t: Libtorch, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const lib = { PRISMA_LIBTORCH_LIB: t.lib };
  switch (t.source.kind) {
    case 'LIBTORCH':
      return { ...lib, LIBTORCH: t.source.libtorch };
    case 'python':
      return {
        ...lib,
        LIBTORCH_USE_PYTORCH: '1',
        VIRTUAL_ENV: t.source.prefix,
        // torch-sys runs `python` from PATH to ask torch for its paths.
        PATH: [dirname(t.source.python), env.PATH].filter(Boolean).join(delimiter),
      };
    case 'build':
      // The folder of a torch package or of a libtorch download: both have include/ beside lib/.
      return { ...lib, LIBTORCH: dirname(t.lib) };
  }
}
