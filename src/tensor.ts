/** Plain tensor values exchanged with the addon: float32 data, row-major, batch axis first. */
import { PrismaError } from './errors.js';
import type { TensorInput as NativeTensorInput } from './generated/binding.js';
import type { TensorData } from './native.js';

export type Tensor = TensorData;
/** A named tensor handed to the library (an intervention's values, a file to write). */
export interface TensorInput extends NativeTensorInput {
  name: string;
}

/** `[B, C, H, W]` for image models, `[B, T, C, H, W]` for video models (T frames per clip). */
export type PixelShape = [number, number, number, number] | [number, number, number, number, number];

/** Pixels ready for the model: `[B, C, H, W]` (video: `[B, T, C, H, W]`) float32, with one label per batch entry. */
export interface PixelBatch {
  data: Float32Array;
  shape: PixelShape;
  /** One per batch entry: the image path (video: the clip's folder or file), or `file[i]` for rows of a tensor file. */
  labels: string[];
}

/** Values per batch entry (C·H·W, or T·C·H·W for a clip). */
export function itemSize(shape: readonly number[]): number {
  return numel(shape.slice(1));
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Throw E_SHAPE unless every size of `shape` is a non-negative integer. */
export function checkShape(name: string, shape: readonly number[]): void {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new PrismaError('E_SHAPE', `tensor '${name}' has an invalid shape ${formatShape(shape)}`);
  }
}

/** Throw E_SHAPE unless `data.length` matches `shape`. */
export function checkTensor(t: { name: string; shape: readonly number[]; data: Float32Array }): void {
  checkShape(t.name, t.shape);
  if (numel(t.shape) !== t.data.length) {
    throw new PrismaError(
      'E_SHAPE',
      `tensor '${t.name}' has ${t.data.length} values but shape ${formatShape(t.shape)} needs ${numel(t.shape)}`,
    );
  }
}

/**
 * Throw E_INPUT when pixels hold NaN or infinite values: every output would be NaN (printed as
 * null), which says nothing about where the input went wrong.
 */
export function checkFinite(data: Float32Array, what: string): void {
  let bad = 0;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) bad++;
  if (bad > 0) throw new PrismaError('E_INPUT', `${what}: ${bad} of ${data.length} values are NaN or infinite`);
}

/** Concatenate `[Bi, ...rest]` batches along the first axis (rest must agree: same rank and sizes). */
export function concatBatches(parts: PixelBatch[]): PixelBatch {
  if (parts.length === 0) throw new PrismaError('E_INPUT', 'no inputs');
  if (parts.length === 1) return parts[0]!;
  const rest = parts[0]!.shape.slice(1);
  let b = 0;
  for (const p of parts) {
    if (!sameShape(p.shape.slice(1), rest)) {
      throw new PrismaError('E_SHAPE', `cannot batch ${formatShape(p.shape)} with ${formatShape(parts[0]!.shape)}`);
    }
    b += p.shape[0];
  }
  const data = new Float32Array(b * numel(rest));
  let offset = 0;
  for (const p of parts) {
    data.set(p.data, offset);
    offset += p.data.length;
  }
  return { data, shape: [b, ...rest] as PixelShape, labels: parts.flatMap((p) => p.labels) };
}

/** Entries `start..end` of a batch, as views of its data. */
export function batchRows(batch: PixelBatch, start: number, end: number): PixelBatch {
  const item = itemSize(batch.shape);
  return {
    data: batch.data.subarray(start * item, end * item),
    shape: [end - start, ...batch.shape.slice(1)] as PixelShape,
    labels: batch.labels.slice(start, end),
  };
}

export interface Prediction {
  index: number;
  label: string;
  logit: number;
  prob: number;
}

/** Softmax of one row, computed in float64. */
export function softmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]!);
  const out = new Float64Array(row.length);
  let sum = 0;
  for (let i = 0; i < row.length; i++) {
    out[i] = Math.exp(row[i]! - max);
    sum += out[i]!;
  }
  for (let i = 0; i < row.length; i++) out[i]! /= sum;
  return out;
}

/**
 * Top-k classes for each batch row of `[B, n_classes]` logits (a `[n_classes]` tensor is one row).
 * Ties keep the lower index first. `labels[i]` names class i (falls back to the index).
 */
export function topK(logits: Pick<Tensor, 'shape' | 'data'>, k: number, labels: readonly string[] = []): Prediction[][] {
  const shape = logits.shape.length === 1 ? [1, logits.shape[0]!] : logits.shape;
  if (shape.length !== 2 || numel(shape) !== logits.data.length) {
    throw new PrismaError('E_SHAPE', `topK needs [batch, classes] logits, got ${formatShape(logits.shape)}`);
  }
  const [b, n] = shape as [number, number];
  const kk = Math.max(0, Math.min(Math.floor(k), n));
  const out: Prediction[][] = [];
  for (let r = 0; r < b; r++) {
    const row = logits.data.subarray(r * n, (r + 1) * n);
    const probs = softmax(row);
    const order = Array.from({ length: n }, (_, i) => i).sort((x, y) => row[y]! - row[x]! || x - y);
    out.push(
      order.slice(0, kk).map((index) => ({ index, label: labels[index] ?? String(index), logit: row[index]!, prob: probs[index]! })),
    );
  }
  return out;
}
