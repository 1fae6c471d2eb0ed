/**
 * Image preprocessing that reproduces a Hugging Face image processor (`preprocessor_config.json`)
 * with sharp/libvips, plus `loadInputs`, which turns CLI-style input paths (images, folders,
 * pre-processed `.npy` / `.safetensors` tensors) into one `[B, C, H, W]` float32 batch.
 *
 * Pipeline (same order as HF ViTImageProcessor / CLIPImageProcessor):
 *   decode -> EXIF orientation -> RGB (alpha dropped, like PIL `convert("RGB")`) -> 8-bit
 *   -> resize (exact height x width, or shortest edge keeping aspect) -> centre crop
 *   -> rescale (x * rescale_factor) -> normalise ((x - mean) / std) -> CHW float32.
 *
 * Resampling: PIL and libvips both widen the filter support by the scale factor when
 * downscaling (antialiasing), so PIL BILINEAR ~ sharp `linear`, BICUBIC (a = -0.5) ~ sharp
 * `cubic` (Catmull-Rom), LANCZOS ~ `lanczos3`, NEAREST ~ `nearest`. They still differ at the image
 * border (PIL renormalises the clipped kernel, libvips extends edge pixels) and in fixed-point
 * rounding, so results match to about +-1 in 8-bit levels inside the image and a few levels at
 * the border. docs/preprocessing.md has the measured numbers.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';

import sharp from 'sharp';

import { PrismaError } from '../errors.js';
import { readTensorFile, type ModelInfo, type TensorData } from '../native.js';
import { concatBatches, formatShape, type PixelBatch } from '../tensor.js';

export type Resample = 'nearest' | 'lanczos' | 'bilinear' | 'bicubic' | 'box' | 'hamming';
export type SharpKernel = 'nearest' | 'linear' | 'cubic' | 'mitchell' | 'lanczos2' | 'lanczos3';

/** PIL.Image.Resampling enum values, as stored in `resample`. */
export const PIL_RESAMPLE: Record<number, Resample> = {
  0: 'nearest',
  1: 'lanczos',
  2: 'bilinear',
  3: 'bicubic',
  4: 'box',
  5: 'hamming',
};

/** Closest sharp kernel for each PIL filter (box and hamming have no libvips twin). */
export const SHARP_KERNEL: Record<Resample, SharpKernel> = {
  nearest: 'nearest',
  lanczos: 'lanczos3',
  bilinear: 'linear',
  bicubic: 'cubic',
  box: 'linear',
  hamming: 'linear',
};

export interface Size2 {
  height: number;
  width: number;
}

export type ResizeSpec = { mode: 'exact'; height: number; width: number } | { mode: 'shortest_edge'; shortestEdge: number };

/** What to do to one image; produced from preprocessor_config.json or from defaults. */
export interface PreprocessSpec {
  /** Path of the preprocessor_config.json it came from, or 'default'. */
  source: string;
  processorType: string;
  resize: ResizeSpec | null;
  resample: Resample;
  kernel: SharpKernel;
  centerCrop: Size2 | null;
  rescaleFactor: number | null;
  normalize: { mean: [number, number, number]; std: [number, number, number] } | null;
}

const IMAGENET_STANDARD = [0.5, 0.5, 0.5] as const;
const DEFAULT_RESCALE = 1 / 255;

type Json = Record<string, unknown>;

function configError(source: string, message: string): PrismaError {
  return new PrismaError('E_CONFIG', `${source}: ${message}`, {
    hint: 'fix or remove preprocessor_config.json (without it, images are resized to the model size with mean/std 0.5)',
  });
}

function bool(cfg: Json, key: string, fallback: boolean, source: string): boolean {
  const v = cfg[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw configError(source, `'${key}' must be true or false`);
  return v;
}

function positiveInt(v: unknown, what: string, source: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw configError(source, `${what} must be a positive integer`);
  return v;
}

function triple(v: unknown, key: string, fallback: readonly number[], source: string): [number, number, number] {
  if (v === undefined || v === null) return [fallback[0]!, fallback[1]!, fallback[2]!];
  const arr = typeof v === 'number' ? [v] : v;
  if (!Array.isArray(arr) || !arr.every((x) => typeof x === 'number' && Number.isFinite(x))) {
    throw configError(source, `'${key}' must be a number or a list of 3 numbers`);
  }
  const nums = arr as number[];
  if (nums.length === 1) return [nums[0]!, nums[0]!, nums[0]!];
  if (nums.length !== 3) throw configError(source, `'${key}' must have 3 entries (one per RGB channel), got ${nums.length}`);
  return [nums[0]!, nums[1]!, nums[2]!];
}

function parseResample(v: unknown, fallback: Resample, source: string): Resample {
  if (v === undefined || v === null) return fallback;
  if (typeof v === 'number' && PIL_RESAMPLE[v] !== undefined) return PIL_RESAMPLE[v];
  if (typeof v === 'string') {
    const name = v.toLowerCase();
    const found = Object.values(PIL_RESAMPLE).find((r) => r === name);
    if (found) return found;
  }
  throw configError(source, `unknown 'resample' ${JSON.stringify(v)} (expected 0..5, PIL's Resampling enum)`);
}

function parseSize(v: unknown, squareInt: boolean, source: string, key: string): ResizeSpec {
  if (typeof v === 'number') {
    const n = positiveInt(v, `'${key}'`, source);
    return squareInt ? { mode: 'exact', height: n, width: n } : { mode: 'shortest_edge', shortestEdge: n };
  }
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Json;
    if (o['height'] !== undefined || o['width'] !== undefined) {
      return {
        mode: 'exact',
        height: positiveInt(o['height'], `'${key}.height'`, source),
        width: positiveInt(o['width'], `'${key}.width'`, source),
      };
    }
    if (o['shortest_edge'] !== undefined) {
      if (o['longest_edge'] !== undefined && o['longest_edge'] !== null) {
        throw configError(source, `'${key}.longest_edge' is not supported`);
      }
      return { mode: 'shortest_edge', shortestEdge: positiveInt(o['shortest_edge'], `'${key}.shortest_edge'`, source) };
    }
  }
  throw configError(source, `'${key}' must be {height, width}, {shortest_edge} or an integer`);
}

function parseCrop(v: unknown, source: string): Size2 {
  const spec = parseSize(v, true, source, 'crop_size');
  if (spec.mode !== 'exact') throw configError(source, `'crop_size' must be {height, width} or an integer`);
  return { height: spec.height, width: spec.width };
}

/**
 * Interpret a preprocessor_config.json object. `imageSize` ([height, width] from the model config)
 * is used where the processor does not say. Defaults follow the HF class named in
 * `image_processor_type` (CLIP-style processors: int size = shortest edge, bicubic, centre crop).
 */
export function parsePreprocessorConfig(json: unknown, imageSize: readonly number[], source = 'preprocessor_config.json'): PreprocessSpec {
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw configError(source, 'expected a JSON object');
  const cfg = json as Json;
  const processorType =
    typeof cfg['image_processor_type'] === 'string'
      ? cfg['image_processor_type']
      : typeof cfg['feature_extractor_type'] === 'string'
        ? cfg['feature_extractor_type']
        : 'ViTImageProcessor';
  const clipLike = /clip/i.test(processorType);

  let resize: ResizeSpec | null = null;
  if (bool(cfg, 'do_resize', true, source)) {
    resize =
      cfg['size'] === undefined || cfg['size'] === null
        ? { mode: 'exact', height: imageSize[0]!, width: imageSize[1]! }
        : parseSize(cfg['size'], !clipLike, source, 'size');
  }
  const resample = parseResample(cfg['resample'], clipLike ? 'bicubic' : 'bilinear', source);

  const hasCrop = cfg['crop_size'] !== undefined && cfg['crop_size'] !== null;
  const doCrop = bool(cfg, 'do_center_crop', hasCrop, source);
  const centerCrop = doCrop
    ? hasCrop
      ? parseCrop(cfg['crop_size'], source)
      : { height: imageSize[0]!, width: imageSize[1]! }
    : null;

  let rescaleFactor: number | null = null;
  if (bool(cfg, 'do_rescale', true, source)) {
    const f = cfg['rescale_factor'] ?? DEFAULT_RESCALE;
    if (typeof f !== 'number' || !Number.isFinite(f)) throw configError(source, `'rescale_factor' must be a number`);
    rescaleFactor = f;
  }

  let normalize: PreprocessSpec['normalize'] = null;
  if (bool(cfg, 'do_normalize', true, source)) {
    const mean = triple(cfg['image_mean'], 'image_mean', IMAGENET_STANDARD, source);
    const std = triple(cfg['image_std'], 'image_std', IMAGENET_STANDARD, source);
    if (std.some((s) => s === 0)) throw configError(source, `'image_std' must not contain 0`);
    normalize = { mean, std };
  }

  // `do_convert_rgb` is not consulted: images are always converted to RGB (the model takes 3 channels).

  return { source, processorType, resize, resample, kernel: SHARP_KERNEL[resample], centerCrop, rescaleFactor, normalize };
}

/** Used when the model folder has no preprocessor_config.json: resize to the model size, mean/std 0.5. */
export function defaultPreprocessSpec(imageSize: readonly number[]): PreprocessSpec {
  return {
    source: 'default',
    processorType: 'ViTImageProcessor',
    resize: { mode: 'exact', height: imageSize[0]!, width: imageSize[1]! },
    resample: 'bilinear',
    kernel: SHARP_KERNEL.bilinear,
    centerCrop: null,
    rescaleFactor: DEFAULT_RESCALE,
    normalize: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  };
}

/** Read `<modelDir>/preprocessor_config.json`, or fall back to `defaultPreprocessSpec`. */
export async function readPreprocessSpec(modelDir: string, imageSize: readonly number[]): Promise<PreprocessSpec> {
  const path = join(modelDir, 'preprocessor_config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return defaultPreprocessSpec(imageSize);
    throw new PrismaError('E_IO', `cannot read ${path}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw configError(path, `invalid JSON (${(err as Error).message})`);
  }
  return parsePreprocessorConfig(json, imageSize, path);
}

/** HF `get_resize_output_image_size` with default_to_square=False: shortest edge, long edge truncated. */
export function shortestEdgeSize(width: number, height: number, shortestEdge: number): Size2 {
  if (width <= height) return { width: shortestEdge, height: Math.trunc((shortestEdge * height) / width) };
  return { height: shortestEdge, width: Math.trunc((shortestEdge * width) / height) };
}

/** HF `center_crop` on interleaved RGB uint8: top/left = floor((in - out) / 2), zero padding when smaller. */
/** How source pixel coordinates map into the preprocessed image: x' = x * sx / srcW - left. */
export interface Geometry {
  srcWidth: number;
  srcHeight: number;
  /** Size after resizing (before the crop). */
  resizedWidth: number;
  resizedHeight: number;
  /** Crop offset in resized pixels (negative when the crop pads). */
  left: number;
  top: number;
  /** Final (model input) size. */
  width: number;
  height: number;
}

/** The resize + centre-crop geometry of `spec` for a `width` x `height` source image (as preprocessImage does it). */
export function preprocessGeometry(spec: Pick<PreprocessSpec, 'resize' | 'centerCrop'>, width: number, height: number): Geometry {
  let rw = width;
  let rh = height;
  if (spec.resize) {
    if (spec.resize.mode === 'exact') {
      rw = spec.resize.width;
      rh = spec.resize.height;
    } else {
      const s = shortestEdgeSize(width, height, spec.resize.shortestEdge);
      rw = s.width;
      rh = s.height;
    }
  }
  let left = 0;
  let top = 0;
  let fw = rw;
  let fh = rh;
  if (spec.centerCrop) {
    fw = spec.centerCrop.width;
    fh = spec.centerCrop.height;
    left = Math.floor((rw - fw) / 2);
    top = Math.floor((rh - fh) / 2);
  }
  return { srcWidth: width, srcHeight: height, resizedWidth: rw, resizedHeight: rh, left, top, width: fw, height: fh };
}

export function centerCropRgb(src: Uint8Array, width: number, height: number, crop: Size2): Uint8Array {
  const out = new Uint8Array(crop.width * crop.height * 3);
  const top = Math.floor((height - crop.height) / 2);
  const left = Math.floor((width - crop.width) / 2);
  for (let y = 0; y < crop.height; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= height) continue;
    for (let x = 0; x < crop.width; x++) {
      const sx = x + left;
      if (sx < 0 || sx >= width) continue;
      const s = (sy * width + sx) * 3;
      const d = (y * crop.width + x) * 3;
      out[d] = src[s]!;
      out[d + 1] = src[s + 1]!;
      out[d + 2] = src[s + 2]!;
    }
  }
  return out;
}

/** Rescale + normalise interleaved RGB uint8 into planar CHW float32, written at `out[offset..]`. */
export function toChw(
  rgb: Uint8Array,
  width: number,
  height: number,
  spec: Pick<PreprocessSpec, 'rescaleFactor' | 'normalize'>,
  out: Float32Array = new Float32Array(3 * width * height),
  offset = 0,
): Float32Array {
  const hw = width * height;
  const scale = spec.rescaleFactor ?? 1;
  for (let c = 0; c < 3; c++) {
    const mean = spec.normalize ? spec.normalize.mean[c]! : 0;
    const std = spec.normalize ? spec.normalize.std[c]! : 1;
    const base = offset + c * hw;
    for (let p = 0; p < hw; p++) out[base + p] = (rgb[p * 3 + c]! * scale - mean) / std;
  }
  return out;
}

interface RawRgb {
  data: Uint8Array;
  width: number;
  height: number;
}

async function decodeRgb(path: string): Promise<RawRgb> {
  try {
    // failOn 'error' rejects truncated files; autoOrient applies EXIF orientation like HF's load_image.
    const { data, info } = await sharp(path, { failOn: 'error', autoOrient: true })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
  } catch (err) {
    const detail = ((err as Error).message ?? String(err)).split('\n')[0]!.trim();
    throw new PrismaError('E_IMAGE_DECODE', `cannot decode image '${path}': ${detail}`, {
      hint: 'inputs must be images sharp can read (PNG, JPEG, WebP, GIF, TIFF, AVIF) or .npy/.safetensors tensors',
      data: { path },
    });
  }
}

async function resizeRgb(img: RawRgb, width: number, height: number, kernel: SharpKernel): Promise<RawRgb> {
  if (img.width === width && img.height === height) return img;
  const data = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize(width, height, { fit: 'fill', kernel, fastShrinkOnLoad: false })
    .raw({ depth: 'uchar' })
    .toBuffer();
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width, height };
}

/** Decode and preprocess one image into CHW float32 (`[3, H, W]`), and report its final size. */
export async function preprocessImage(path: string, spec: PreprocessSpec): Promise<{ data: Float32Array; height: number; width: number }> {
  let img = await decodeRgb(path);
  if (spec.resize) {
    const target =
      spec.resize.mode === 'exact'
        ? { width: spec.resize.width, height: spec.resize.height }
        : shortestEdgeSize(img.width, img.height, spec.resize.shortestEdge);
    img = await resizeRgb(img, target.width, target.height, spec.kernel);
  }
  if (spec.centerCrop) {
    img = { data: centerCropRgb(img.data, img.width, img.height, spec.centerCrop), ...spec.centerCrop };
  }
  return { data: toChw(img.data, img.width, img.height, spec), height: img.height, width: img.width };
}

// ---------------------------------------------------------------------------------------------
// Inputs

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.gif', '.tif', '.tiff', '.avif'] as const;
export const TENSOR_EXTENSIONS = ['.npy', '.safetensors'] as const;

export type InputKind = 'image' | 'tensor';

export function inputKind(path: string): InputKind {
  return (TENSOR_EXTENSIONS as readonly string[]).includes(extname(path).toLowerCase()) ? 'tensor' : 'image';
}

export function isImageFile(name: string): boolean {
  return (IMAGE_EXTENSIONS as readonly string[]).includes(extname(name).toLowerCase());
}

/** Expand folders (image files only, sorted by code point, not recursive); keep files as given. */
export async function expandInputs(paths: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    let st;
    try {
      st = await stat(p);
    } catch {
      throw new PrismaError('E_INPUT', `input not found: ${p}`, { data: { path: p } });
    }
    if (st.isDirectory()) {
      const names = (await readdir(p, { withFileTypes: true }))
        .filter((e) => e.isFile() && isImageFile(e.name))
        .map((e) => e.name)
        .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      if (names.length === 0) {
        throw new PrismaError('E_INPUT', `no images in folder ${p}`, {
          hint: `image extensions: ${IMAGE_EXTENSIONS.join(' ')}`,
          data: { path: p },
        });
      }
      out.push(...names.map((n) => join(p, n)));
    } else {
      out.push(p);
    }
  }
  if (out.length === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  return out;
}

/** What `loadInputs` needs to know about the model (a `Model` satisfies it). */
export interface InputTarget {
  info: Pick<ModelInfo, 'modelDir' | 'imageSize' | 'numChannels'>;
}

export interface LoadInputsOptions {
  /** Tensor to use from a `.safetensors` input holding several (default: the only one, else `pixel_values`). */
  inputKey?: string;
  /** Preprocessing for images, or a function giving it (default: read from the model folder). Only used when an image is given. */
  preprocess?: PreprocessSpec | (() => Promise<PreprocessSpec>);
  /** Called after each input file is done. */
  onProgress?: (done: number, total: number, path: string) => void;
}

function expectedShapeText(info: InputTarget['info']): string {
  const [h, w] = info.imageSize;
  return `[B, ${info.numChannels}, ${h}, ${w}] or [${info.numChannels}, ${h}, ${w}]`;
}

function tensorInput(path: string, info: InputTarget['info'], inputKey: string | undefined): PixelBatch {
  const tensors = readTensorFile(path);
  let t: TensorData | undefined = tensors[0];
  if (extname(path).toLowerCase() === '.safetensors') {
    if (inputKey !== undefined) {
      t = tensors.find((x) => x.name === inputKey);
      if (!t) {
        const names = tensors.map((x) => x.name);
        throw new PrismaError('E_TENSOR_FILE', `${path} has no tensor '${inputKey}' (it has ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', …' : ''})`);
      }
    } else if (tensors.length > 1) {
      t = tensors.find((x) => x.name === 'pixel_values');
      if (!t) {
        throw new PrismaError('E_TENSOR_FILE', `${path} has ${tensors.length} tensors and none is named 'pixel_values'`, {
          hint: 'pass --input-key NAME to choose one',
        });
      }
    }
  }
  if (!t) throw new PrismaError('E_TENSOR_FILE', `${path} holds no tensors`);
  const [h, w] = info.imageSize;
  const c = info.numChannels;
  const shape = t.shape.length === 3 ? [1, ...t.shape] : t.shape;
  if (shape.length !== 4 || shape[1] !== c || shape[2] !== h || shape[3] !== w) {
    throw new PrismaError(
      'E_SHAPE',
      `${path}: tensor '${t.name}' has shape ${formatShape(t.shape)}, the model needs ${expectedShapeText(info)}`,
      { data: { path, shape: t.shape } },
    );
  }
  const b = shape[0]!;
  const labels = b === 1 ? [path] : Array.from({ length: b }, (_, i) => `${path}[${i}]`);
  return { data: t.data, shape: [b, c, h, w], labels };
}

async function resolveSpec(given: LoadInputsOptions['preprocess'], info: InputTarget['info']): Promise<PreprocessSpec> {
  if (given === undefined) return readPreprocessSpec(info.modelDir, info.imageSize);
  return typeof given === 'function' ? given() : given;
}

/**
 * Turn input paths into one pixel batch for `model`: image files, folders of images (sorted) and
 * pre-processed tensors (`.npy`, `.safetensors`; `[B,C,H,W]` or `[C,H,W]`), in the order given.
 * Errors: E_INPUT (missing path, empty folder), E_IMAGE_DECODE (unreadable image, names the file),
 * E_SHAPE (tensor or processed image does not match the model), E_TENSOR_FILE.
 */
export async function loadInputs(paths: readonly string[], model: InputTarget, options: LoadInputsOptions = {}): Promise<PixelBatch> {
  const info = model.info;
  const files = await expandInputs(paths);
  const [h, w] = info.imageSize as [number, number];
  let spec: PreprocessSpec | undefined;
  const parts: PixelBatch[] = [];
  let done = 0;
  for (const file of files) {
    if (inputKind(file) === 'tensor') {
      parts.push(tensorInput(file, info, options.inputKey));
    } else {
      if (info.numChannels !== 3) {
        throw new PrismaError('E_SHAPE', `${file}: the model takes ${info.numChannels} channels; images give 3`, {
          hint: 'pass a pre-processed .npy or .safetensors tensor instead',
        });
      }
      spec ??= await resolveSpec(options.preprocess, info);
      const img = await preprocessImage(file, spec);
      if (img.height !== h || img.width !== w) {
        throw new PrismaError('E_SHAPE', `${file}: preprocessing gives ${img.height}x${img.width}, the model needs ${h}x${w}`, {
          hint: `check size / crop_size in ${spec.source}`,
        });
      }
      parts.push({ data: img.data, shape: [1, 3, h, w], labels: [file] });
    }
    done += 1;
    options.onProgress?.(done, files.length, file);
  }
  return concatBatches(parts);
}
