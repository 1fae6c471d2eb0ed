/**
 * Attention-head statistics from `blocks.{l}.attn.hook_pattern` ([B, H, query, key]): per head,
 * the chosen query token's attention, its entropy, the mean entropy over queries, attention to
 * the class token, mean attention distance on the patch grid, and the self-attention share.
 */
import { PrismaError, optionError } from '../errors.js';
import type { Model } from '../model.js';
import type { PixelBatch } from '../tensor.js';
import { checkLayers, firstPatchToken, oneImage, patchGrid } from './common.js';

/** 'cls' (the class token) or a patch index (0-based, row-major over the patch grid). */
/** 'cls', a patch index (row-major), or a patch by its token name as reports print it (`r2c3`). */
export type HeadsQuery = 'cls' | number | `r${number}c${number}`;

export interface HeadsOptions {
  /** Default 'cls' (or patch 0 for models without a class token). */
  query?: HeadsQuery;
  /** Default: every layer. */
  layers?: number[];
}

export interface HeadStats {
  layer: number;
  head: number;
  /** Entropy (nats) of the chosen query's attention over all keys. */
  entropy: number;
  /** Entropy averaged over all queries. */
  meanEntropy: number;
  /**
   * "Mean attention to cls": attention to the class token averaged over ALL queries (null without a
   * class token). Not the chosen query's attention to the class token, which is `queryAttention[0]`.
   */
  clsAttention: number | null;
  /** "Mean attention to registers": attention to the register tokens (summed), averaged over all queries (null without registers). */
  registerAttention: number | null;
  /**
   * Mean attention distance in patches: for each patch query, the Euclidean grid distance to each
   * patch key weighted by attention (renormalised over patch keys), averaged over patch queries.
   */
  meanDistance: number;
  /** Mean attention of a token to itself (mean of the diagonal). */
  selfShare: number;
  /** The chosen query's attention over every token (class token first). */
  queryAttention: number[];
}

export interface HeadsAnalysis {
  input: string;
  /**
   * Attention rollout (Abnar & Zuidema 2020) from the chosen query over every token, through the
   * analysed layers: each layer's attention averaged over heads, plus the identity for the residual
   * stream, rows renormalised, multiplied from the last layer down (row vector: q^T A_L ... A_1).
   */
  rollout: number[];
  query: { kind: 'cls' | 'patch'; token: number; patch: number | null };
  /** [rows, cols] of the patch grid. */
  grid: [number, number];
  nPos: number;
  layers: number[];
  heads: HeadStats[];
}

export interface HeadsResult extends HeadsAnalysis {
  /** Full patterns per analysed layer, [H, pos, pos] row-major (for the HTML viewer; not part of the report). */
  patterns: { layer: number; data: Float32Array }[];
}

export function parseHeadsQuery(value: string): HeadsQuery {
  const v = value.trim().toLowerCase();
  if (v === 'cls') return 'cls';
  if (/^\d+$/.test(v)) return Number.parseInt(v, 10);
  if (/^r\d+c\d+$/.test(v)) return v as `r${number}c${number}`;
  throw new PrismaError('E_USAGE', `--query must be 'cls', a patch index or a patch name like r2c3, got '${value}'`);
}

/** Resolve and check a query against the model (E_ARGUMENT when out of range). */
export function resolveQuery(model: Pick<Model, 'info'>, q: HeadsQuery | undefined): HeadsAnalysis['query'] {
  const info = model.info;
  const first = firstPatchToken(info);
  let query = q ?? (info.hasClassToken ? 'cls' : 0);
  if (typeof query === 'string' && query !== 'cls') {
    // r{row}c{col}, the token names reports print: row-major index on the patch grid.
    const m = /^r(\d+)c(\d+)$/.exec(query);
    const cols = Math.floor(info.imageSize[1]! / info.patchSize);
    const rows = Math.floor(info.imageSize[0]! / info.patchSize);
    if (!m || Number(m[1]) >= rows || Number(m[2]) >= cols) {
      throw optionError('query', `query ${query} is not on the ${rows}x${cols} patch grid (r0c0..r${rows - 1}c${cols - 1})`);
    }
    query = Number(m[1]) * cols + Number(m[2]);
  }
  if (query === 'cls') {
    if (!info.hasClassToken) throw new PrismaError('E_ARGUMENT', 'this model has no class token; pass --query PATCH_INDEX');
    return { kind: 'cls', token: 0, patch: null };
  }
  if (!Number.isInteger(query) || query < 0 || query >= info.nPatches) {
    throw new PrismaError(
      'E_ARGUMENT',
      `--query patch ${query} is out of range: the model has ${info.nPatches} patches (0..${info.nPatches - 1})`,
    );
  }
  return { kind: 'patch', token: first + query, patch: query };
}

export function entropy(p: ArrayLike<number>, start = 0, end = p.length): number {
  let h = 0;
  for (let i = start; i < end; i++) {
    const v = p[i]!;
    if (v > 0) h -= v * Math.log(v);
  }
  return h;
}

/** Statistics of one head from its [pos, pos] pattern (`a` is the flat pattern, offset `o`). */
export function headStats(
  a: Float32Array,
  o: number,
  nPos: number,
  grid: readonly [number, number],
  first: number,
  queryToken: number,
  registers = 0,
): Omit<HeadStats, 'layer' | 'head'> {
  const gw = grid[1];
  // Video tokens are time-major: distance is measured on the spatial grid, across time slices.
  const np = grid[0] * gw;
  let meanEntropy = 0;
  let cls = 0;
  let reg = 0;
  let self = 0;
  let dist = 0;
  let nq = 0;
  for (let q = 0; q < nPos; q++) {
    const row = o + q * nPos;
    meanEntropy += entropy(a, row, row + nPos);
    cls += a[row]!;
    for (let r = 1; r <= registers; r++) reg += a[row + r]!;
    self += a[row + q]!;
    if (q >= first) {
      const pq = (q - first) % np;
      const rq = Math.floor(pq / gw);
      const cq = pq % gw;
      let w = 0;
      let d = 0;
      for (let k = first; k < nPos; k++) {
        const pk = (k - first) % np;
        const v = a[row + k]!;
        w += v;
        d += v * Math.hypot(Math.floor(pk / gw) - rq, (pk % gw) - cq);
      }
      if (w > 0) {
        dist += d / w;
        nq += 1;
      }
    }
  }
  const qrow = o + queryToken * nPos;
  return {
    entropy: entropy(a, qrow, qrow + nPos),
    meanEntropy: meanEntropy / nPos,
    clsAttention: first > 0 ? cls / nPos : null,
    registerAttention: registers > 0 ? reg / nPos : null,
    meanDistance: nq > 0 ? dist / nq : 0,
    selfShare: self / nPos,
    queryAttention: Array.from(a.subarray(qrow, qrow + nPos)),
  };
}

/**
 * Attention rollout of `query`: the row vector e_q^T · Â_L · … · Â_1 over the layers given (first to
 * last), Â_l = rownorm(mean over heads of A_l + I). `patterns[l]` is [H, pos, pos] row-major. A row
 * times a matrix per layer: O(L · pos²), no full matrix product.
 */
export function attentionRollout(patterns: readonly Float32Array[], nHeads: number, nPos: number, query: number): number[] {
  let v = new Float64Array(nPos);
  v[query] = 1;
  for (let l = patterns.length - 1; l >= 0; l--) {
    const a = patterns[l]!;
    const next = new Float64Array(nPos);
    for (let q = 0; q < nPos; q++) {
      if (v[q] === 0) continue;
      // row q of rownorm(mean_h A + I), normalised by its own sum (float32 rows sum to 1 only
      // to rounding): (mean_h A[q, :] + e_q) / z
      const mean = new Float64Array(nPos);
      for (let h = 0; h < nHeads; h++) {
        const row = (h * nPos + q) * nPos;
        for (let k = 0; k < nPos; k++) mean[k]! += a[row + k]! / nHeads;
      }
      mean[q]! += 1;
      let z = 0;
      for (let k = 0; k < nPos; k++) z += mean[k]!;
      const w = v[q]! / z;
      for (let k = 0; k < nPos; k++) next[k]! += w * mean[k]!;
    }
    v = next;
  }
  return Array.from(v);
}

export async function heads(model: Model, input: string | PixelBatch, options: HeadsOptions = {}): Promise<HeadsResult> {
  const info = model.info;
  const layers =
    options.layers === undefined ? Array.from({ length: info.nLayers }, (_, i) => i) : checkLayers(options.layers, info.nLayers);
  if (layers.length === 0) throw optionError('layers', 'layers selects no layer');
  const query = resolveQuery(model, options.query);
  const batch = await oneImage(model, input, 'heads');
  const names = layers.map((l) => `blocks.${l}.attn.hook_pattern`);
  const { cache } = await model.run(batch, { cache: names });
  const grid = patchGrid(info);
  const first = firstPatchToken(info);
  const stats: HeadStats[] = [];
  const patterns: HeadsResult['patterns'] = [];
  let nPos = info.nPos;
  for (const [i, l] of layers.entries()) {
    const t = cache.get(names[i]!);
    if (!t || t.shape.length !== 4) throw new PrismaError('E_INTERNAL', `no attention pattern recorded for layer ${l}`);
    const [, h, p] = t.shape as [number, number, number, number];
    nPos = p;
    patterns.push({ layer: l, data: t.data });
    for (let head = 0; head < h; head++) {
      stats.push({ layer: l, head, ...headStats(t.data, head * p * p, p, grid, first, query.token, info.nRegisters) });
    }
  }
  const rollout = attentionRollout(
    patterns.map((x) => x.data),
    info.nHeads,
    nPos,
    query.token,
  );
  return { input: batch.labels[0]!, query, rollout, grid, nPos, layers, heads: stats, patterns };
}
