/**
 * What the analysis commands (logit-lens, patch, heads, dla, ablate) share: input lists (files,
 * folders, `-` for paths on stdin), --out / --resume / --target / --baseline / --layers, the report
 * envelope, schema validation and writing, and how partial batches end.
 */
import { statSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { Option, type Command } from 'commander';

import { requireHead, resolveClass, tokenLabels } from '../../analysis/common.js';
import { printJson, type CommandContext, type Io } from '../context.js';
import { PrismaError, usageError } from '../../errors.js';
import { expandInputs, type ExpandOptions } from '../../image/preprocess.js';
import type { Model } from '../../model.js';
import { runBatch, type BatchItem, type BatchOutcome, type InputError } from '../batch.js';
import type { Figure, FigureWriter } from '../../report/figures.js';
import { validateReport, type ReportCommand } from '../../report/schema.js';
import { makeDirSync, writeJsonAtomic } from '../../report/write.js';
import { dim, useColor } from '../ui/style.js';
import { VERSION } from '../../version.js';
import {
  argParser,
  asOptionError,
  expandOptions,
  jsonOption,
  type ModelOptions,
  openModel,
  recursiveOption,
  withModelOptions,
} from './common.js';

export interface ReportModel {
  dir: string;
  architecture: string;
  nLayers: number;
  nHeads: number;
  imageSize: number[];
  patchSize: number;
  nClasses: number;
  family: string;
  /** Video models: frames per clip (0 for images). */
  numFrames: number;
  /** Label of every token position (class, registers, then patches; video: per time slice). */
  tokens: string[];
}

/** Fields every analysis report has. */
export interface ReportBase {
  schemaVersion: 1;
  ok: true;
  command: ReportCommand;
  generator: string;
  model: ReportModel;
  inputs: string[];
  errors: InputError[];
  /** Inputs taken from an earlier run (--resume) / computed by this run. */
  resumed: number;
  computed: number;
  /** Figures written under --out (paths relative to it); [] without --out. */
  figures: Figure[];
}

export function reportModel(model: Model, dir: string): ReportModel {
  const i = model.info;
  return {
    dir,
    architecture: i.architecture,
    nLayers: i.nLayers,
    nHeads: i.nHeads,
    imageSize: i.imageSize,
    patchSize: i.patchSize,
    nClasses: i.nClasses,
    family: i.family,
    numFrames: i.numFrames ?? 0,
    tokens: tokenLabels(i),
  };
}

export function reportBase(
  command: ReportCommand,
  model: Model,
  modelDir: string,
): Omit<ReportBase, 'inputs' | 'errors' | 'resumed' | 'computed' | 'figures'> {
  return { schemaVersion: 1, ok: true, command, generator: `vit-prisma ${VERSION}`, model: reportModel(model, modelDir) };
}

// ---------------------------------------------------------------------------------------------
// Inputs

async function readStdinLines(io: Io): Promise<string[]> {
  const stream = io.stdin ?? process.stdin;
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of stream) text += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
  text += decoder.decode();
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
}

/**
 * Input arguments -> input files: folders expand to their images (sorted), `-` reads one path per
 * line from stdin. Files that do not exist are kept, so they fail (and are recorded) one by one.
 */
/** Input paths from the arguments; a folder is expanded to its images, except for a video model, where a folder of frames is one clip. */
export async function collectInputs(args: readonly string[], io: Io, video = false, expand: ExpandOptions = {}): Promise<string[]> {
  const out: string[] = [];
  let stdinUsed = false;
  for (const arg of args) {
    let paths = [arg];
    if (arg === '-') {
      if (stdinUsed) throw usageError("'-' (paths on stdin) may be given once");
      stdinUsed = true;
      paths = await readStdinLines(io);
      if (paths.length === 0) throw new PrismaError('E_INPUT', "no paths on stdin (input '-')");
    }
    for (const p of paths) {
      const st = await stat(p).catch(() => undefined);
      if (st?.isDirectory() && !video) out.push(...(await expandInputs([p], expand)));
      else out.push(p);
    }
  }
  if (out.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  return out;
}

// ---------------------------------------------------------------------------------------------
// Options

export function outOption(): Option {
  return new Option('--out <dir>', 'write report.json and figures (PNG) to this folder (created if needed)');
}

export function resumeOption(): Option {
  return new Option('--resume', 'with --out: skip inputs an earlier (interrupted) run already finished');
}

export function targetOption(): Option {
  return new Option('--target <class>', "class index or label (default: each image's own top-1)");
}

export function baselineOption(what = 'none'): Option {
  return new Option(
    '--baseline <class>',
    `contrast class, index or label: the metric becomes logit[target] - logit[baseline] (default: ${what})`,
  );
}

/** A parser for a repeatable flag whose values may also be comma-separated: collects into a list. */
export function collect<T>(parse: (value: string) => T): (value: string, previous: T[] | undefined) => T[] {
  return (value, previous) => {
    try {
      const parts = value
        .split(',')
        .map((v) => v.trim())
        .filter((v) => v.length > 0);
      return [...(previous ?? []), ...parts.map(parse)];
    } catch (err) {
      throw asOptionError(err);
    }
  };
}

/** '0,3,5' and ranges '0-3' -> sorted unique layer indices. */
export function parseLayerList(value: string): number[] {
  const out: number[] = [];
  for (const part of value.split(',')) {
    const p = part.trim();
    if (p.length === 0) continue;
    const range = /^(\d+)\s*-\s*(\d+)$/.exec(p);
    if (range) {
      const a = Number.parseInt(range[1]!, 10);
      const b = Number.parseInt(range[2]!, 10);
      if (b < a) throw usageError(`--layers range ${p} runs backwards`);
      for (let l = a; l <= b; l++) out.push(l);
    } else if (/^\d+$/.test(p)) {
      out.push(Number.parseInt(p, 10));
    } else {
      throw usageError(`--layers must list layer indices like 0,3,5 or 0-3, got '${value}'`);
    }
  }
  if (out.length === 0) throw usageError('--layers names no layer');
  return [...new Set(out)].sort((a, b) => a - b);
}

export function layersOption(): Option {
  return new Option('--layers <list>', 'only these layers, e.g. 0,3,5 or 0-3 (default: all)').argParser(argParser(parseLayerList));
}

/** Check --out / --resume before loading anything; creates the folder. */
export function prepareOut(out: string | undefined, resume: boolean | undefined): string | undefined {
  if (resume && out === undefined) throw usageError('--resume needs --out DIR (the folder of the run to resume)');
  if (out === undefined) return undefined;
  const dir = resolve(out);
  const st = (() => {
    try {
      return statSync(dir);
    } catch {
      return undefined;
    }
  })();
  if (st && !st.isDirectory()) throw new PrismaError('E_IO', `--out ${out} exists and is not a folder`);
  makeDirSync(dir);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Finishing

/** Validate against the schema, write report.json (with --out), print JSON or the summary. */
export async function finishReport<T extends ReportBase>(
  report: T,
  options: { out?: string; json?: boolean },
  ctx: CommandContext,
  summary: (r: T, color: boolean) => string,
): Promise<void> {
  validateReport(report.command, report);
  if (options.out !== undefined) await writeJsonAtomic(join(options.out, 'report.json'), report);
  if (options.json) printJson(ctx, report);
  else ctx.io.stdout.write(summary(report, useColor(ctx.io.stdout, ctx.io.env)));
  if (report.errors.length > 0 && !options.json) {
    const color = useColor(ctx.io.stderr, ctx.io.env);
    for (const e of report.errors) ctx.io.stderr.write(`${dim('failed:', color)} ${e.input}: ${e.code}: ${e.message}\n`);
  }
}

/**
 * Finish a multi-input run: like `finishReport`, but when every input failed the report is still
 * written (with --out) and the first error is thrown (exit 1); when some failed, the exit code is 3.
 */
export async function finishBatch<T extends ReportBase>(
  report: T,
  options: { out?: string; json?: boolean },
  ctx: CommandContext,
  summary: (r: T, color: boolean) => string,
): Promise<void> {
  if (report.errors.length > 0 && report.resumed + report.computed === 0) {
    validateReport(report.command, report);
    if (options.out !== undefined) await writeJsonAtomic(join(options.out, 'report.json'), report);
    const first = report.errors[0]!;
    const more = report.errors.length > 1 ? ` (all ${report.errors.length} inputs failed)` : '';
    throw new PrismaError(first.code, `${first.message}${more}`);
  }
  await finishReport(report, options, ctx, summary);
  if (report.errors.length > 0) ctx.partial = true;
}

/**
 * The fields every batch report takes from its outcome: one result per input (with the paths of its
 * figures), the per-input errors, the resumed/computed counts and all figures in input order.
 */
export function batchReportFields<R>(outcome: BatchOutcome<R>): {
  results: (R & { input: string; name: string; figures: string[] })[];
  errors: InputError[];
  resumed: number;
  computed: number;
  figures: Figure[];
} {
  return {
    results: outcome.items.map((i) => ({ ...i.result, input: i.input, name: i.name, figures: i.figures.map((f) => f.path) })),
    errors: outcome.errors,
    resumed: outcome.resumed,
    computed: outcome.computed,
    figures: outcome.items.flatMap((i) => i.figures),
  };
}

// ---------------------------------------------------------------------------------------------
// The frame of a multi-input analysis command (logit-lens, heads, dla, ablate)

/** The report of a multi-input command: one result per input, with its name and figure paths. */
export type BatchReport<C extends ReportCommand, R, O, E extends object = Record<never, never>> = ReportBase & {
  command: C;
  options: O;
  results: (R & { input: string; name: string; figures: string[] })[];
} & E;

export interface BatchCommandFrame {
  name: ReportCommand;
  description: string;
  /** Help for MODEL_DIR (default: a folder with a classification head). */
  model?: string;
  /** The command's own options, listed before --out, --resume and the model options. */
  options: Option[];
  /** What --out DIR holds, for the help text. */
  outFiles: string;
  exitNote?: string;
}

/** `NAME <MODEL_DIR> <INPUT...>` with the command's options, --out, --resume, the model options and --json. */
export function batchCommand(program: Command, frame: BatchCommandFrame): Command {
  const cmd = program
    .command(frame.name)
    .description(frame.description)
    .argument('<MODEL_DIR>', frame.model ?? 'Hugging Face model folder with a classification head')
    .argument('<INPUT...>', "images, folders of images, .npy/.safetensors tensors, or '-' for paths on stdin");
  for (const option of [...frame.options, outOption(), resumeOption(), recursiveOption()]) cmd.addOption(option);
  return withModelOptions(cmd)
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `\nWith --out DIR: ${frame.outFiles}.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed${frame.exitNote ?? ''}.`,
    );
}

export interface BatchCommandOptions extends ModelOptions {
  recursive?: boolean;
  target?: string;
  baseline?: string;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export interface OpenedBatch {
  model: Model;
  files: string[];
  out: string | undefined;
}

/**
 * Check --out, load the model, check the flags that depend on it (a head for `head`, --target,
 * --baseline, then `check`), and list the inputs: every mistake is reported before any input is read.
 */
export async function openBatch(
  modelDir: string,
  inputArgs: readonly string[],
  options: BatchCommandOptions,
  ctx: CommandContext,
  checks: { head?: string; check?: (model: Model) => void } = {},
): Promise<OpenedBatch> {
  const out = prepareOut(options.out, options.resume);
  const model = await openModel(modelDir, options, ctx);
  if (checks.head !== undefined) requireHead(model, checks.head);
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  if (options.baseline !== undefined) resolveClass(options.baseline, model.info, 'baseline');
  checks.check?.(model);
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0, expandOptions(options, ctx));
  return { model, files, out };
}

export interface BatchRun<C extends ReportCommand, R, O, E extends object> {
  command: C;
  modelDir: string;
  batch: OpenedBatch;
  options: { out?: string; resume?: boolean; json?: boolean };
  ctx: CommandContext;
  /** Everything that changes the results (see BatchSpec.key). */
  key: unknown;
  /** The options as the report records them. */
  reportOptions: O;
  process(item: BatchItem, figures: FigureWriter | undefined): Promise<{ result: R; figures: Figure[] }>;
  summary(report: BatchReport<C, R, O, E>, color: boolean): string;
  /** Report fields computed from every input's result. */
  extra?: (outcome: BatchOutcome<R>) => E;
}

/** Run every input (resumable), assemble the report, and finish it (see finishBatch). */
export async function runBatchCommand<C extends ReportCommand, R, O, E extends object = Record<never, never>>(
  run: BatchRun<C, R, O, E>,
): Promise<BatchReport<C, R, O, E>> {
  const { model, files, out } = run.batch;
  const outcome = await runBatch<R>({
    command: run.command,
    model,
    files,
    ...(out === undefined ? {} : { outDir: out }),
    resume: run.options.resume ?? false,
    key: run.key,
    ctx: run.ctx,
    process: run.process,
  });
  const report = {
    ...reportBase(run.command, model, run.modelDir),
    command: run.command,
    inputs: files,
    options: run.reportOptions,
    ...batchReportFields(outcome),
    ...run.extra?.(outcome),
  } as BatchReport<C, R, O, E>;
  await finishBatch(report, run.options, run.ctx, run.summary);
  return report;
}
