// Attention quantities with one name each (issue 21, item 11): "mean attention to cls" is averaged
// over ALL queries (the chosen query's own is queryAttention[0]); "mean attention to registers" for
// models with registers; attention rollout from the chosen query. Each checked against a naive
// computation on the patterns the model records (model.run with blocks.*.attn.hook_pattern).
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { attentionRollout } from '../../src/analysis/heads.js';
import { runCli } from '../../src/cli/main.js';
import { heads, loadModel, type Model } from '../../src/index.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';
import { memoryIo } from '../helpers/io.js';

const IMAGE = join(FIXTURES, 'images', 'astronaut.png');
let vit: Model;
let reg: Model;

beforeAll(async () => {
  requireBuilt();
  vit = await loadModel(join(FIXTURES, 'models', 'vit-tiny-cls'));
  reg = await loadModel(join(FIXTURES, 'models', 'dinov2-reg-tiny'));
});

async function patterns(model: Model): Promise<Float32Array[]> {
  const names = Array.from({ length: model.info.nLayers }, (_, l) => `blocks.${l}.attn.hook_pattern`);
  const { cache } = await model.run([IMAGE], { cache: names });
  return names.map((n) => cache.get(n)!.data);
}

/** The full rollout matrix, naively: R = Â_L ... Â_1 with Â = rownorm(mean_h A + I). */
function naiveRollout(ps: Float32Array[], H: number, P: number): number[][] {
  let R: number[][] = Array.from({ length: P }, (_, i) => Array.from({ length: P }, (_, j) => (i === j ? 1 : 0)));
  for (const a of ps) {
    const A = Array.from({ length: P }, (_, q) =>
      Array.from({ length: P }, (_, k) => {
        let s = 0;
        for (let h = 0; h < H; h++) s += a[(h * P + q) * P + k]!;
        return s / H + (q === k ? 1 : 0);
      }),
    );
    for (const row of A) {
      const z = row.reduce((x, y) => x + y, 0);
      for (let k = 0; k < P; k++) row[k]! /= z;
    }
    // later layers on the left: R <- A · R
    R = A.map((row) => Array.from({ length: P }, (_, j) => row.reduce((s, v, k) => s + v * R[k]![j]!, 0)));
  }
  return R;
}

describe('attention quantities', () => {
  it('rollout from the class token equals the naive product of the layers (1e-12), and sums to 1', async () => {
    const ps = await patterns(vit);
    const { nHeads: H, nPos: P } = vit.info;
    const naive = naiveRollout(ps, H, P);
    const ours = attentionRollout(ps, H, P, 0);
    for (let k = 0; k < P; k++) expect(Math.abs(ours[k]! - naive[0]![k]!)).toBeLessThan(1e-12);
    expect(ours.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
    const r = await heads(vit, IMAGE);
    expect(r.rollout).toEqual(ours);
  });

  it('mean attention to cls and to registers: averaged over all queries (DINOv2 with 4 registers)', async () => {
    const ps = await patterns(reg);
    const P = reg.info.nPos;
    expect(reg.info.nRegisters).toBe(4);
    const r = await heads(reg, IMAGE);
    for (const s of r.heads) {
      const a = ps[s.layer]!;
      let cls = 0;
      let regs = 0;
      for (let q = 0; q < P; q++) {
        const row = (s.head * P + q) * P;
        cls += a[row]!;
        for (let t = 1; t <= 4; t++) regs += a[row + t]!;
      }
      expect(s.clsAttention).toBeCloseTo(cls / P, 6);
      expect(s.registerAttention).toBeCloseTo(regs / P, 6);
      // not the chosen query's own attention to cls
      expect(s.queryAttention[0]).toBeCloseTo(a[s.head * P * P]!, 6);
    }
    const plain = await heads(vit, IMAGE);
    for (const s of plain.heads) expect(s.registerAttention).toBeNull();
  });

  it('the terminal summary names them mean->cls and mean->reg', async () => {
    const io = memoryIo();
    expect(await runCli(['heads', join(FIXTURES, 'models', 'dinov2-reg-tiny'), IMAGE], io)).toBe(0);
    expect(io.out()).toMatch(/^ {2}head +entropy +mean-ent +mean->cls +mean->reg +distance +self$/m);
  });
});
