// src/image/resample.ts is a port of Pillow's Image.resize: for every filter, shrinking and
// enlarging, its bytes equal Pillow 13.0.0's (fixtures/reference/photos.safetensors, keys
// `resize:<photo>:<filter>`, made by fixtures/make_photo_reference.py). Needs sharp (to decode the
// PNGs, which decode identically in libvips and Pillow), not the addon.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { decodeRgb } from '../../src/image/pixels.js';
import { resamplePil } from '../../src/image/resample.js';
import type { Resample } from '../../src/image/spec.js';
import { FIXTURES } from '../helpers/cli.js';
import { readSafetensors } from '../helpers/safetensors.js';

const REF = readSafetensors(join(FIXTURES, 'reference', 'photos.safetensors'));
const FILTERS: Resample[] = ['nearest', 'box', 'bilinear', 'hamming', 'bicubic', 'lanczos'];
const CASES = ['chelsea.png', 'tiny-palette.png'].flatMap((photo) => FILTERS.map((f) => [photo, f] as const));

describe("resamplePil equals Pillow's resize", () => {
  it.each(CASES)('%s, %s', async (photo, filter) => {
    const ref = REF.tensors.get(`resize:${photo}:${filter}`)!;
    const [h, w] = ref.shape as [number, number, number];
    const img = await decodeRgb(join(FIXTURES, 'photos', photo));
    const out = resamplePil(img.data, img.width, img.height, w, h, filter);
    let differ = 0;
    for (let i = 0; i < out.length; i++) if (out[i] !== ref.data[i]) differ++;
    expect(differ, `${differ} of ${out.length} bytes differ`).toBe(0);
  });

  it('the same size is the input itself', () => {
    const px = new Uint8Array([1, 2, 3, 4, 5, 6]);
    expect(resamplePil(px, 2, 1, 2, 1, 'bicubic')).toBe(px);
  });
});
