/**
 * Training SAEs on a cache (`prisma sae train`): the core trains every configuration in one pass
 * over the cache's rows (crates/prisma-core/src/sae/run.rs, step for step as SAELens's trainer) and
 * checkpoints so that a killed run resumes with identical weights; this module plans the runs,
 * writes each SAE's training log (JSON lines) and model card, and reports step metrics as they come.
 */
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';

import { PrismaError, usageError } from '../errors.js';
import { NativeSaeTrainingHandle } from '../native.js';
import { makeDir, writeFileAtomic } from '../report/write.js';
import type { SaeTrainConfig } from '../generated/contract/SaeTrainConfig.js';
import type { StepMetrics } from '../generated/contract/StepMetrics.js';
import type { TrainRequest } from '../generated/contract/TrainRequest.js';
import { readCache, type CacheMeta } from './cache.js';

export type SaeArchitecture = 'standard' | 'topk' | 'batchtopk' | 'jumprelu' | 'gated';
export const SAE_ARCHITECTURES: readonly SaeArchitecture[] = ['standard', 'topk', 'batchtopk', 'jumprelu', 'gated'];

/** One step of one SAE (StepMetrics in the core) and the SAE's index in the run. */
export type SaeStep = StepMetrics & { sae: number };

/** Options shared by every SAE of a run; `k` and `l1` lists make one SAE per value. */
export interface SaeTrainOptions {
  cache: string;
  hook?: string;
  out: string;
  architecture: SaeArchitecture;
  expansion?: number;
  dSae?: number;
  /** TopK / BatchTopK: one SAE per value. */
  k?: number[];
  /** Standard / gated (L1) or JumpReLU (L0) coefficient: one SAE per value. */
  l1?: number[];
  lr: number;
  batchSize: number;
  /** Rows the shuffle buffer mixes (default 16 batches). */
  bufferRows?: number;
  /** Default: one pass over the cache. */
  steps?: number;
  normalize?: string;
  bDecInit?: string;
  lrScheduler?: string;
  lrWarmUpSteps?: number;
  lrDecaySteps?: number;
  l1WarmUpSteps?: number;
  deadFeatureWindow?: number;
  resampleEvery?: number;
  unitNormDecoder?: boolean;
  seed: number;
  checkpointEvery: number;
  resume?: boolean;
  /** The command line, for the model card. */
  command?: string;
  onStep?: (step: SaeStep, total: number, name: string) => void;
}

export interface SaeRunPlan {
  name: string;
  dir: string;
  config: SaeTrainConfig;
}

export interface SaeTrainResult {
  totalSteps: number;
  rows: number;
  saes: { name: string; dir: string; final: SaeStep | undefined; deadFraction: number | null; dSae: number }[];
}

const CHECKPOINT_DIR = '.checkpoint';
export const LOG_FILE = 'training_log.jsonl';

/** One configuration per `k` (TopK/BatchTopK) or per `l1` (the others) value. */
export function planRuns(options: SaeTrainOptions, meta: CacheMeta, hook: string, totalSteps: number): SaeRunPlan[] {
  const index = meta.identity.hooks.indexOf(hook);
  const dIn = meta.identity.widths[index]!;
  const arch = options.architecture;
  if (!SAE_ARCHITECTURES.includes(arch)) throw usageError(`unknown architecture '${arch}' (${SAE_ARCHITECTURES.join(', ')})`);
  const sparse = arch === 'topk' || arch === 'batchtopk';
  if (sparse && options.l1 !== undefined) throw usageError(`--l1 is for standard, gated and jumprelu SAEs; ${arch} uses --k`);
  if (!sparse && options.k !== undefined) throw usageError(`--k is for topk and batchtopk SAEs, not ${arch}`);
  if (options.dSae !== undefined && options.expansion !== undefined) throw usageError('give --expansion or --d-sae, not both');
  const dSae = options.dSae ?? dIn * (options.expansion ?? 16);
  const values: (number | undefined)[] = sparse ? (options.k ?? [32]) : (options.l1 ?? [arch === 'jumprelu' ? 1 : 5]);
  const base: SaeTrainConfig = {
    architecture: arch,
    dIn,
    dSae,
    lr: options.lr,
    totalSteps,
    seed: options.seed,
    hookName: hook,
    tokens: meta.identity.tokens,
    ...(typeof meta.info.model === 'string' ? { modelName: meta.info.model } : {}),
    ...(options.normalize === undefined ? {} : { normalizeActivations: options.normalize }),
    ...(options.bDecInit === undefined ? {} : { bDecInit: options.bDecInit }),
    ...(options.lrScheduler === undefined ? {} : { lrScheduler: options.lrScheduler }),
    ...(options.lrWarmUpSteps === undefined ? {} : { lrWarmUpSteps: options.lrWarmUpSteps }),
    ...(options.lrDecaySteps === undefined ? {} : { lrDecaySteps: options.lrDecaySteps }),
    ...(options.deadFeatureWindow === undefined ? {} : { deadFeatureWindow: options.deadFeatureWindow }),
    ...(options.resampleEvery === undefined ? {} : { resampleEvery: options.resampleEvery }),
    ...(options.unitNormDecoder ? { unitNormDecoder: true } : {}),
  };
  if (options.resampleEvery !== undefined && arch !== 'standard') throw usageError('--resample-every is for standard (ReLU) SAEs');
  return values.map((v) => {
    const config = { ...base };
    let name = `${arch}-${dSae}`;
    if (sparse) {
      if (v !== undefined) config.k = v;
      name += `-k${v}`;
    } else if (arch === 'jumprelu') {
      config.l0Coefficient = v!;
      if (options.l1WarmUpSteps !== undefined) config.l0WarmUpSteps = options.l1WarmUpSteps;
      name += `-l0c${v}`;
    } else {
      config.l1Coefficient = v!;
      if (options.l1WarmUpSteps !== undefined) config.l1WarmUpSteps = options.l1WarmUpSteps;
      name += `-l1c${v}`;
    }
    return { name, dir: values.length === 1 ? options.out : join(options.out, name), config };
  });
}

function card(
  plan: SaeRunPlan,
  meta: CacheMeta,
  options: SaeTrainOptions,
  final: SaeStep | undefined,
  deadFraction: number | null,
): string {
  const pct = (x: number | undefined | null) => (x === undefined || x === null ? 'n/a' : `${(100 * x).toFixed(2)}%`);
  const lines = [
    `# SAE ${plan.name}`,
    '',
    `A ${String(plan.config.architecture)} sparse autoencoder with ${String(plan.config.dSae)} features on \`${String(plan.config.hookName)}\` (${meta.identity.tokens} tokens), trained by vit-prisma. The folder is a SAELens folder (cfg.json + sae_weights.safetensors).`,
    '',
    '## Reproduce',
    '',
    '```',
    options.command ?? '(library call)',
    '```',
    '',
    '## Data',
    '',
    `- model: ${String(meta.info.model ?? meta.identity.model)}`,
    `- activations: ${options.cache} (${meta.images} images, ${meta.rows} vectors at ${meta.identity.hooks.join(', ')}, ${meta.identity.dtype})`,
    `- tokens trained on: ${final?.tokens ?? 0}`,
    '',
    '## Final step',
    '',
    `| step | L0 | explained variance | dead features | MSE loss |`,
    `|---|---|---|---|---|`,
    `| ${final?.step ?? 0} | ${final ? final.l0.toFixed(2) : 'n/a'} | ${pct(final?.explainedVariance)} | ${final?.deadFeatures ?? 'n/a'} (${pct(deadFraction)}) | ${final ? final.mseLoss.toPrecision(4) : 'n/a'} |`,
    '',
    `Explained variance is pooled over the last batch; dead features have not fired for ${String(plan.config.deadFeatureWindow ?? 1000)} steps. The training log is ${LOG_FILE}.`,
    '',
    '## Configuration',
    '',
    '```json',
    JSON.stringify(plan.config, null, 2),
    '```',
    '',
  ];
  return lines.join('\n');
}

/** The last step a log holds (a resumed run that had no step left to run shows it). */
async function lastLogged(path: string): Promise<SaeStep | undefined> {
  const lines = (await readFile(path, 'utf8').catch(() => '')).trim().split('\n');
  try {
    return JSON.parse(lines.at(-1) ?? '') as SaeStep;
  } catch {
    return undefined;
  }
}

/** Trains the SAEs `options` describe on a cache; resumable with `resume` after a kill. */
export async function trainSaes(options: SaeTrainOptions): Promise<SaeTrainResult> {
  const meta = readCache(options.cache);
  const hook = options.hook ?? (meta.identity.hooks.length === 1 ? meta.identity.hooks[0]! : undefined);
  if (hook === undefined) throw usageError(`the cache holds several hooks (${meta.identity.hooks.join(', ')}): choose one with --hook`);
  if (!meta.identity.hooks.includes(hook)) {
    throw new PrismaError(
      'E_CACHE_MISMATCH',
      `${options.cache} holds no activations at '${hook}' (it has ${meta.identity.hooks.join(', ')})`,
    );
  }
  const onePass = Math.floor(meta.rows / options.batchSize);
  if (onePass < 1) throw usageError(`--batch-size ${options.batchSize} is larger than the cache's ${meta.rows} vectors`);
  // The run makes one pass over the cache: more steps than it holds would end early, silently.
  if (options.steps !== undefined && options.steps > onePass) {
    throw usageError(
      `--steps ${options.steps} needs ${options.steps * options.batchSize} vectors; the cache holds ${meta.rows} (${onePass} steps of ${options.batchSize})`,
      'cache more images, or lower --steps or --batch-size',
    );
  }
  const totalSteps = options.steps ?? onePass;
  const plans = planRuns(options, meta, hook, totalSteps);
  const checkpoint = join(options.out, CHECKPOINT_DIR);
  const hasCheckpoint = existsSync(join(checkpoint, 'checkpoint.safetensors'));
  if (hasCheckpoint && !options.resume) {
    throw usageError(`${options.out} holds an unfinished training run`, 'add --resume to continue it, or choose another --out');
  }
  if (!hasCheckpoint && existsSync(join(plans[0]!.dir, 'cfg.json'))) {
    throw usageError(`${plans[0]!.dir} already holds a trained SAE`, 'choose another --out');
  }
  await makeDir(checkpoint);
  for (const p of plans) await makeDir(p.dir);
  const request: TrainRequest = {
    cache: options.cache,
    hook,
    configs: plans.map((p) => p.config),
    options: {
      batchSize: options.batchSize,
      bufferRows: options.bufferRows ?? options.batchSize * 16,
      seed: options.seed,
      checkpointEvery: options.checkpointEvery,
      checkpointDir: checkpoint,
    },
    outs: plans.map((p) => p.dir),
  };
  const training = new NativeSaeTrainingHandle(request);
  // The core writes each SAE's log (in step with its checkpoints); here the steps are only shown.
  const last: (SaeStep | undefined)[] = plans.map(() => undefined);
  const flush = () => {
    for (const step of training.drain()) {
      last[step.sae] = step;
      options.onStep?.(step, totalSteps, plans[step.sae]!.name);
    }
  };
  const timer = setInterval(flush, 250);
  let done: { rows: number };
  try {
    done = JSON.parse(await training.run()) as { rows: number };
  } finally {
    clearInterval(timer);
  }
  flush();
  for (let i = 0; i < plans.length; i++) last[i] ??= await lastLogged(join(plans[i]!.dir, LOG_FILE));
  const saes = [];
  for (let i = 0; i < plans.length; i++) {
    const plan = plans[i]!;
    const final = last[i];
    const dSae = plan.config.dSae!;
    const deadFraction = final ? final.deadFeatures / dSae : null;
    await writeFileAtomic(join(plan.dir, 'README.md'), card(plan, meta, options, final, deadFraction));
    saes.push({ name: plan.name, dir: plan.dir, final, deadFraction, dSae });
  }
  await rm(checkpoint, { recursive: true, force: true });
  return { totalSteps, rows: done.rows, saes };
}
