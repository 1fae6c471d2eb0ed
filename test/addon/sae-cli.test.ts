// Sparse autoencoders through the binding, the library and the CLI (issue 16, items 1, 2 and the
// bad inputs): `prisma sae convert` / `inspect`, `--sae DIR[@HOOK]` and `--sae-error-term` on
// `prisma run` and the analysis commands, sub-hooks cached and edited. Expected values come from
// fixtures/reference/sae.safetensors (sae-lens 6.54.12 + transformers, and ViT-Prisma's / saev's
// forward math, via fixtures/make_sae_fixtures.py) on vit-tiny-cls's three reference images, or
// from a naive decode written here.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { convertSae, loadModel, loadSae, type Model } from '../../src/index.js';
import { FIXTURES, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';
import { absDiff, readSafetensors, type StTensor } from '../helpers/safetensors.js';

const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const PIXELS = join(FIXTURES, 'reference', 'vit-tiny-cls.safetensors');
const IMAGE = join(FIXTURES, 'images', 'chelsea.jpg');
const SAE = (rel: string) => join(FIXTURES, 'sae', rel);
const REF = readSafetensors(join(FIXTURES, 'reference', 'sae.safetensors')).tensors;
const PLAIN = readSafetensors(PIXELS).tensors;
const ref = (name: string): StTensor => {
  const t = REF.get(name);
  if (!t) throw new Error(`no reference ${name}`);
  return t;
};
const HOOK = 'blocks.1.hook_resid_post';
const TOL = 1e-5;

const tmp = mkdtempSync(join(tmpdir(), 'prisma-sae-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let model: Model;
beforeAll(async () => {
  requireBuilt();
  model = await loadModel(MODEL);
});

async function pixels() {
  return model.loadInputs([PIXELS]);
}

describe('library: loadSae + RunOptions.saes', () => {
  // Every SAELens fixture in float32: the spliced model's logits equal sae-lens + transformers.
  it.each([
    'standard',
    'standard-no-bdec',
    'standard-layer-norm',
    'standard-constant-norm',
    'standard-cls',
    'standard-expected-average',
    'gated',
    'topk',
    'topk-rescale',
    'jumprelu',
    'batchtopk',
    'pre6-topk',
  ])('%s: spliced logits equal the reference', async (name) => {
    const sae = await loadSae(SAE(`saelens/${name}`));
    const out = await model.run(await pixels(), { saes: [sae] });
    expect(out.output.shape).toEqual([3, 5]);
    expect(absDiff(out.output.data, ref(`${name}.logits`).data).max).toBeLessThanOrEqual(TOL);
  });

  it('info says what was read; a hook override moves it', async () => {
    const sae = await loadSae(SAE('saelens/topk'));
    expect(sae.info).toMatchObject({ format: 'saelens', architecture: 'topk', k: 6, dIn: 32, dSae: 64, hookName: HOOK, tokens: 'all' });
    const cls = await loadSae(SAE('vit-prisma/topk-cls'));
    expect(cls.info).toMatchObject({ format: 'vit-prisma', tokens: 'cls', hookName: HOOK });
    const moved = await loadSae(SAE('saelens/topk'), { hook: 'blocks.0.hook_resid_post', tokens: 'patches' });
    expect(moved.info).toMatchObject({ hookName: 'blocks.0.hook_resid_post', tokens: 'patches' });
  });

  it('Model.splice: sub-hooks join the hook points, analyses refuse with E_UNSUPPORTED, clearSplices undoes it', async () => {
    const m = await loadModel(MODEL);
    m.splice(await loadSae(SAE('saelens/topk')), { errorTerm: true });
    const names = m.hookNames();
    const subs = names.filter((n) => n.startsWith(`${HOOK}.`));
    expect(subs).toEqual(['input', 'acts_pre', 'acts_post', 'recons', 'error', 'output'].map((s) => `${HOOK}.hook_sae_${s}`));
    expect(m.hookShapes(2).find((h) => h.name === `${HOOK}.hook_sae_acts_post`)!.shape).toEqual([2, 17, 64]);
    await expect(m.native.dla((await pixels()).data.subarray(0, 3 * 32 * 32), [1, 3, 32, 32], { target: 0 })).rejects.toMatchObject({
      code: 'E_UNSUPPORTED',
    });
    m.clearSplices();
    expect(m.hookNames().some((n) => n.includes('hook_sae'))).toBe(false);
  });
});

describe('prisma sae convert / inspect', () => {
  // Each imported format, converted, then spliced from the SAELens folder by `prisma run --sae`:
  // the logits equal its source library's forward.
  it.each([
    ['prisma-topk-cls', 'vit-prisma/topk-cls', []],
    ['prisma-legacy-standard', 'vit-prisma/legacy-standard.pt', []],
    ['prisma-legacy-gated', 'vit-prisma/legacy-gated.pkl.gz', []],
    ['saev-topk', 'saev/topk/sae.pt', ['--hook', HOOK]],
    ['saev-batchtopk', 'saev/batchtopk', ['--hook', HOOK]],
  ])('%s: converted folder, spliced by the CLI, gives the reference logits', (name, src, extra) => {
    const dst = join(tmp, `conv-${name}`);
    const c = prisma(['sae', 'convert', SAE(src), dst, ...extra, '--json']);
    expect(c.stderr).toBe('');
    expect(c.code).toBe(0);
    expect(JSON.parse(c.stdout)).toMatchObject({ ok: true, dst, written: ['cfg.json', 'sae_weights.safetensors'] });
    expect(readdirSync(dst).sort()).toEqual(['cfg.json', 'sae_weights.safetensors']);
    const out = join(tmp, `run-${name}.safetensors`);
    const r = prisma(['run', MODEL, PIXELS, '--sae', dst, '--out', out, '--json']);
    expect(r.code).toBe(0);
    const logits = readSafetensors(out).tensors.get('hook_logits')!;
    expect(absDiff(logits.data, ref(`${name}.logits`).data).max).toBeLessThanOrEqual(TOL);
  });

  it('inspect prints what an SAE is; --json gives the same as loadSae', async () => {
    const r = prisma(['sae', 'inspect', SAE('vit-prisma/topk-cls')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/architecture\s+topk \(k = /);
    expect(r.stdout).toMatch(/tokens\s+the class token only/);
    const j = prisma(['sae', 'inspect', SAE('saelens/gated'), '--json']);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout).sae).toEqual((await loadSae(SAE('saelens/gated'))).info);
  });

  it('library convertSae equals the CLI', async () => {
    const a = join(tmp, 'lib-conv');
    const info = await convertSae(SAE('vit-prisma/legacy-standard.pt'), a);
    expect(info).toMatchObject({ format: 'vit-prisma', tokens: 'patches', hookName: 'blocks.0.hook_mlp_out' });
    const b = join(tmp, 'cli-conv');
    expect(prisma(['sae', 'convert', SAE('vit-prisma/legacy-standard.pt'), b]).code).toBe(0);
    const wa = readSafetensors(join(a, 'sae_weights.safetensors')).tensors;
    const wb = readSafetensors(join(b, 'sae_weights.safetensors')).tensors;
    expect([...wa.keys()].sort()).toEqual([...wb.keys()].sort());
    for (const [k, t] of wa) expect(absDiff(t.data, wb.get(k)!.data).max).toBe(0);
  });
});

describe('--sae on prisma run', () => {
  it('--sae-error-term: the output equals the unspliced model; sub-hooks are cached with the reference values', () => {
    const out = join(tmp, 'err.safetensors');
    const r = prisma([
      'run',
      MODEL,
      PIXELS,
      '--sae',
      SAE('saelens/topk'),
      '--sae-error-term',
      '--cache',
      `${HOOK}.hook_sae_*`,
      '--out',
      out,
    ]);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.cached).toEqual(['input', 'acts_pre', 'acts_post', 'recons', 'error', 'output'].map((s) => `${HOOK}.hook_sae_${s}`));
    expect(summary.saes).toEqual([
      { path: SAE('saelens/topk'), hook: HOOK, tokens: 'all', architecture: 'topk', dIn: 32, dSae: 64, errorTerm: true },
    ]);
    const t = readSafetensors(out).tensors;
    expect(absDiff(t.get('hook_logits')!.data, PLAIN.get('hook_logits')!.data).max).toBeLessThanOrEqual(TOL);
    for (const sub of ['hook_sae_acts_pre', 'hook_sae_acts_post', 'hook_sae_recons', 'hook_sae_error']) {
      const got = t.get(`${HOOK}.${sub}`)!;
      expect(got.shape, sub).toEqual(ref(`topk.${sub}`).shape);
      expect(absDiff(got.data, ref(`topk.${sub}`).data).max, sub).toBeLessThanOrEqual(TOL);
    }
  });

  it('@HOOK places an SAE; an SAE trained on the class token is spliced there only, and the run says so', () => {
    const r = prisma(['run', MODEL, PIXELS, '--sae', `${SAE('saelens/standard-cls')}@${HOOK}`, '--out', join(tmp, 'cls.safetensors')]);
    expect(r.code).toBe(0);
    expect(stderrLines(r)).toContain(
      `prisma: note: the SAE ${SAE('saelens/standard-cls')} was trained on the class token only and is spliced there only`,
    );
    expect(JSON.parse(r.stdout).saes[0]).toMatchObject({ hook: HOOK, tokens: 'cls' });
    const logits = readSafetensors(join(tmp, 'cls.safetensors')).tensors.get('hook_logits')!;
    expect(absDiff(logits.data, ref('standard-cls.logits').data).max).toBeLessThanOrEqual(TOL);
  });

  it('feature edits (zero, scale) change the output as a naive decode of the edited features says', async () => {
    const m = await loadModel(MODEL);
    m.splice(await loadSae(SAE('saelens/topk')));
    const batch = await pixels();
    const acts = ref('topk.hook_sae_acts_post'); // [3, 17, 64]
    const w = readSafetensors(SAE('saelens/topk/sae_weights.safetensors')).tensors;
    const wDec = w.get('W_dec')!.data; // [64, 32]
    const bDec = w.get('b_dec')!.data;
    // The same features edited by hand, decoded in float64, and set at the hook of an unspliced run.
    const decoded = (edit: (f: number, v: number) => number) => {
      const out = new Float32Array(3 * 17 * 32);
      for (let row = 0; row < 3 * 17; row++)
        for (let d = 0; d < 32; d++) {
          let s = bDec[d]!;
          for (let f = 0; f < 64; f++) s += edit(f, acts.data[row * 64 + f]!) * wDec[f * 32 + d]!;
          out[row * 32 + d] = s;
        }
      return out;
    };
    const plain = await loadModel(MODEL);
    // The three features that fire most often, so each edit has something to change.
    const fired = Array.from({ length: 64 }, (_, f) => [f, 0] as [number, number]);
    for (let i = 0; i < acts.data.length; i++) if (acts.data[i] !== 0) fired[i % 64]![1]++;
    const features = fired
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3)
      .map(([f]) => f);
    const zeroed: Float32Array[] = [];
    for (const [action, edit] of [
      [{ action: 'zero' as const }, (f: number, v: number) => (features.includes(f) ? 0 : v)],
      [{ action: 'scale' as const, factor: 2.5 }, (f: number, v: number) => (features.includes(f) ? 2.5 * v : v)],
    ] as const) {
      const got = await m.run(batch, { interventions: [{ hook: `${HOOK}.hook_sae_acts_post`, select: { feature: features }, ...action }] });
      const want = await plain.run(batch, {
        interventions: [{ hook: HOOK, action: 'set', tensor: { shape: [3, 17, 32], data: decoded(edit) } }],
      });
      expect(absDiff(got.output.data, want.output.data).max, action.action).toBeLessThanOrEqual(TOL);
      expect(absDiff(got.output.data, ref('topk.logits').data).max, action.action).toBeGreaterThan(1e-3);
      if (action.action === 'zero') zeroed.push(got.output.data);
    }
    // The CLI spelling: ablate zeroes the features of the spliced SAE; its 'after' is the zeroed
    // run's logit of each image's own top-1 class (of the spliced model).
    const r = prisma([
      'ablate',
      MODEL,
      PIXELS,
      '--sae',
      SAE('saelens/topk'),
      '--ablate',
      `${HOOK}.hook_sae_acts_post[feature=${features.join('|')}]`,
      '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const results = JSON.parse(r.stdout).results as { after: { value: number }; target: { index: number } }[];
    expect(results).toHaveLength(3);
    const spliced = ref('topk.logits').data;
    results.forEach(({ after, target }, i) => {
      const row = Array.from(spliced.subarray(i * 5, i * 5 + 5));
      expect(target.index).toBe(row.indexOf(Math.max(...row)));
      expect(Math.abs(after.value - zeroed[0]![i * 5 + target.index]!)).toBeLessThanOrEqual(TOL);
    });
  });
});

describe('prisma sae eval', () => {
  // fixtures/make_sae_metrics_reference.py: plain numpy over the topk SAE's values on the three
  // reference images (labels 0, 1, 2), with transformers' logits for the downstream quantities.
  const NP = JSON.parse(readFileSync(join(FIXTURES, 'reference', 'sae-metrics.json'), 'utf8')) as Record<string, unknown>;
  const close = (name: string, got: number | null, want: unknown) => {
    expect(typeof want, name).toBe('number');
    expect(got, name).not.toBeNull();
    expect(Math.abs(got! - (want as number)) / Math.max(1, Math.abs(want as number)), name).toBeLessThanOrEqual(1e-6);
  };

  it.each([
    ['--targets 0,1,2', ['--targets', '0,1,2'], 'downstream_labels', 'labels'],
    ['no targets', [], 'downstream_clean_prediction', 'clean prediction'],
  ])('%s: report.json equals numpy; log-density.png; the summary', (_what, extra, key, target) => {
    const out = join(tmp, `eval-${key}`);
    const r = prisma(['sae', 'eval', MODEL, SAE('saelens/topk'), PIXELS, '--out', out, ...extra]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const rep = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'));
    const m = rep.metrics.reconstruction;
    expect([m.images, m.tokens]).toEqual([3, 51]);
    for (const [k, np] of [
      ['l0PerToken', 'l0_per_token'],
      ['l0ClassToken', 'l0_class_token'],
      ['l0PerImage', 'l0_per_image'],
      ['l1PerToken', 'l1_per_token'],
      ['explainedVariance', 'explained_variance'],
      ['fvu', 'fvu'],
      ['mse', 'mse'],
      ['cosineSimilarity', 'cosine_similarity'],
    ] as const)
      close(k, m[k], NP[np]);
    expect(absDiff(m.featureDensity, NP.feature_density as number[]).max).toBeLessThanOrEqual(1e-12);
    expect([m.dead, m.almostDead, m.dense]).toEqual([NP.dead, NP.almost_dead, NP.dense]);
    expect(m.logDensityCounts).toEqual(NP.log_density_counts);
    const d = rep.metrics.downstream;
    const ref = NP[key] as Record<string, number>;
    expect(d.ceTarget).toBe(target);
    close('ceClean', d.ceClean, ref.ce_clean);
    close('ceSpliced', d.ceSpliced, ref.ce_spliced);
    close('ceZeroAblation', d.ceZeroAblation, ref.ce_zero);
    close('ceMeanAblation', d.ceMeanAblation, ref.ce_mean);
    close('ceRecoveredZero', d.ceRecoveredZero, ref.ce_recovered_zero);
    close('ceRecoveredMean', d.ceRecoveredMean, ref.ce_recovered_mean);
    close('klSpliced', d.klSpliced, NP.kl_spliced);
    close('klZeroAblation', d.klZeroAblation, NP.kl_zero);
    close('klMeanAblation', d.klMeanAblation, NP.kl_mean);
    close('klRecoveredZero', d.klRecoveredZero, NP.kl_recovered_zero);
    close('klRecoveredMean', d.klRecoveredMean, NP.kl_recovered_mean);
    close('top1Agreement', d.top1Agreement, NP.top1_agreement);
    if (target === 'labels') {
      close('accuracyClean', d.accuracyClean, NP.accuracy_clean);
      close('accuracySpliced', d.accuracySpliced, NP.accuracy_spliced);
    } else expect(d.accuracyClean).toBeNull();
    expect(rep.figures).toEqual([expect.objectContaining({ path: 'log-density.png', format: 'png' })]);
    expect(readFileSync(join(out, 'log-density.png')).subarray(1, 4).toString()).toBe('PNG');
    expect(r.stdout).toContain(`explained variance ${Number(m.explainedVariance.toPrecision(4))}`);
    expect(r.stdout).toContain(`CE against ${target}`);
  });

  it('an SAE whose d_in does not match: one E_SHAPE line, no report', () => {
    const out = join(tmp, 'eval-bad');
    const r = prisma(['sae', 'eval', MODEL, SAE('bad/wrong-d-in'), PIXELS, '--out', out]);
    expect(r.code).toBe(1);
    expect(stderrLines(r)[0]).toMatch(/^prisma: E_SHAPE: /);
    expect(existsSync(join(out, 'report.json'))).toBe(false);
  });
});

describe('bad input: one line, its code, non-zero exit, nothing written', () => {
  const one = (r: { code: number | null; stderr: string; stdout: string }, code: string) => {
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    const lines = stderrLines(r).filter((l) => !l.startsWith('hint: '));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^prisma: ${code}: `));
    return lines[0]!;
  };

  it('an SAE whose d_in does not match the hook', () => {
    const out = join(tmp, 'wide.safetensors');
    const line = one(prisma(['run', MODEL, IMAGE, '--sae', SAE('bad/wrong-d-in'), '--out', out]), 'E_SHAPE');
    expect(line).toContain('48');
    expect(existsSync(out)).toBe(false);
  });

  it.each([
    ['an unknown architecture', 'bad/unknown-arch', 'E_CONFIG', 'hypersparse'],
    ['truncated weights', 'bad/truncated', 'E_WEIGHTS_FORMAT', 'sae_weights.safetensors'],
    ['a pickle that would run code (torch.save zip)', 'bad/runs-code.pt', 'E_UNSAFE_PICKLE', 'system'],
    ['a pickle that would run code (plain pickle)', 'bad/runs-code.pkl', 'E_UNSAFE_PICKLE', 'system'],
  ])('convert: %s', (_what, src, code, mentions) => {
    const dst = join(tmp, `bad-${src.replace(/\W/g, '-')}`);
    const r = prisma(['sae', 'convert', SAE(src), dst]);
    expect(one(r, code)).toContain(mentions);
    expect(r.stdout).not.toContain('this pickle ran code');
    expect(existsSync(dst)).toBe(false);
  });

  it('a hook the model lacks', () => {
    one(prisma(['run', MODEL, IMAGE, '--sae', SAE('bad/missing-hook')]), 'E_LAYER_RANGE');
    one(prisma(['run', MODEL, IMAGE, '--sae', `${SAE('saelens/topk')}@blocks.1.hook_nothing`]), 'E_UNKNOWN_HOOK');
  });

  it('analyses that run their own forwards refuse a spliced model up front', () => {
    for (const cmd of ['logit-lens', 'dla']) {
      const out = join(tmp, `refused-${cmd}`);
      expect(one(prisma([cmd, MODEL, IMAGE, '--sae', SAE('saelens/topk'), '--out', out]), 'E_UNSUPPORTED')).toContain('--sae');
      expect(existsSync(join(out, 'report.json'))).toBe(false);
    }
    one(
      prisma([
        'patch',
        MODEL,
        '--clean',
        IMAGE,
        '--corrupt',
        IMAGE,
        '--what',
        'resid_pre',
        '--by',
        'layer,pos',
        '--sae',
        SAE('saelens/topk'),
      ]),
      'E_UNSUPPORTED',
    );
  });

  it('a DST that holds other files is refused unless --force', () => {
    const dst = join(tmp, 'occupied');
    expect(prisma(['sae', 'convert', SAE('saelens/topk'), dst]).code).toBe(0);
    one(prisma(['sae', 'convert', SAE('saelens/gated'), dst]), 'E_IO');
    expect(prisma(['sae', 'convert', SAE('saelens/gated'), dst, '--force']).code).toBe(0);
  });
});
