/**
 * Loading the native addon with no LD_LIBRARY_PATH and no rpath. The addon needs libtorch_cpu.so
 * and libc10.so by name; loading those two first, by absolute path and RTLD_GLOBAL, makes the
 * dynamic linker resolve the addon's needs to the objects already in the process. libtorch_cuda
 * (large, and useless without a GPU) is loaded later by the core, when a CUDA device is asked for;
 * PRISMA_LIBTORCH_LIB tells it where.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { join } from 'node:path';

import { PrismaError, oneLine } from '../errors.js';
import { PACKAGE_NAME, PACKAGE_ROOT } from '../version.js';
import { type Addon, buildAddonIntoCache, checkAddonFits, locateAddon } from './addon.js';
import { DOCTOR_HINT, type SetupLog, stderrLog } from './cache.js';
import { type Libtorch, resolveLibtorch, sharedLibrary } from './libtorch.js';

/** glibc's RTLD_NODELETE (not in os.constants): keeps the library mapped when Node closes the handle. */
const RTLD_NODELETE = 0x1000;

export interface NativeSetup {
  addon: Addon;
  torch: Libtorch;
}

export interface PrepareOptions {
  env?: NodeJS.ProcessEnv;
  log?: SetupLog;
}

/**
 * libtorch and the addon to load, checked against each other. Sets up what is missing on first use:
 * finds or pip-installs libtorch, and builds the addon from source where no prebuilt one fits.
 */
export function prepareNative(options: PrepareOptions = {}): NativeSetup {
  const env = options.env ?? process.env;
  const log = options.log ?? stderrLog;
  const found = locateAddon(PACKAGE_ROOT, env);
  const torch = resolveLibtorch({ env, log, builtAgainst: found?.build?.libtorchLib });
  const addon = found ?? buildAddonIntoCache(torch, log, env);
  checkAddonFits(addon, torch);
  return { addon, torch };
}

/** Loads libc10 and libtorch_cpu from `lib` into the process, visible to what is loaded next. */
export function preloadLibtorch(lib: string): void {
  if (process.platform !== 'linux') return;
  const { RTLD_NOW = 2, RTLD_GLOBAL = 256 } = constants.dlopen;
  for (const name of ['c10', 'torch_cpu']) {
    try {
      process.dlopen({ exports: {} }, join(lib, sharedLibrary(name)), RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE);
    } catch (err) {
      // Node loads the library, then finds it is not a Node module and says so: the library stays.
      const message = err instanceof Error ? err.message : String(err);
      if (/did not self-register/.test(message)) continue;
      throw new PrismaError('E_LIBTORCH', `libtorch in ${lib} cannot be loaded: ${oneLine(message)}`, { hint: DOCTOR_HINT, cause: err });
    }
  }
}

function loadFailure(err: unknown, { addon, torch }: NativeSetup): PrismaError {
  const message = oneLine(err instanceof Error ? err.message : String(err));
  if (/undefined symbol/.test(message)) {
    return new PrismaError(
      'E_NATIVE_MISMATCH',
      `the native addon ${addon.path} does not fit libtorch ${torch.version} in ${torch.lib} (${message})`,
      { hint: `reinstall ${PACKAGE_NAME} (or run \`npm run setup\` in a clone) so the addon matches; ${DOCTOR_HINT}`, cause: err },
    );
  }
  return new PrismaError('E_NATIVE_LOAD', `the native addon ${addon.path} failed to load: ${message}`, { hint: DOCTOR_HINT, cause: err });
}

let loaded: unknown;

/** Loads the addon of `setup` (once per process); the binding object. */
export function loadAddon(setup: NativeSetup): unknown {
  if (loaded !== undefined) return loaded;
  preloadLibtorch(setup.torch.lib);
  process.env.PRISMA_LIBTORCH_LIB = setup.torch.lib;
  try {
    loaded = createRequire(import.meta.url)(setup.addon.path);
  } catch (err) {
    throw loadFailure(err, setup);
  }
  return loaded;
}

/** The binding object: set up on first use when needed, then loaded once per process. */
export function loadNative(options: PrepareOptions = {}): unknown {
  return loaded ?? loadAddon(prepareNative(options));
}
