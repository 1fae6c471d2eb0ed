/**
 * Atomic writes for reports and figures: the bytes go to a temporary file in the destination's
 * folder, which is then renamed over the destination, so a reader (or a `--resume` run after a
 * kill) sees either the old file, the complete new one, or nothing, never a partial file.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

import { formatJson } from '../context.js';
import { PrismaError } from '../errors.js';

/** Temporary names start with this prefix (and never end in .json / .png). */
export const TEMP_PREFIX = '.prisma-tmp-';

function ioError(path: string, err: unknown): PrismaError {
  return new PrismaError('E_IO', `cannot write ${path}: ${(err as Error).message ?? String(err)}`, { cause: err });
}

/** Write `data` to `path` atomically, creating its folder when needed. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `${TEMP_PREFIX}${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw ioError(path, err);
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

