/** In-memory streams for running the CLI in process. */
import { expect } from 'vitest';

import { EXIT_USAGE, runCli } from '../../src/cli/main.js';
import type { Io } from '../../src/cli/context.js';

export interface MemoryIo extends Io {
  out(): string;
  err(): string;
}

export function memoryIo(env: NodeJS.ProcessEnv = {}, tty = false): MemoryIo {
  let out = '';
  let err = '';
  return {
    stdout: {
      write: (s: string) => {
        out += s;
        return true;
      },
      isTTY: tty,
    },
    stderr: {
      write: (s: string) => {
        err += s;
        return true;
      },
      isTTY: tty,
    },
    env,
    out: () => out,
    err: () => err,
  };
}

/** Non-empty lines of a captured stream. */
export const lines = (s: string): string[] => s.split('\n').filter((l) => l.length > 0);

/** Runs `argv` in process and checks the usage-error contract: exit 2, one `prisma:` line matching `pattern`, one hint line, nothing on stdout. */
export async function expectUsageError(argv: string[], pattern: RegExp, hint: RegExp | string): Promise<void> {
  const io = memoryIo();
  expect(await runCli(argv, io)).toBe(EXIT_USAGE);
  const err = lines(io.err());
  expect(err).toHaveLength(2);
  expect(err[0]).toMatch(/^prisma: E_[A-Z0-9_]+: /);
  expect(err[0]).toMatch(pattern);
  if (typeof hint === 'string') expect(err[1]).toBe(hint);
  else expect(err[1]).toMatch(hint);
  expect(io.out()).toBe('');
}
