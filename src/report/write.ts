/**
 * Atomic writes for reports and figures: the bytes go to a temporary file in the destination's
 * folder, which is then renamed over the destination, so a reader (or a `--resume` run after a
 * kill) sees either the old file, the complete new one, or nothing, never a partial file.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, statSync } from 'node:fs';
import { readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { formatJson } from './json.js';
import { PrismaError } from '../errors.js';

/** Temporary names start with this prefix (and never end in .json / .png). */
export const TEMP_PREFIX = '.prisma-tmp-';

/** E_IO for a failed write of `path`. */
export function cannotWrite(path: string, err: unknown): PrismaError {
  return new PrismaError('E_IO', `cannot write ${path}: ${(err as Error).message ?? String(err)}`, { cause: err });
}

/** A temporary name for `path`, in its folder: the prefix, its name, this process's id, a random tag. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `${TEMP_PREFIX}${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}`);
}

/**
 * Creates folder `path` and any missing parents, one level at a time, or throws one E_IO line.
 * Node's `mkdir(path, { recursive: true })` is not used: under a path whose parent refuses new
 * folders without saying ENOENT or EEXIST cleanly (`/proc/x/y`), it loops forever at full CPU.
 */
export function makeDirSync(path: string): void {
  const missing: string[] = [];
  let at = resolve(path);
  for (;;) {
    let isDir: boolean | undefined;
    try {
      isDir = statSync(at).isDirectory();
    } catch {
      isDir = undefined;
    }
    if (isDir === true) break;
    if (isDir === false) {
      throw new PrismaError('E_IO', `cannot create folder ${path}: ${at} exists and is not a folder`, { data: { path } });
    }
    missing.push(at);
    const parent = dirname(at);
    if (parent === at) break;
    at = parent;
  }
  for (const dir of missing.reverse()) {
    try {
      mkdirSync(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Made by someone else between the stat and the mkdir: fine if it is a folder now.
      if (code === 'EEXIST' && statSync(dir, { throwIfNoEntry: false })?.isDirectory()) continue;
      throw new PrismaError('E_IO', `cannot create folder ${path}: ${(err as Error).message}`, { cause: err, data: { path } });
    }
  }
}

/** `makeDirSync` for async callers (folder creation is a few syscalls; not worth a thread hop). */
export async function makeDir(path: string): Promise<void> {
  makeDirSync(path);
}

/** Write `data` to `path` atomically, creating its folder when needed. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = tempPathFor(path);
  await makeDir(dir);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw cannotWrite(path, err);
  }
}

/** JSON (2-space indent, number arrays on one line) plus a final newline, atomically. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, `${formatJson(value)}\n`);
}

/** A PNG buffer, atomically. */
export function writePngAtomic(path: string, png: Uint8Array): Promise<void> {
  return writeFileAtomic(path, png);
}

/** Remove temporary files a killed run left in `dir` (not recursive). */
export async function removeStaleTemps(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  await Promise.all(names.filter((n) => n.startsWith(TEMP_PREFIX)).map((n) => unlink(join(dir, n)).catch(() => {})));
}

/**
 * Removes temporary files for `path` (named by `tempPathFor`) left by runs that were killed outright
 * (SIGKILL, a crash): those whose process is gone. A run writing the same file right now keeps its own.
 */
export async function removeOrphanTemps(path: string): Promise<void> {
  const prefix = `${TEMP_PREFIX}${basename(path)}.`;
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch {
    return;
  }
  for (const name of names.filter((n) => n.startsWith(prefix))) {
    const pid = Number(name.slice(prefix.length).split('.')[0]);
    if (Number.isInteger(pid) && pid > 0 && !processAlive(pid)) await unlink(join(dirname(path), name)).catch(() => {});
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `cleanup` (synchronous: the process is about to end) if SIGINT or SIGTERM arrives before the
 * returned function is called, then lets the signal end the process as it would have. For work
 * that keeps a large temporary file open for minutes (`prisma run --out` streaming activations).
 */
export function cleanUpOnSignal(cleanup: () => void): () => void {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  const handler = (signal: NodeJS.Signals): void => {
    dispose();
    cleanup();
    process.kill(process.pid, signal);
  };
  const dispose = (): void => {
    for (const s of signals) process.off(s, handler);
  };
  for (const s of signals) process.once(s, handler);
  return dispose;
}
