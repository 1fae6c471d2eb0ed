/** What a command action gets from the CLI: where to write, and the process environment. */
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

/** JSON.stringify with 2-space indentation, but arrays of numbers/strings (shapes) on one line. */
export function formatJson(value: unknown, indent = ''): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    if (value.every((v) => v === null || typeof v !== 'object')) return JSON.stringify(value);
    return `[\n${value.map((v) => inner + formatJson(v, inner)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined && typeof v !== 'function');
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, inner)}`).join(',\n')}\n${indent}}`;
}
