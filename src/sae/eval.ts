/**
 * An SAE's evaluation in a model over a dataset, streamed (the core keeps running sums only):
 * a first pass for the hook's mean (mean-ablation), then one for the metrics. What the numbers
 * mean: prisma-core's sae/metrics.rs and docs/commands.md (`prisma sae eval`).
 */
import { PrismaError, usageError } from '../errors.js';
import type { InputPlan } from '../image/preprocess.js';
import type { Model } from '../model.js';
import { saeHandle, type Sae } from './index.js';

export interface ReconstructionMetrics {
  tokens: number;
  images: number;
  l0PerToken: number;
  l0ClassToken: number | null;
  l0PerImage: number;
  l1PerToken: number;
  explainedVariance: number;
  fvu: number;
  mse: number;
  cosineSimilarity: number;
  featureDensity: number[];
  dead: number;
  almostDead: number;
  dense: number;
  logDensityEdges: number[];
  logDensityCounts: number[];
}

export interface DownstreamMetrics {
  images: number;
  ceTarget: 'labels' | 'clean prediction';
  ceClean: number;
  ceSpliced: number;
  ceZeroAblation: number | null;
  ceMeanAblation: number | null;
  klSpliced: number;
  klZeroAblation: number | null;
  klMeanAblation: number | null;
  top1Agreement: number;
  accuracyClean: number | null;
  accuracySpliced: number | null;
  ceRecoveredZero: number | null;
  ceRecoveredMean: number | null;
  klRecoveredZero: number | null;
  klRecoveredMean: number | null;
}

export interface SaeEvaluation {
  hook: string;
  tokens: string;
  reconstruction: ReconstructionMetrics;
  /** Null for a model without a head (no logits to compare). */
  downstream: DownstreamMetrics | null;
}

export interface SaeEvalOptions {
  /** Class index of every input, in order (cross-entropy against them; else against the clean prediction). */
  labels?: readonly number[];
  /** Mean-ablation as a second baseline (a pass over the data for the hook's mean); default true. */
  meanAblation?: boolean;
  /** Density thresholds: almost dead below (default 1e-7), dense above (default 1e-2). */
  almostDead?: number;
  dense?: number;
  onProgress?: (pass: 'mean' | 'metrics', done: number, total: number) => void;
}

/** Evaluates `sae` in `model` over `plan`'s inputs (see `Model.planInputs`). */
export async function evaluateSae(model: Model, sae: Sae, plan: InputPlan, options: SaeEvalOptions = {}): Promise<SaeEvaluation> {
  if (model.splices.length > 0) throw usageError('evaluate an SAE on a model without spliced SAEs (it splices the SAE itself)');
  const labels = options.labels;
  if (labels !== undefined) {
    if (labels.length !== plan.total) throw usageError(`${labels.length} labels for ${plan.total} inputs: give one per input`);
    const n = model.info.nClasses;
    const bad = labels.find((l) => !Number.isInteger(l) || l < 0 || l >= n);
    if (bad !== undefined) throw usageError(`label ${bad} is not a class of the model (0..${n - 1})`);
  }
  const run = model.native.saeEval(saeHandle(sae));
  const pass = async (which: 'mean' | 'metrics') => {
    let row = 0;
    for await (const batch of plan.batches()) {
      const n = batch.shape[0];
      const part = which === 'metrics' && labels ? labels.slice(row, row + n) : undefined;
      await run.update(batch.data, [...batch.shape], part ? [...part] : undefined);
      row += n;
      options.onProgress?.(which, row, plan.total);
    }
  };
  if (options.meanAblation ?? true) await pass('mean');
  run.startMetrics();
  await pass('metrics');
  let report: SaeEvaluation;
  try {
    report = JSON.parse(run.finish(options.almostDead, options.dense)) as SaeEvaluation;
  } catch (err) {
    if (err instanceof PrismaError) throw err;
    throw new PrismaError('E_INTERNAL', `the addon's SAE evaluation is not valid JSON: ${(err as Error).message}`);
  }
  return report;
}
