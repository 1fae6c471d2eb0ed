/** Helpers shared by the analysis functions: classes, layers, inputs, statistics. */
import { PrismaError } from '../errors.js';
import type { Model } from '../model.js';
import type { ModelInfo } from '../native.js';
import type { PixelBatch } from '../tensor.js';

/** A class by index or by its id2label name. */
export type ClassRef = number | string;

export interface ClassInfo {
  index: number;
  label: string;
}

export function labelOf(info: Pick<ModelInfo, 'labels'>, index: number): string {
  return info.labels[index] ?? String(index);
}

export function classInfo(info: Pick<ModelInfo, 'labels'>, index: number): ClassInfo {
  return { index, label: labelOf(info, index) };
}

/**
 * Resolve `--target` / `--baseline`: a class index (0..nClasses-1) or a label from id2label
 * (exact match first, then case-insensitive). E_ARGUMENT otherwise.
 */
export function resolveClass(ref: ClassRef, info: Pick<ModelInfo, 'labels' | 'nClasses'>, flag = 'target'): number {
  const n = info.nClasses;
  const range = n > 0 ? `0..${n - 1}` : 'none: the model has no classification head';
  if (typeof ref === 'number' || /^\s*\d+\s*$/.test(ref)) {
    const index = typeof ref === 'number' ? ref : Number.parseInt(ref, 10);
    if (Number.isInteger(index) && index >= 0 && index < n) return index;
    if (typeof ref === 'string') {
      const asLabel = info.labels.indexOf(ref);
      if (asLabel >= 0) return asLabel;
    }
    throw new PrismaError('E_ARGUMENT', `--${flag} ${ref} is out of range: class indices are ${range}`);
  }
  let index = info.labels.indexOf(ref);
  if (index < 0) {
    const lower = ref.toLowerCase();
    const matches = info.labels.map((l, i) => [l.toLowerCase(), i] as const).filter(([l]) => l === lower);
    if (matches.length === 1) index = matches[0]![1];
  }
  if (index < 0) {
    const some = info.labels.slice(0, 6).join(', ');
    throw new PrismaError('E_ARGUMENT', `unknown --${flag} '${ref}': not a class index (${range}) or a label of this model`, {
      hint:
        info.labels.length > 0
          ? `labels: ${some}${info.labels.length > 6 ? ', …' : ''} (see \`prisma inspect MODEL_DIR --json\`)`
          : 'the model has no labels',
    });
  }
  return index;
}

/**
 * Fail fast, before inputs are read, when `what` needs a classification head and the model has
 * none. The core checks the same (crates/prisma-core/src/analysis/mod.rs, `require_head`) with the
 * same code and wording: E_UNSUPPORTED_MODEL without a head, E_ARGUMENT for a CLIP-style model
 * without class prompts.
 */
export function requireHead(model: Pick<Model, 'info'>, what: string): void {
  if (model.info.nClasses > 0) return;
  if (model.info.hasTextTower) {
    throw new PrismaError(
      'E_ARGUMENT',
      `${what} on a CLIP-style model needs class prompts (CLI: --labels and --template; library: model.setClassPrompts), so that logits are image-text similarities`,
      { hint: 'pass --labels "cat,dog" (or a file with one label per line) and optionally --template "a photo of a {}."' },
    );
  }
  throw new PrismaError(
    'E_UNSUPPORTED_MODEL',
    `${what} needs a classification head, and ${model.info.modelDir} has none (${model.info.architecture})`,
    {
      hint: 'give it a linear probe with --probe FILE (.safetensors with weight [classes, d_model] and bias [classes]; --labels names the classes), or use a model with a head, e.g. ViTForImageClassification',
      data: { path: model.info.modelDir, architecture: model.info.architecture },
    },
  );
}

/** Check layer indices against the model (E_LAYER_RANGE). */
export function checkLayers(layers: readonly number[], nLayers: number): number[] {
  for (const l of layers) {
    if (!Number.isInteger(l) || l < 0 || l >= nLayers) {
      throw new PrismaError('E_LAYER_RANGE', `layer ${l} is out of range: the model has ${nLayers} layers (0..${nLayers - 1})`, {
        hint: 'run `prisma inspect MODEL_DIR` to see the number of layers',
      });
    }
  }
  return [...new Set(layers)].sort((a, b) => a - b);
}

/** Accept paths or a batch; paths are loaded and preprocessed for `model`. */
export async function toBatch(model: Model, inputs: readonly string[] | PixelBatch): Promise<PixelBatch> {
  return Array.isArray(inputs) ? model.loadInputs(inputs as readonly string[]) : (inputs as PixelBatch);
}

/** Exactly one image (E_INPUT otherwise). */
export async function oneImage(model: Model, input: string | PixelBatch, what: string): Promise<PixelBatch> {
  const batch = typeof input === 'string' ? await model.loadInputs([input]) : input;
  if (batch.shape[0] !== 1) {
    throw new PrismaError('E_INPUT', `${what} takes one image, got ${batch.shape[0]} (${batch.labels.slice(0, 3).join(', ')})`);
  }
  return batch;
}

/** Logits of the model for each image: [B, nClasses] rows. */
export async function modelLogits(model: Model, batch: PixelBatch): Promise<Float32Array[]> {
  const out = await model.run(batch);
  const n = model.info.nClasses;
  return Array.from({ length: batch.shape[0] }, (_, b) => out.output.data.slice(b * n, (b + 1) * n));
}

export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Pearson correlation; null when either side is constant or lengths differ. */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number | null {
  const n = a.length;
  if (n !== b.length || n < 2) return null;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i]!;
    mb += b[i]!;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i]! - ma;
    const db = b[i]! - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  if (saa <= 0 || sbb <= 0) return null;
  const r = sab / Math.sqrt(saa * sbb);
  return Number.isFinite(r) ? r : null;
}

/** Deterministic PRNG (mulberry32) for seeded choices, e.g. the resampling reference. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** [patch rows, patch cols] of the model's grid. */
export function patchGrid(info: Pick<ModelInfo, 'imageSize' | 'patchSize'>): [number, number] {
  return [Math.floor(info.imageSize[0]! / info.patchSize), Math.floor(info.imageSize[1]! / info.patchSize)];
}

/** Time slices of a video model's tokens (1 for images). */
export function timeSlices(info: Pick<ModelInfo, 'numFrames' | 'tubeletSize'>): number {
  return info.numFrames ? Math.max(1, Math.floor(info.numFrames / Math.max(1, info.tubeletSize))) : 1;
}

/** A label per token position: cls, dist, reg0.., then patches r{row}c{col} (video: t{slice}:r{row}c{col}). */
export function tokenLabels(
  info: Pick<ModelInfo, 'hasClassToken' | 'nPrefixTokens' | 'nRegisters' | 'imageSize' | 'patchSize' | 'numFrames' | 'tubeletSize'>,
): string[] {
  const out: string[] = [];
  if (info.hasClassToken) out.push('cls');
  const registers = info.nRegisters;
  while (out.length < firstPatchToken(info) - registers) out.push('dist');
  for (let r = 0; r < registers; r++) out.push(`reg${r}`);
  const [gh, gw] = patchGrid(info);
  const slices = timeSlices(info);
  for (let t = 0; t < slices; t++) {
    for (let row = 0; row < gh; row++) {
      for (let col = 0; col < gw; col++) out.push(slices > 1 ? `t${t}:r${row}c${col}` : `r${row}c${col}`);
    }
  }
  return out;
}

/**
 * Per-token values → the spatial heatmaps a figure shows: one [gh × gw] panel for an image, one per
 * time slice for a video (tokens are time-major), each titled `title` plus ` t{slice}`.
 */
export function slicePanels(
  info: Pick<ModelInfo, 'hasClassToken' | 'nPrefixTokens' | 'imageSize' | 'patchSize' | 'numFrames' | 'tubeletSize'>,
  tokenValues: ArrayLike<number>,
  title: string,
): { title: string; values: number[] }[] {
  const first = firstPatchToken(info);
  const [gh, gw] = patchGrid(info);
  const slices = timeSlices(info);
  const all = Array.from(tokenValues);
  return Array.from({ length: slices }, (_, t) => ({
    title: slices > 1 ? `${title} t${t}` : title,
    values: all.slice(first + t * gh * gw, first + (t + 1) * gh * gw),
  }));
}

/** Per-token values summed over time slices (a video's spatial map; the values themselves for an image). */
export function sumOverSlices(
  info: Pick<ModelInfo, 'hasClassToken' | 'nPrefixTokens' | 'imageSize' | 'patchSize' | 'numFrames' | 'tubeletSize'>,
  tokenValues: ArrayLike<number>,
): number[] {
  const panels = slicePanels(info, tokenValues, '');
  return panels[0]!.values.map((_, i) => panels.reduce((a, p) => a + (p.values[i] ?? 0), 0));
}

/** Token index of the first patch: after the class, distillation and register tokens. */
export function firstPatchToken(info: Pick<ModelInfo, 'hasClassToken' | 'nPrefixTokens'>): number {
  return info.nPrefixTokens;
}
