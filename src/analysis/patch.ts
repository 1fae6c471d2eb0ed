/**
 * Activation patching: run the corrupted image with one component at a time (per layer and
 * position / head) taken from the clean run, and measure the target logit (difference). Exact
 * patching runs every patch (batched in the addon); attribution patching estimates all of them
 * from one gradient. Normalised values: corrupt = 0, clean = 1.
 */
import { PrismaError, optionError } from '../errors.js';
import type { Model } from '../model.js';
import type { MetricValue, PatchBy, PatchResult, PatchWhat } from '../native.js';
import { concatBatches, type PixelBatch } from '../tensor.js';
import {
  argmax,
  checkLayers,
  classInfo,
  modelLogits,
  oneImage,
  pearson,
  requireHead,
  resolveClass,
  type ClassInfo,
  type ClassRef,
} from './common.js';

export const PATCH_WHATS: readonly PatchWhat[] = [
  'resid_pre',
  'resid_mid',
  'resid_post',
  'attn_out',
  'mlp_out',
  'head_z',
  'head_q',
  'head_k',
  'head_v',
  'head_pattern',
];
export const HEAD_WHATS: readonly PatchWhat[] = ['head_z', 'head_q', 'head_k', 'head_v', 'head_pattern'];
export const PATCH_BYS: readonly PatchBy[] = ['layer_pos', 'layer_head', 'layer_pos_head'];
export type PatchMethod = 'exact' | 'attribution' | 'both';

export function parsePatchWhat(value: string): PatchWhat {
  const v = value.trim().toLowerCase();
  if ((PATCH_WHATS as readonly string[]).includes(v)) return v as PatchWhat;
  throw new PrismaError('E_USAGE', `unknown --what '${value}'`, { hint: `use one of ${PATCH_WHATS.join(', ')}` });
}

/** 'layer,pos' | 'layer,head' | 'layer,pos,head' (or with underscores). */
export function parsePatchBy(value: string): PatchBy {
  const v = value
    .trim()
    .toLowerCase()
    .replace(/[\s,]+/g, '_');
  if ((PATCH_BYS as readonly string[]).includes(v)) return v as PatchBy;
  throw new PrismaError('E_USAGE', `unknown --by '${value}'`, { hint: 'use layer,pos or layer,head or layer,pos,head' });
}

export function parsePatchMethod(value: string): PatchMethod {
  const v = value.trim().toLowerCase();
  if (v === 'exact' || v === 'attribution' || v === 'both') return v;
  throw new PrismaError('E_USAGE', `unknown --method '${value}'`, { hint: 'use exact, attribution or both' });
}

/** E_ARGUMENT when `by` splits by head and `what` has no head axis. */
export function checkWhatBy(what: PatchWhat, by: PatchBy): void {
  if (by !== 'layer_pos' && !HEAD_WHATS.includes(what)) {
    throw new PrismaError('E_ARGUMENT', `--what ${what} has no head axis, so it cannot be patched --by ${by.replace(/_/g, ',')}`, {
      hint: `use --by layer,pos, or a per-head site (${HEAD_WHATS.join(', ')})`,
    });
  }
}

/** `by` as the CLI spells it (`layer,pos`) or as the addon does (`layer_pos`); the library takes both. */
export type PatchBySpelling = PatchBy | 'layer,pos' | 'layer,head' | 'layer,pos,head';

export interface PatchOptions {
  /** A site, as `--what` takes it (case-insensitive). */
  what: PatchWhat;
  /** `layer,pos` / `layer_pos` etc., as `--by` takes it. */
  by: PatchBySpelling;
  /** Default 'exact'. */
  method?: PatchMethod;
  /** Default: the clean image's top-1. */
  target?: ClassRef;
  /** Contrast class; default: the corrupt image's top-1 when it differs from the target; null = none. */
  baseline?: ClassRef | null;
  /** Default: every layer. */
  layers?: number[];
  /** Patched runs per batched forward (default: sized by the addon). */
  chunk?: number;
  /**
   * Exact patching's linear layers on oneDNN (f32 CPU models only): 10-20% faster on ViT-B-sized
   * models, but equal to transformers' values only to float rounding, which a model can amplify.
   */
  fastLinear?: boolean;
}

export interface PatchMatrix {
  method: 'exact' | 'attribution';
  /** e.g. ['layer', 'pos'] */
  axes: string[];
  dims: number[];
  layers: number[];
  /** Row-major over dims: the metric after patching (estimated for attribution). */
  value: number[];
  /** Target probability after patching ([] for attribution). */
  prob: number[];
  /** corrupt = 0, clean = 1. */
  normalised: number[];
  batchedForwards: number;
  patchedRuns: number;
}

export interface PatchSide {
  input: string;
  metric: MetricValue;
  top1: ClassInfo;
}

export interface PatchAnalysis {
  what: PatchWhat;
  by: PatchBy;
  method: PatchMethod;
  target: ClassInfo;
  targetSource: 'given' | 'clean-top1';
  baseline: ClassInfo | null;
  baselineSource: 'given' | 'corrupt-top1' | 'none';
  /** 'logit' (target logit) or 'logit_diff' (target - baseline). */
  metric: 'logit' | 'logit_diff';
  layers: number[];
  clean: PatchSide;
  corrupt: PatchSide;
  exact?: PatchMatrix;
  attribution?: PatchMatrix;
  /** With method 'both': Pearson correlation of exact and attribution normalised values (null when undefined). */
  correlation?: number | null;
  /** clean - corrupt metric: what every normalised effect is divided by. */
  denominator: number;
  /** Why the normalised effects may mean little (see `patchWarnings`); empty when none. */
  warnings: string[];
}

/**
 * |clean - corrupt| below this share of the metric's scale (the standard deviation of the clean
 * image's logits over classes) makes the normalised effects ratios of small numbers.
 */
export const SMALL_DENOMINATOR = 0.1;

function std(xs: ArrayLike<number>): number {
  let mean = 0;
  for (let i = 0; i < xs.length; i++) mean += xs[i]!;
  mean /= xs.length;
  let v = 0;
  for (let i = 0; i < xs.length; i++) v += (xs[i]! - mean) ** 2;
  return Math.sqrt(v / xs.length);
}

/**
 * Warnings for a pair the model treats alike: the two metrics differ by little against the metric's
 * scale (normalised effects then divide by almost nothing: 0.275 vs 0.258 gave a 'largest effect'
 * of 7.53), or both images have the same top-1 class (with the default target there is then no
 * baseline, and the metric is one logit both images push the same way).
 */
export function patchWarnings(
  a: Pick<PatchAnalysis, 'clean' | 'corrupt' | 'target' | 'baselineSource' | 'metric'>,
  cleanLogits: ArrayLike<number>,
): string[] {
  const out: string[] = [];
  const denominator = a.clean.metric.value - a.corrupt.metric.value;
  const scale = std(cleanLogits);
  const metric = a.metric === 'logit' ? `${a.target.label} logit` : 'logit difference';
  const fmt = (x: number) => (Math.abs(x) >= 100 || Math.abs(x) < 0.01 ? x.toExponential(2) : x.toFixed(3));
  if (!(Math.abs(denominator) >= SMALL_DENOMINATOR * scale)) {
    out.push(
      `clean and corrupted differ little on the ${metric} (${fmt(a.clean.metric.value)} vs ${fmt(a.corrupt.metric.value)}, difference ${fmt(denominator)}; the clean logits' spread is ${fmt(scale)}): normalised effects divide by ${fmt(denominator)} and can be large and meaningless; choose a --target (and --baseline) the two inputs disagree on, or a pair the model treats differently`,
    );
  }
  if (a.clean.top1.index === a.corrupt.top1.index) {
    out.push(
      `both inputs' top-1 class is ${a.clean.top1.label}${a.baselineSource === 'none' ? ', so there is no baseline class and the metric is one logit' : ''}: patching measures how much of a shared prediction moves; pass --target and --baseline to compare two classes`,
    );
  }
  return out;
}

function matrix(method: PatchMatrix['method'], r: PatchResult): PatchMatrix {
  return {
    method,
    axes: r.axes,
    dims: r.dims,
    layers: r.layers,
    value: r.value,
    prob: r.prob,
    normalised: r.normalised,
    batchedForwards: r.batchedForwards,
    patchedRuns: r.patchedRuns,
  };
}

export async function patch(
  model: Model,
  clean: string | PixelBatch,
  corrupt: string | PixelBatch,
  options: PatchOptions,
): Promise<PatchAnalysis> {
  requireHead(model, 'activation patching');
  const info = model.info;
  // The CLI's spellings are the library's too (`by: 'layer,pos'`, `what: 'HEAD_Z'`).
  const what = parsePatchWhat(options.what);
  const by = parsePatchBy(options.by);
  checkWhatBy(what, by);
  const method = options.method === undefined ? 'exact' : parsePatchMethod(options.method);
  const layers =
    options.layers === undefined ? Array.from({ length: info.nLayers }, (_, i) => i) : checkLayers(options.layers, info.nLayers);
  if (layers.length === 0) throw optionError('layers', 'layers selects no layer');
  const givenTarget = options.target === undefined ? undefined : resolveClass(options.target, info, 'target');
  const givenBaseline =
    options.baseline === undefined || options.baseline === null ? options.baseline : resolveClass(options.baseline, info, 'baseline');

  const cleanBatch = await oneImage(model, clean, 'patching (--clean)');
  const corruptBatch = await oneImage(model, corrupt, 'patching (--corrupt)');
  const [cleanLogits, corruptLogits] = await modelLogits(model, concatBatches([cleanBatch, corruptBatch]));
  const cleanTop = argmax(cleanLogits!);
  const corruptTop = argmax(corruptLogits!);
  const target = givenTarget ?? cleanTop;
  let baseline: number | null;
  let baselineSource: PatchAnalysis['baselineSource'];
  if (givenBaseline !== undefined) {
    baseline = givenBaseline;
    baselineSource = givenBaseline === null ? 'none' : 'given';
  } else if (corruptTop !== target) {
    baseline = corruptTop;
    baselineSource = 'corrupt-top1';
  } else {
    baseline = null;
    baselineSource = 'none';
  }
  if (baseline !== null && baseline === target) {
    throw new PrismaError(
      'E_ARGUMENT',
      `--baseline is the target class (${classInfo(info, target).label}); the logit difference would be 0`,
    );
  }

  const nativeOptions = {
    what,
    by,
    target,
    layers,
    ...(baseline === null ? {} : { baseline }),
    ...(options.chunk === undefined ? {} : { chunk: options.chunk }),
    ...(options.fastLinear ? { fastLinear: true } : {}),
  };
  const shape = [...cleanBatch.shape];
  const exact =
    method === 'attribution' ? undefined : await model.native.patch(cleanBatch.data, corruptBatch.data, shape, nativeOptions, false);
  const attribution =
    method === 'exact' ? undefined : await model.native.patch(cleanBatch.data, corruptBatch.data, shape, nativeOptions, true);
  const ref = (exact ?? attribution)!;
  const result: PatchAnalysis = {
    what,
    by,
    method,
    target: classInfo(info, target),
    targetSource: givenTarget === undefined ? 'clean-top1' : 'given',
    baseline: baseline === null ? null : classInfo(info, baseline),
    baselineSource,
    metric: baseline === null ? 'logit' : 'logit_diff',
    layers,
    clean: { input: cleanBatch.labels[0]!, metric: ref.clean, top1: classInfo(info, cleanTop) },
    corrupt: { input: corruptBatch.labels[0]!, metric: ref.corrupt, top1: classInfo(info, corruptTop) },
    denominator: ref.clean.value - ref.corrupt.value,
    warnings: [],
  };
  result.warnings = patchWarnings(result, cleanLogits!);
  if (exact) result.exact = matrix('exact', exact);
  if (attribution) result.attribution = matrix('attribution', attribution);
  if (exact && attribution) result.correlation = pearson(exact.normalised, attribution.normalised);
  return result;
}

/** The largest |normalised effect| of a matrix and where it is: one index per axis, the layer axis as a layer number. */
export function largestEffect(m: PatchMatrix): { value: number; at: { axis: string; index: number }[] } {
  let best = 0;
  m.normalised.forEach((v, i) => {
    if (Math.abs(v) > Math.abs(m.normalised[best]!)) best = i;
  });
  const idx: number[] = [];
  let rest = best;
  for (let d = m.dims.length - 1; d >= 0; d--) {
    idx.unshift(rest % m.dims[d]!);
    rest = Math.floor(rest / m.dims[d]!);
  }
  idx[0] = m.layers[idx[0]!]!;
  return { value: m.normalised[best]!, at: m.axes.map((axis, i) => ({ axis, index: idx[i]! })) };
}
