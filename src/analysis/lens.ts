/**
 * Logit lens: each layer's residual stream (at resid_pre / resid_mid / resid_post) read through
 * the final layer norm and the classification head, at the class token and at every position.
 */
import { PrismaError } from '../errors.js';
import type { Model } from '../model.js';
import type { LensSite, Ranked } from '../native.js';
import type { PixelBatch } from '../tensor.js';
import { classInfo, requireHead, resolveClass, toBatch, type ClassInfo, type ClassRef } from './common.js';

export const LENS_SITES: readonly LensSite[] = ['resid_pre', 'resid_mid', 'resid_post'];

export interface LogitLensOptions {
  /** Residual sites to read (default ['resid_post']). */
  sites?: LensSite[];
  /** Class to follow (index or label); default: each image's own top-1. */
  target?: ClassRef;
  /** Classes listed per layer at the class token (default 5). */
  topK?: number;
}

export interface RankedClass extends Ranked {
  label: string;
}

export interface LensLayerResult {
  layer: number;
  site: LensSite;
  hook: string;
  /** Top classes at the class token. */
  topK: RankedClass[];
  targetLogit: number;
  targetProb: number;
  /** 0 = the top class. */
  targetRank: number;
  /** Target logit at every token (class token first, then patches row-major). */
  posTargetLogit: number[];
  /** Top-1 class at every token. */
  posTop1: number[];
}

export interface LogitLensResult {
  input: string;
  target: ClassInfo;
  /** 'given' (--target) or 'top1' (the model's own prediction). */
  targetSource: 'given' | 'top1';
  /** The model's own output (the last layer's resid_post read through the head). */
  logitsTopK: RankedClass[];
  /** Layer-major; sites in the order asked. */
  layers: LensLayerResult[];
}

export function parseLensSite(value: string): LensSite {
  const v = value
    .trim()
    .toLowerCase()
    .replace(/^hook_/, '');
  if ((LENS_SITES as readonly string[]).includes(v)) return v as LensSite;
  throw new PrismaError('E_USAGE', `unknown --site '${value}'`, { hint: `use ${LENS_SITES.join(', ')}` });
}

export async function logitLens(
  model: Model,
  inputs: readonly string[] | PixelBatch,
  options: LogitLensOptions = {},
): Promise<LogitLensResult[]> {
  requireHead(model, 'the logit lens');
  const info = model.info;
  const sites = options.sites && options.sites.length > 0 ? [...new Set(options.sites)] : ['resid_post' as const];
  for (const s of sites) parseLensSite(s);
  const target = options.target === undefined ? undefined : resolveClass(options.target, info, 'target');
  const topK = Math.max(1, Math.min(options.topK ?? 5, info.nClasses));
  const batch = await toBatch(model, inputs);
  const images = await model.native.logitLens(batch.data, [...batch.shape], {
    sites: [...sites],
    topK,
    ...(target === undefined ? {} : { target }),
  });
  const named = (r: Ranked): RankedClass => ({
    index: r.index,
    label: info.labels[r.index] ?? String(r.index),
    logit: r.logit,
    prob: r.prob,
  });
  return images.map((img, b) => ({
    input: batch.labels[b] ?? `[${b}]`,
    target: classInfo(info, img.target),
    targetSource: target === undefined ? 'top1' : 'given',
    logitsTopK: img.logitsTopK.map(named),
    layers: img.layers.map((l) => ({
      layer: l.layer,
      site: l.site,
      hook: l.hook,
      topK: l.topK.map(named),
      targetLogit: l.targetLogit,
      targetProb: l.targetProb,
      targetRank: l.targetRank,
      posTargetLogit: l.posTargetLogit,
      posTop1: l.posTop1,
    })),
  }));
}
