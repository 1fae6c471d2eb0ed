/**
 * `prisma run MODEL_DIR INPUT...`: preprocess inputs, run the model recording hooks, optionally
 * write the recorded activations to a .safetensors file, and print a JSON summary to stdout.
 */
import { statSync } from 'node:fs';
import { dirname, extname, resolve } from 'node:path';

import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { PrismaError, usageError } from '../errors.js';
import { loadModel, saveTensors, topK, type Prediction, type Tensor } from '../index.js';
import { parseCachePatterns, parseNonNegativeInt, parsePositiveInt } from '../options.js';
import { VERSION } from '../version.js';
import { argParser, jsonOption, loadInputsWithProgress, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface RunCommandOptions extends ModelOptions {
  cache?: string[];
  out?: string;
  topK: number;
  stopAtLayer?: number;
  inputKey?: string;
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

  const model = await openModel(modelDir, options);
  // Everything that can be checked against the model is checked before any input is read.
  if (patterns.length > 0) model.matchHooks(patterns);
  if (options.stopAtLayer !== undefined) model.checkLayer(options.stopAtLayer, 'stop-at-layer');

  const batch = await loadInputsWithProgress(model, inputs, options.inputKey, ctx);

  const result = await model.run(batch, {
    cache: patterns,
    ...(options.stopAtLayer === undefined ? {} : { stopAtLayer: options.stopAtLayer }),
  });

  const summary: RunSummary = {
    ok: true,
    schemaVersion: 1,
    model: modelDir,
    inputs: result.inputs,
    output: { name: result.output.name, shape: result.output.shape },
    cached: [...result.cache.keys()],
  };
  if (model.info.nClasses > 0 && result.output.name === 'hook_logits') {
    const top = topK(result.output, options.topK, model.info.labels);
    summary.predictions = result.inputs.map((input, i) => ({ input, topK: top[i] ?? [] }));
  }
  if (options.out !== undefined) {
    const tensors: Tensor[] = [...result.cache.values()];
    if (!result.cache.has(result.output.name)) tensors.push(result.output);
    await saveTensors(options.out, tensors, {
      generator: `vit-prisma ${VERSION}`,
      model: modelDir,
      inputs: JSON.stringify(result.inputs),
      device: model.info.device,
      dtype: model.info.dtype,
    });
    summary.written = { path: options.out, tensors: tensors.map((t) => ({ name: t.name, shape: t.shape })) };
  }
  return summary;
}

export function registerRun(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('run')
      .description('run a model on images or pixel tensors, record hooks, print predictions as JSON')
      .argument('<MODEL_DIR>', 'model folder: Hugging Face, timm or open_clip (docs/models.md)')
      .argument('<INPUT...>', 'image files, folders of images, or pre-processed .npy/.safetensors pixel tensors')
      .addOption(
        new Option('--cache <pattern...>', "hooks to record: names or globs ('blocks.*.hook_resid_post', '*'); comma-separated or repeated"),
      )
      .addOption(new Option('--out <file>', 'write recorded hooks (and the output) to this .safetensors file'))
      .addOption(new Option('--top-k <k>', 'predictions to list per input').default(5).argParser(argParser((v) => parsePositiveInt(v, '--top-k'))))
      .addOption(
        new Option('--stop-at-layer <n>', 'run blocks [0, n) only').argParser(argParser((v) => parseNonNegativeInt(v, '--stop-at-layer'))),
      )
      .addOption(new Option('--input-key <name>', "tensor to use from .safetensors inputs holding several (default 'pixel_values')")),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      "\nPut --cache after the inputs (or end its list with --): it takes every following word.\nStdout is always a JSON summary; --json also reports errors as JSON.",
    )
    .action(async (modelDir: string, inputs: string[], options: RunCommandOptions) => {
      printJson(ctx, await runCommand(modelDir, inputs, options, ctx));
    });
}
