// sharp preprocessing of the fixture images vs the reference `pixel_values` computed by HF
// ViTImageProcessor (PIL resampling) in fixtures/make_fixtures.py. Needs sharp, not the addon.
//
// Both pipelines resize in 8-bit sRGB and round to uint8 before rescale/normalise, so a difference
// is a whole number of 8-bit levels. The resize is a port of Pillow's (src/image/resample.ts), so
// the only differences left come from decoding chelsea.jpg (libvips' vs Pillow's libjpeg-turbo):
// measured max 1 level, mean 0.07 (vit-tiny-cls, vit-tiny-base), 0 for vit-odd. Bounds: max 1
// level, mean <= 0.1 level. (With sharp's resize before: up to 11 levels at the border.)
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { preprocessImage, readPreprocessSpec } from '../../src/image/preprocess.js';
import { FIXTURES } from '../helpers/cli.js';
import { absDiff, readSafetensors } from '../helpers/safetensors.js';

interface PreprocessJson {
  images: { file: string }[];
  models: Record<
    string,
    { pixel_values_shape: number[]; image_mean: number[]; image_std: number[]; rescale_factor: number; resample_name: string }
  >;
}

const ref = JSON.parse(readFileSync(join(FIXTURES, 'reference', 'preprocess.json'), 'utf8')) as PreprocessJson;
const rows: string[] = [];

describe.each(Object.keys(ref.models))('sharp preprocessing vs HF reference: %s', (name) => {
  it('matches pixel_values within the stated bounds', async () => {
    const m = ref.models[name]!;
    const [b, c, h, w] = m.pixel_values_shape as [number, number, number, number];
    const spec = await readPreprocessSpec(join(FIXTURES, 'models', name), [h, w]);
    const expected = readSafetensors(join(FIXTURES, 'reference', `${name}.safetensors`)).tensors.get('pixel_values')!;
    expect(expected.shape).toEqual([b, c, h, w]);
    const got = new Float32Array(b * c * h * w);
    for (let i = 0; i < b; i++) {
      const img = await preprocessImage(join(FIXTURES, ref.images[i]!.file), spec);
      expect([img.height, img.width]).toEqual([h, w]);
      got.set(img.data, i * c * h * w);
    }
    const norm = absDiff(got, expected.data);
    // back to 8-bit levels: level = (x * std + mean) / rescale_factor
    let within1 = 0;
    let exact = 0;
    let maxLevel = 0;
    let sumLevel = 0;
    const hw = h * w;
    for (let i = 0; i < got.length; i++) {
      const ch = Math.floor(i / hw) % c;
      const level = (Math.abs(got[i]! - expected.data[i]!) * m.image_std[ch]!) / m.rescale_factor;
      const rounded = Math.round(level);
      if (rounded === 0) exact++;
      if (rounded <= 1) within1++;
      maxLevel = Math.max(maxLevel, rounded);
      sumLevel += level;
    }
    const meanLevel = sumLevel / got.length;
    const share1 = within1 / got.length;
    rows.push(
      `| ${name} | ${m.resample_name} | ${norm.max.toFixed(4)} | ${norm.mean.toFixed(5)} | ${maxLevel} | ${meanLevel.toFixed(3)} | ${((exact / got.length) * 100).toFixed(1)}% | ${(share1 * 100).toFixed(1)}% |`,
    );
    console.log(`[preprocess] ${rows.at(-1)}`);
    expect(meanLevel).toBeLessThanOrEqual(0.1);
    expect(share1).toBe(1);
    expect(maxLevel).toBeLessThanOrEqual(1);
  });
});
