/**
 * Image preprocessing that reproduces the reference libraries' eval transforms with sharp (HF image
 * processors from `preprocessor_config.json`, timm's `pretrained_cfg`, open_clip's
 * `preprocess_cfg`), plus `loadInputs`, which turns CLI-style input paths (images, folders, video
 * clips, pre-processed `.npy` / `.safetensors` tensors) into one `[B, C, H, W]` float32 batch, or
 * `[B, T, C, H, W]` for a video model.
 *
 * This module is the public face; the parts live in
 * - `spec.ts`: `PreprocessSpec`, the HF parser, resize/crop geometry, `withImageSize`;
 * - `family-preprocess.ts`: the timm and open_clip readers and `readPreprocessSpec`;
 * - `pixels.ts`: decoding, resizing, cropping and normalising with sharp;
 * - `video.ts`: clips (frame folders, animated GIF/WebP) and frame sampling.
 */
import type { Stats } from 'node:fs';
import { readdir, realpath, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';

import { PrismaError } from '../errors.js';
import { readTensorFile, type ModelInfo, type TensorData } from '../native.js';
import { batchRows, checkFinite, concatBatches, formatShape, numel, type PixelBatch } from '../tensor.js';
import { readPreprocessSpec } from './family-preprocess.js';
import { IMAGE_EXTENSIONS, preprocessImage } from './pixels.js';
import { defaultGeometryText, specOutputSize, unfixedSizeReason, type PreprocessSpec } from './spec.js';
import { isVideoModel, preprocessClip } from './video.js';

export {
  PIL_RESAMPLE,
  parsePreprocessorConfig,
  defaultPreprocessSpec,
  shortestEdgeSize,
  resizedSize,
  cropOffset,
  roundHalfEven,
  preprocessGeometry,
  specOutputSize,
  withImageSize,
  unfixedSizeReason,
  defaultGeometryText,
  type Resample,
  type Size2,
  type ResizeSpec,
  type PreprocessSpec,
  type Geometry,
} from './spec.js';
export { readPreprocessSpec, parseTimmConfig, parseOpenClipConfig, isTimmConfig } from './family-preprocess.js';
export {
  IMAGE_EXTENSIONS,
  decodeRgb,
  decodeFrames,
  preprocessRgb,
  preprocessImage,
  centerCropRgb,
  cropRgb,
  toChw,
  type RawRgb,
  type Chw,
} from './pixels.js';
export { isVideoModel, sampleFrameIndices, listFrameFiles, readClipFrames, preprocessClip } from './video.js';

// ---------------------------------------------------------------------------------------------
// Inputs

export const TENSOR_EXTENSIONS = ['.npy', '.safetensors'] as const;

export type InputKind = 'image' | 'tensor';

export function inputKind(path: string): InputKind {
  return (TENSOR_EXTENSIONS as readonly string[]).includes(extname(path).toLowerCase()) ? 'tensor' : 'image';
}

export function isImageFile(name: string): boolean {
  return (IMAGE_EXTENSIONS as readonly string[]).includes(extname(name).toLowerCase());
}

/** The input's file status (symlinks followed), or E_INPUT when it does not exist. */
async function statInput(path: string): Promise<Stats> {
  try {
    return await stat(path);
  } catch {
    throw new PrismaError('E_INPUT', `input not found: ${path}`, { data: { path } });
  }
}

/** What a folder held that is not read as an input. */
export interface SkippedEntry {
  path: string;
  why: 'not an image' | 'a folder' | 'a broken link' | 'already read';
}

export interface ExpandOptions {
  /** Read images in subfolders too, depth first in name order (class-per-folder layouts). */
  recursive?: boolean;
  /** Told, per folder, what it held that was not read (other files, subfolders without `recursive`). */
  onSkip?: (folder: string, skipped: SkippedEntry[]) => void;
}

const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * A folder's images (symlinks followed, names sorted by code point); with `recursive`, its
 * subfolders' too. `seen` holds the real paths of folders already read, so a link cycle ends.
 */
async function folderImages(dir: string, options: ExpandOptions, seen: Set<string>): Promise<{ images: string[]; subfolders: string[] }> {
  seen.add(await realpath(dir));
  const images: string[] = [];
  const subfolders: string[] = [];
  const skipped: SkippedEntry[] = [];
  const names = (await readdir(dir)).sort(byCodePoint);
  for (const name of names) {
    const path = join(dir, name);
    const st = await stat(path).catch(() => undefined); // follows symlinks; undefined for a broken one
    if (!st) skipped.push({ path, why: 'a broken link' });
    else if (st.isDirectory()) {
      subfolders.push(path);
      if (!options.recursive) skipped.push({ path, why: 'a folder' });
      else if (seen.has(await realpath(path))) skipped.push({ path, why: 'already read' });
      else images.push(...(await folderImages(path, options, seen)).images);
    } else if (st.isFile() && isImageFile(name)) images.push(path);
    else skipped.push({ path, why: 'not an image' });
  }
  if (skipped.length > 0) options.onSkip?.(dir, skipped);
  return { images, subfolders };
}

/**
 * Inputs as files: a folder becomes its image files (sorted by code point, symlinks followed;
 * subfolders with `recursive`); files are kept as given. E_INPUT for a missing path or a folder
 * without images (its hint says what it held instead).
 */
export async function expandInputs(paths: readonly string[], options: ExpandOptions = {}): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    const st = await statInput(p);
    if (st.isDirectory()) {
      const skipped: SkippedEntry[] = [];
      const { images, subfolders } = await folderImages(
        p,
        {
          ...options,
          onSkip: (f, s) => {
            if (f === p) skipped.push(...s);
            options.onSkip?.(f, s);
          },
        },
        new Set(),
      );
      if (images.length === 0) {
        const others = skipped.filter((s) => s.why === 'not an image').map((s) => basename(s.path));
        const hint =
          subfolders.length > 0 && !options.recursive
            ? `it has ${subfolders.length} subfolder${subfolders.length === 1 ? '' : 's'} (${subfolders
                .slice(0, 3)
                .map((s) => basename(s))
                .join(', ')}${subfolders.length > 3 ? ', …' : ''}): pass --recursive to read the images in them`
            : `image extensions: ${IMAGE_EXTENSIONS.join(' ')}${others.length > 0 ? `; it holds ${others.slice(0, 3).join(', ')}${others.length > 3 ? ', …' : ''}` : ''}`;
        throw new PrismaError('E_INPUT', `no images in folder ${p}`, { hint, data: { path: p } });
      }
      out.push(...images);
    } else {
      out.push(p);
    }
  }
  if (out.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  return out;
}

/** What `loadInputs` needs to know about the model (a `Model` satisfies it). */
export interface InputTarget {
  /** `numFrames` may be left out for an image model (0). */
  info: Pick<ModelInfo, 'modelDir' | 'imageSize' | 'numChannels'> & Partial<Pick<ModelInfo, 'numFrames'>>;
}

export interface LoadInputsOptions {
  /** Tensor to use from a `.safetensors` input holding several (default: the only one, else `pixel_values`). */
  inputKey?: string;
  /** Preprocessing for images, or a function giving it (default: read from the model folder). Only used when an image is given. */
  preprocess?: PreprocessSpec | (() => Promise<PreprocessSpec>);
  /** Called after each input (file, or clip for a video model) is done. */
  onProgress?: (done: number, total: number, path: string) => void;
  /** How folders of images are read (subfolders, what was skipped). */
  expand?: ExpandOptions;
}

function expectedShapeText(info: InputTarget['info']): string {
  const [h, w] = info.imageSize;
  const c = info.numChannels;
  if (isVideoModel(info)) return `[B, ${info.numFrames}, ${c}, ${h}, ${w}] or [${info.numFrames}, ${c}, ${h}, ${w}]`;
  return `[B, ${c}, ${h}, ${w}] or [${c}, ${h}, ${w}]`;
}

/** The input tensor of a tensor file: `inputKey`, else the only tensor, else `pixel_values`. */
export function pickInputTensor(tensors: readonly TensorData[], path: string, inputKey?: string): TensorData {
  let t: TensorData | undefined = tensors[0];
  if (inputKey !== undefined) {
    t = tensors.find((x) => x.name === inputKey);
    if (!t) {
      const names = tensors.map((x) => x.name);
      throw new PrismaError(
        'E_TENSOR_FILE',
        `${path} has no tensor '${inputKey}' (it has ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', …' : ''})`,
      );
    }
  } else if (tensors.length > 1) {
    t = tensors.find((x) => x.name === 'pixel_values');
    if (!t) {
      throw new PrismaError('E_TENSOR_FILE', `${path} has ${tensors.length} tensors and none is named 'pixel_values'`, {
        hint: 'pass --input-key NAME to choose one',
      });
    }
  }
  if (!t) throw new PrismaError('E_TENSOR_FILE', `${path} holds no tensors`);
  return t;
}

/**
 * A pre-processed tensor as a batch for the model: `[B, C, H, W]` or `[C, H, W]` for an image
 * model, `[B, T, C, H, W]` or `[T, C, H, W]` (T = numFrames, never resampled) for a video model.
 * E_SHAPE otherwise. Labels: the path, or `path[i]` for each row of a batch.
 */
export function tensorToBatch(t: Pick<TensorData, 'name' | 'shape' | 'data'>, path: string, info: InputTarget['info']): PixelBatch {
  const [h, w] = info.imageSize as [number, number];
  const c = info.numChannels;
  const video = isVideoModel(info);
  const item = video ? [info.numFrames!, c, h, w] : [c, h, w];
  const shape = t.shape.length === item.length ? [1, ...t.shape] : [...t.shape];
  if (shape.length !== item.length + 1 || !item.every((d, i) => shape[i + 1] === d) || numel(shape) !== t.data.length) {
    throw new PrismaError(
      'E_SHAPE',
      `${path}: tensor '${t.name}' has shape ${formatShape(t.shape)}, the model needs ${expectedShapeText(info)}`,
      { data: { path, shape: t.shape } },
    );
  }
  const b = shape[0]!;
  const labels = b === 1 ? [path] : Array.from({ length: b }, (_, i) => `${path}[${i}]`);
  return { data: t.data, shape: (video ? [b, info.numFrames!, c, h, w] : [b, c, h, w]) as PixelBatch['shape'], labels };
}

function tensorInput(path: string, info: InputTarget['info'], inputKey: string | undefined): PixelBatch {
  const tensors = readTensorFile(path);
  const t =
    extname(path).toLowerCase() === '.safetensors' ? pickInputTensor(tensors, path, inputKey) : pickInputTensor(tensors.slice(0, 1), path);
  checkFinite(t.data, `${path}: tensor '${t.name}'`);
  return tensorToBatch(t, path, info);
}

async function resolveSpec(given: LoadInputsOptions['preprocess'], info: InputTarget['info']): Promise<PreprocessSpec> {
  if (given === undefined) return readPreprocessSpec(info.modelDir, info.imageSize);
  return typeof given === 'function' ? given() : given;
}

/**
 * How to get images of `spec` into a model that takes `info.imageSize`, naming the exact flag
 * (`--image-size`; `imageSize` in `loadModel` for library users).
 */
function sizeHint(spec: PreprocessSpec, info: InputTarget['info']): string {
  const [h, w] = info.imageSize as [number, number];
  const out = specOutputSize(spec);
  const source = spec.source === 'default' ? 'the default preprocessing' : spec.source;
  if (out) {
    const size = `${out[0]}x${out[1]}`;
    return isVideoModel(info)
      ? `${source} makes ${size} frames but a video model runs only at its own ${h}x${w}: fix crop_size / size there`
      : `${source} makes ${size}: pass --image-size ${size} to run the model at that size (position embeddings interpolated, as transformers' interpolate_pos_encoding=True does), or fix the sizes in ${source}`;
  }
  return `${source} leaves each image at its own size (${unfixedSizeReason(spec)}); pass --image-size ${h}x${w} and every image is ${defaultGeometryText(spec)}`;
}

function needsRgb(file: string, info: InputTarget['info']): void {
  if (info.numChannels !== 3) {
    throw new PrismaError('E_SHAPE', `${file}: the model takes ${info.numChannels} channels; images give 3`, {
      hint: 'pass a pre-processed .npy or .safetensors tensor instead',
    });
  }
}

/** Video model: each path is one clip (see video.ts); result `[B, T, C, H, W]`. */
async function loadClips(paths: readonly string[], info: InputTarget['info'], options: LoadInputsOptions): Promise<PixelBatch> {
  if (paths.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  const [h, w] = info.imageSize as [number, number];
  const frames = info.numFrames!;
  let spec: PreprocessSpec | undefined;
  const parts: PixelBatch[] = [];
  let done = 0;
  for (const path of paths) {
    await statInput(path);
    if (inputKind(path) === 'tensor') {
      parts.push(tensorInput(path, info, options.inputKey));
    } else {
      needsRgb(path, info);
      spec ??= await resolveSpec(options.preprocess, info);
      const clip = await preprocessClip(path, spec, frames);
      if (clip.height !== h || clip.width !== w) {
        throw new PrismaError('E_SHAPE', `${path}: preprocessing gives ${clip.height}x${clip.width} frames, the model needs ${h}x${w}`, {
          hint: sizeHint(spec, info),
        });
      }
      parts.push({ data: clip.data, shape: [1, frames, 3, h, w], labels: [path] });
    }
    done += 1;
    options.onProgress?.(done, paths.length, path);
  }
  return concatBatches(parts);
}

/**
 * Turn input paths into one pixel batch for `model`, in the order given.
 * - Image model: image files, folders of images (sorted) and pre-processed tensors
 *   (`.npy`, `.safetensors`; `[B,C,H,W]` or `[C,H,W]`) -> `[B, C, H, W]`, one label per image.
 * - Video model (`info.numFrames > 0`): each path is ONE clip: a folder of frames, an animated
 *   GIF/WebP, or a tensor (`[B,T,C,H,W]` or `[T,C,H,W]`) -> `[B, T, C, H, W]`, one label per clip.
 *   Clips are sampled to `numFrames` frames (see `sampleFrameIndices`).
 * Errors: E_INPUT (missing path, empty folder, clip with too few frames), E_IMAGE_DECODE
 * (unreadable image, names the file), E_SHAPE (tensor or processed image does not match the model),
 * E_TENSOR_FILE.
 */
export async function loadInputs(paths: readonly string[], model: InputTarget, options: LoadInputsOptions = {}): Promise<PixelBatch> {
  const info = model.info;
  if (isVideoModel(info)) return loadClips(paths, info, options);
  const files = await expandInputs(paths, options.expand);
  const [h, w] = info.imageSize as [number, number];
  let spec: PreprocessSpec | undefined;
  const parts: PixelBatch[] = [];
  let done = 0;
  for (const file of files) {
    if (inputKind(file) === 'tensor') {
      parts.push(tensorInput(file, info, options.inputKey));
    } else {
      needsRgb(file, info);
      spec ??= await resolveSpec(options.preprocess, info);
      const img = await preprocessImage(file, spec);
      if (img.height !== h || img.width !== w) {
        throw new PrismaError('E_SHAPE', `${file}: preprocessing gives ${img.height}x${img.width}, the model needs ${h}x${w}`, {
          hint: sizeHint(spec, info),
        });
      }
      parts.push({ data: img.data, shape: [1, 3, h, w], labels: [file] });
    }
    done += 1;
    options.onProgress?.(done, files.length, file);
  }
  return concatBatches(parts);
}

/** Inputs known by count and label before any image is decoded, read a batch at a time. */
export interface InputPlan {
  /** Batch entries in all (images, clips, rows of tensor files). */
  total: number;
  /** One per batch entry, in order (as `PixelBatch.labels`). */
  labels: string[];
  /** The inputs as batches of at most `maxRows` entries, each preprocessed when it is reached. */
  batches(): AsyncGenerator<PixelBatch>;
}

type PlannedInput = { kind: 'tensor'; batch: PixelBatch } | { kind: 'file'; path: string };

/**
 * `loadInputs` for inputs too many to hold at once: tensor files are read now (their rows are
 * their count), images and clips are only listed, and `batches()` preprocesses them `maxRows` at a
 * time. The batches, concatenated, are what `loadInputs` gives.
 */
export async function planInputs(
  paths: readonly string[],
  model: InputTarget,
  maxRows: number,
  options: LoadInputsOptions = {},
): Promise<InputPlan> {
  const info = model.info;
  const video = isVideoModel(info);
  const units: PlannedInput[] = [];
  for (const path of video ? paths : await expandInputs(paths, options.expand)) {
    if (video) await statInput(path);
    units.push(
      inputKind(path) === 'tensor' ? { kind: 'tensor', batch: tensorInput(path, info, options.inputKey) } : { kind: 'file', path },
    );
  }
  if (units.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  const labels = units.flatMap((u) => (u.kind === 'tensor' ? u.batch.labels : [u.path]));
  const rows = Math.max(1, Math.floor(maxRows));
  async function* batches(): AsyncGenerator<PixelBatch> {
    let files: string[] = [];
    const flush = async (): Promise<PixelBatch> => {
      const batch = await loadInputs(files, model, options);
      files = [];
      return batch;
    };
    for (const unit of units) {
      if (unit.kind === 'file') {
        files.push(unit.path);
        if (files.length === rows) yield await flush();
        continue;
      }
      if (files.length > 0) yield await flush();
      yield* sliceRows(unit.batch, rows);
    }
    if (files.length > 0) yield await flush();
  }
  return { total: labels.length, labels, batches };
}

/** A batch already in memory as an `InputPlan` (the library's references may be given so). */
export function planBatch(batch: PixelBatch, maxRows: number): InputPlan {
  const rows = Math.max(1, Math.floor(maxRows));
  return {
    total: batch.shape[0],
    labels: batch.labels,
    batches: async function* () {
      yield* sliceRows(batch, rows);
    },
  };
}

/** `batch` as views of at most `rows` entries each. */
function* sliceRows(batch: PixelBatch, rows: number): Generator<PixelBatch> {
  for (let start = 0; start < batch.shape[0]; start += rows) yield batchRows(batch, start, Math.min(batch.shape[0], start + rows));
}
