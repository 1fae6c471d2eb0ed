// loadInputs for images and folders needs only sharp, not the addon.
import { mkdtempSync, copyFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { expandInputs, loadInputs, type InputTarget } from '../../src/image/preprocess.js';
import { FIXTURES } from '../helpers/cli.js';

const model: InputTarget = { info: { modelDir: join(FIXTURES, 'models', 'vit-tiny-cls'), imageSize: [32, 32], numChannels: 3 } };

describe('loadInputs (images)', () => {
  it('expands folders to sorted image files only', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-inputs-'));
    for (const f of ['b.png', 'a.jpg', 'C.PNG', 'notes.txt', 'x.npy']) writeFileSync(join(dir, f), '');
    mkdirSync(join(dir, 'sub.png'));
    expect(await expandInputs([dir])).toEqual(['C.PNG', 'a.jpg', 'b.png'].map((f) => join(dir, f)));
  });

  it('batches files and folders in order, one label each', async () => {
    const batch = await loadInputs([join(FIXTURES, 'images', 'coffee.png'), join(FIXTURES, 'images')], model);
    expect(batch.shape).toEqual([4, 3, 32, 32]);
    expect(batch.data.length).toBe(4 * 3 * 32 * 32);
    expect(batch.labels.map((l) => l.split('/').pop())).toEqual(['coffee.png', 'astronaut.png', 'chelsea.jpg', 'coffee.png']);
    // same image twice -> same pixels
    expect(batch.data.subarray(0, 3072)).toEqual(batch.data.subarray(3 * 3072, 4 * 3072));
  });

  it.each(['not-an-image.jpg', 'truncated.png'])('%s -> E_IMAGE_DECODE naming the file', async (name) => {
    const path = join(FIXTURES, 'bad', name);
    await expect(loadInputs([path], model)).rejects.toMatchObject({ code: 'E_IMAGE_DECODE', message: expect.stringContaining(path) });
  });

  it('a text file with any extension -> E_IMAGE_DECODE', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-inputs-'));
    const path = join(dir, 'readme.txt');
    writeFileSync(path, 'hello\n');
    await expect(loadInputs([path], model)).rejects.toMatchObject({ code: 'E_IMAGE_DECODE', message: expect.stringContaining(path) });
  });

  it('missing paths and empty folders -> E_INPUT', async () => {
    await expect(loadInputs(['/no/such/file.png'], model)).rejects.toMatchObject({ code: 'E_INPUT' });
    const dir = mkdtempSync(join(tmpdir(), 'prisma-inputs-'));
    await expect(loadInputs([dir], model)).rejects.toMatchObject({ code: 'E_INPUT', message: expect.stringContaining('no images') });
  });

  it('reads RGBA and greyscale images as RGB', async () => {
    const sharp = (await import('sharp')).default;
    const dir = mkdtempSync(join(tmpdir(), 'prisma-inputs-'));
    const rgba = join(dir, 'rgba.png');
    const grey = join(dir, 'grey.png');
    await sharp({ create: { width: 40, height: 20, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 0.2 } } })
      .png()
      .toFile(rgba);
    await sharp({ create: { width: 20, height: 20, channels: 3, background: { r: 128, g: 128, b: 128 } } })
      .grayscale()
      .png()
      .toFile(grey);
    const batch = await loadInputs([rgba, grey], model);
    expect(batch.shape).toEqual([2, 3, 32, 32]);
    // alpha is dropped, not composited: pure red stays (1 - 0.5) / 0.5 = 1 on R
    expect(batch.data[0]).toBeCloseTo(1, 5);
    expect(batch.data[1024]).toBeCloseTo(-1, 5);
    // grey: all channels equal
    const g = 3072;
    expect(batch.data[g]).toBeCloseTo(batch.data[g + 1024]!, 6);
    expect(batch.data[g]).toBeCloseTo(batch.data[g + 2048]!, 6);
  });

  it('a processor whose output size differs from the model -> E_SHAPE', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-model-'));
    writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify({ size: { height: 16, width: 16 } }));
    copyFileSync(join(FIXTURES, 'images', 'coffee.png'), join(dir, 'coffee.png'));
    const target: InputTarget = { info: { modelDir: dir, imageSize: [32, 32], numChannels: 3 } };
    await expect(loadInputs([join(dir, 'coffee.png')], target)).rejects.toMatchObject({ code: 'E_SHAPE' });
  });
});
