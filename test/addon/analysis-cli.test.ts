// The analysis commands, spawned: exit codes, --json reports that validate against
// schemas/<command>.schema.json, report.json, and every figure a valid, non-blank PNG (or HTML).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { prisma, requireBuilt } from '../helpers/cli.js';
import { CLS, IMAGES, ODD, checkFigures, image, prismaWithInput, runReport, tmp, validateSchema, type Report } from '../helpers/report.js';

beforeAll(() => requireBuilt());

describe('prisma logit-lens', () => {
  it('a folder, every site: per-layer results and two figures per image', async () => {
    const { doc } = await runReport('logit-lens', [CLS, IMAGES, '--site', 'resid_pre', '--site', 'resid_mid,resid_post', '--top-k', '3']);
    expect(doc.results).toHaveLength(3);
    expect(doc.computed).toBe(3);
    for (const res of doc.results as { layers: { site: string; topK: unknown[]; posTargetLogit: number[] }[]; figures: string[] }[]) {
      expect(res.layers).toHaveLength(2 * 3);
      expect(res.layers.map((l) => l.site).slice(0, 3)).toEqual(['resid_pre', 'resid_mid', 'resid_post']);
      expect(res.layers[0]!.topK).toHaveLength(3);
      expect(res.layers[0]!.posTargetLogit).toHaveLength(17);
      expect(res.figures).toHaveLength(2);
    }
    expect(doc.figures.map((f) => f.path).sort()).toEqual(
      ['astronaut', 'chelsea', 'coffee'].flatMap((n) => [`lens-${n}-patches.png`, `lens-${n}-prob.png`]).sort(),
    );
  });

  it('--target by label on vit-odd; stdin list with -', async () => {
    const labels = (JSON.parse(prisma(['inspect', ODD, '--json']).stdout) as { model: { labels: string[] } }).model.labels;
    const out = tmp();
    const r = prismaWithInput(
      ['logit-lens', ODD, '-', '--target', labels[2]!, '--json', '--out', out],
      `${image('chelsea.jpg')}\n\n${image('coffee.png')}\n`,
    );
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as Report;
    validateSchema('logit-lens', doc);
    expect(doc.inputs).toEqual([image('chelsea.jpg'), image('coffee.png')]);
    for (const res of doc.results as { target: { index: number; label: string }; targetSource: string; layers: unknown[] }[]) {
      expect(res.target).toEqual({ index: 2, label: labels[2] });
      expect(res.targetSource).toBe('given');
      expect(res.layers).toHaveLength(3);
    }
    await checkFigures(out, doc.figures);
  });

  it('human summary without --json', () => {
    const r = prisma(['logit-lens', CLS, image('coffee.png')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/coffee\.png\s+target \S+ \(\d\)/);
    expect(r.stdout).toMatch(/1 done \(1 computed, 0 resumed\), 0 failed/);
  });
});

describe('prisma patch', () => {
  const pair = ['--clean', image('chelsea.jpg'), '--corrupt', image('coffee.png')];

  it('resid_pre by layer,pos, exact and attribution: matrices, correlation, overlays', async () => {
    const { doc } = await runReport('patch', [CLS, ...pair, '--what', 'resid_pre', '--by', 'layer,pos', '--method', 'both']);
    const res = doc.result as {
      exact: { dims: number[]; value: number[]; normalised: number[] };
      attribution: { dims: number[] };
      correlation: number | null;
    };
    expect(res.exact.dims).toEqual([2, 17]);
    expect(res.exact.value).toHaveLength(34);
    expect(res.attribution.dims).toEqual([2, 17]);
    expect(typeof res.correlation).toBe('number');
    expect(doc.figures.map((f) => f.path).sort()).toEqual([
      'patch-attribution-matrix.png',
      'patch-attribution-overlay.png',
      'patch-exact-matrix.png',
      'patch-exact-overlay.png',
      'patch-scatter.png',
    ]);
  });

  it('head_z by layer,head on vit-odd with --layers, --target and --baseline', async () => {
    const { doc } = await runReport('patch', [
      ODD,
      ...pair,
      '--what',
      'head_z',
      '--by',
      'layer,head',
      '--layers',
      '0,2',
      '--target',
      '1',
      '--baseline',
      '3',
    ]);
    const res = doc.result as {
      exact: { dims: number[]; layers: number[] };
      target: { index: number };
      baseline: { index: number };
      metric: string;
    };
    expect(res.exact.dims).toEqual([2, 3]);
    expect(res.exact.layers).toEqual([0, 2]);
    expect(res.target.index).toBe(1);
    expect(res.baseline.index).toBe(3);
    expect(res.metric).toBe('logit_diff');
    expect(doc.figures.map((f) => f.path)).toEqual(['patch-exact-heads.png']);
  });

  it('--fast-linear (oneDNN linears) gives the default values to float rounding, and says so in the report', async () => {
    const args = [CLS, ...pair, '--what', 'head_z', '--by', 'layer,head', '--target', '1', '--baseline', '3'];
    const values = (doc: Report) => (doc.result as { exact: { value: number[] } }).exact.value;
    const plain = await runReport('patch', args);
    const fast = await runReport('patch', [...args, '--fast-linear']);
    expect((plain.doc.options as { fastLinear: boolean }).fastLinear).toBe(false);
    expect((fast.doc.options as { fastLinear: boolean }).fastLinear).toBe(true);
    expect(values(fast.doc)).toHaveLength(8);
    values(fast.doc).forEach((v, i) => {
      expect(Math.abs(v - values(plain.doc)[i]!)).toBeLessThanOrEqual(1e-4);
    });
  });

  it('head_v by layer,pos,head: per-head matrix panels and a summed overlay', async () => {
    const { doc } = await runReport('patch', [CLS, ...pair, '--what', 'head_v', '--by', 'layer,pos,head']);
    const res = doc.result as { exact: { dims: number[] }; figureNotes: string[] };
    expect(res.exact.dims).toEqual([2, 17, 4]);
    expect(res.figureNotes.join(' ')).toMatch(/summed over heads/);
    expect(doc.figures.map((f) => f.path).sort()).toEqual(['patch-exact-matrix.png', 'patch-exact-overlay.png']);
  });
});

describe('prisma heads', () => {
  it('class-token query: stats per head, one PNG per head (--all-heads), a grid and an HTML viewer', async () => {
    const { doc, out } = await runReport('heads', [CLS, image('chelsea.jpg'), '--all-heads']);
    const res = (
      doc.results as {
        heads: { layer: number; head: number; entropy: number; queryAttention: number[]; selfShare: number; meanDistance: number }[];
        figures: string[];
      }[]
    )[0]!;
    expect(res.heads).toHaveLength(8);
    for (const h of res.heads) {
      expect(h.queryAttention.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4);
      expect(h.entropy).toBeGreaterThan(0);
      expect(h.entropy).toBeLessThanOrEqual(Math.log(17) + 1e-6);
      expect(h.meanDistance).toBeGreaterThan(0);
    }
    const paths = doc.figures.map((f) => f.path);
    for (let l = 0; l < 2; l++) for (let h = 0; h < 4; h++) expect(paths).toContain(`heads/chelsea/L${l}H${h}.png`);
    expect(paths).toContain('heads/chelsea/heads-grid.png');
    expect(paths).toContain('heads/chelsea/heads.html');
    const html = readFileSync(join(out, 'heads', 'chelsea', 'heads.html'), 'utf8');
    const data = JSON.parse(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/.exec(html)![1]!) as {
      heads: unknown[];
      nPos: number;
    };
    expect(data.heads).toHaveLength(8);
    expect(data.nPos).toBe(17);
    // the viewer script at least compiles
    const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1]!;
    expect(() => new Function(script)).not.toThrow();
  });

  it('a patch query on vit-odd with --layers', async () => {
    const { doc } = await runReport('heads', [ODD, image('coffee.png'), '--query', '12', '--layers', '1-2']);
    const res = (doc.results as { query: { kind: string; token: number; patch: number }; layers: number[]; heads: unknown[] }[])[0]!;
    expect(res.query).toEqual({ kind: 'patch', token: 13, patch: 12 });
    expect(res.layers).toEqual([1, 2]);
    expect(res.heads).toHaveLength(6);
  });
});

describe('prisma dla', () => {
  it('components add up to the logit; bar chart, head heatmap and top-head overlays', async () => {
    const { doc } = await runReport('dla', [CLS, IMAGES, '--per-position']);
    expect(doc.results).toHaveLength(3);
    for (const res of doc.results as {
      check: { ok: boolean; sumPlusConstant: number; logit: number };
      modelLogit: number;
      headPositions: number[];
    }[]) {
      expect(res.check.ok).toBe(true);
      expect(Math.abs(res.check.sumPlusConstant - res.check.logit)).toBeLessThan(1e-4);
      expect(Math.abs(res.check.sumPlusConstant - res.modelLogit)).toBeLessThan(1e-4);
      expect(res.headPositions).toHaveLength(2 * 4 * 17);
    }
    expect(doc.figures.filter((f) => f.kind === 'dla-top-heads')).toHaveLength(3);
  });

  it('--baseline gives a logit difference', async () => {
    const { doc } = await runReport('dla', [ODD, image('astronaut.png'), '--target', '0', '--baseline', '1']);
    const res = (doc.results as { metric: string; check: { ok: boolean } }[])[0]!;
    expect(res.metric).toBe('logit_diff');
    expect(res.check.ok).toBe(true);
    expect(doc.figures.map((f) => f.kind)).toEqual(['dla-components', 'dla-heads']);
  });
});

describe('prisma ablate', () => {
  it('default: a zero sweep over every head, with a layer x head figure', async () => {
    const { doc } = await runReport('ablate', [CLS, image('chelsea.jpg')]);
    const res = (doc.results as { kind: string; dims: number[]; effects: number[] }[])[0]!;
    expect(res.kind).toBe('sweep');
    expect(res.dims).toEqual([2, 4]);
    expect(doc.figures.map((f) => f.path)).toEqual(['ablate-chelsea-heads.png']);
  });

  it('--sweep heads --fast-linear equals the --ablate run of a head (1e-4) and says so in the report', async () => {
    const sweep = (await runReport('ablate', [ODD, image('chelsea.jpg'), '--sweep', 'heads', '--fast-linear'])).doc;
    const one = (await runReport('ablate', [ODD, image('chelsea.jpg'), '--ablate', 'blocks.1.attn.hook_z[head=2]'])).doc;
    expect((sweep.options as { fastLinear: boolean }).fastLinear).toBe(true);
    const s = (sweep.results as { value: number[]; dims: number[] }[])[0]!;
    const o = (one.results as { after: { value: number } }[])[0]!;
    expect(Math.abs(o.after.value - s.value[1 * s.dims[1]! + 2]!)).toBeLessThan(1e-4);
  });

  it('--ablate one head (zero) equals the sweep entry for that head (1e-4)', async () => {
    const sweep = (await runReport('ablate', [ODD, image('chelsea.jpg'), '--sweep', 'heads'])).doc;
    const one = (await runReport('ablate', [ODD, image('chelsea.jpg'), '--ablate', 'blocks.2.attn.hook_z[head=1]'])).doc;
    const s = (sweep.results as { value: number[]; dims: number[] }[])[0]!;
    const o = (one.results as { kind: string; after: { value: number }; ablations: { hooks: string[] }[] }[])[0]!;
    expect(o.kind).toBe('specs');
    expect(o.ablations[0]!.hooks).toEqual(['blocks.2.attn.hook_z']);
    expect(Math.abs(o.after.value - s.value[2 * s.dims[1]! + 1]!)).toBeLessThan(1e-4);
  });

  it('mean and resample modes with --reference; the resample choice is reported', async () => {
    const mean = (
      await runReport('ablate', [
        CLS,
        image('coffee.png'),
        '--ablate',
        'blocks.*.attn.hook_z[head=0|2]',
        '--mode',
        'mean',
        '--reference',
        IMAGES,
      ])
    ).doc;
    const m = (mean.results as { references: number; ablations: { hooks: string[] }[] }[])[0]!;
    expect(m.references).toBe(3);
    expect(m.ablations[0]!.hooks).toEqual(['blocks.0.attn.hook_z', 'blocks.1.attn.hook_z']);
    const re = (await runReport('ablate', [CLS, image('coffee.png'), '--mode', 'resample', '--reference', IMAGES, '--seed', '7'])).doc;
    const r = (re.results as { resample: { seed: number; index: number; reference: string } }[])[0]!;
    expect(r.resample.seed).toBe(7);
    expect(r.resample.reference).toBe(join(IMAGES, ['astronaut.png', 'chelsea.jpg', 'coffee.png'][r.resample.index]!));
  });
});
