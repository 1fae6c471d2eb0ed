/** In-memory streams for running the CLI in process. */
import type { Io } from '../../src/context.js';

export interface MemoryIo extends Io {
  out(): string;
  err(): string;
}

export function memoryIo(env: NodeJS.ProcessEnv = {}, tty = false): MemoryIo {
  let out = '';
  let err = '';
  return {
    stdout: { write: (s: string) => (out += s), isTTY: tty },
    stderr: { write: (s: string) => (err += s), isTTY: tty },
    env,
    out: () => out,
    err: () => err,
  };
}
