/**
 * `prisma train --data fashion-mnist|DIR --out MODEL_DIR ...`: trains a small ViT from scratch in
 * the native core and writes a Hugging Face folder every other command loads. With `--clip`, trains
 * a tiny CLIP (vision + text towers, contrastive loss) on a clevr-lite folder's image-caption pairs
 * and writes a CLIPModel folder with its tokenizer. Killed runs continue with `--resume` from their
 * last checkpoint (bit-for-bit the same as an uninterrupted run).
 */
import { readFileSync } from 'node:fs';

import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { parsePositiveInt } from '../../options.js';
import { DEFAULT_ZERO_SHOT_TEMPLATE, loadCaptionData, trainClip, type ClipTrainSummary } from '../../training/clip.js';
import { loadTrainingData } from '../../training/data.js';
import { train, type TrainSummary } from '../../training/loop.js';
import type { ClipTrainConfig, OptimiserSettings, TrainConfig, VisionSizes } from '../../training/trainer.js';
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
  clip?: boolean;
  tokenizer?: string;
  textDModel?: number;
  textLayers?: number;
  textHeads?: number;
  textDMlp?: number;
  contextLength?: number;
  projectionDim?: number;
  template?: string;
}

/** Flags that only mean something with --clip. */
const CLIP_ONLY = {
  tokenizer: '--tokenizer',
  textDModel: '--text-d-model',
  textLayers: '--text-layers',
  textHeads: '--text-heads',
  textDMlp: '--text-d-mlp',
  contextLength: '--context-length',
  projectionDim: '--projection-dim',
  template: '--template',
} as const;

const positive = (what: string) => argParser((v: string) => parsePositiveInt(v, what));
const number = (what: string) =>
  argParser((v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw usageError(`${what} must be a non-negative number, got '${v}'`);
    return n;
  });

function configFile<T>(options: TrainOptions): Partial<T> {
  if (!options.config) return {};
  try {
    return JSON.parse(readFileSync(options.config, 'utf8')) as Partial<T>;
  } catch (err) {
    throw usageError(`cannot read --config ${options.config}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Architecture defaults per data source, overridable by --config and flags. */
function architecture(options: TrainOptions, dataImageSize: number, defaultActivation = 'gelu'): Omit<VisionSizes, 'numChannels'> {
  const fromFile = configFile<TrainConfig>(options);
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
    activation: fromFile.activation ?? defaultActivation,
  };
}

/** Total steps from --steps, else --epochs (default 2) over the training set. */
function totalSteps(options: TrainOptions, nTrain: number): number {
  const perEpoch = Math.floor(nTrain / options.batchSize);
  if (perEpoch < 1) throw usageError(`--batch-size ${options.batchSize} is larger than the ${nTrain} training images`);
  return options.steps ?? perEpoch * (options.epochs ?? 2);
}

/** The optimiser flags both trainers take (warm-up: 10% of the steps, at most 100, by default). */
function optimiserSettings(options: TrainOptions, steps: number): OptimiserSettings {
  return {
    batchSize: options.batchSize,
    totalSteps: steps,
    lr: options.lr,
    weightDecay: options.weightDecay,
    warmupSteps: options.warmup ?? Math.min(100, Math.floor(steps / 10)),
    seed: options.seed,
  };
}

/** The command line as the model card records it (without the flags that only steer this run). */
function commandLine(argv: readonly string[]): string {
  return ['prisma', ...argv.filter((a) => a !== '--resume' && !a.startsWith('--stop-after'))].join(' ');
}

export async function trainClipCommand(options: TrainOptions, ctx: CommandContext, argv: readonly string[]): Promise<ClipTrainSummary> {
  if (options.question) throw usageError('--question is for classifier training; --clip learns from the captions', 'drop --question');
  if (options.data === 'fashion-mnist')
    throw usageError('--clip needs image-caption pairs; Fashion-MNIST has none', 'use a clevr-lite folder (`prisma dataset clevr-lite`)');
  if (!options.tokenizer) {
    throw usageError(
      '--clip needs --tokenizer DIR (a folder with a CLIP-style tokenizer.json)',
      'e.g. --tokenizer fixtures/tokenizers/clevr-lite, or any CLIP model folder such as models/clevr-clip',
    );
  }
  const data = await loadCaptionData({
    dir: options.data,
    limit: options.limit,
    evalFraction: options.evalFraction,
    template: options.template ?? DEFAULT_ZERO_SHOT_TEMPLATE,
  });
  const arch = architecture(options, data.imageSize, 'quick_gelu');
  if (arch.imageSize !== data.imageSize) throw usageError(`--image-size ${arch.imageSize} does not match the data (${data.imageSize}px)`);
  const fromFile = configFile<ClipTrainConfig>(options);
  const textDModel = options.textDModel ?? fromFile.textDModel ?? arch.dModel;
  const textHeads = options.textHeads ?? fromFile.textHeads ?? arch.nHeads;
  if (textDModel % textHeads !== 0) throw usageError(`--text-d-model ${textDModel} is not a multiple of --text-heads ${textHeads}`);
  const steps = totalSteps(options, data.train.shape[0]);
  const config: ClipTrainConfig = {
    ...arch,
    numChannels: 3,
    textDModel,
    textLayers: options.textLayers ?? fromFile.textLayers ?? 2,
    textHeads,
    textDMlp: options.textDMlp ?? fromFile.textDMlp ?? textDModel * 2,
    contextLength: options.contextLength ?? fromFile.contextLength ?? 32,
    projectionDim: options.projectionDim ?? fromFile.projectionDim ?? arch.dModel,
    tokenizer: options.tokenizer,
    ...optimiserSettings(options, steps),
  };
  const progress = startProgress(ctx, steps, 'train --clip');
  try {
    return await trainClip({
      ...runSettings(options, argv),
      config,
      data,
      onProgress: (r) =>
        progress.update(r.step, `loss ${r.loss.toFixed(3)} match ${(r.accuracy * 100).toFixed(1)}% T ${r.logitScale.toFixed(1)}`),
    });
  } finally {
    progress.stop();
  }
}

/** Where and how a run goes, the same for both trainers. */
function runSettings(options: TrainOptions, argv: readonly string[]) {
  return {
    outDir: options.out,
    resume: options.resume === true,
    checkpointEvery: options.checkpointEvery,
    command: commandLine(argv),
    ...(options.stopAfter !== undefined ? { stopAfterSteps: options.stopAfter } : {}),
  };
}

export async function trainCommand(options: TrainOptions, ctx: CommandContext, argv: readonly string[]): Promise<TrainSummary> {
  const stray = Object.entries(CLIP_ONLY).filter(([k]) => options[k as keyof typeof CLIP_ONLY] !== undefined);
  if (stray.length > 0) throw usageError(`${stray.map(([, flag]) => flag).join(', ')} only apply with --clip`);
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
  const steps = totalSteps(options, data.train.shape[0]);
  const config: TrainConfig = {
    ...arch,
    numChannels: 3,
    labels: data.classes,
    ...optimiserSettings(options, steps),
  };
  const progress = startProgress(ctx, steps, 'train');
  try {
    return await train({
      ...runSettings(options, argv),
      config,
      data,
      onProgress: (r) => progress.update(r.step, `loss ${r.loss.toFixed(3)} acc ${(r.accuracy * 100).toFixed(1)}%`),
    });
  } finally {
    progress.stop();
  }
}

export function registerTrain(program: Command, ctx: CommandContext): void {
  program
    .command('train')
    .description('train a small ViT (or, with --clip, a tiny CLIP) from scratch and write a Hugging Face model folder')
    .requiredOption('--data <source>', "'fashion-mnist' (Debian's dataset-fashion-mnist) or a clevr-lite folder")
    .option('--clip', "train a CLIP (vision + text towers, contrastive loss) on the folder's image-caption pairs")
    .option('--tokenizer <dir>', 'with --clip: folder with the CLIP-style tokenizer.json captions are encoded with (copied into the model)')
    .option('--question <name>', 'clevr-lite question to learn (e.g. largest_colour, count)')
    .requiredOption('--out <dir>', 'model folder to write')
    .option('--config <file>', 'JSON with architecture fields (imageSize, patchSize, dModel, nLayers, nHeads, dMlp, activation)')
    .addOption(new Option('--image-size <n>', 'input size in pixels (default: the data size)').argParser(positive('--image-size')))
    .addOption(new Option('--patch-size <n>', 'patch size').argParser(positive('--patch-size')))
    .addOption(new Option('--d-model <n>', 'width (default 64)').argParser(positive('--d-model')))
    .addOption(new Option('--layers <n>', 'blocks (default 4)').argParser(positive('--layers')))
    .addOption(new Option('--heads <n>', 'attention heads (default 4)').argParser(positive('--heads')))
    .addOption(new Option('--d-mlp <n>', 'MLP width (default 2 x d-model)').argParser(positive('--d-mlp')))
    .addOption(new Option('--text-d-model <n>', 'with --clip: text tower width (default: --d-model)').argParser(positive('--text-d-model')))
    .addOption(new Option('--text-layers <n>', 'with --clip: text tower blocks (default 2)').argParser(positive('--text-layers')))
    .addOption(new Option('--text-heads <n>', 'with --clip: text tower heads (default: --heads)').argParser(positive('--text-heads')))
    .addOption(
      new Option('--text-d-mlp <n>', 'with --clip: text tower MLP width (default 2 x text width)').argParser(positive('--text-d-mlp')),
    )
    .addOption(new Option('--context-length <n>', 'with --clip: text positions (default 32)').argParser(positive('--context-length')))
    .addOption(
      new Option('--projection-dim <n>', 'with --clip: shared embedding size (default: --d-model)').argParser(positive('--projection-dim')),
    )
    .addOption(
      new Option(
        '--template <text>',
        `with --clip: prompt template of the held-out zero-shot evaluation (default '${DEFAULT_ZERO_SHOT_TEMPLATE}')`,
      ),
    )
    .addOption(new Option('--epochs <n>', 'passes over the training set (default 2)').argParser(positive('--epochs')))
    .addOption(new Option('--steps <n>', 'optimisation steps (overrides --epochs)').argParser(positive('--steps')))
    .addOption(new Option('--batch-size <n>', 'batch size').default(128).argParser(positive('--batch-size')))
    .addOption(new Option('--lr <x>', 'peak learning rate').default(1e-3).argParser(number('--lr')))
    .addOption(new Option('--weight-decay <x>', 'AdamW weight decay').default(0.05).argParser(number('--weight-decay')))
    .addOption(new Option('--warmup <n>', 'warm-up steps (default min(100, 10% of steps))').argParser(positive('--warmup')))
    .addOption(
      new Option('--seed <n>', 'seed for initialisation and data order')
        .default(0)
        .argParser(argParser((v: string) => Number.parseInt(v, 10))),
    )
    .addOption(new Option('--limit <n>', 'use only the first N training images').argParser(positive('--limit')))
    .addOption(new Option('--eval-fraction <x>', 'held-out share of a folder dataset').default(0.1).argParser(number('--eval-fraction')))
    .addOption(new Option('--checkpoint-every <n>', 'steps between checkpoints').default(50).argParser(positive('--checkpoint-every')))
    .option('--resume', 'continue an interrupted run in --out from its last checkpoint')
    .addOption(
      new Option('--stop-after <n>', 'stop after N steps of this run, leaving a checkpoint (testing)')
        .hideHelp()
        .argParser(positive('--stop-after')),
    )
    .addOption(jsonOption())
    .action(async (options: TrainOptions) => {
      if (options.clip) {
        const summary = await trainClipCommand(options, ctx, process.argv.slice(2));
        if (ctx.json) {
          printJson(ctx, { ok: true, schemaVersion: 1, ...summary });
          return;
        }
        const zs = summary.evaluation.zeroShot
          .map((z) => `${z.name} ${(z.accuracy * 100).toFixed(1)}% (chance ${(z.chance * 100).toFixed(1)}%)`)
          .join(', ');
        ctx.io.stdout.write(
          summary.finished
            ? `trained ${summary.steps} steps in ${summary.seconds}s${summary.resumedFromStep !== null ? ` (resumed at step ${summary.resumedFromStep})` : ''}: held-out zero-shot ${zs} -> ${summary.outDir}\n`
            : `stopped at step ${summary.steps}; continue with --resume\n`,
        );
        return;
      }
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
