/**
 * `prisma dataset <kind>`: make datasets for probing and patching experiments (docs/datasets.md).
 *   clevr-lite     seeded synthetic scenes of coloured shapes, with question answers and patch labels
 *   patch-labels   ImageNet-style box XML (+ masks) -> one class per patch of a model's grid
 *   fashion-mnist  export Fashion-MNIST images as RGB PNGs with labels
 */
import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { DEFAULT_MAX_OBJECTS, DEFAULT_SIZE, writeClevrLite, type ClevrDatasetOptions, type ClevrLiteSummary } from '../../dataset/clevr.js';
import { exportFashionMnist, type FashionMnistSplit } from '../../dataset/fashion-mnist.js';
import { DEFAULT_THRESHOLD, writePatchLabels } from '../../dataset/patch-labels.js';
import { parseNonNegativeInt, parsePositiveInt } from '../../options.js';
import { startProgress } from '../ui/progress.js';
import { argParser, jsonOption } from './common.js';

/** A number in (0, 1]. */
export function parseFraction(value: string, what: string): number {
  const v = Number(value.trim());
  if (value.trim() === '' || !Number.isFinite(v) || v <= 0 || v > 1) throw usageError(`${what} must be a number in (0, 1], got '${value}'`);
  return v;
}

/** '224' or '224x192' (height x width). */
export function parseImageSize(value: string): [number, number] {
  const m = /^\s*(\d+)\s*(?:[x×,]\s*(\d+))?\s*$/i.exec(value);
  const h = m ? Number.parseInt(m[1]!, 10) : 0;
  const w = m ? (m[2] === undefined ? h : Number.parseInt(m[2], 10)) : 0;
  if (!m || h < 1 || w < 1) throw usageError(`--image-size must be N or HxW (positive integers), got '${value}'`);
  return [h, w];
}

export function parseSeed(value: string): number {
  const n = parseNonNegativeInt(value, '--seed');
  if (n > 0xffffffff) throw usageError(`--seed must be at most 4294967295, got '${value}'`);
  return n;
}

export interface ClevrLiteCommandOptions extends ClevrDatasetOptions {
  out: string;
}

export async function clevrLiteCommand(
  options: ClevrLiteCommandOptions,
  ctx: CommandContext,
): Promise<{ ok: true; schemaVersion: 1; dataset: 'clevr-lite' } & ClevrLiteSummary> {
  if (options.patchMinFraction !== undefined && options.patchSize === undefined)
    throw usageError('--patch-min-fraction needs --patch-size');
  const progress = startProgress(ctx, options.n, 'clevr-lite');
  try {
    const summary = await writeClevrLite({
      out: options.out,
      n: options.n,
      seed: options.seed,
      size: options.size,
      maxObjects: options.maxObjects,
      ...(options.patchSize === undefined ? {} : { patchSize: options.patchSize }),
      ...(options.patchMinFraction === undefined ? {} : { patchMinFraction: options.patchMinFraction }),
      ...(options.edit ? { edit: true } : {}),
      onProgress: (done) => progress.update(done),
    });
    return { ok: true, schemaVersion: 1, dataset: 'clevr-lite', ...summary };
  } finally {
    progress.stop();
  }
}

export interface PatchLabelsCommandOptions {
  annotations: string;
  out: string;
  model?: string;
  imageSize?: [number, number];
  patchSize?: number;
  shortestEdge?: number;
  images?: string;
  threshold: number;
}

export async function patchLabelsCommand(options: PatchLabelsCommandOptions, ctx: CommandContext) {
  if (options.model === undefined && (options.imageSize === undefined || options.patchSize === undefined)) {
    throw usageError('give --model MODEL_DIR, or --image-size and --patch-size');
  }
  const progress = startProgress(ctx, 0, 'patch-labels');
  try {
    const doc = await writePatchLabels(options.out, {
      annotations: options.annotations,
      threshold: options.threshold,
      ...(options.model === undefined ? {} : { modelDir: options.model }),
      ...(options.imageSize === undefined ? {} : { imageSize: options.imageSize }),
      ...(options.patchSize === undefined ? {} : { patchSize: options.patchSize }),
      ...(options.shortestEdge === undefined ? {} : { shortestEdge: options.shortestEdge }),
      ...(options.images === undefined ? {} : { images: options.images }),
    });
    return {
      ok: true as const,
      schemaVersion: 1 as const,
      dataset: 'patch-labels' as const,
      out: options.out,
      patchSize: doc.patchSize,
      threshold: doc.threshold,
      classes: doc.classes,
      images: doc.images.map((e) => ({ image: e.image, grid: e.grid, labelled: e.labels.filter((l) => l !== null).length })),
    };
  } finally {
    progress.stop();
  }
}

export interface FashionMnistCommandOptions {
  out: string;
  split: FashionMnistSplit;
  n: number;
  dir?: string;
}

export async function fashionMnistCommand(options: FashionMnistCommandOptions) {
  const summary = await exportFashionMnist({
    out: options.out,
    split: options.split,
    n: options.n,
    ...(options.dir === undefined ? {} : { dir: options.dir }),
  });
  return { ok: true as const, schemaVersion: 1 as const, dataset: 'fashion-mnist' as const, ...summary };
}

const positive = (flag: string) => argParser((v) => parsePositiveInt(v, flag));

export function registerDataset(program: Command, ctx: CommandContext): void {
  const dataset = program.command('dataset').description('make datasets for probing and patching: clevr-lite, patch-labels, fashion-mnist');
  // Subcommands copy these settings when created; src/cli/main.ts only configures first-level commands.
  dataset.exitOverride().configureOutput({
    writeOut: (s) => ctx.io.stdout.write(s),
    writeErr: (s) => ctx.io.stderr.write(s),
    outputError: () => {},
  });

  dataset
    .command('clevr-lite')
    .description('generate seeded synthetic scenes of coloured shapes with question answers (docs/datasets.md)')
    .addOption(new Option('--n <count>', 'number of images').argParser(positive('--n')).makeOptionMandatory())
    .addOption(new Option('--out <dir>', 'output folder (images/, labels.jsonl, dataset.json)').makeOptionMandatory())
    .addOption(
      new Option('--seed <seed>', 'PRNG seed (0..4294967295); same seed, same bytes').argParser(argParser(parseSeed)).makeOptionMandatory(),
    )
    .addOption(new Option('--size <px>', 'image size (square)').default(DEFAULT_SIZE).argParser(positive('--size')))
    .addOption(
      new Option('--max-objects <k>', 'objects per image are 1..k').default(DEFAULT_MAX_OBJECTS).argParser(positive('--max-objects')),
    )
    .addOption(
      new Option('--patch-size <px>', 'also write patch-labels/NNNNNN.json for this patch size').argParser(positive('--patch-size')),
    )
    .addOption(
      new Option(
        '--patch-min-fraction <f>',
        'patch label rule: the object covering at least this fraction (default: plurality incl. background)',
      ).argParser(argParser((v) => parseFraction(v, '--patch-min-fraction'))),
    )
    .addOption(new Option('--edit', 'also write edited/ (largest object recoloured) and edits.jsonl: clean/corrupt pairs'))
    .addOption(jsonOption())
    .action(async (options: ClevrLiteCommandOptions) => {
      printJson(ctx, await clevrLiteCommand(options, ctx));
    });

  dataset
    .command('patch-labels')
    .description("ImageNet-style box XML (and masks) -> one class per patch of a model's patch grid")
    .addOption(
      new Option(
        '--annotations <path>',
        'a PASCAL VOC / ILSVRC .xml file or a folder of them (mask: <stem>.png beside the XML)',
      ).makeOptionMandatory(),
    )
    .addOption(new Option('--out <file>', 'output JSON file').makeOptionMandatory())
    .addOption(new Option('--model <dir>', 'model folder: image_size/patch_size from config.json, geometry from preprocessor_config.json'))
    .addOption(
      new Option('--image-size <n>', 'preprocessed size, N or HxW (without --model: resize to it)').argParser(argParser(parseImageSize)),
    )
    .addOption(new Option('--patch-size <px>', 'patch size (overrides the model config)').argParser(positive('--patch-size')))
    .addOption(
      new Option('--shortest-edge <px>', 'without --model: resize the shortest edge to this, then centre-crop to --image-size').argParser(
        positive('--shortest-edge'),
      ),
    )
    .addOption(new Option('--images <dir>', 'folder of the images: record their paths, read sizes missing from the XML'))
    .addOption(
      new Option('--threshold <f>', 'minimum fraction of a patch the winning class must cover')
        .default(DEFAULT_THRESHOLD)
        .argParser(argParser((v) => parseFraction(v, '--threshold'))),
    )
    .addOption(jsonOption())
    .action(async (options: PatchLabelsCommandOptions) => {
      printJson(ctx, await patchLabelsCommand(options, ctx));
    });

  dataset
    .command('fashion-mnist')
    .description('export Fashion-MNIST images as 28x28 RGB PNGs with labels.jsonl (demo inputs)')
    .addOption(new Option('--out <dir>', 'output folder').makeOptionMandatory())
    .addOption(new Option('--split <split>', 'train or test').choices(['train', 'test']).default('test'))
    .addOption(new Option('--n <count>', 'number of images (the first n of the split)').default(20).argParser(positive('--n')))
    .addOption(new Option('--dir <dir>', 'folder with the IDX .gz files (default /usr/share/datasets/fashion-mnist)'))
    .addOption(jsonOption())
    .action(async (options: FashionMnistCommandOptions) => {
      printJson(ctx, await fashionMnistCommand(options));
    });
}
