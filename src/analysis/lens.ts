/**
 * Logit lens: each layer's residual stream (at resid_pre / resid_mid / resid_post) read through
 * the final layer norm and the classification head, at the class token and at every position.
 */
import type { PatchLabelsEntry, PatchLabelsFile } from '../dataset/patch-labels.js';
import { PrismaError } from '../errors.js';
import type { Model } from '../model.js';
import type { LensSite, ModelInfo, Ranked } from '../native.js';
import type { PixelBatch } from '../tensor.js';
import { classInfo, firstPatchToken, patchGrid, requireHead, resolveClass, toBatch, type ClassInfo, type ClassRef } from './common.js';

export const LENS_SITES: readonly LensSite[] = ['resid_pre', 'resid_mid', 'resid_post'];

export interface LogitLensOptions {
  /** Residual sites to read (default ['resid_post']); `hook_resid_post` is read as `resid_post`, as `--site` reads it. */
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
  const sites = options.sites && options.sites.length > 0 ? [...new Set(options.sites.map(parseLensSite))] : ['resid_post' as const];
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

// ---------------------------------------------------------------------------------------------
// Per-patch accuracy against patch labels (`prisma dataset patch-labels`)

export interface PatchScore {
  layer: number;
  site: LensSite;
  correct: number;
  labelled: number;
  accuracy: number | null;
}

/**
 * Check that a patch-labels file fits the model: the same patch grid (E_SHAPE) and at least one
 * label that is a class of the model (E_ARGUMENT). `modelDir` goes into the hint for remaking them.
 */
export function checkPatchLabels(file: PatchLabelsFile, info: ModelInfo, modelDir: string): void {
  const [gh, gw] = patchGrid(info);
  const bad = file.images.find((e) => e.grid[0] !== gh || e.grid[1] !== gw);
  if (bad) {
    throw new PrismaError('E_SHAPE', `patch labels for ${bad.image} use a ${bad.grid.join('x')} grid; this model's is ${gh}x${gw}`, {
      hint: `make them with \`prisma dataset patch-labels --annotations XML_DIR --model ${modelDir} --out FILE\``,
    });
  }
  if (!file.classes.some((c) => info.labels.includes(c))) {
    throw new PrismaError('E_ARGUMENT', `none of the patch labels (${file.classes.slice(0, 3).join(', ')}...) is a class of this model`, {
      hint: "patch labels are compared with the model's id2label names",
    });
  }
}

/**
 * Per-patch lens accuracy: at each layer, a labelled patch counts as correct when the lens's top-1
 * class at that patch's token is the patch's label (compared with the model's id2label by name).
 */
export function scorePatches(r: LogitLensResult, entry: PatchLabelsEntry, info: ModelInfo): PatchScore[] {
  const first = firstPatchToken(info);
  return r.layers.map((l) => {
    let correct = 0;
    let labelled = 0;
    entry.labels.forEach((label, p) => {
      if (label === null) return;
      labelled++;
      if (info.labels[l.posTop1[first + p]!] === label) correct++;
    });
    return { layer: l.layer, site: l.site, correct, labelled, accuracy: labelled ? correct / labelled : null };
  });
}

/** Per-image scores summed per layer and site (null when no image was scored). */
export function sumPatchScores(all: PatchScore[][]): PatchScore[] | null {
  if (all.length === 0) return null;
  return all[0]!.map((s, i) => {
    const correct = all.reduce((a, x) => a + x[i]!.correct, 0);
    const labelled = all.reduce((a, x) => a + x[i]!.labelled, 0);
    return { layer: s.layer, site: s.site, correct, labelled, accuracy: labelled ? correct / labelled : null };
  });
}
