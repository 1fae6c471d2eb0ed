// Invariants of the analysis functions through the library API, each checked against an
// independent computation (an ordinary forward with model.run).
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import {
  ablate,
  ablateSweep,
  dla,
  heads,
  loadModel,
  logitLens,
  patch,
  softmax,
  type Model,
  type PatchBy,
  type PatchWhat,
  type PixelBatch,
} from '../../src/index.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';

const image = (name: string) => join(FIXTURES, 'images', name);
const IMAGES = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map(image);

let cls: Model;
let odd: Model;
let clsBatch: PixelBatch;
let oddBatch: PixelBatch;

function row(batch: PixelBatch, i: number): PixelBatch {
  const n = batch.data.length / batch.shape[0];
  return {
    data: batch.data.slice(i * n, (i + 1) * n),
    shape: [1, batch.shape[1], batch.shape[2], batch.shape[3]],
    labels: [batch.labels[i]!],
  };
}

async function logitsOf(model: Model, batch: PixelBatch): Promise<Float32Array[]> {
  const { output } = await model.run(batch);
  const n = output.shape[1]!;
  return Array.from({ length: output.shape[0]! }, (_, b) => output.data.slice(b * n, (b + 1) * n));
}

beforeAll(async () => {
  requireBuilt();
  cls = await loadModel(join(FIXTURES, 'models', 'vit-tiny-cls'));
  odd = await loadModel(join(FIXTURES, 'models', 'vit-odd'));
  clsBatch = await cls.loadInputs(IMAGES);
  oddBatch = await odd.loadInputs(IMAGES);
});

describe('logitLens', () => {
  it.each(['cls', 'odd'])('%s: the last layer resid_post at the class token equals model.run logits (1e-4)', async (which) => {
    const model = which === 'cls' ? cls : odd;
    const batch = which === 'cls' ? clsBatch : oddBatch;
    const n = model.info.nClasses;
    const lens = await logitLens(model, batch, { sites: ['resid_pre', 'resid_post'], topK: n });
    const logits = await logitsOf(model, batch);
    expect(lens).toHaveLength(3);
    lens.forEach((img, b) => {
      const last = img.layers.find((l) => l.layer === model.info.nLayers - 1 && l.site === 'resid_post')!;
      expect(last.topK).toHaveLength(n);
      const probs = softmax(logits[b]!);
      for (const t of last.topK) {
        expect(Math.abs(t.logit - logits[b]![t.index]!)).toBeLessThan(1e-4);
        expect(Math.abs(t.prob - probs[t.index]!)).toBeLessThan(1e-5);
      }
      // default target = own top-1, at rank 0 in the last layer
      let top = 0;
      for (let i = 1; i < n; i++) if (logits[b]![i]! > logits[b]![top]!) top = i;
      expect(img.target.index).toBe(top);
      expect(last.targetRank).toBe(0);
      expect(Math.abs(last.targetLogit - logits[b]![top]!)).toBeLessThan(1e-4);
      expect(last.posTargetLogit[0]).toBeCloseTo(last.targetLogit, 4);
      // resid_pre of layer l+1 is resid_post of layer l
      for (let l = 0; l + 1 < model.info.nLayers; l++) {
        const post = img.layers.find((x) => x.layer === l && x.site === 'resid_post')!;
        const pre = img.layers.find((x) => x.layer === l + 1 && x.site === 'resid_pre')!;
        expect(pre.targetLogit).toBeCloseTo(post.targetLogit, 4);
      }
    });
  });

  it('resolves a label as target', async () => {
    const [r] = await logitLens(cls, row(clsBatch, 0), { target: cls.info.labels[2]! });
    expect(r!.target).toEqual({ index: 2, label: cls.info.labels[2] });
  });
});

describe('patch', () => {
  const combos: [PatchWhat, PatchBy][] = [
    ['resid_pre', 'layer_pos'],
    ['resid_mid', 'layer_pos'],
    ['attn_out', 'layer_pos'],
    ['mlp_out', 'layer_pos'],
    ['head_z', 'layer_head'],
    ['head_q', 'layer_pos_head'],
    ['head_pattern', 'layer_head'],
  ];
  it.each(combos)('clean -> clean (%s by %s): every value equals the clean metric (1e-5)', async (what, by) => {
    const img = row(oddBatch, 1);
    const r = await patch(odd, img, img, { what, by, method: 'both', baseline: 0 });
    const clean = r.clean.metric.value;
    // The two runs are rows of one batch; MKL's kernels may round a row differently by where it
    // sits in memory, so "the same metric" holds to float rounding, as for the patched values.
    expect(Math.abs(r.corrupt.metric.value - clean)).toBeLessThan(1e-5);
    for (const v of r.exact!.value) expect(Math.abs(v - clean)).toBeLessThan(1e-5);
    for (const v of r.attribution!.value) expect(Math.abs(v - clean)).toBeLessThan(1e-5);
    const logits = (await logitsOf(odd, img))[0]!;
    expect(Math.abs(clean - (logits[r.target.index]! - logits[0]!))).toBeLessThan(1e-4);
  });

  it('default target and baseline: clean top-1, and corrupt top-1 when different', async () => {
    const clean = row(clsBatch, 0);
    const corrupt = row(clsBatch, 1);
    const [lc, lk] = [(await logitsOf(cls, clean))[0]!, (await logitsOf(cls, corrupt))[0]!];
    const top = (l: Float32Array) => l.indexOf(Math.max(...l));
    const r = await patch(cls, clean, corrupt, { what: 'resid_pre', by: 'layer_pos' });
    expect(r.target.index).toBe(top(lc));
    if (top(lk) !== top(lc)) expect(r.baseline?.index).toBe(top(lk));
    else expect(r.baseline).toBeNull();
    // one value per (layer, position), each normalised as (value - corrupt) / (clean - corrupt), so that the
    // corrupt run is 0 and the clean run 1
    expect(r.exact!.value).toHaveLength(2 * 17);
    expect(r.exact!.normalised).toHaveLength(2 * 17);
    const [c, k] = [r.clean.metric.value, r.corrupt.metric.value];
    r.exact!.value.forEach((v, i) => {
      expect(Math.abs(r.exact!.normalised[i]! - (v - k) / (c - k))).toBeLessThan(1e-9);
    });
  });
});

describe('dla', () => {
  it.each([0, 1, 2])('image %i: sum of components + constant == logit == model.run logit (1e-4)', async (i) => {
    const img = row(oddBatch, i);
    const logits = (await logitsOf(odd, img))[0]!;
    for (const opts of [{}, { target: 3, baseline: 5 }] as const) {
      const r = await dla(odd, img, { ...opts, perPosition: true });
      const fromRun = logits[r.target.index]! - (r.baseline ? logits[r.baseline.index]! : 0);
      expect(Math.abs(r.sumOfComponents + r.constant - r.logit)).toBeLessThan(1e-4);
      expect(Math.abs(r.sumOfComponents + r.constant - fromRun)).toBeLessThan(1e-4);
      expect(r.components.reduce((a, c) => a + c.value, 0)).toBeCloseTo(r.sumOfComponents, 6);
      // per-position splits add up to each head's total
      const nPos = odd.info.nPos;
      expect(r.heads).toHaveLength(odd.info.nLayers * odd.info.nHeads);
      r.heads.forEach((h, k) => {
        const s = r.headPositions!.slice(k * nPos, (k + 1) * nPos).reduce((a, b) => a + b, 0);
        expect(Math.abs(s - h)).toBeLessThan(1e-4);
      });
    }
  });
});

describe('ablate', () => {
  it.each(['zero', 'mean', 'resample'] as const)('%s: one head through --ablate equals the sweep entry (1e-4)', async (mode) => {
    const img = row(oddBatch, 0);
    const common = { mode, seed: 5, ...(mode === 'zero' ? {} : { references: IMAGES }) };
    const sweep = await ablateSweep(odd, img, common);
    const [nL, nH] = sweep.dims as [number, number];
    expect([nL, nH]).toEqual([3, 3]);
    for (const [l, h] of [
      [0, 0],
      [1, 2],
      [2, 1],
    ] as const) {
      const one = await ablate(odd, img, { ...common, ablate: [`blocks.${l}.attn.hook_z[head=${h}]`] });
      expect(Math.abs(one.before.value - sweep.before.value)).toBeLessThan(1e-5);
      expect(Math.abs(one.after.value - sweep.value[l * nH + h]!)).toBeLessThan(1e-4);
      if (mode === 'resample') expect(one.resample).toEqual(sweep.resample);
    }
  });

  it('mean over 130 references, read in batches, is the mean over the two images they repeat (1e-5)', async () => {
    const img = row(oddBatch, 0);
    const [a, b] = [row(oddBatch, 1), row(oddBatch, 2)];
    const n = a.data.length;
    const many = new Float32Array(130 * n);
    for (let i = 0; i < 130; i++) many.set((i % 2 === 0 ? a : b).data, i * n);
    const references: PixelBatch = {
      data: many,
      shape: [130, ...a.shape.slice(1)] as PixelBatch['shape'],
      labels: Array.from({ length: 130 }, (_, i) => `r${i}`),
    };
    const pair: PixelBatch = {
      data: Float32Array.from([...a.data, ...b.data]),
      shape: [2, ...a.shape.slice(1)] as PixelBatch['shape'],
      labels: ['a', 'b'],
    };
    const spec = { mode: 'mean' as const, ablate: ['blocks.1.attn.hook_z[head=2]', 'blocks.0.hook_mlp_out'] };
    const overMany = await ablate(odd, img, { ...spec, references });
    const overPair = await ablate(odd, img, { ...spec, references: pair });
    expect(overMany.references).toBe(130);
    expect(Math.abs(overMany.after.value - overPair.after.value)).toBeLessThan(1e-5);
    expect(Math.abs(overMany.after.value - overMany.before.value)).toBeGreaterThan(1e-4);
    const sweepMany = await ablateSweep(odd, img, { mode: 'mean', references });
    const sweepPair = await ablateSweep(odd, img, { mode: 'mean', references: pair });
    expect(sweepMany.value).toHaveLength(3 * 3);
    expect(sweepPair.value).toHaveLength(3 * 3);
    sweepMany.value.forEach((v, i) => {
      expect(Math.abs(v - sweepPair.value[i]!)).toBeLessThan(1e-5);
    });
  });

  it('zeroing every head of the last layer equals an intervention run', async () => {
    const img = row(clsBatch, 2);
    const a = await ablate(cls, img, { ablate: ['blocks.1.attn.hook_z'] });
    const { output } = await cls.run(img, { interventions: [{ hook: 'blocks.1.attn.hook_z', action: 'zero' }] });
    expect(Math.abs(a.after.value - output.data[a.target.index]!)).toBeLessThan(1e-5);
  });
});

describe('heads', () => {
  it('statistics agree with a direct reading of hook_pattern', async () => {
    const img = row(oddBatch, 2);
    const r = await heads(odd, img, { query: 4 });
    const { cache } = await odd.run(img, { cache: ['blocks.*.attn.hook_pattern'] });
    const nPos = odd.info.nPos;
    expect(r.heads).toHaveLength(odd.info.nLayers * odd.info.nHeads);
    for (const s of r.heads) {
      const p = cache.get(`blocks.${s.layer}.attn.hook_pattern`)!.data;
      const o = s.head * nPos * nPos;
      const q = 1 + 4;
      const rowq = Array.from(p.subarray(o + q * nPos, o + (q + 1) * nPos));
      expect(s.queryAttention.map((v, i) => Math.abs(v - rowq[i]!)).every((d) => d < 1e-7)).toBe(true);
      let ent = 0;
      for (const v of rowq) if (v > 0) ent -= v * Math.log(v);
      expect(s.entropy).toBeCloseTo(ent, 6);
      let cls0 = 0;
      let self = 0;
      for (let t = 0; t < nPos; t++) {
        cls0 += p[o + t * nPos]!;
        self += p[o + t * nPos + t]!;
      }
      expect(s.clsAttention).toBeCloseTo(cls0 / nPos, 6);
      expect(s.selfShare).toBeCloseTo(self / nPos, 6);
      expect(s.meanDistance).toBeGreaterThan(0);
      expect(s.meanDistance).toBeLessThan(Math.hypot(4, 4));
    }
  });
});
