/**
 * Training data for `prisma train`: Fashion-MNIST from Debian's dataset-fashion-mnist package, or a
 * clevr-lite folder made by `prisma dataset clevr-lite` (one of its questions as the label).
 * Images become [N, 3, H, W] float32 normalised with mean 0.5 / std 0.5 per channel, the same
 * normalisation the written preprocessor_config.json tells every other command to apply.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import sharp from 'sharp';

import type { ClevrRecord } from '../dataset/clevr.js';
import { readFashionMnist } from '../dataset/fashion-mnist.js';
import { usageError } from '../errors.js';
import type { TrainingData } from './loop.js';
import type { LabelledImages } from './trainer.js';

export interface DataRequest {
  source: string;
  question?: string | undefined;
  imageSize?: number | undefined;
  limit?: number | undefined;
  evalFraction: number;
  seed: number;
}

const MEAN = [0.5, 0.5, 0.5];
const STD = [0.5, 0.5, 0.5];

/** Grey or RGB uint8 pixels (HWC) -> normalised CHW floats written at `offset`. */
function writeNormalised(out: Float32Array, offset: number, pixels: Uint8Array, size: number, channels: 1 | 3): void {
  const plane = size * size;
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = pixels[i * channels + (channels === 1 ? 0 : c)] ?? 0;
      out[offset + c * plane + i] = (v / 255 - MEAN[c]!) / STD[c]!;
    }
  }
}

async function fashion(split: 'train' | 'test', limit: number | undefined): Promise<LabelledImages & { classes: string[] }> {
  const data = await readFashionMnist(split, limit === undefined ? {} : { limit });
  const n = data.shape[0];
  const size = 28;
  const pixels = new Float32Array(n * 3 * size * size);
  for (let i = 0; i < n; i++) {
    writeNormalised(pixels, i * 3 * size * size, data.images.subarray(i * size * size, (i + 1) * size * size), size, 1);
  }
  return { pixels, shape: [n, 3, size, size], labels: Int32Array.from(data.labels.subarray(0, n)), classes: data.classes };
}

/** dataset.json (the fields training reads) of a clevr-lite folder. */
export interface ClevrMeta {
  seed: number;
  n: number;
  size: number;
  maxObjects: number;
  questions: Record<string, { classes: string[] }>;
}

/** dataset.json and labels.jsonl of a folder made by `prisma dataset clevr-lite`. */
export function readClevrFolder(dir: string): { meta: ClevrMeta; records: ClevrRecord[] } {
  try {
    const meta = JSON.parse(readFileSync(join(dir, 'dataset.json'), 'utf8')) as ClevrMeta;
    const records = readFileSync(join(dir, 'labels.jsonl'), 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as ClevrRecord);
    return { meta, records };
  } catch (err) {
    throw usageError(
      `${dir} is not a clevr-lite folder (${err instanceof Error ? err.message : String(err)})`,
      'make one with `prisma dataset clevr-lite --n N --seed S --out DIR`',
    );
  }
}

/** The command that (re)makes a clevr-lite folder, from its dataset.json. */
export function clevrCommand(dir: string, meta: ClevrMeta): string {
  return `prisma dataset clevr-lite --n ${meta.n} --out ${dir} --seed ${meta.seed} --size ${meta.size} --max-objects ${meta.maxObjects}`;
}

/** Held-out split of a folder dataset: the last round(n × fraction) records (at least one). */
export function splitHeldOut<T>(all: T[], evalFraction: number, dir: string): { train: T[]; heldOut: T[] } {
  const nEval = Math.max(1, Math.round(all.length * evalFraction));
  const nTrain = all.length - nEval;
  if (nTrain < 1) throw usageError(`too few images in ${dir} for a held-out split`);
  return { train: all.slice(0, nTrain), heldOut: all.slice(nTrain) };
}

async function clevr(dir: string, question: string, limit: number | undefined, evalFraction: number): Promise<TrainingData> {
  const { meta, records } = readClevrFolder(dir);
  const q = meta.questions[question];
  if (!q) {
    throw usageError(`clevr-lite has no question '${question}'`, `choose one of: ${Object.keys(meta.questions).join(', ')}`);
  }
  const all = records.slice(0, limit ?? records.length);
  const size = meta.size;
  const split = splitHeldOut(all, evalFraction, dir);
  const [nTrain, nEval] = [split.train.length, split.heldOut.length];
  const make = async (subset: typeof all): Promise<LabelledImages> => {
    const pixels = new Float32Array(subset.length * 3 * size * size);
    const labels = new Int32Array(subset.length);
    for (const [i, r] of subset.entries()) {
      const raw = await sharp(join(dir, r.image)).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
      if (raw.info.width !== size || raw.info.height !== size || raw.info.channels !== 3) {
        throw usageError(`${r.image} is ${raw.info.width}x${raw.info.height}x${raw.info.channels}, expected ${size}x${size} RGB`);
      }
      writeNormalised(pixels, i * 3 * size * size, new Uint8Array(raw.data.buffer, raw.data.byteOffset, raw.data.length), size, 3);
      const answer = (r.answer_index as Record<string, number | undefined>)[question];
      if (typeof answer !== 'number') throw usageError(`${r.image} has no answer to '${question}'`);
      labels[i] = answer;
    }
    return { pixels, shape: [subset.length, 3, size, size], labels };
  };
  return {
    train: await make(split.train),
    evaluation: await make(split.heldOut),
    classes: q.classes,
    description: {
      source: 'clevr-lite',
      dir,
      seed: meta.seed,
      question,
      train: nTrain,
      heldOut: nEval,
      heldOutRule: `last ${nEval} images`,
    },
    mean: MEAN,
    std: STD,
  };
}

export async function loadTrainingData(req: DataRequest): Promise<TrainingData> {
  if (req.source === 'fashion-mnist') {
    if (req.imageSize !== undefined && req.imageSize !== 28) throw usageError('Fashion-MNIST images are 28x28; drop --image-size');
    const train = await fashion('train', req.limit);
    const test = await fashion('test', req.limit === undefined ? undefined : Math.max(100, Math.round(req.limit / 6)));
    return {
      train,
      evaluation: test,
      classes: train.classes,
      description: {
        source: 'fashion-mnist (Debian dataset-fashion-mnist)',
        train: train.shape[0],
        heldOut: `${test.shape[0]} images of the official test split`,
      },
      mean: MEAN,
      std: STD,
    };
  }
  if (!req.question) {
    // The folder first: a wrong --data path is the error to report, and a right one lists its questions.
    const { meta } = readClevrFolder(req.source);
    throw usageError('--question is required for a clevr-lite folder', `choose one of: ${Object.keys(meta.questions).join(', ')}`);
  }
  return clevr(req.source, req.question, req.limit, req.evalFraction);
}
