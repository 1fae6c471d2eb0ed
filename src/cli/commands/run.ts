/**
 * `prisma run MODEL_DIR INPUT...`: preprocess inputs, run the model recording hooks, optionally
 * write the recorded activations to a .safetensors file, and print a JSON summary to stdout.
 */
import { statSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';

import { Option, type Command } from 'commander';

import { perInputHooks, rowsPerBatch } from '../../batching.js';
import { printJson, type CommandContext } from '../context.js';
import { PrismaError, usageError } from '../../errors.js';
import { topK, type Prediction, type Tensor } from '../../tensor.js';
import { parseCachePatterns, parseNonNegativeInt, parsePositiveInt } from '../../options.js';
import { cleanUpOnSignal } from '../../report/write.js';
import { SafetensorsWriter } from '../../safetensors-writer.js';
import { startProgress } from '../ui/progress.js';
import { VERSION } from '../../version.js';
import { isVideoModel } from '../../image/preprocess.js';
import { collectInputs } from './analysis.js';
import { argParser, expandOptions, jsonOption, openModel, recursiveOption, withModelOptions, type ModelOptions } from './common.js';

export interface RunCommandOptions extends ModelOptions {
  recursive?: boolean;
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
  predictions?: { input: string; topK: Prediction[] }[];
  written?: { path: string; tensors: { name: string; shape: number[] }[] };
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

export async function runCommand(modelDir: string, inputs: string[], options: RunCommandOptions, ctx: CommandContext): Promise<RunSummary> {
  if (options.out !== undefined) checkOutPath(options.out);
  const patterns = parseCachePatterns(options.cache);

  const model = await openModel(modelDir, options, ctx);
  // Everything that can be checked against the model is checked before any input is read.
  const recorded = patterns.length > 0 ? model.matchHooks(patterns) : [];
  if (options.stopAtLayer !== undefined) model.checkLayer(options.stopAtLayer, 'stop-at-layer');

  const perInput = perInputHooks(model);
  const hooks = new Set(model.hookNames());
  // An output that is not a hook is taken to have a row per input.
  const byInput = (name: string) => perInput.has(name) || !hooks.has(name);
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
  if (predictions.length > 0) summary.predictions = plan.labels.map((input, i) => ({ input, topK: predictions[i] ?? [] }));
  if (options.out !== undefined)
    summary.written = { path: options.out, tensors: first.written.map((t) => ({ name: t.name, shape: full(t) })) };
  return summary;
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
      .addOption(new Option('--out <file>', 'write recorded hooks (and the output) to this .safetensors file'))
      .addOption(recursiveOption())
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
      printJson(ctx, await runCommand(modelDir, inputs, options, ctx));
    });
}
