// Fashion-MNIST reader: a synthetic IDX folder (always), and the Debian package's files when
// installed (otherwise the missing-package error is what gets checked).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';

import {
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DIR,
  exportFashionMnist,
  parseIdx,
  readFashionMnist,
} from '../../src/dataset/fashion-mnist.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-fmnist-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function idx(dims: number[], data: Uint8Array): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = 0x08;
  head[3] = dims.length;
  dims.forEach((d, i) => {
    head.writeUInt32BE(d, 4 + 4 * i);
  });
  return Buffer.concat([head, Buffer.from(data)]);
}

/** Three 28x28 test images: image i is filled with 10 * (i + 1) with pixel (0, 0) = 255; labels 9, 0, 5. */
function fakeDataset(): string {
  const dir = join(tmp, 'fake');
  mkdirSync(dir, { recursive: true });
  const images = new Uint8Array(3 * 28 * 28);
  for (let i = 0; i < 3; i++) {
    images.fill(10 * (i + 1), i * 784, (i + 1) * 784);
    images[i * 784] = 255;
  }
  writeFileSync(join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(idx([3, 28, 28], images)));
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(idx([3], Uint8Array.from([9, 0, 5]))));
  return dir;
}

describe('Fashion-MNIST', () => {
  it('reads IDX files', async () => {
    const dir = fakeDataset();
    const ds = await readFashionMnist('test', { dir });
    expect(ds.shape).toEqual([3, 28, 28]);
    expect(ds.images).toHaveLength(3 * 784);
    expect(Array.from(ds.labels)).toEqual([9, 0, 5]);
    expect(ds.classes).toEqual(['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']);
    expect(ds.images[784]).toBe(255);
    expect(ds.images[785]).toBe(20);
    const first = await readFashionMnist('test', { dir, limit: 1 });
    expect(first.shape).toEqual([1, 28, 28]);
  });

  it('exports RGB PNGs and labels.jsonl', async () => {
    const out = join(tmp, 'export');
    await exportFashionMnist({ out, dir: fakeDataset(), n: 2 });
    const lines = readFileSync(join(out, 'labels.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { index: 0, image: 'images/000000.png', label: 9, class: 'Ankle boot', answer_index: { label: 9 } },
      { index: 1, image: 'images/000001.png', label: 0, class: 'T-shirt/top', answer_index: { label: 0 } },
    ]);
    const { data, info } = await sharp(join(out, 'images', '000001.png'))
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([28, 28, 3]);
    expect(Array.from(data.subarray(0, 6))).toEqual([255, 255, 255, 20, 20, 20]);
    const meta = JSON.parse(readFileSync(join(out, 'dataset.json'), 'utf8'));
    expect(meta).toMatchObject({
      name: 'fashion-mnist',
      split: 'test',
      n: 2,
      questions: { label: { classes: [...FASHION_MNIST_CLASSES] } },
    });
  });

  it('reports a missing dataset as E_DATASET with the apt-get hint', async () => {
    await expect(readFashionMnist('test', { dir: join(tmp, 'absent') })).rejects.toMatchObject({
      code: 'E_DATASET',
      hint: 'apt-get install dataset-fashion-mnist',
    });
    await expect(readFashionMnist('train', { dir: fakeDataset() })).rejects.toMatchObject({ code: 'E_DATASET', message: /train-images/ });
  });

  it('rejects files that are not unsigned-byte IDX', () => {
    expect(() => parseIdx(Buffer.from([1, 2, 3, 4]))).toThrow(expect.objectContaining({ code: 'E_DATASET' }));
    expect(() => parseIdx(Buffer.from([0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]))).toThrow(/not unsigned byte/);
    expect(() => parseIdx(idx([5], new Uint8Array(3)))).toThrow(/truncated/);
  });

  it(`reads the installed package (${FASHION_MNIST_DIR}) when present, else reports it missing`, async () => {
    if (existsSync(join(FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))) {
      const ds = await readFashionMnist('test');
      expect(ds.shape).toEqual([10000, 28, 28]);
      expect(ds.labels).toHaveLength(10000);
      // Every class appears 1000 times in the test split.
      const counts = new Array(10).fill(0);
      for (const l of ds.labels) counts[l]++;
      expect(counts).toEqual(new Array(10).fill(1000));
    } else {
      await expect(readFashionMnist('test')).rejects.toMatchObject({ code: 'E_DATASET', hint: 'apt-get install dataset-fashion-mnist' });
    }
  });
});
