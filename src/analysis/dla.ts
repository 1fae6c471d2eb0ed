/**
 * Direct logit attribution: the class-token residual stream split into components (embeddings,
 * each head, each attention bias, each MLP), each projected through the final layer norm's scale
 * onto the logit direction W[target] (- W[baseline]). Components plus a constant (layer-norm and
 * head biases) add up to the model's own logit (difference).
 */
import { PrismaError } from '../errors.js';
import type { Model } from '../model.js';
import type { DlaResult } from '../native.js';
import type { PixelBatch } from '../tensor.js';
import { argmax, classInfo, modelLogits, oneImage, requireHead, resolveClass, type ClassInfo, type ClassRef } from './common.js';

export interface DlaOptions {
  /** Default: the image's own top-1. */
  target?: ClassRef;
  /** Contrast class (the metric is then a logit difference); default none. */
  baseline?: ClassRef | null;
  /** Also split each head by the source position it reads from. */
  perPosition?: boolean;
}

/** The addon's result (its `logit` is the logit difference it computed), with classes resolved. */
export interface DlaAnalysis extends Omit<DlaResult, 'target' | 'baseline'> {
  input: string;
  target: ClassInfo;
  targetSource: 'given' | 'top1';
  baseline: ClassInfo | null;
  metric: 'logit' | 'logit_diff';
  /** The same quantity from an ordinary forward (`model.run`), as an independent check. */
  modelLogit: number;
  /** |sumOfComponents + constant - logit| and |... - modelLogit|. */
  error: { vsLogit: number; vsModel: number };
}

export async function dla(model: Model, input: string | PixelBatch, options: DlaOptions = {}): Promise<DlaAnalysis> {
  requireHead(model, 'direct logit attribution');
  const info = model.info;
  const givenTarget = options.target === undefined ? undefined : resolveClass(options.target, info, 'target');
  const baseline = options.baseline === undefined || options.baseline === null ? null : resolveClass(options.baseline, info, 'baseline');
  const batch = await oneImage(model, input, 'direct logit attribution');
  const [logits] = await modelLogits(model, batch);
  const target = givenTarget ?? argmax(logits!);
  if (baseline !== null && baseline === target) {
    throw new PrismaError(
      'E_ARGUMENT',
      `--baseline is the target class (${classInfo(info, target).label}); the logit difference would be 0`,
    );
  }
  const r = await model.native.dla(batch.data, [...batch.shape], {
    target,
    ...(baseline === null ? {} : { baseline }),
    ...(options.perPosition ? { perPosition: true } : {}),
  });
  const modelLogit = logits![target]! - (baseline === null ? 0 : logits![baseline]!);
  const total = r.sumOfComponents + r.constant;
  return {
    input: batch.labels[0]!,
    target: classInfo(info, target),
    targetSource: givenTarget === undefined ? 'top1' : 'given',
    baseline: baseline === null ? null : classInfo(info, baseline),
    metric: baseline === null ? 'logit' : 'logit_diff',
    components: r.components,
    heads: r.heads,
    headPositions: r.headPositions ?? null,
    constant: r.constant,
    sumOfComponents: r.sumOfComponents,
    logit: r.logit,
    modelLogit,
    error: { vsLogit: Math.abs(total - r.logit), vsModel: Math.abs(total - modelLogit) },
  };
}

/** The identity DLA rests on: the components plus the constant add up to the logit (difference). */
export interface DlaCheck {
  sumOfComponents: number;
  constant: number;
  sumPlusConstant: number;
  logit: number;
  /** |sumPlusConstant - logit| <= tolerance */
  ok: boolean;
  tolerance: number;
}

/** Checks `a` against its identity, to 1e-4 relative to the logit (at least 1e-4 absolute). */
export function dlaCheck(a: DlaAnalysis): DlaCheck {
  const sumPlusConstant = a.sumOfComponents + a.constant;
  const tolerance = 1e-4 * Math.max(1, Math.abs(a.logit));
  return {
    sumOfComponents: a.sumOfComponents,
    constant: a.constant,
    sumPlusConstant,
    logit: a.logit,
    ok: Math.abs(sumPlusConstant - a.logit) <= tolerance,
    tolerance,
  };
}
