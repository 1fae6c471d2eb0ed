// The model families from the CLI: `prisma inspect` names family and format, `prisma run` works on
// every family fixture, `prisma classify` reproduces the reference zero-shot probabilities, and the
// techniques (logit-lens, patch, heads, dla) run on the CLIP, DINOv2-with-registers and video
// fixtures with schema-valid reports. Reference numbers come from fixtures/reference (transformers,
// open_clip, timm), never from this code.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { seededRandom } from '../../src/analysis/common.js';
import { saveTensors } from '../../src/index.js';
import { FIXTURES, prisma, requireBuilt } from '../helpers/cli.js';
import { image, model, runReport, tmp } from '../helpers/report.js';
import { absDiff, readSafetensors } from '../helpers/safetensors.js';

beforeAll(() => requireBuilt());

const ref = (name: string) => join(FIXTURES, 'reference', `${name}.safetensors`);
const CLIP_LABELS = ['--labels', 'a cat,a dog,coffee,a person', '--template', 'a photo of {}.'];
const VIDEO = join(FIXTURES, 'video');

interface InspectJson {
  model: {
    family: string;
    sourceFormat: string;
    nRegisters?: number;
    numFrames?: number;
    hasTextTower?: boolean;
    nClasses: number;
    labels: string[];
  };
  hooks: { name: string; shape: number[] }[];
}

const FAMILIES: [string, string, string][] = [
  ['clip-tiny', 'clip', 'hf'],
  ['openclip-tiny', 'open_clip', 'open_clip'],
  ['timm-vit-tiny', 'timm', 'timm'],
  ['timm-vit-gap', 'timm', 'timm'],
  ['dinov2-reg-tiny', 'dinov2', 'hf'],
  ['dinov2-swiglu-tiny', 'dinov2', 'hf'],
  ['videomae-tiny', 'videomae', 'hf'],
  ['vivit-tiny', 'vivit', 'hf'],
];

describe('prisma inspect and run on every family', () => {
  it.each(
    FAMILIES,
  )('%s: inspect names family %s and format %s; run on its reference pixels gives the reference output', (name, family, format) => {
    const r = prisma(['inspect', model(name), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as InspectJson;
    expect(doc.model.family).toBe(family);
    expect(doc.model.sourceFormat).toBe(format);
    const human = prisma(['inspect', model(name)]);
    expect(human.stdout).toMatch(new RegExp(`family\\s+${family}`));
    if (family === 'clip' || family === 'open_clip') expect(doc.hooks.some((h) => h.name === 'text.blocks.1.hook_resid_post')).toBe(true);
    if (name === 'dinov2-reg-tiny') expect(doc.model.nRegisters).toBe(4);
    if (family === 'videomae' || family === 'vivit') expect(doc.model.numFrames).toBe(4);

    // run on the reference pixel_values; compare the final norm output with the reference library's.
    const out = join(tmp(), 'acts.safetensors');
    const run = prisma([
      'run',
      model(name),
      ref(name),
      '--input-key',
      'pixel_values',
      '--cache',
      'ln_final.hook_normalized',
      '--out',
      out,
      ...(family.includes('clip') ? CLIP_LABELS : []),
    ]);
    expect(run.code, run.stderr).toBe(0);
    const ours = readSafetensors(out).tensors.get('ln_final.hook_normalized')!;
    const expected = readSafetensors(ref(name)).tensors.get('ln_final.hook_normalized')!;
    expect(ours.shape).toEqual(expected.shape);
    expect(absDiff(ours.data, expected.data).max).toBeLessThan(1e-4);
  });

  it('a Swin folder is refused in one line that lists the supported families', () => {
    const r = prisma(['inspect', join(FIXTURES, 'bad', 'swin-model')]);
    expect(r.code).not.toBe(0);
    const first = r.stderr.split('\n')[0]!;
    expect(first).toMatch(/unsupported model.*SwinForImageClassification/);
    for (const f of ['CLIPModel', 'Dinov2WithRegistersModel', 'VideoMAE', 'ViViT', 'open_clip', 'timm']) expect(first).toContain(f);
  });
});

describe('prisma classify (zero-shot)', () => {
  it('clip-tiny: probabilities equal the reference softmax(logits_per_image) within 1e-4', () => {
    const r = prisma(['classify', model('clip-tiny'), ref('clip-tiny'), '--input-key', 'pixel_values', ...CLIP_LABELS, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { prompts: string[]; results: { predictions: { index: number; prob: number }[] }[] };
    expect(doc.prompts).toEqual(['a photo of a cat.', 'a photo of a dog.', 'a photo of coffee.', 'a photo of a person.']);
    const expected = readSafetensors(ref('clip-tiny')).tensors.get('zero_shot_probs')!;
    let worst = 0;
    expect(doc.results).toHaveLength(3);
    doc.results.forEach((res, i) => {
      expect(res.predictions).toHaveLength(4);
      for (const p of res.predictions) worst = Math.max(worst, Math.abs(p.prob - expected.data[i * 4 + p.index]!));
    });
    expect(worst).toBeLessThan(1e-4);
  });

  it('several --template flags: probabilities equal open_clip build_zero_shot_classifier within 1e-4', () => {
    const reference = readSafetensors(ref('clip-tiny-ensemble'));
    const labels = JSON.parse(reference.metadata!['labels']!) as string[];
    const templates = JSON.parse(reference.metadata!['templates']!) as string[];
    expect(templates.length).toBeGreaterThan(1);
    const flags = templates.flatMap((t) => ['--template', t]);
    const r = prisma([
      'classify',
      model('clip-tiny'),
      ref('clip-tiny'),
      '--input-key',
      'pixel_values',
      '--labels',
      labels.join(','),
      ...flags,
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as {
      templates: string[];
      prompts: string[];
      results: { predictions: { index: number; prob: number }[] }[];
    };
    expect(doc.templates).toEqual(templates);
    // Label-major: every template of the first label, then the next.
    expect(doc.prompts.slice(0, templates.length)).toEqual(templates.map((t) => t.replace('{}', labels[0]!)));
    expect(doc.prompts).toHaveLength(labels.length * templates.length);
    const expected = reference.tensors.get('ensemble_probs')!;
    const single = readSafetensors(ref('clip-tiny')).tensors.get('zero_shot_probs')!;
    let worst = 0;
    let fromSingle = 0;
    expect(doc.results).toHaveLength(3);
    doc.results.forEach((res, i) => {
      expect(res.predictions).toHaveLength(labels.length);
      for (const p of res.predictions) {
        worst = Math.max(worst, Math.abs(p.prob - expected.data[i * labels.length + p.index]!));
        fromSingle = Math.max(fromSingle, Math.abs(p.prob - single.data[i * labels.length + p.index]!));
      }
    });
    expect(worst).toBeLessThan(1e-4);
    // The ensemble is not the single-template answer (so the averaging is what was checked).
    expect(fromSingle).toBeGreaterThan(1e-3);
  });

  it('openclip-tiny: logits equal the reference open_clip logits within 1e-4', () => {
    const r = prisma(['classify', model('openclip-tiny'), ref('openclip-tiny'), '--input-key', 'pixel_values', ...CLIP_LABELS, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as { results: { predictions: { index: number; logit: number }[] }[] };
    const expected = readSafetensors(ref('openclip-tiny')).tensors.get('hook_logits')!;
    expect(doc.results).toHaveLength(3);
    doc.results.forEach((res, i) => {
      expect(res.predictions).toHaveLength(4);
      for (const p of res.predictions) expect(Math.abs(p.logit - expected.data[i * 4 + p.index]!)).toBeLessThan(1e-4);
    });
  });

  it('classify on images; without --labels is a usage error; a ViT is refused', () => {
    const ok = prisma(['classify', model('clip-tiny'), image('chelsea.jpg'), ...CLIP_LABELS]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/%\s+a person/);
    expect(prisma(['classify', model('clip-tiny'), image('chelsea.jpg')]).code).toBe(2);
    const vit = prisma(['classify', model('vit-tiny-cls'), image('chelsea.jpg'), '--labels', 'a,b']);
    expect(vit.code).toBe(2);
    expect(vit.stderr).toMatch(/--labels is for CLIP-style models/);
  });

  it('--image-size on image inputs retargets the preprocessing (crop 48) and runs', () => {
    const r = prisma(['classify', model('clip-tiny'), image('astronaut.png'), ...CLIP_LABELS, '--image-size', '48', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const insp = JSON.parse(prisma(['inspect', model('clip-tiny'), '--image-size', '48', '--json']).stdout) as {
      model: { imageSize: number[] };
      hooks: { name: string; shape: number[] }[];
    };
    expect(insp.model.imageSize).toEqual([48, 48]);
    expect(insp.hooks.find((h) => h.name === 'hook_pos_embed')!.shape).toEqual([1, 37, 32]);
  });

  it("an --image-size beyond any machine's memory is one usage error, not a process killed for memory", () => {
    const r = prisma(['run', model('vit-tiny-cls'), image('coffee.png'), '--image-size', '1000000']);
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^prisma: E_ARGUMENT: image size 1000000x1000000 .* GB of memory; use a smaller image size$/);
  });

  it('--image-size 48 interpolates position embeddings like transformers (image embeddings within 1e-4)', () => {
    const out = join(tmp(), 'acts.safetensors');
    const r = prisma([
      'run',
      model('clip-tiny'),
      ref('clip-tiny'),
      '--input-key',
      'pixel_values_48',
      '--image-size',
      '48',
      '--cache',
      'hook_image_embeds',
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const ours = readSafetensors(out).tensors.get('hook_image_embeds')!;
    const expected = readSafetensors(ref('clip-tiny')).tensors.get('res48.hook_image_embeds')!;
    expect(absDiff(ours.data, expected.data).max).toBeLessThan(1e-4);
  });
});

/** A seeded random linear probe for a headless model, written with the library. */
async function probeFile(dModel: number, classes: number): Promise<string> {
  const rand = seededRandom(7);
  const weight = Float32Array.from({ length: classes * dModel }, () => rand() - 0.5);
  const bias = Float32Array.from({ length: classes }, () => rand() - 0.5);
  const path = join(tmp(), 'probe.safetensors');
  await saveTensors(path, [
    { name: 'weight', shape: [classes, dModel], data: weight },
    { name: 'bias', shape: [classes], data: bias },
  ]);
  return path;
}

describe('techniques on the CLIP, DINOv2-with-registers and video fixtures', () => {
  it('clip-tiny: logit-lens reads the residual through post_layernorm + projection against the prompts; the last layer equals the model', async () => {
    const { doc } = await runReport('logit-lens', [model('clip-tiny'), image('astronaut.png'), ...CLIP_LABELS, '--target', 'a person']);
    const res = doc.results![0] as { layers: { targetLogit: number }[]; logitsTopK: { index: number; logit: number }[] };
    const own = res.logitsTopK.find((x) => x.index === 3)!;
    expect(Math.abs(res.layers.at(-1)!.targetLogit - own.logit)).toBeLessThan(1e-4);
    expect((doc.model as { tokens: string[] }).tokens[0]).toBe('cls');
  });

  it('clip-tiny: patch (exact + attribution) and dla sum to the logit', async () => {
    const { doc } = await runReport('patch', [
      model('clip-tiny'),
      '--clean',
      image('astronaut.png'),
      '--corrupt',
      image('chelsea.jpg'),
      ...CLIP_LABELS,
      '--target',
      'a person',
      '--baseline',
      'a cat',
      '--what',
      'head_z',
      '--by',
      'layer,head',
      '--method',
      'both',
    ]);
    expect((doc.result as { exact: { dims: number[] } }).exact.dims).toEqual([2, 4]);
    const dla = await runReport('dla', [model('clip-tiny'), image('astronaut.png'), ...CLIP_LABELS, '--target', 'a person']);
    const d = dla.doc.results![0] as { sumOfComponents: number; constant: number; logit: number };
    expect(Math.abs(d.sumOfComponents + d.constant - d.logit)).toBeLessThan(1e-4);
  });

  it.each([
    '64',
    '1',
  ])('clip-tiny: text-tower hooks are recorded with the text. prefix when prompts are set (--batch-size %s)', (batchSize) => {
    const out = join(tmp(), 'acts.safetensors');
    const r = prisma([
      'run',
      model('clip-tiny'),
      ref('clip-tiny'),
      '--input-key',
      'pixel_values',
      ...CLIP_LABELS,
      '--cache',
      'text.blocks.*.hook_resid_post,hook_text_embeds,blocks.1.hook_resid_post',
      '--out',
      out,
      '--batch-size',
      batchSize,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const written = readSafetensors(out).tensors;
    const reference = readSafetensors(ref('clip-tiny')).tensors;
    // The text tower runs on the prompts, once per batch: the file holds it once, not once per batch.
    for (const key of ['text.blocks.1.hook_resid_post', 'blocks.1.hook_resid_post']) {
      const ours = written.get(key)!;
      const expected = reference.get(key)!;
      expect(ours.shape, key).toEqual(expected.shape);
      expect(absDiff(ours.data, expected.data).max, key).toBeLessThan(1e-4);
    }
  });

  it('dinov2-reg-tiny: heads labels the registers; logit-lens and patch run through a linear probe', async () => {
    const heads = await runReport('heads', [model('dinov2-reg-tiny'), image('astronaut.png')]);
    expect((heads.doc.model as { tokens: string[] }).tokens.slice(0, 6)).toEqual(['cls', 'reg0', 'reg1', 'reg2', 'reg3', 'r0c0']);
    const probe = await probeFile(32, 3);
    const probeArgs = ['--probe', probe, '--labels', 'alpha,beta,gamma'];
    const lens = await runReport('logit-lens', [model('dinov2-reg-tiny'), image('chelsea.jpg'), ...probeArgs]);
    const l = lens.doc.results![0] as { layers: { posTargetLogit: number[] }[] };
    expect(l.layers[0]!.posTargetLogit).toHaveLength(21);
    const patch = await runReport('patch', [
      model('dinov2-reg-tiny'),
      '--clean',
      image('astronaut.png'),
      '--corrupt',
      image('coffee.png'),
      ...probeArgs,
      '--target',
      'beta',
      '--what',
      'resid_pre',
      '--by',
      'layer,pos',
    ]);
    const p = patch.doc.result as { exact: { dims: number[]; value: number[] } };
    expect(p.exact.dims).toEqual([2, 21]);
    // Invariant: patching a run into itself changes nothing (every cell = the clean metric).
    const same = await runReport('patch', [
      model('dinov2-reg-tiny'),
      '--clean',
      image('astronaut.png'),
      '--corrupt',
      image('astronaut.png'),
      ...probeArgs,
      '--target',
      'beta',
      '--what',
      'resid_pre',
      '--by',
      'layer,pos',
    ]);
    const s = same.doc.result as { exact: { value: number[] }; clean: { metric: { value: number } } };
    for (const v of s.exact.value) expect(Math.abs(v - s.clean.metric.value)).toBeLessThan(1e-4);
  });

  it.each(['videomae-tiny', 'vivit-tiny'])('%s: logit-lens, patch and heads over (time slice, patch) positions', async (name) => {
    const pixels = readSafetensors(ref(name)).tensors.get('pixel_values')!;
    // The corrupted clip: the same frames in reverse order.
    const frame = pixels.data.length / 4;
    const reversed = new Float32Array(pixels.data.length);
    for (let t = 0; t < 4; t++) reversed.set(pixels.data.subarray((3 - t) * frame, (4 - t) * frame), t * frame);
    const dir = tmp();
    const clean = join(dir, 'clean.safetensors');
    const corrupt = join(dir, 'corrupt.safetensors');
    await saveTensors(clean, [{ name: 'pixel_values', shape: pixels.shape, data: pixels.data }]);
    await saveTensors(corrupt, [{ name: 'pixel_values', shape: pixels.shape, data: reversed }]);
    const lens = await runReport('logit-lens', [model(name), clean]);
    const tokens = (lens.doc.model as { tokens: string[] }).tokens;
    expect(tokens).toContain('t1:r3c3');
    const patch = await runReport('patch', [
      model(name),
      '--clean',
      clean,
      '--corrupt',
      corrupt,
      '--target',
      '0',
      '--what',
      'resid_pre',
      '--by',
      'layer,pos',
    ]);
    expect((patch.doc.result as { exact: { dims: number[] } }).exact.dims).toEqual([2, tokens.length]);
    const heads = await runReport('heads', [model(name), clean, '--all-heads']);
    // heads.html (the full one, --all-heads): a time-slice selector; each slice draws its own keys over its own frame, and
    // hovering picks a query in the shown slice.
    const viewer = runHeadsViewer(readFileSync(join(heads.out, 'heads', 'clean', 'heads.html'), 'utf8'));
    const cells = viewer.data.grid[0] * viewer.data.grid[1];
    expect(viewer.data.slices).toBe((tokens.length - 1 + (tokens[0] === 'cls' ? 0 : 1)) / cells);
    expect(viewer.data.slices).toBeGreaterThan(1);
    expect(viewer.data.sliceImages).toHaveLength(viewer.data.slices);
    expect(new Set(viewer.data.sliceImages).size).toBe(viewer.data.slices);
    expect(viewer.fills).toHaveLength(cells);
    const slice0 = viewer.fills.splice(0);
    viewer.select('slice', '1');
    expect(viewer.image()).toBe(viewer.data.sliceImages[1]);
    expect(viewer.fills).toHaveLength(cells);
    expect(viewer.fills).not.toEqual(slice0);
    expect(viewer.text('info')).toContain('keys: slice 1');
    viewer.hover(0, 0);
    expect(viewer.text('info')).toContain('(slice 1, row 0, col 0)');
    // Clips straight from the CLI: a folder of frames and an animated GIF are one input each.
    const fromFolder = await runReport('logit-lens', [model(name), VIDEO]);
    expect(fromFolder.doc.inputs).toEqual([VIDEO]);
    const gif = await runReport('heads', [model(name), join(VIDEO, 'clip.gif')]);
    expect(gif.doc.computed).toBe(1);
    // A folder of frames is one clip, equal to the reference preprocessing's clip: the same logits as the
    // reference library's on its pixel_values, within the fidelity tolerance (measured: ~1e-6).
    const run = prisma(['run', model(name), VIDEO, '--json', '--top-k', '3']);
    expect(run.code, run.stderr).toBe(0);
    const doc = JSON.parse(run.stdout) as { inputs: string[]; predictions: { topK: { index: number; logit: number }[] }[] };
    expect(doc.inputs).toHaveLength(1);
    const logits = readSafetensors(ref(name)).tensors.get('hook_logits')!;
    expect(logits.shape).toEqual([1, 3]);
    expect(doc.predictions).toHaveLength(1);
    expect(doc.predictions[0]!.topK).toHaveLength(3);
    for (const t of doc.predictions[0]!.topK) expect(Math.abs(t.logit - logits.data[t.index]!)).toBeLessThan(1e-4);
  });
});

interface ViewerData {
  grid: [number, number];
  slices: number;
  sliceImages: string[];
}

/** Runs heads.html's viewer script against a minimal stand-in for the DOM it uses. */
function runHeadsViewer(html: string) {
  const json = /<script type="application\/json" id="data">([\s\S]*?)<\/script>/.exec(html)![1]!;
  const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1]!;
  const fills: string[] = [];
  const listeners = new Map<string, (e?: unknown) => void>();
  const ctx = {
    fillStyle: '',
    strokeStyle: '',
    lineWidth: 0,
    clearRect: () => undefined,
    drawImage: () => undefined,
    strokeRect: () => undefined,
    fillRect: () => fills.push(ctx.fillStyle),
  };
  const element = (id: string, extra: object = {}) => {
    const el = {
      value: '',
      textContent: '',
      appendChild: (option: { value: string }) => {
        // A select's value is its first option's until set.
        if (el.value === '') el.value = option.value;
      },
      addEventListener: (type: string, f: (e?: unknown) => void) => listeners.set(`${id}:${type}`, f),
      ...extra,
    };
    return el;
  };
  const canvas = element('cv', {
    width: 448,
    height: 448,
    getContext: () => ctx,
    getBoundingClientRect: () => ({ left: 0, top: 0, width: 448, height: 448 }),
  });
  const els: Record<string, ReturnType<typeof element>> = {
    data: element('data', { textContent: json }),
    cv: canvas,
    head: element('head'),
    slice: element('slice'),
    info: element('info'),
    stats: element('stats'),
  };
  let shown = '';
  class FakeImage {
    onload: (() => void) | null = null;
    get src() {
      return shown;
    }
    set src(v: string) {
      shown = v;
      this.onload?.();
    }
  }
  const document = { getElementById: (id: string) => els[id], createElement: () => ({ value: '', textContent: '' }) };
  const atob = (b64: string) => Buffer.from(b64, 'base64').toString('binary');
  new Function('document', 'Image', 'atob', script)(document, FakeImage, atob);
  return {
    data: JSON.parse(json) as ViewerData,
    fills,
    image: () => shown,
    text: (id: string) => els[id]!.textContent,
    select: (id: string, value: string) => {
      els[id]!.value = value;
      listeners.get(`${id}:change`)!();
    },
    hover: (row: number, col: number) => {
      const [gh, gw] = (JSON.parse(json) as ViewerData).grid;
      listeners.get('cv:mousemove')!({ clientX: ((col + 0.5) * 448) / gw, clientY: ((row + 0.5) * 448) / gh });
    },
  };
}

describe('docs/models.md', () => {
  it('lists every family the loader reads', () => {
    const doc = readFileSync(join(FIXTURES, '..', 'docs', 'models.md'), 'utf8');
    for (const f of ['CLIPModel', 'open_clip', 'timm', 'Dinov2WithRegistersModel', 'VideoMAE', 'ViViT', 'Flamingo'])
      expect(doc).toContain(f);
  });
});
