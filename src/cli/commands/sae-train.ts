/**
 * `prisma sae train --cache DIR --out DIR --arch topk --k 16,32,64 ...`: trains one SAE per --k
 * (or --l1) value in one pass over a cache made by `prisma sae cache`, or over MODEL DATA cached
 * first into OUT/activations. Each SAE is a SAELens folder with its training log and model card.
 * Killed runs continue with --resume, to the same weights as an uninterrupted run.
 */
import { join } from 'node:path';

import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { parsePositiveInt } from '../../options.js';
import { cacheActivations, type CacheTokens } from '../../sae/cache.js';
import { SAE_ARCHITECTURES, trainSaes, type SaeArchitecture, type SaeStep, type SaeTrainResult } from '../../sae/training.js';
import { formatDuration } from '../ui/progress.js';
import { argParser, expandOptions, jsonOption, openModel, recursiveOption, withModelOptions, type ModelOptions } from './common.js';

export interface SaeTrainCommandOptions extends ModelOptions {
  cache?: string;
  hook?: string;
  tokens: string;
  out: string;
  arch: string;
  expansion?: number;
  dSae?: number;
  k?: number[];
  l1?: number[];
  lr: number;
  batchSize: number;
  bufferRows?: number;
  steps?: number;
  normalize?: string;
  bDecInit?: string;
  lrScheduler?: string;
  lrWarmUp?: number;
  lrDecay?: number;
  l1WarmUp?: number;
  deadWindow?: number;
  resampleEvery?: number;
  unitNormDecoder?: boolean;
  seed: number;
  checkpointEvery: number;
  logEvery?: number;
  resume?: boolean;
  recursive?: boolean;
  json?: boolean;
}

const positive = (what: string) => argParser((v: string) => parsePositiveInt(v, what));
const nonNegative = (what: string) =>
  argParser((v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw usageError(`${what} must be a non-negative integer, got '${v}'`);
    return n;
  });
const positiveNumber = (what: string) =>
  argParser((v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw usageError(`${what} must be a positive number, got '${v}'`);
    return n;
  });
const list = (what: string, integer: boolean) =>
  argParser((v: string) =>
    v.split(',').map((x) => {
      const n = Number(x.trim());
      if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n)))
        throw usageError(`${what}: '${x}' is not a positive ${integer ? 'integer' : 'number'}`);
      return n;
    }),
  );

/** A plain progress line for one SAE's step. */
export function stepLine(
  name: string,
  s: SaeStep,
  total: number,
  tokensPerSecond: number | undefined,
  secondsLeft: number | undefined,
): string {
  const speed =
    tokensPerSecond === undefined ? '' : `, ${Math.round(tokensPerSecond)} tokens/s, ${formatDuration(secondsLeft ?? NaN)} left`;
  return (
    `${name} step ${s.step + 1}/${total}: loss ${s.loss.toPrecision(4)}, mse ${s.mseLoss.toPrecision(4)}, L0 ${s.l0.toFixed(1)}, ` +
    `explained variance ${(100 * s.explainedVariance).toFixed(1)}%, dead ${s.deadFeatures}${speed}\n`
  );
}

function commandLine(argv: readonly string[]): string {
  return ['prisma', ...argv.filter((a) => a !== '--resume')].join(' ');
}

export async function saeTrainCommand(
  model: string | undefined,
  data: string[],
  options: SaeTrainCommandOptions,
  ctx: CommandContext,
  argv: readonly string[] = [],
): Promise<SaeTrainResult> {
  if (!SAE_ARCHITECTURES.includes(options.arch as SaeArchitecture)) {
    throw usageError(`unknown --arch '${options.arch}' (${SAE_ARCHITECTURES.join(', ')})`);
  }
  let cache = options.cache;
  if (cache === undefined) {
    if (model === undefined || data.length === 0) throw usageError('give --cache DIR, or MODEL_DIR and DATA to cache first');
    if (options.hook === undefined) throw usageError('training from MODEL_DIR DATA needs --hook');
    cache = join(options.out, 'activations');
    const opened = await openModel(model, options, ctx);
    const result = await cacheActivations(opened, data, cache, {
      hooks: [options.hook],
      tokens: options.tokens as CacheTokens,
      expand: expandOptions(options, ctx),
    });
    if (!ctx.json) ctx.io.stderr.write(`prisma: cached ${result.meta.rows} vectors at ${options.hook} into ${cache}\n`);
  } else if (model !== undefined) {
    throw usageError('give --cache DIR or MODEL_DIR DATA, not both');
  }
  let firstStep: { at: number; tokens: number } | undefined;
  const result = await trainSaes({
    cache,
    ...(options.hook === undefined ? {} : { hook: options.hook }),
    out: options.out,
    architecture: options.arch as SaeArchitecture,
    ...(options.expansion === undefined ? {} : { expansion: options.expansion }),
    ...(options.dSae === undefined ? {} : { dSae: options.dSae }),
    ...(options.k === undefined ? {} : { k: options.k }),
    ...(options.l1 === undefined ? {} : { l1: options.l1 }),
    lr: options.lr,
    batchSize: options.batchSize,
    ...(options.bufferRows === undefined ? {} : { bufferRows: options.bufferRows }),
    ...(options.steps === undefined ? {} : { steps: options.steps }),
    ...(options.normalize === undefined ? {} : { normalize: options.normalize }),
    ...(options.bDecInit === undefined ? {} : { bDecInit: options.bDecInit }),
    ...(options.lrScheduler === undefined ? {} : { lrScheduler: options.lrScheduler }),
    ...(options.lrWarmUp === undefined ? {} : { lrWarmUpSteps: options.lrWarmUp }),
    ...(options.lrDecay === undefined ? {} : { lrDecaySteps: options.lrDecay }),
    ...(options.l1WarmUp === undefined ? {} : { l1WarmUpSteps: options.l1WarmUp }),
    ...(options.deadWindow === undefined ? {} : { deadFeatureWindow: options.deadWindow }),
    ...(options.resampleEvery === undefined ? {} : { resampleEvery: options.resampleEvery }),
    ...(options.unitNormDecoder ? { unitNormDecoder: true } : {}),
    seed: options.seed,
    checkpointEvery: options.checkpointEvery,
    ...(options.resume ? { resume: true } : {}),
    command: commandLine(argv),
    onStep: (s, total, name) => {
      if (ctx.json) return;
      const every = options.logEvery ?? Math.max(1, Math.round(total / 20));
      if ((s.step + 1) % every !== 0 && s.step + 1 !== total) return;
      firstStep ??= { at: Date.now(), tokens: s.tokens };
      const seconds = (Date.now() - firstStep.at) / 1000;
      const rate = seconds > 0 && s.tokens > firstStep.tokens ? (s.tokens - firstStep.tokens) / seconds : undefined;
      const left = rate === undefined ? undefined : ((total - s.step) * options.batchSize) / rate;
      ctx.io.stderr.write(stepLine(name, s, total, rate, left));
    },
  });
  return result;
}

export function registerSaeTrain(sae: Command, ctx: CommandContext): void {
  withModelOptions(
    sae
      .command('train')
      .description('train sparse autoencoders on cached activations (or on MODEL_DIR DATA, cached first); resumable')
      .argument('[MODEL_DIR]', 'model folder, when training straight from images (else --cache)')
      .argument('[DATA...]', 'folders of images for MODEL_DIR')
      .addOption(new Option('--cache <dir>', 'a cache written by `prisma sae cache`'))
      .addOption(new Option('--hook <name>', "the cache's hook to train on (needed when it holds several)"))
      .addOption(new Option('--tokens <which>', 'with MODEL_DIR DATA: all, cls or patches').default('all'))
      .addOption(new Option('--out <dir>', 'output folder (one subfolder per SAE when several)').makeOptionMandatory())
      .addOption(new Option('--arch <name>', `architecture: ${SAE_ARCHITECTURES.join(', ')}`).default('topk'))
      .addOption(new Option('--expansion <n>', 'features = n x d_in (default 16)').argParser(positive('--expansion')))
      .addOption(new Option('--d-sae <n>', 'number of features').argParser(positive('--d-sae')))
      .addOption(
        new Option('--k <list>', 'topk/batchtopk: active features per token, one SAE each (e.g. 16,32,64)').argParser(list('--k', true)),
      )
      .addOption(
        new Option('--l1 <list>', 'standard/gated: L1 coefficient (jumprelu: L0 coefficient), one SAE each').argParser(list('--l1', false)),
      )
      .addOption(new Option('--lr <x>', 'learning rate').default(4e-4).argParser(positiveNumber('--lr')))
      .addOption(new Option('--batch-size <n>', 'activation vectors per step').default(4096).argParser(positive('--batch-size')))
      .addOption(
        new Option('--buffer-rows <n>', 'rows mixed by the shuffle buffer (default 16 batches)').argParser(positive('--buffer-rows')),
      )
      .addOption(new Option('--steps <n>', 'training steps (default: one pass over the cache)').argParser(positive('--steps')))
      .addOption(new Option('--normalize <how>', 'none, expected_average_only_in, constant_norm_rescale or layer_norm'))
      .addOption(new Option('--b-dec-init <how>', 'zeros, mean or geometric_median'))
      .addOption(new Option('--lr-scheduler <name>', 'constant or cosineannealing'))
      .addOption(new Option('--lr-warm-up <steps>', 'linear LR warm-up steps').argParser(nonNegative('--lr-warm-up')))
      .addOption(new Option('--lr-decay <steps>', 'linear LR decay over the last steps').argParser(nonNegative('--lr-decay')))
      .addOption(new Option('--l1-warm-up <steps>', 'sparsity coefficient warm-up steps').argParser(nonNegative('--l1-warm-up')))
      .addOption(
        new Option('--dead-window <steps>', 'a feature is dead after this many steps without firing').argParser(positive('--dead-window')),
      )
      .addOption(
        new Option('--resample-every <steps>', 'standard SAEs: resample dead features this often').argParser(positive('--resample-every')),
      )
      .addOption(new Option('--unit-norm-decoder', 'keep decoder rows at unit norm'))
      .addOption(new Option('--seed <n>', 'seed (runs are deterministic for a seed)').default(0).argParser(nonNegative('--seed')))
      .addOption(
        new Option('--checkpoint-every <steps>', 'checkpoint this often (a killed run resumes from the last)')
          .default(100)
          .argParser(positive('--checkpoint-every')),
      )
      .addOption(
        new Option('--log-every <steps>', 'a progress line this often (default: 20 lines a run)').argParser(positive('--log-every')),
      )
      .addOption(new Option('--resume', 'continue the run a kill interrupted in --out'))
      .addOption(recursiveOption()),
  )
    .addOption(jsonOption())
    .action(async (model: string | undefined, data: string[], options: SaeTrainCommandOptions) => {
      const argv = process.argv.slice(2);
      printJson(ctx, await saeTrainCommand(model, data, options, ctx, argv));
    });
}
