/**
 * The `prisma` command line. Commands live one per file in src/cli/commands/ and throw on failure;
 * this module owns the only exit path: it prints one error line (plus a hint) to stderr, or
 * `{"ok":false,"error":{...}}` to stdout with --json, and sets `process.exitCode`:
 * 0 ok, 1 failure, 2 a call to change (E_USAGE: the command line does not parse; E_ARGUMENT: a
 * value the library refuses), 3 partial batch (a multi-input command
 * finished, but some inputs failed; the report lists them under `errors`).
 */
import { Command, CommanderError } from 'commander';

import { registerAblate } from './commands/ablate.js';
import { registerClassify } from './commands/classify.js';
import { registerDataset } from './commands/dataset.js';
import { registerDemo } from './commands/demo.js';
import { registerDla } from './commands/dla.js';
import { registerDoctor } from './commands/doctor.js';
import { registerHeads } from './commands/heads.js';
import { registerInspect } from './commands/inspect.js';
import { registerLogitLens } from './commands/logit-lens.js';
import { registerMerge } from './commands/merge.js';
import { registerPatch } from './commands/patch.js';
import { registerRun } from './commands/run.js';
import { registerSae } from './commands/sae.js';
import { registerSetup } from './commands/setup.js';
import { registerTrain } from './commands/train.js';
import { configureHelp } from './help.js';
import { printJson, type CommandContext, type Io } from './context.js';
import { PrismaError, errorJson, exitStatusFor, oneLine, toPrismaError } from '../errors.js';
import { red, useColor } from './ui/style.js';
import { VERSION } from '../version.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_PARTIAL = 3;

export function buildProgram(ctx: CommandContext): Command {
  const program = new Command('prisma')
    .description('mechanistic interpretability for vision transformers')
    .version(VERSION, '-V, --version')
    .showSuggestionAfterError(true)
    .allowExcessArguments(false);
  registerInspect(program, ctx);
  registerRun(program, ctx);
  registerClassify(program, ctx);
  registerLogitLens(program, ctx);
  registerPatch(program, ctx);
  registerHeads(program, ctx);
  registerDla(program, ctx);
  registerAblate(program, ctx);
  registerMerge(program, ctx);
  registerDataset(program, ctx);
  registerTrain(program, ctx);
  registerSae(program, ctx);
  registerDemo(program, ctx);
  registerDoctor(program, ctx);
  registerSetup(program, ctx);
  configureHelp(program);
  for (const cmd of [program, ...program.commands]) {
    cmd.exitOverride().configureOutput({
      writeOut: (s) => ctx.io.stdout.write(s),
      writeErr: (s) => ctx.io.stderr.write(s),
      // Usage errors are reported by `report` below, in the same one-line format as other errors.
      outputError: () => {},
    });
  }
  return program;
}

/** The `--help` to read: the first argument that names a registered command, else the program's. */
function helpHint(program: Command, argv: readonly string[]): string {
  const names = new Set(program.commands.map((c) => c.name()));
  const sub = argv.find((a) => names.has(a));
  return `run \`prisma ${sub ? `${sub} ` : ''}--help\``;
}

/** Commander's usage errors as PrismaError E_USAGE, with a hint naming the right --help. */
function fromCommanderError(err: CommanderError, hint: string): PrismaError {
  const message = oneLine(err.message.replace(/^error:\s*/, ''));
  return new PrismaError('E_USAGE', message, { hint });
}

/** The CLI flag for a library option an E_ARGUMENT names (`data.option`, src/errors.ts optionError). */
const OPTION_FLAGS: Readonly<Record<string, string>> = {
  ablate: '--ablate',
  layers: '--layers',
  query: '--query',
  references: '--reference',
  templates: '--template',
};

/** A library error worded for the library, with the flag the CLI user typed named after it. */
function withFlag(err: PrismaError): PrismaError {
  const option = (err.data as { option?: unknown } | undefined)?.option;
  const flag = typeof option === 'string' ? OPTION_FLAGS[option] : undefined;
  if (err.code !== 'E_ARGUMENT' || flag === undefined) return err;
  return new PrismaError(err.code, `${err.message} (${flag})`, {
    ...(err.hint === undefined ? {} : { hint: err.hint }),
    data: err.data,
    cause: err,
  });
}

function report(err: PrismaError, ctx: CommandContext): void {
  if (ctx.json) {
    printJson(ctx, { ok: false, error: errorJson(err) });
    return;
  }
  const color = useColor(ctx.io.stderr, ctx.io.env);
  // The stable code is part of the line, so a script reading stderr can branch on it (README's example).
  let text = `${red('prisma:', color)} ${err.code}: ${oneLine(err.message)}\n`;
  if (err.hint) text += `hint: ${oneLine(err.hint)}\n`;
  ctx.io.stderr.write(text);
}

/** The registry's exit status for the error's code (src/errors.ts: 2 for E_USAGE and E_ARGUMENT). */
export function exitCodeFor(err: PrismaError): number {
  return exitStatusFor(err.code) === 2 ? EXIT_USAGE : EXIT_FAILURE;
}

/** Run the CLI on `argv` (arguments after the script name); resolves to the exit code. */
export async function runCli(argv: readonly string[], io: Io): Promise<number> {
  const ctx: CommandContext = { io, json: argv.includes('--json') };
  const program = buildProgram(ctx);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return ctx.partial ? EXIT_PARTIAL : EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help / --version: commander already printed; a bare `prisma` printed help to stderr.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT_OK;
      if (err.code === 'commander.help' || err.code === 'commander.executeSubCommandAsync') return EXIT_USAGE;
      report(fromCommanderError(err, helpHint(program, argv)), ctx);
      return EXIT_USAGE;
    }
    let pe = withFlag(toPrismaError(err));
    if ((pe.code === 'E_USAGE' || pe.code === 'E_ARGUMENT') && pe.hint === undefined)
      pe = new PrismaError(pe.code, pe.message, { hint: helpHint(program, argv), cause: pe });
    report(pe, ctx);
    return exitCodeFor(pe);
  }
}

/**
 * A reader that stops early (`prisma ... | head`) closes the pipe under us: stop quietly, as Unix
 * tools do, instead of dying on an unhandled EPIPE with a stack trace. Report files are written
 * atomically before anything is printed, so none is left half-written.
 */
function stopQuietlyOnClosedPipe(stream: NodeJS.WriteStream): void {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(EXIT_OK);
  });
}

/** Entry point used by bin/prisma.js. */
export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  stopQuietlyOnClosedPipe(process.stdout);
  process.exitCode = await runCli(argv, { stdout: process.stdout, stderr: process.stderr, env: process.env, stdin: process.stdin });
}
