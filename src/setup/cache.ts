/**
 * The shared cache (`~/.cache/vit-prisma`, or `PRISMA_CACHE_DIR`): the pip-installed torch, Cargo's
 * build output, source-built addons and the record of which libtorch is set up. One cache serves
 * every clone and every installed copy of the package, so torch is downloaded once per user.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

import { PrismaError } from '../errors.js';

/** The end of every set-up failure's hint. */
export const DOCTOR_HINT = '`prisma doctor` shows what is set up';

/** Progress lines of the set-up (`[setup] …` on stderr, the same in a clone and an installed package). */
export type SetupLog = (message: string) => void;

export const stderrLog: SetupLog = (message) => {
  process.stderr.write(`[setup] ${message}\n`);
};

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.PRISMA_CACHE_DIR) return env.PRISMA_CACHE_DIR;
  return join(env.HOME || homedir(), '.cache', 'vit-prisma');
}

function cannotWrite(dir: string, err: unknown): PrismaError {
  const reason = err instanceof Error && 'code' in err ? String((err as NodeJS.ErrnoException).code) : String(err);
  return new PrismaError('E_CACHE', `cannot write the cache directory ${dir} (${reason})`, {
    hint: `set PRISMA_CACHE_DIR to a writable folder; ${DOCTOR_HINT}`,
    cause: err,
  });
}

/** Creates `dir` (inside the cache `root`); E_CACHE when it cannot be written. */
export function ensureCacheDir(root: string, dir: string = root): string {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw cannotWrite(root, err);
  }
  return dir;
}

/** Writes JSON atomically (temporary file + rename), so readers never see half a record. */
export function writeJsonAtomic(root: string, path: string, value: unknown): void {
  ensureCacheDir(root, dirname(path));
  const temp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(temp, `${JSON.stringify(value, null, 2)}\n`);
    renameSync(temp, path);
  } catch (err) {
    rmSync(temp, { force: true });
    throw cannotWrite(root, err);
  }
}

/** The parsed JSON file, or undefined when it is missing or unreadable. */
export function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}
