/**
 * Fashion-MNIST from the IDX files of the Debian package `dataset-fashion-mnist`
 * (/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz), plus an
 * exporter that writes a few images as RGB PNGs with labels, for demo inputs.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

import { PrismaError, usageError } from '../errors.js';
import { encodePngRgb } from './clevr.js';
import { ensureDir, jsonLines, stem, writeFileAtomic, writeJsonAtomic } from './io.js';

export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
] as const;

export type FashionMnistSplit = 'train' | 'test';

export interface FashionMnist {
  split: FashionMnistSplit;
  /** Row-major uint8 pixels, shape [N, 28, 28] (0 = background, 255 = ink). */
  images: Uint8Array;
  shape: [number, number, number];
  /** Class index per image (into `classes`). */
  labels: Uint8Array;
  classes: string[];
}

export interface ReadFashionMnistOptions {
  /** Folder with the IDX .gz files (default /usr/share/datasets/fashion-mnist). */
  dir?: string;
  /** Keep only the first `limit` images. */
  limit?: number;
}

const INSTALL_HINT = 'apt-get install dataset-fashion-mnist';

function files(split: FashionMnistSplit): { images: string; labels: string } {
  const prefix = split === 'train' ? 'train' : 't10k';
  return { images: `${prefix}-images-idx3-ubyte.gz`, labels: `${prefix}-labels-idx1-ubyte.gz` };
}

async function readIdx(path: string): Promise<Buffer> {
  let gz: Buffer;
  try {
    gz = await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PrismaError(
      'E_DATASET',
      code === 'ENOENT' ? `Fashion-MNIST file not found: ${path}` : `cannot read ${path}: ${(err as Error).message}`,
      {
        hint: INSTALL_HINT,
        data: { path },
      },
    );
  }
  try {
    return gunzipSync(gz);
  } catch (err) {
    throw new PrismaError('E_DATASET', `${path} is not a valid gzip file: ${(err as Error).message}`, {
      hint: INSTALL_HINT,
      data: { path },
    });
  }
}

/** Parse an IDX file with unsigned-byte data; returns its dimensions and data. */
export function parseIdx(buf: Buffer, source = 'IDX file'): { dims: number[]; data: Uint8Array } {
  if (buf.length < 4 || buf[0] !== 0 || buf[1] !== 0) throw new PrismaError('E_DATASET', `${source}: not an IDX file`);
  if (buf[2] !== 0x08) throw new PrismaError('E_DATASET', `${source}: element type 0x${buf[2]!.toString(16)} is not unsigned byte`);
  const nd = buf[3]!;
  if (buf.length < 4 + 4 * nd) throw new PrismaError('E_DATASET', `${source}: truncated header`);
  const dims = Array.from({ length: nd }, (_, i) => buf.readUInt32BE(4 + 4 * i));
  const count = dims.reduce((a, b) => a * b, 1);
  const start = 4 + 4 * nd;
  if (buf.length < start + count) throw new PrismaError('E_DATASET', `${source}: truncated data (${buf.length - start} of ${count} bytes)`);
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + start, count) };
}

/** Read one split of Fashion-MNIST. E_DATASET (hint: apt-get install dataset-fashion-mnist) when missing. */
export async function readFashionMnist(split: FashionMnistSplit = 'test', options: ReadFashionMnistOptions = {}): Promise<FashionMnist> {
  if (split !== 'train' && split !== 'test') throw usageError(`unknown split '${String(split)}'`, 'use train or test');
  const dir = options.dir ?? FASHION_MNIST_DIR;
  const f = files(split);
  const imgPath = join(dir, f.images);
  const lblPath = join(dir, f.labels);
  const img = parseIdx(await readIdx(imgPath), imgPath);
  const lbl = parseIdx(await readIdx(lblPath), lblPath);
  if (img.dims.length !== 3 || lbl.dims.length !== 1 || img.dims[0] !== lbl.dims[0]) {
    throw new PrismaError(
      'E_DATASET',
      `Fashion-MNIST ${split}: images [${img.dims.join(', ')}] and labels [${lbl.dims.join(', ')}] do not match`,
    );
  }
  const [total, rows, cols] = img.dims as [number, number, number];
  if (options.limit !== undefined && (!Number.isInteger(options.limit) || options.limit < 1))
    throw usageError(`limit must be a positive integer, got ${options.limit}`);
  const n = Math.min(total, options.limit ?? total);
  for (let i = 0; i < n; i++) {
    if (lbl.data[i]! >= FASHION_MNIST_CLASSES.length)
      throw new PrismaError('E_DATASET', `${lblPath}: label ${lbl.data[i]} at ${i} is out of range`);
  }
  // Copy so the result does not keep the whole decompressed file alive.
  return {
    split,
    images: img.data.slice(0, n * rows * cols),
    shape: [n, rows, cols],
    labels: lbl.data.slice(0, n),
    classes: [...FASHION_MNIST_CLASSES],
  };
}

export interface ExportFashionMnistOptions extends ReadFashionMnistOptions {
  out: string;
  split?: FashionMnistSplit;
  n: number;
}

export interface FashionMnistRecord {
  index: number;
  image: string;
  label: number;
  class: string;
  /** Same as `label`, under the question name used in dataset.json (as clevr-lite records do). */
  answer_index: { label: number };
}

/** Write the first `n` images of a split as RGB PNGs (`images/NNNNNN.png`) with labels.jsonl and dataset.json. */
export async function exportFashionMnist(
  options: ExportFashionMnistOptions,
): Promise<{ out: string; split: FashionMnistSplit; n: number; files: string[] }> {
  if (!Number.isInteger(options.n) || options.n < 1) throw usageError(`n must be a positive integer, got ${options.n}`);
  const split = options.split ?? 'test';
  const ds = await readFashionMnist(split, { ...(options.dir === undefined ? {} : { dir: options.dir }), limit: options.n });
  const [n, rows, cols] = ds.shape;
  await ensureDir(join(options.out, 'images'));
  const records: FashionMnistRecord[] = [];
  for (let i = 0; i < n; i++) {
    const grey = ds.images.subarray(i * rows * cols, (i + 1) * rows * cols);
    const rgb = new Uint8Array(rows * cols * 3);
    for (let p = 0; p < grey.length; p++) rgb.fill(grey[p]!, 3 * p, 3 * p + 3);
    const image = `images/${stem(i)}.png`;
    await writeFileAtomic(join(options.out, image), await encodePngRgb(rgb, cols, rows));
    records.push({ index: i, image, label: ds.labels[i]!, class: ds.classes[ds.labels[i]!]!, answer_index: { label: ds.labels[i]! } });
  }
  await writeFileAtomic(join(options.out, 'labels.jsonl'), jsonLines(records));
  await writeJsonAtomic(join(options.out, 'dataset.json'), {
    schemaVersion: 1,
    name: 'fashion-mnist',
    source: options.dir ?? FASHION_MNIST_DIR,
    split,
    n,
    selection: `the first ${n} images of the ${split} split, in file order`,
    size: [rows, cols],
    questions: { label: { classes: ds.classes } },
    files: { images: 'images/NNNNNN.png', labels: 'labels.jsonl' },
  });
  return { out: options.out, split, n, files: ['images/', 'labels.jsonl', 'dataset.json'] };
}
