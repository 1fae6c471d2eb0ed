/**
 * `prisma run MODEL_DIR INPUT...`: preprocess inputs, run the model recording hooks, optionally
 * write the recorded activations to a .safetensors file, and print a JSON summary to stdout.
 */
import { statSync } from 'node:fs';
import { dirname, extname, join, resolve } from 'node:path';

import { Option, type Command } from 'commander';

import { perInputHooks, rowsPerBatch } from '../../batching.js';
import { printJson, type CommandContext } from '../context.js';
import { PrismaError, usageError } from '../../errors.js';
import { numel, topK, type PixelBatch, type Prediction, type Tensor } from '../../tensor.js';
import { parseCachePatterns, parseNonNegativeInt, parsePositiveInt } from '../../options.js';
import { cleanUpOnSignal } from '../../report/write.js';
import { SafetensorsWriter } from '../../safetensors-writer.js';
import { startProgress } from '../ui/progress.js';
import { VERSION } from '../../version.js';
import { isVideoModel } from '../../image/preprocess.js';
import { collectInputList, collectInputs, prepareOut } from './analysis.js';
import {
  allFailed,
  checkFolderFlags,
  claimOutFolder,
  finishFolderJob,
  jsonlOption,
  LineSink,
  selectInputs,
  shardManifest,
  shardOption,
} from '../folder-job.js';
import { ActivationSpill, runForwardJob, type RecordedTensor } from '../forward-job.js';
import type { RunFixed } from '../../report/layouts.js';
import { formatShard, type Shard } from '../../shard.js';
import { argParser, expandOptions, jsonOption, openModel, recursiveOption, withModelOptions, type ModelOptions } from './common.js';

export interface RunCommandOptions extends ModelOptions {
  recursive?: boolean;
  shard?: Shard;
  jsonl?: boolean;
  resume?: boolean;
  cache?: string[];
  out?: string;
  topK: number;
  stopAtLayer?: number;
  inputKey?: string;
  batchSize?: number;
  json?: boolean;
}

export interface RunSummary {
  ok: true;
  schemaVersion: 1;
  model: string;
  inputs: string[];
  output: { name: string; shape: number[] };
  cached: string[];
  /** SAEs spliced in (--sae): where, over which tokens, with or without the error term. */
  saes?: { path: string; hook: string; tokens: string; architecture: string; dIn: number; dSae: number; errorTerm: boolean }[];
  predictions?: { input: string; topK: Prediction[] }[];
  written?: { path: string; tensors: { name: string; shape: number[] }[] };
}

/** The activations file in a folder job's output folder. */
export const ACTIVATIONS_FILE = 'activations.safetensors';

/**
 * Whether `--out` names a folder (a folder job: report.json, results.jsonl and
 * activations.safetensors in it): an existing folder, or a name without an extension.
 */
export function outIsFolder(out: string): boolean {
  try {
    if (statSync(out).isDirectory()) return true;
  } catch {
    // not there yet
  }
  return extname(out) === '' || out.endsWith('/');
}

/** Checks that need no model: fail on a bad --out before loading anything. */
export function checkOutPath(out: string): string {
  if (extname(out).toLowerCase() !== '.safetensors') {
    throw usageError(`--out must name a .safetensors file, got '${out}'`);
  }
  const dir = dirname(resolve(out));
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) throw new PrismaError('E_IO', `cannot write ${out}: folder ${dir} does not exist`);
  return out;
}

/**
 * The model, with what --cache and --stop-at-layer name checked against it before any input is read, and
 * which recorded outputs have a row per input (a hook that is per input, or an output that is not a hook).
 */
async function openForRun(modelDir: string, options: RunCommandOptions, ctx: CommandContext) {
  const patterns = parseCachePatterns(options.cache);
  const model = await openModel(modelDir, options, ctx);
  const recorded = patterns.length > 0 ? model.matchHooks(patterns) : [];
  if (options.stopAtLayer !== undefined) model.checkLayer(options.stopAtLayer, 'stop-at-layer');
  const perInput = perInputHooks(model);
  const hooks = new Set(model.hookNames());
  const byInput = (name: string) => perInput.has(name) || !hooks.has(name);
  return { model, patterns, recorded, byInput };
}

export async function runCommand(
  modelDir: string,
  inputs: string[],
  options: RunCommandOptions,
  ctx: CommandContext,
): Promise<RunSummary | undefined> {
  const folderJob = options.shard !== undefined || options.jsonl === true || (options.out !== undefined && outIsFolder(options.out));
  if (folderJob) return runFolderJob(modelDir, inputs, options, ctx);
  if (options.resume) throw usageError('--resume needs --out DIR (a folder job)');
  if (options.out !== undefined) checkOutPath(options.out);
  const { model, patterns, recorded, byInput } = await openForRun(modelDir, options, ctx);
  const files = await collectInputs(inputs, ctx.io, isVideoModel(model.info), expandOptions(options, ctx));
  const plan = await model.planInputs(
    files,
    options.batchSize ?? rowsPerBatch(model, recorded),
    options.inputKey === undefined ? {} : { inputKey: options.inputKey },
  );
  // A tensor's shape in the file and the summary: all inputs' rows, or as it is.
  type Named = { name: string; shape: readonly number[] };
  const full = (t: Named) => (byInput(t.name) ? [plan.total, ...t.shape.slice(1)] : [...t.shape]);
  const progress = startProgress(ctx, plan.total, 'running');
  let writer: SafetensorsWriter | undefined;
  let row = 0;
  // Ctrl-C mid-run must not leave a temporary file of gigabytes behind.
  const stopWatching = cleanUpOnSignal(() => {
    writer?.discardSync();
    progress.stop();
    ctx.io.stderr.write(
      `\nprisma: interrupted after ${row} of ${plan.total} inputs${options.out === undefined ? '' : `; ${options.out} was not written (a file of activations is all or nothing): run again`}\n`,
    );
  });
  // Names and shapes from the first batch (its values are not kept: they are written and dropped).
  let first: { output: Named; cached: string[]; written: Named[] } | undefined;
  const predictions: Prediction[][] = [];
  try {
    for await (const batch of plan.batches()) {
      const result = await model.run(batch, {
        cache: patterns,
        ...(options.stopAtLayer === undefined ? {} : { stopAtLayer: options.stopAtLayer }),
      });
      const tensors: Tensor[] = [...result.cache.values()];
      if (!result.cache.has(result.output.name)) tensors.push(result.output);
      if (first === undefined) {
        const named = (t: Tensor): Named => ({ name: t.name, shape: [...t.shape] });
        first = { output: named(result.output), cached: [...result.cache.keys()], written: tensors.map(named) };
        if (options.out !== undefined) {
          writer = new SafetensorsWriter(
            options.out,
            tensors.map((t) => ({ name: t.name, shape: full(t) })),
            {
              generator: `vit-prisma ${VERSION}`,
              model: modelDir,
              inputs: JSON.stringify(plan.labels),
              device: model.info.device,
              dtype: model.info.dtype,
            },
          );
          await writer.open();
        }
      }
      if (writer) {
        for (const t of tensors) {
          if (byInput(t.name)) await writer.writeRows(t.name, row, t.data);
          else if (row === 0) await writer.writeRows(t.name, 0, t.data);
        }
      }
      if (model.info.nClasses > 0 && result.output.name === 'hook_logits')
        predictions.push(...topK(result.output, options.topK, model.info.labels));
      row += batch.shape[0];
      progress.update(row, batch.labels.at(-1));
    }
    await writer?.finish();
  } catch (err) {
    await writer?.abort();
    throw err;
  } finally {
    stopWatching();
    progress.stop();
  }
  if (first === undefined) throw new PrismaError('E_INPUT', 'no inputs given');

  const summary: RunSummary = {
    ok: true,
    schemaVersion: 1,
    model: modelDir,
    inputs: plan.labels,
    output: { name: first.output.name, shape: full(first.output) },
    cached: first.cached,
  };
  if (model.splices.length > 0)
    summary.saes = model.splices.map(({ sae, hook, errorTerm }) => ({
      path: sae.info.path,
      hook,
      tokens: sae.info.tokens,
      architecture: sae.info.architecture,
      dIn: sae.info.dIn,
      dSae: sae.info.dSae,
      errorTerm,
    }));
  if (predictions.length > 0) summary.predictions = plan.labels.map((input, i) => ({ input, topK: predictions[i] ?? [] }));
  if (options.out !== undefined)
    summary.written = { path: options.out, tensors: first.written.map((t) => ({ name: t.name, shape: full(t) })) };
  return summary;
}

/**
 * `prisma run` as a folder job (--out DIR, --shard, --jsonl): a failed input is an error line and
 * the job goes on; the recorded rows of the inputs that succeeded go to DIR/activations.safetensors
 * in input order, the report (the summary run prints) to DIR/report.json. Resume is per shard: a
 * finished shard is not run again with --resume.
 */
async function runFolderJob(
  modelDir: string,
  inputs: string[],
  options: RunCommandOptions,
  ctx: CommandContext,
): Promise<RunSummary | undefined> {
  checkFolderFlags(options);
  const out = prepareOut(options.out, options.resume);
  const { model, patterns, recorded, byInput } = await openForRun(modelDir, options, ctx);
  const list = await collectInputList(inputs, ctx.io, isVideoModel(model.info), expandOptions(options, ctx));
  const entries = selectInputs(list, options.shard);
  const runOptions = { cache: patterns, ...(options.stopAtLayer === undefined ? {} : { stopAtLayer: options.stopAtLayer }) };
  const predictions = model.info.nClasses > 0;

  // Names and shapes of what is recorded: from a forward on one blank input, so that every shard
  // (even one whose inputs all fail) describes the same report.
  const probe = await model.run(
    { data: new Float32Array(numel(model.inputShape())), shape: [1, ...model.inputShape()] as PixelBatch['shape'], labels: ['blank'] },
    runOptions,
  );
  const describe = (t: Tensor): RecordedTensor =>
    byInput(t.name)
      ? { name: t.name, shape: [...t.shape.slice(1)], perInput: true }
      : { name: t.name, shape: [...t.shape], perInput: false };
  const tensors = [...probe.cache.values()];
  if (!probe.cache.has(probe.output.name)) tensors.push(probe.output);
  const written = tensors.map(describe);
  const fixed: RunFixed = {
    model: modelDir,
    output: describe(probe.output),
    cached: [...probe.cache.keys()],
    predictions: predictions && probe.output.name === 'hook_logits',
    ...(out === undefined ? {} : { written: { path: ACTIVATIONS_FILE, tensors: written } }),
  };
  // Rows per forward change a row's last bits (forward-job.ts): shards must all use the same.
  const maxRows = options.batchSize ?? rowsPerBatch(model, recorded);
  const key = {
    cache: patterns,
    stopAtLayer: options.stopAtLayer ?? null,
    topK: options.topK,
    inputKey: options.inputKey ?? null,
    maxRows,
  };
  const manifest =
    options.shard &&
    shardManifest({
      command: 'run',
      shard: options.shard,
      files: list.files,
      inShard: entries.length,
      model,
      key,
      layout: 'run',
      fixed,
      outputs: out === undefined ? [] : [ACTIVATIONS_FILE],
    });
  if (out !== undefined && (await claimOutFolder(out, options.shard, manifest || undefined, options.resume === true))) {
    ctx.io.stdout.write(`run shard ${formatShard(options.shard!)}: already finished in ${out}\n`);
    return undefined;
  }

  const sink = new LineSink(out, options.jsonl ? ctx.io.stdout : undefined, !options.jsonl && !options.shard);
  const spill = out === undefined ? undefined : new ActivationSpill(join(out, ACTIVATIONS_FILE), written);
  const stopWatching = cleanUpOnSignal(() => spill?.removeSync());
  try {
    await sink.open();
    await runForwardJob({
      model,
      entries,
      maxRows,
      ...(options.inputKey === undefined ? {} : { inputKey: options.inputKey }),
      sink,
      ctx,
      title: 'running',
      forward: async (batch, keep) => {
        const result = await model.run(batch, runOptions);
        // The first `keep` rows of a tensor with a row per input (the rest is padding).
        const rows = (t: Tensor) => (byInput(t.name) ? t.data.subarray(0, (t.data.length / batch.shape[0]) * keep) : t.data);
        if (spill) {
          for (const t of result.cache.values()) await spill.add(t.name, rows(t));
          if (!result.cache.has(result.output.name)) await spill.add(result.output.name, rows(result.output));
        }
        if (!fixed.predictions) return Array.from({ length: keep }, () => ({}));
        return topK(result.output, options.topK, model.info.labels)
          .slice(0, keep)
          .map((p) => ({ topK: p }));
      },
    });
    if (spill) {
      await spill.finish({
        generator: `vit-prisma ${VERSION}`,
        model: modelDir,
        inputs: JSON.stringify(sink.digest.digest.okInputs),
        device: model.info.device,
        dtype: model.info.dtype,
      });
    }
  } catch (err) {
    await sink.abort();
    throw err;
  } finally {
    stopWatching();
    await spill?.remove();
  }
  const done = await finishFolderJob({
    command: 'run',
    layout: 'run',
    fixed,
    sink,
    flags: options,
    ctx,
    ...(manifest ? { manifest } : {}),
  });
  const failed = allFailed(done.digest, options);
  if (failed) throw failed;
  if (done.report === undefined) return undefined;
  if (done.digest.errors.length > 0 && !options.json) {
    for (const e of done.digest.errors) ctx.io.stderr.write(`failed: ${e.input}: ${e.code}: ${e.message}\n`);
  }
  return done.report as RunSummary;
}

export function registerRun(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('run')
      .description('run a model on images or pixel tensors, record hooks, print predictions as JSON')
      .argument('<MODEL_DIR>', 'model folder: Hugging Face, timm or open_clip (docs/models.md)')
      .argument('<INPUT...>', "image files, folders of images, pre-processed .npy/.safetensors pixel tensors, or '-' for paths on stdin")
      .addOption(
        // One value per flag (repeatable): a variadic option would take the inputs after it as patterns.
        new Option(
          '--cache <pattern>',
          "hooks to record: names or globs ('blocks.*.hook_resid_post', '*'); comma-separated or repeated",
        ).argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]),
      )
      .addOption(
        new Option(
          '--out <path>',
          'write recorded hooks (and the output) to this .safetensors file; or a folder (no extension): a folder job with report.json, results.jsonl and activations.safetensors, where a failed input does not stop the run',
        ),
      )
      .addOption(recursiveOption())
      .addOption(shardOption())
      .addOption(jsonlOption())
      .addOption(new Option('--resume', 'with --shard and --out DIR: a shard that already finished is not run again'))
      .addOption(
        new Option('--top-k <k>', 'predictions to list per input').default(5).argParser(argParser((v) => parsePositiveInt(v, '--top-k'))),
      )
      .addOption(
        new Option('--stop-at-layer <n>', 'run blocks [0, n) only').argParser(argParser((v) => parseNonNegativeInt(v, '--stop-at-layer'))),
      )
      .addOption(new Option('--input-key <name>', "tensor to use from .safetensors inputs holding several (default 'pixel_values')"))
      .addOption(
        new Option(
          '--batch-size <n>',
          'inputs per forward (default: as many as fit in about 1 GB with what is recorded, at most 64); recorded values stream to --out',
        ).argParser(argParser((v) => parsePositiveInt(v, '--batch-size'))),
      ),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nPut --cache after the inputs (or end its list with --): it takes every following word.\nStdout is always a JSON summary; --json also reports errors as JSON.',
    )
    .action(async (modelDir: string, inputs: string[], options: RunCommandOptions) => {
      const summary = await runCommand(modelDir, inputs, options, ctx);
      if (summary !== undefined) printJson(ctx, summary);
    });
}
