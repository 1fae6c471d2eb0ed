/**
 * `prisma train --data fashion-mnist|DIR --out MODEL_DIR ...`: trains a small ViT from scratch in
 * the native core and writes a Hugging Face folder every other command loads. Killed runs continue
 * with `--resume` from their last checkpoint (bit-for-bit the same as an uninterrupted run).
 */
import { readFileSync } from 'node:fs';

import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../errors.js';
import { parsePositiveInt } from '../options.js';
import { loadTrainingData } from '../training/data.js';
import { train, type TrainSummary } from '../training/loop.js';
import type { TrainConfig } from '../training/trainer.js';
import { startProgress } from '../ui/progress.js';
import { argParser, jsonOption } from './common.js';

export interface TrainOptions {
  data: string;
  question?: string;
  out: string;
  config?: string;
  imageSize?: number;
  patchSize?: number;
  dModel?: number;
  layers?: number;
  heads?: number;
  dMlp?: number;
  epochs?: number;
  steps?: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  warmup?: number;
  seed: number;
  limit?: number;
  evalFraction: number;
  checkpointEvery: number;
  resume?: boolean;
  stopAfter?: number;
  json?: boolean;
}

const positive = (what: string) => argParser((v: string) => parsePositiveInt(v, what));
const number = (what: string) =>
  argParser((v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw usageError(`${what} must be a non-negative number, got '${v}'`);
    return n;
  });

/** Architecture defaults per data source, overridable by --config and flags. */
function architecture(options: TrainOptions, dataImageSize: number): Pick<TrainConfig, 'imageSize' | 'patchSize' | 'dModel' | 'nLayers' | 'nHeads' | 'dMlp' | 'activation'> {
  let fromFile: Partial<TrainConfig> = {};
  if (options.config) {
    try {
      fromFile = JSON.parse(readFileSync(options.config, 'utf8')) as Partial<TrainConfig>;
    } catch (err) {
      throw usageError(`cannot read --config ${options.config}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  const imageSize = options.imageSize ?? fromFile.imageSize ?? dataImageSize;
  const patchSize = options.patchSize ?? fromFile.patchSize ?? (imageSize % 7 === 0 ? 7 : 8);
  if (imageSize % patchSize !== 0) throw usageError(`--image-size ${imageSize} is not a multiple of --patch-size ${patchSize}`);
  const dModel = options.dModel ?? fromFile.dModel ?? 64;
  const nHeads = options.heads ?? fromFile.nHeads ?? 4;
  if (dModel % nHeads !== 0) throw usageError(`--d-model ${dModel} is not a multiple of --heads ${nHeads}`);
  return {
    imageSize,
    patchSize,
    dModel,
    nLayers: options.layers ?? fromFile.nLayers ?? 4,
    nHeads,
    dMlp: options.dMlp ?? fromFile.dMlp ?? dModel * 2,
    activation: fromFile.activation ?? 'gelu',
  };
}

export async function trainCommand(options: TrainOptions, ctx: CommandContext, argv: readonly string[]): Promise<TrainSummary> {
  const data = await loadTrainingData({
    source: options.data,
    question: options.question,
    imageSize: options.imageSize,
    limit: options.limit,
    evalFraction: options.evalFraction,
    seed: options.seed,
  });
  const arch = architecture(options, data.train.shape[2]);
  if (arch.imageSize !== data.train.shape[2]) {
    throw usageError(`--image-size ${arch.imageSize} does not match the data (${data.train.shape[2]}px)`);
  }
  const nTrain = data.train.shape[0];
  const perEpoch = Math.floor(nTrain / options.batchSize);
  if (perEpoch < 1) throw usageError(`--batch-size ${options.batchSize} is larger than the ${nTrain} training images`);
  const totalSteps = options.steps ?? perEpoch * (options.epochs ?? 2);
  const config: TrainConfig = {
    ...arch,
    numChannels: 3,
    labels: data.classes,
    batchSize: options.batchSize,
    totalSteps,
    lr: options.lr,
    weightDecay: options.weightDecay,
    warmupSteps: options.warmup ?? Math.min(100, Math.floor(totalSteps / 10)),
    seed: options.seed,
  };
  const progress = startProgress(ctx, totalSteps, 'train');
  try {
    const run = {
      outDir: options.out,
      config,
      data,
      resume: options.resume === true,
      checkpointEvery: options.checkpointEvery,
      command: ['prisma', ...argv.filter((a) => a !== '--resume' && !a.startsWith('--stop-after'))].join(' '),
      onProgress: (r: { step: number; loss: number; accuracy: number }) =>
        progress.update(r.step, `loss ${r.loss.toFixed(3)} acc ${(r.accuracy * 100).toFixed(1)}%`),
      ...(options.stopAfter !== undefined ? { stopAfterSteps: options.stopAfter } : {}),
    };
    return await train(run);
  } finally {
    progress.stop();
  }
}

export function registerTrain(program: Command, ctx: CommandContext): void {
  program
    .command('train')
    .description('train a small ViT from scratch and write a Hugging Face model folder')
    .requiredOption('--data <source>', "'fashion-mnist' (Debian's dataset-fashion-mnist) or a clevr-lite folder")
    .option('--question <name>', 'clevr-lite question to learn (e.g. largest_colour, count)')
    .requiredOption('--out <dir>', 'model folder to write')
    .option('--config <file>', 'JSON with architecture fields (imageSize, patchSize, dModel, nLayers, nHeads, dMlp, activation)')
    .addOption(new Option('--image-size <n>', 'input size in pixels (default: the data size)').argParser(positive('--image-size')))
    .addOption(new Option('--patch-size <n>', 'patch size').argParser(positive('--patch-size')))
    .addOption(new Option('--d-model <n>', 'width (default 64)').argParser(positive('--d-model')))
    .addOption(new Option('--layers <n>', 'blocks (default 4)').argParser(positive('--layers')))
    .addOption(new Option('--heads <n>', 'attention heads (default 4)').argParser(positive('--heads')))
    .addOption(new Option('--d-mlp <n>', 'MLP width (default 2 x d-model)').argParser(positive('--d-mlp')))
    .addOption(new Option('--epochs <n>', 'passes over the training set (default 2)').argParser(positive('--epochs')))
    .addOption(new Option('--steps <n>', 'optimisation steps (overrides --epochs)').argParser(positive('--steps')))
    .addOption(new Option('--batch-size <n>', 'batch size').default(128).argParser(positive('--batch-size')))
    .addOption(new Option('--lr <x>', 'peak learning rate').default(1e-3).argParser(number('--lr')))
    .addOption(new Option('--weight-decay <x>', 'AdamW weight decay').default(0.05).argParser(number('--weight-decay')))
    .addOption(new Option('--warmup <n>', 'warm-up steps (default min(100, 10% of steps))').argParser(positive('--warmup')))
    .addOption(new Option('--seed <n>', 'seed for initialisation and data order').default(0).argParser(argParser((v: string) => Number.parseInt(v, 10))))
    .addOption(new Option('--limit <n>', 'use only the first N training images').argParser(positive('--limit')))
    .addOption(new Option('--eval-fraction <x>', 'held-out share of a folder dataset').default(0.1).argParser(number('--eval-fraction')))
    .addOption(new Option('--checkpoint-every <n>', 'steps between checkpoints').default(50).argParser(positive('--checkpoint-every')))
    .option('--resume', 'continue an interrupted run in --out from its last checkpoint')
    .addOption(new Option('--stop-after <n>', 'stop after N steps of this run, leaving a checkpoint (testing)').hideHelp().argParser(positive('--stop-after')))
    .addOption(jsonOption())
    .action(async (options: TrainOptions) => {
      const summary = await trainCommand(options, ctx, process.argv.slice(2));
      if (ctx.json) {
        printJson(ctx, { ok: true, schemaVersion: 1, ...summary });
        return;
      }
      const acc = (summary.evaluation.accuracy * 100).toFixed(1);
      const chance = (summary.chance * 100).toFixed(1);
      ctx.io.stdout.write(
        summary.finished
          ? `trained ${summary.steps} steps in ${summary.seconds}s${summary.resumedFromStep !== null ? ` (resumed at step ${summary.resumedFromStep})` : ''}: held-out accuracy ${acc}% (chance ${chance}%) -> ${summary.outDir}\n`
          : `stopped at step ${summary.steps}; continue with --resume\n`,
      );
    });
}
