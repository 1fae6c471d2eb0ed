// sharp preprocessing for every model family fixture vs the reference `pixel_values` that
// fixtures/make_family_fixtures.py computed with the family's own library: the slow (PIL) HF image
// processors (CLIP, Bit for DINOv2, VideoMAE, ViViT), timm's create_transform(resolve_data_config)
// and open_clip's eval transform (torchvision on PIL images, so PIL resampling as well). Needs sharp,
// not the addon.
//
// Every pipeline rounds to uint8 after resizing, so a difference is a whole number of 8-bit levels:
// level = |Δ| · std / rescale_factor (ViViT: rescale_factor 1/127.5 and 1 subtracted, so still one 8-bit level).
// The resize is a port of Pillow's (src/image/resample.ts), the library every one of these resizes
// with, so the pixels are equal: measured 0 levels for every family here, clip-tiny @48 included.
// Only JPEG decoding may differ (libvips' and Pillow's libjpeg-turbo builds), by one level; these
// fixture images go through PNG or their JPEG agrees. Bound: no value more than one level apart,
// mean <= 0.1 level. (With sharp's resize before: up to 5 levels, mean 0.25-0.28.)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  loadInputs,
  parseOpenClipConfig,
  parsePreprocessorConfig,
  parseTimmConfig,
  preprocessImage,
  readPreprocessSpec,
  specOutputSize,
  withImageSize,
  type PreprocessSpec,
} from '../../src/image/preprocess.js';
import { FIXTURES } from '../helpers/cli.js';
import { absDiff, readSafetensors } from '../helpers/safetensors.js';

interface PreprocessJson {
  images: { file: string }[];
}

const IMAGES = (JSON.parse(readFileSync(join(FIXTURES, 'reference', 'preprocess.json'), 'utf8')) as PreprocessJson).images.map((i) =>
  join(FIXTURES, i.file),
);
const VIDEO = join(FIXTURES, 'video');

interface Agreement {
  maxLevel: number;
  meanLevel: number;
  exact: number;
  within1: number;
}

/** Differences in 8-bit levels; `channel(i)` gives the channel of flat index i. */
function agreement(got: Float32Array, expected: Float32Array, spec: PreprocessSpec, channel: (i: number) => number): Agreement {
  expect(got.length).toBe(expected.length);
  const rescale = spec.rescaleFactor!;
  let maxLevel = 0;
  let sum = 0;
  let exact = 0;
  let within1 = 0;
  for (let i = 0; i < got.length; i++) {
    const std = spec.normalize ? spec.normalize.std[channel(i)]! : 1;
    const level = (Math.abs(got[i]! - expected[i]!) * std) / rescale;
    const r = Math.round(level);
    maxLevel = Math.max(maxLevel, r);
    sum += level;
    if (r === 0) exact++;
    if (r <= 1) within1++;
  }
  return { maxLevel, meanLevel: sum / got.length, exact: exact / got.length, within1: within1 / got.length };
}

function report(name: string, spec: PreprocessSpec, a: Agreement, got: Float32Array, expected: Float32Array): void {
  const norm = absDiff(got, expected);
  console.log(
    `[preprocess] | ${name} | ${spec.processorType} ${spec.resample} | ${norm.max.toFixed(4)} | ${norm.mean.toFixed(5)} | ${a.maxLevel} | ${a.meanLevel.toFixed(3)} | ${(a.exact * 100).toFixed(1)}% | ${(a.within1 * 100).toFixed(1)}% |`,
  );
}

function checkBounds(a: Agreement): void {
  expect(a.meanLevel).toBeLessThanOrEqual(0.1);
  expect(a.maxLevel).toBeLessThanOrEqual(1);
}

const refTensor = (name: string, key = 'pixel_values') => {
  const t = readSafetensors(join(FIXTURES, 'reference', `${name}.safetensors`)).tensors.get(key);
  if (!t) throw new Error(`${name}: no ${key}`);
  return t;
};

const IMAGE_FAMILIES: [string, string, string][] = [
  // name, processorType, the file the settings come from
  ['clip-tiny', 'CLIPImageProcessor', 'preprocessor_config.json'],
  ['openclip-tiny', 'open_clip', 'open_clip_config.json'],
  ['timm-vit-tiny', 'timm', 'config.json'],
  ['timm-vit-gap', 'timm', 'config.json'],
  ['dinov2-reg-tiny', 'BitImageProcessor', 'preprocessor_config.json'],
  ['dinov2-swiglu-tiny', 'BitImageProcessor', 'preprocessor_config.json'],
];

describe.each(IMAGE_FAMILIES)('family preprocessing vs the reference library: %s', (name, processorType, file) => {
  it(`reads ${file} and matches pixel_values within the stated bounds`, async () => {
    const dir = join(FIXTURES, 'models', name);
    const expected = refTensor(name);
    const [b, c, h, w] = expected.shape as [number, number, number, number];
    expect(b).toBe(IMAGES.length);
    const spec = await readPreprocessSpec(dir, [h, w]);
    expect(spec.source).toBe(join(dir, file));
    expect(spec.processorType).toBe(processorType);
    const got = new Float32Array(b * c * h * w);
    for (const [i, path] of IMAGES.entries()) {
      const img = await preprocessImage(path, spec);
      expect([img.height, img.width]).toEqual([h, w]);
      got.set(img.data, i * c * h * w);
    }
    const a = agreement(got, expected.data, spec, (i) => Math.floor(i / (h * w)) % c);
    report(name, spec, a, got, expected.data);
    checkBounds(a);
  });
});

describe.each([
  ['videomae-tiny', 'VideoMAEImageProcessor'],
  ['vivit-tiny', 'VivitImageProcessor'],
])('video preprocessing vs transformers: %s', (name, processorType) => {
  it('one clip of fixtures/video matches pixel_values [1, 4, 3, 32, 32] within the stated bounds', async () => {
    const dir = join(FIXTURES, 'models', name);
    const expected = refTensor(name);
    expect(expected.shape).toEqual([1, 4, 3, 32, 32]);
    const spec = await readPreprocessSpec(dir, [32, 32]);
    expect(spec.processorType).toBe(processorType);
    const batch = await loadInputs([VIDEO], { info: { modelDir: dir, imageSize: [32, 32], numChannels: 3, numFrames: 4 } });
    expect(batch.shape).toEqual([1, 4, 3, 32, 32]);
    expect(batch.labels).toEqual([VIDEO]);
    const a = agreement(batch.data, expected.data, spec, (i) => Math.floor(i / 1024) % 3);
    report(name, spec, a, batch.data, expected.data);
    checkBounds(a);
  });
});

describe('VivitImageProcessor offset', () => {
  it('rescales by 1/127.5, subtracts 1, then normalises with mean/std 0.5 (range [-3, 1])', async () => {
    const spec = await readPreprocessSpec(join(FIXTURES, 'models', 'vivit-tiny'), [32, 32]);
    expect(spec.rescaleFactor).toBeCloseTo(1 / 127.5, 12);
    expect(spec.offset).toBe(1);
    expect(spec.normalize).toEqual({ mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
    const expected = refTensor('vivit-tiny');
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of expected.data) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect(lo).toBeGreaterThanOrEqual(-3 - 1e-6);
    expect(hi).toBeLessThanOrEqual(1 + 1e-6);
  });
});

describe('withImageSize against a reference run at another size', () => {
  it('clip-tiny at 48x48 (shortest edge 48, crop 48) matches pixel_values_48 within the stated bounds', async () => {
    const dir = join(FIXTURES, 'models', 'clip-tiny');
    const spec = withImageSize(await readPreprocessSpec(dir, [32, 32]), [48, 48]);
    expect(spec.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 48 });
    expect(spec.centerCrop).toEqual({ height: 48, width: 48 });
    const expected = refTensor('clip-tiny', 'pixel_values_48');
    expect(expected.shape).toEqual([1, 3, 48, 48]);
    const img = await preprocessImage(IMAGES[0]!, spec);
    const a = agreement(img.data, expected.data, spec, (i) => Math.floor(i / (48 * 48)) % 3);
    report('clip-tiny @48', spec, a, img.data, expected.data);
    checkBounds(a);
  });
});

describe('withImageSize', () => {
  const clipLike = parsePreprocessorConfig(
    { image_processor_type: 'BitImageProcessor', size: { shortest_edge: 36 }, crop_size: { height: 32, width: 32 } },
    [32, 32],
  );

  it('scales a shortest-edge resize by the ratio it had to the crop (36 -> 32 becomes 54 -> 48)', () => {
    const s = withImageSize(clipLike, [48, 48]);
    expect(s.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 54 });
    expect(s.centerCrop).toEqual({ height: 48, width: 48 });
    expect(withImageSize(clipLike, 40).resize).toEqual({ mode: 'shortest_edge', shortestEdge: 45 });
    // everything else is kept
    expect({ ...s, resize: clipLike.resize, centerCrop: clipLike.centerCrop }).toEqual(clipLike);
  });

  it('gives the same spec back for the size it already makes', () => {
    expect(withImageSize(clipLike, [32, 32])).toEqual(clipLike);
  });

  it('a non-square size turns a shortest-edge resize into a keep-ratio cover of the scaled box', () => {
    const s = withImageSize(clipLike, [32, 48]);
    expect(s.resize).toEqual({ mode: 'exact', height: 36, width: 54, fit: 'cover' });
    expect(s.centerCrop).toEqual({ height: 32, width: 48 });
  });

  it('an exact resize without a crop becomes the size; with a crop it keeps its margin', () => {
    const vit = parsePreprocessorConfig({ size: { height: 32, width: 32 } }, [32, 32]);
    expect(withImageSize(vit, [48, 64]).resize).toEqual({ mode: 'exact', height: 48, width: 64 });
    expect(withImageSize(vit, [48, 64]).centerCrop).toBeNull();
    const margin = parsePreprocessorConfig({ size: { height: 36, width: 36 }, do_center_crop: true, crop_size: 32 }, [32, 32]);
    expect(withImageSize(margin, [64, 64]).resize).toEqual({ mode: 'exact', height: 72, width: 72 });
    const shortestOnly = parsePreprocessorConfig({ image_processor_type: 'CLIPImageProcessor', size: 32, do_center_crop: false }, [32, 32]);
    expect(withImageSize(shortestOnly, [48, 48]).resize).toEqual({ mode: 'shortest_edge', shortestEdge: 48 });
  });

  it("timm specs redo timm's rule floor(size / crop_pct)", async () => {
    const timm = await readPreprocessSpec(join(FIXTURES, 'models', 'timm-vit-tiny'), [32, 32]);
    expect(timm.cropPct).toBe(0.875);
    expect(withImageSize(timm, 48).resize).toEqual({ mode: 'shortest_edge', shortestEdge: 54 });
    expect(withImageSize(timm, 384).resize).toEqual({ mode: 'shortest_edge', shortestEdge: 438 }); // 438.86: floor, not round
    expect(withImageSize(timm, [32, 48]).resize).toEqual({ mode: 'exact', height: 36, width: 54, fit: 'cover' });
    const gap = await readPreprocessSpec(join(FIXTURES, 'models', 'timm-vit-gap'), [32, 32]);
    expect(withImageSize(gap, 48).resize).toEqual({ mode: 'shortest_edge', shortestEdge: 48 }); // crop_pct 1
  });

  it('rejects sizes that are not positive integers (E_USAGE)', () => {
    expect(() => withImageSize(clipLike, [0, 32])).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => withImageSize(clipLike, 31.5)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
  });

  it.each([...IMAGE_FAMILIES.map(([n]) => n)])('%s at 48x48: every image comes out 48x48', async (name) => {
    const spec = withImageSize(await readPreprocessSpec(join(FIXTURES, 'models', name), [32, 32]), [48, 48]);
    expect(specOutputSize(spec)).toEqual([48, 48]);
    for (const path of IMAGES) {
      const img = await preprocessImage(path, spec);
      expect([img.height, img.width]).toEqual([48, 48]);
    }
  });
});

describe('spec readers', () => {
  it('HF video processors: int size is the shortest edge; ViViT defaults to rescale 1/127.5 with offset', () => {
    const vm = parsePreprocessorConfig({ image_processor_type: 'VideoMAEImageProcessor', size: 36, crop_size: 32 }, [32, 32]);
    expect(vm.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 36 });
    expect(vm.resample).toBe('bilinear');
    expect(vm.offset).toBeUndefined();
    const vv = parsePreprocessorConfig({ image_processor_type: 'VivitImageProcessor', size: { shortest_edge: 36 } }, [32, 32]);
    expect(vv.rescaleFactor).toBeCloseTo(1 / 127.5, 12);
    expect(vv.offset).toBe(1);
    expect(vv.centerCrop).toEqual({ height: 32, width: 32 }); // do_center_crop defaults to true
    expect(parsePreprocessorConfig({ image_processor_type: 'VivitImageProcessor', offset: false }, [32, 32]).offset).toBeUndefined();
    expect(() => parsePreprocessorConfig({ image_processor_type: 'VivitImageProcessor', do_rescale: false }, [32, 32])).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    );
  });

  it('BitImageProcessor and fast/legacy class names get their slow class defaults', () => {
    const bit = parsePreprocessorConfig(
      { image_processor_type: 'BitImageProcessorFast', size: { shortest_edge: 256 }, crop_size: 224 },
      [224, 224],
    );
    expect(bit.resample).toBe('bicubic');
    expect(bit.normalize?.mean).toEqual([0.48145466, 0.4578275, 0.40821073]);
  });

  it('timm: resolve_data_config defaults when pretrained_cfg leaves things out', () => {
    const s = parseTimmConfig(
      { architecture: 'vit_small_patch16_224', pretrained_cfg: { input_size: [3, 224, 224], crop_pct: null } },
      [32, 32],
    );
    expect(s.processorType).toBe('timm');
    expect(s.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 256 });
    expect(s.centerCrop).toEqual({ height: 224, width: 224 });
    expect(s.cropRounding).toBe('round');
    expect(s.resample).toBe('bicubic');
    expect(s.normalize).toEqual({ mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });
    const noCfg = parseTimmConfig({ architecture: 'x', model_args: { img_size: 64 } }, [32, 32]);
    expect(noCfg.centerCrop).toEqual({ height: 64, width: 64 });
    expect(noCfg.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 73 });
    const squash = parseTimmConfig({ pretrained_cfg: { input_size: [3, 30, 30], crop_pct: 0.95, crop_mode: 'squash' } }, [30, 30]);
    expect(squash.resize).toEqual({ mode: 'exact', height: 31, width: 31 });
    const border = parseTimmConfig({ pretrained_cfg: { input_size: [3, 32, 32], crop_pct: 1, crop_mode: 'border' } }, [32, 32]);
    expect(border.resize).toEqual({ mode: 'exact', height: 32, width: 32, fit: 'contain' });
    expect(border.padFill).toEqual([124, 116, 104]); // round(255 * ImageNet mean)
    expect(() => parseTimmConfig({ pretrained_cfg: { interpolation: 'random' } }, [32, 32])).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    );
  });

  it('open_clip: size from vision_cfg, modes shortest / longest / squash', () => {
    const base = { model_cfg: { vision_cfg: { image_size: 32 } } };
    const s = parseOpenClipConfig({ ...base, preprocess_cfg: {} }, [224, 224]);
    expect(s.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 32 });
    expect(s.centerCrop).toEqual({ height: 32, width: 32 });
    expect(s.normalize?.mean).toEqual([0.48145466, 0.4578275, 0.40821073]);
    const longest = parseOpenClipConfig({ ...base, preprocess_cfg: { resize_mode: 'longest', fill_color: 7 } }, [32, 32]);
    expect(longest.resize).toEqual({ mode: 'exact', height: 32, width: 32, fit: 'contain' });
    expect(longest.padFill).toEqual([7, 7, 7]);
    const squash = parseOpenClipConfig({ ...base, preprocess_cfg: { resize_mode: 'squash', interpolation: 'bilinear' } }, [32, 32]);
    expect(squash.centerCrop).toBeNull();
    expect(squash.resample).toBe('bilinear');
    // non-square 'shortest': open_clip's ResizeKeepRatio gets no interpolation argument -> bicubic
    const rect = parseOpenClipConfig(
      { model_cfg: { vision_cfg: { image_size: [28, 36] } }, preprocess_cfg: { interpolation: 'bilinear' } },
      [32, 32],
    );
    expect(rect.resize).toEqual({ mode: 'exact', height: 28, width: 36, fit: 'cover' });
    expect(rect.resample).toBe('bicubic');
    expect(() => parseOpenClipConfig({ ...base, preprocess_cfg: { resize_mode: 'pad' } }, [32, 32])).toThrow(
      expect.objectContaining({ code: 'E_CONFIG' }),
    );
  });

  it('readPreprocessSpec: preprocessor_config.json, then open_clip_config.json, then timm config.json, then the default', async () => {
    expect((await readPreprocessSpec(join(FIXTURES, 'models', 'openclip-tiny-bin'), [32, 32])).processorType).toBe('open_clip');
    expect((await readPreprocessSpec(join(FIXTURES, 'models', 'vit-tiny-cls'), [32, 32])).processorType).toBe('ViTImageProcessor');
    expect((await readPreprocessSpec(join(FIXTURES, 'bad', 'text-model'), [32, 32])).source).toBe('default');
    expect((await readPreprocessSpec(join(FIXTURES, 'bad', 'no-config'), [32, 32])).source).toBe('default');
  });
});
