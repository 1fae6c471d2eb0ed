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
import { runBatch, type BatchItem, type InputError } from '../batch.js';
import {
  allFailed,
  checkFolderFlags,
  claimOutFolder,
  finishFolderJob,
  type FolderJobFlags,
  type InputList,
  jsonlOption,
  LineSink,
  selectInputs,
  shardManifest,
  shardOption,
} from '../folder-job.js';
import type { AnalysisFixed } from '../../report/layouts.js';
import { shardKey, type Shard } from '../../shard.js';
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
  refuseSplices,
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
    numFrames: i.numFrames,
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
 * Input arguments -> the input list: folders expand to their images (sorted; a video model's folder
 * of frames is one clip), `-` reads one path per line from stdin. Files that do not exist are kept,
 * so they fail (and are recorded) one by one. Each input has its shard key: its path relative to
 * the folder argument it was found in, else the path as given (src/shard.ts).
 */
export async function collectInputList(args: readonly string[], io: Io, video = false, expand: ExpandOptions = {}): Promise<InputList> {
  const files: string[] = [];
  const keys: string[] = [];
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
      if (st?.isDirectory() && !video) {
        for (const file of await expandInputs([p], expand)) {
          files.push(file);
          keys.push(shardKey(file, p));
        }
      } else {
        files.push(p);
        keys.push(shardKey(p));
      }
    }
  }
  if (files.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  return { files, keys };
}

/** The input files of `collectInputList`, without their keys. */
export async function collectInputs(args: readonly string[], io: Io, video = false, expand: ExpandOptions = {}): Promise<string[]> {
  return (await collectInputList(args, io, video, expand)).files;
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
  for (const option of [...frame.options, outOption(), resumeOption(), recursiveOption(), shardOption(), jsonlOption()])
    cmd.addOption(option);
  return withModelOptions(cmd)
    .addOption(jsonOption())
    .addHelpText(
      'after',
      `\nWith --out DIR: ${frame.outFiles}.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed${frame.exitNote ?? ''}.`,
    );
}

export interface BatchCommandOptions extends ModelOptions {
  recursive?: boolean;
  shard?: Shard;
  jsonl?: boolean;
  target?: string;
  baseline?: string;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export interface OpenedBatch {
  model: Model;
  /** Every input of the job (with --shard, this process runs its part). */
  files: string[];
  keys: string[];
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
  checks: { head?: string; noSplices?: string; check?: (model: Model) => void } = {},
): Promise<OpenedBatch> {
  checkFolderFlags(options);
  const out = prepareOut(options.out, options.resume);
  const model = await openModel(modelDir, options, ctx);
  if (checks.head !== undefined) requireHead(model, checks.head);
  if (checks.noSplices !== undefined) refuseSplices(model, checks.noSplices);
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  if (options.baseline !== undefined) resolveClass(options.baseline, model.info, 'baseline');
  checks.check?.(model);
  const list = await collectInputList(inputArgs, ctx.io, model.info.numFrames > 0, expandOptions(options, ctx));
  return { model, ...list, out };
}

export interface BatchRun<C extends ReportCommand, R, O, E extends object = Record<never, never>> {
  command: C;
  modelDir: string;
  batch: OpenedBatch;
  options: FolderJobFlags;
  ctx: CommandContext;
  /** Everything that changes the results (see BatchSpec.key). */
  key: unknown;
  /** The options as the report records them. */
  reportOptions: O;
  process(item: BatchItem, figures: FigureWriter | undefined): Promise<{ result: R; figures: Figure[] }>;
  summary(report: BatchReport<C, R, O, E>, color: boolean): string;
  /** Report fields computed from every input's result (names in report/layouts.ts's AGGREGATES). */
  aggregates?: string[];
}

/**
 * Runs every input of this process (all, or its shard's; resumable), one result line each as it
 * finishes, then lays out the report from the lines and finishes: report.json (and shard.json with
 * --shard) under --out, then the summary, the report as JSON, or nothing more after --jsonl lines.
 * Exit 3 when some inputs failed; when all failed, the first error (exit 1), except in a shard,
 * which still finished. Returns the report when it is held (not with --shard or --jsonl).
 */
export async function runBatchCommand<C extends ReportCommand, R, O, E extends object = Record<never, never>>(
  run: BatchRun<C, R, O, E>,
): Promise<BatchReport<C, R, O, E> | undefined> {
  const { model, files, out } = run.batch;
  // Spliced SAEs change every result: a run resumed (or a shard merged) with other --sae flags must not reuse records.
  const key =
    model.splices.length === 0
      ? run.key
      : { key: run.key, saes: model.splices.map((s) => ({ path: s.sae.info.path, hook: s.hook, errorTerm: s.errorTerm })) };
  const flags = run.options;
  const entries = selectInputs(run.batch, flags.shard);
  const fixed: AnalysisFixed = {
    base: reportBase(run.command, model, run.modelDir),
    options: run.reportOptions,
    aggregates: run.aggregates ?? [],
  };
  const manifest =
    flags.shard &&
    shardManifest({
      command: run.command,
      shard: flags.shard,
      files,
      inShard: entries.length,
      model,
      key,
      layout: 'analysis',
      fixed,
    });
  if (out !== undefined) await claimOutFolder(out, flags.shard);
  const sink = new LineSink(out, flags.jsonl ? run.ctx.io.stdout : undefined, !flags.jsonl && !flags.shard);
  await sink.open();
  try {
    await runBatch<R>({
      command: run.command,
      model,
      files,
      entries,
      sink,
      ...(out === undefined ? {} : { outDir: out }),
      resume: flags.resume ?? false,
      key,
      ctx: run.ctx,
      process: run.process,
    });
  } catch (err) {
    await sink.abort();
    throw err;
  }
  const done = await finishFolderJob({
    command: run.command,
    layout: 'analysis',
    fixed,
    sink,
    flags,
    ctx: run.ctx,
    ...(manifest ? { manifest } : {}),
  });
  const failed = allFailed(done.digest, flags);
  if (failed) throw failed;
  const report = done.report as BatchReport<C, R, O, E> | undefined;
  if (report === undefined) return undefined;
  if (flags.json) printJson(run.ctx, report);
  else run.ctx.io.stdout.write(run.summary(report, useColor(run.ctx.io.stdout, run.ctx.io.env)));
  if (report.errors.length > 0 && !flags.json) {
    const color = useColor(run.ctx.io.stderr, run.ctx.io.env);
    for (const e of report.errors) run.ctx.io.stderr.write(`${dim('failed:', color)} ${e.input}: ${e.code}: ${e.message}\n`);
  }
  return report;
}
