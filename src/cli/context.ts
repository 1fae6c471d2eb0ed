/** What a command action gets from the CLI: where to write, and the process environment. */
import { formatJson } from '../report/json.js';
import type { StreamLike } from './ui/style.js';

export interface Io {
  stdout: StreamLike;
  stderr: StreamLike;
  env: NodeJS.ProcessEnv;
  /** Read for the input `-` (a list of paths, one per line); default process.stdin. */
  stdin?: AsyncIterable<string | Uint8Array>;
}

export interface CommandContext {
  io: Io;
  /** True when --json was given: errors go to stdout as JSON, no progress or colour. */
  json: boolean;
  /** Set by batch commands when some inputs failed (the CLI then exits with 3). */
  partial?: boolean;
}

/** Write a JSON document (one per command) to stdout. */
export function printJson(ctx: CommandContext, value: unknown): void {
  ctx.io.stdout.write(`${formatJson(value)}\n`);
}
