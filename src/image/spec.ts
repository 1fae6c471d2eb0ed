/**
 * What to do to one image before the model sees it (`PreprocessSpec`), read from a Hugging Face
 * `preprocessor_config.json` (`parsePreprocessorConfig`), plus the geometry of the resize + centre
 * crop and `withImageSize` (the same preprocessing retargeted to another input size).
 *
 * The timm (`config.json` `pretrained_cfg`) and open_clip (`open_clip_config.json`) readers are in
 * `family-preprocess.ts`; the pixel operations in `pixels.ts`.
 */
import { PrismaError, usageError } from '../errors.js';

export type Resample = 'nearest' | 'lanczos' | 'bilinear' | 'bicubic' | 'box' | 'hamming';

/** PIL.Image.Resampling enum values, as stored in `resample`. */
export const PIL_RESAMPLE: Record<number, Resample> = {
  0: 'nearest',
  1: 'lanczos',
  2: 'bilinear',
  3: 'bicubic',
  4: 'box',
  5: 'hamming',
};

export interface Size2 {
  height: number;
  width: number;
}

/**
 * - `exact`: resize to `height` x `width`. `fit` (default `fill`) says how: `fill` ignores the aspect
 *   ratio (HF `{height, width}`, torchvision `Resize((h, w))`); `cover` / `contain` keep it, as
 *   timm's and open_clip's `ResizeKeepRatio`: ratio = min (cover) or max (contain) of
 *   (srcH / height, srcW / width), output = round-half-even(src / ratio) per side.
 * - `shortest_edge`: shortest side to `shortestEdge`, long side `trunc(shortestEdge * long / short)`
 *   (HF `get_resize_output_image_size`, torchvision `Resize(int)`: the same rule).
 */
export type ResizeSpec =
  | { mode: 'exact'; height: number; width: number; fit?: 'fill' | 'cover' | 'contain' }
  | { mode: 'shortest_edge'; shortestEdge: number };

/** What to do to one image; produced from the model folder's config files or from defaults. */
export interface PreprocessSpec {
  /** Path of the file the settings came from (preprocessor_config.json, config.json, open_clip_config.json), or 'default'. */
  source: string;
  /** The HF image processor class, 'timm' or 'open_clip'. */
  processorType: string;
  resize: ResizeSpec | null;
  /** Pillow's filter; resizing is a port of Pillow's (resample.ts), so every filter is exact. */
  resample: Resample;
  centerCrop: Size2 | null;
  /**
   * How the crop is centred. `floor` (default; HF `center_crop`): top = floor((in - out) / 2), and a
   * smaller image is placed at ceil(pad / 2). `round` (torchvision `CenterCrop`, timm/open_clip
   * `CenterCropOrPad`): a smaller side is padded floor(pad / 2) before, otherwise
   * top = round-half-even((in - out) / 2). They differ only when in - out is odd.
   */
  cropRounding?: 'floor' | 'round';
  /** 8-bit RGB value of the padding when the crop is larger than the resized image (default 0). */
  padFill?: [number, number, number];
  rescaleFactor: number | null;
  /** Subtracted after rescaling, before normalising: 1 for HF VivitImageProcessor `offset: true` (default 0). */
  offset?: number;
  normalize: { mean: [number, number, number]; std: [number, number, number] } | null;
  /** timm `crop_pct`: the resize is floor(size / cropPct); kept so `withImageSize` can apply timm's rule. */
  cropPct?: number;
}

export const IMAGENET_STANDARD = [0.5, 0.5, 0.5] as const;
export const IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225] as const;
export const OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;
const DEFAULT_RESCALE = 1 / 255;

export type Json = Record<string, unknown>;

export function configError(source: string, message: string, hint?: string): PrismaError {
  return new PrismaError('E_CONFIG', `${source}: ${message}`, {
    hint: hint ?? 'fix or remove preprocessor_config.json (without it, images are resized to the model size with mean/std 0.5)',
  });
}

export function bool(cfg: Json, key: string, fallback: boolean, source: string): boolean {
  const v = cfg[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw configError(source, `'${key}' must be true or false`);
  return v;
}

export function positiveInt(v: unknown, what: string, source: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw configError(source, `${what} must be a positive integer`);
  return v;
}

export function triple(v: unknown, key: string, fallback: readonly number[], source: string): [number, number, number] {
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

export function meanStd(
  mean: unknown,
  std: unknown,
  fallbackMean: readonly number[],
  fallbackStd: readonly number[],
  source: string,
  keys = ['image_mean', 'image_std'],
): NonNullable<PreprocessSpec['normalize']> {
  const m = triple(mean, keys[0]!, fallbackMean, source);
  const s = triple(std, keys[1]!, fallbackStd, source);
  if (s.some((x) => x === 0)) throw configError(source, `'${keys[1]}' must not contain 0`);
  return { mean: m, std: s };
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

/** Constructor defaults of the slow HF image processors (transformers 4.57), where they differ. */
interface HfDefaults {
  /** An int `size` is the shortest edge (get_size_dict(default_to_square=False)), else a square. */
  intSizeIsShortestEdge: boolean;
  resample: Resample;
  doCenterCrop: boolean;
  rescaleFactor: number;
  mean: readonly number[];
  std: readonly number[];
  /** The class has VivitImageProcessor's `offset` (x * rescale_factor - 1), with this default. */
  offset?: boolean;
}

const VIT_DEFAULTS: HfDefaults = {
  intSizeIsShortestEdge: false,
  resample: 'bilinear',
  doCenterCrop: false,
  rescaleFactor: DEFAULT_RESCALE,
  mean: IMAGENET_STANDARD,
  std: IMAGENET_STANDARD,
};
const CLIP_DEFAULTS: HfDefaults = {
  intSizeIsShortestEdge: true,
  resample: 'bicubic',
  doCenterCrop: true,
  rescaleFactor: DEFAULT_RESCALE,
  mean: OPENAI_CLIP_MEAN,
  std: OPENAI_CLIP_STD,
};
const VIDEOMAE_DEFAULTS: HfDefaults = { ...VIT_DEFAULTS, intSizeIsShortestEdge: true, doCenterCrop: true };

const HF_DEFAULTS: Record<string, HfDefaults> = {
  ViTImageProcessor: VIT_DEFAULTS,
  CLIPImageProcessor: CLIP_DEFAULTS,
  // BitImageProcessor is what HF ships for DINOv2; its own defaults are CLIP's (OpenAI mean/std).
  BitImageProcessor: CLIP_DEFAULTS,
  VideoMAEImageProcessor: VIDEOMAE_DEFAULTS,
  VivitImageProcessor: { ...VIDEOMAE_DEFAULTS, rescaleFactor: 1 / 127.5, offset: true },
};

/** `CLIPFeatureExtractor` / `CLIPImageProcessorFast` -> `CLIPImageProcessor`. */
function hfClass(name: string): string {
  return name.replace(/FeatureExtractor$/, 'ImageProcessor').replace(/Fast$/, '');
}

function hfDefaults(processorType: string): HfDefaults {
  return HF_DEFAULTS[hfClass(processorType)] ?? (/clip/i.test(processorType) ? CLIP_DEFAULTS : VIT_DEFAULTS);
}

/**
 * Interpret a preprocessor_config.json object. `imageSize` ([height, width] from the model config)
 * is used where the processor does not give a size. Other defaults follow the HF class named in
 * `image_processor_type` (ViT, CLIP, Bit, VideoMAE, Vivit; unknown classes: CLIP's if the name
 * contains "clip", else ViT's). VivitImageProcessor's `offset` (default true) subtracts 1 after
 * rescaling and before normalising, as transformers does.
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
  const d = hfDefaults(processorType);
  const [mh, mw] = [imageSize[0]!, imageSize[1]!];

  let resize: ResizeSpec | null = null;
  if (bool(cfg, 'do_resize', true, source)) {
    if (cfg['size'] === undefined || cfg['size'] === null) {
      // The class default (224 / shortest edge 224 / 256) is for the checkpoints HF ships; use the model's size.
      resize =
        d.intSizeIsShortestEdge && mh === mw ? { mode: 'shortest_edge', shortestEdge: mh } : { mode: 'exact', height: mh, width: mw };
    } else {
      resize = parseSize(cfg['size'], !d.intSizeIsShortestEdge, source, 'size');
    }
  }
  const resample = parseResample(cfg['resample'], d.resample, source);

  const hasCrop = cfg['crop_size'] !== undefined && cfg['crop_size'] !== null;
  const doCrop = bool(cfg, 'do_center_crop', d.doCenterCrop, source);
  const centerCrop = doCrop ? (hasCrop ? parseCrop(cfg['crop_size'], source) : { height: mh, width: mw }) : null;

  let rescaleFactor: number | null = null;
  const doRescale = bool(cfg, 'do_rescale', true, source);
  if (doRescale) {
    const f = cfg['rescale_factor'] ?? d.rescaleFactor;
    if (typeof f !== 'number' || !Number.isFinite(f)) throw configError(source, `'rescale_factor' must be a number`);
    rescaleFactor = f;
  }
  let offset = 0;
  if (d.offset !== undefined && bool(cfg, 'offset', d.offset, source)) {
    if (!doRescale)
      throw configError(source, `'offset' needs do_rescale (transformers raises "For offset, do_rescale must also be set to True")`);
    offset = 1;
  }

  const normalize = bool(cfg, 'do_normalize', true, source) ? meanStd(cfg['image_mean'], cfg['image_std'], d.mean, d.std, source) : null;

  // `do_convert_rgb` is not consulted: images are always converted to RGB (the model takes 3 channels).

  return {
    source,
    processorType,
    resize,
    resample,
    centerCrop,
    rescaleFactor,
    ...(offset !== 0 ? { offset } : {}),
    normalize,
  };
}

/** Used when the model folder says nothing about preprocessing: resize to the model size, mean/std 0.5. */
export function defaultPreprocessSpec(imageSize: readonly number[]): PreprocessSpec {
  return {
    source: 'default',
    processorType: 'ViTImageProcessor',
    resize: { mode: 'exact', height: imageSize[0]!, width: imageSize[1]! },
    resample: 'bilinear',
    centerCrop: null,
    rescaleFactor: DEFAULT_RESCALE,
    normalize: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  };
}

// ---------------------------------------------------------------------------------------------
// Geometry

/** Python's round(): halves go to the even neighbour (round(2.5) == 2). */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/** HF `get_resize_output_image_size` with default_to_square=False: shortest edge, long edge truncated. */
export function shortestEdgeSize(width: number, height: number, shortestEdge: number): Size2 {
  if (width <= height) return { width: shortestEdge, height: Math.trunc((shortestEdge * height) / width) };
  return { height: shortestEdge, width: Math.trunc((shortestEdge * width) / height) };
}

/** Size after `resize` of a `width` x `height` image. */
export function resizedSize(resize: ResizeSpec | null, width: number, height: number): Size2 {
  if (!resize) return { width, height };
  if (resize.mode === 'shortest_edge') return shortestEdgeSize(width, height, resize.shortestEdge);
  const fit = resize.fit ?? 'fill';
  if (fit === 'fill') return { width: resize.width, height: resize.height };
  // timm / open_clip ResizeKeepRatio.get_params (random scale and aspect off)
  const ratioH = height / resize.height;
  const ratioW = width / resize.width;
  const ratio = fit === 'cover' ? Math.min(ratioH, ratioW) : Math.max(ratioH, ratioW);
  return { height: Math.max(1, roundHalfEven(height / ratio)), width: Math.max(1, roundHalfEven(width / ratio)) };
}

/** Offset of a centre crop of `out` from `size` (negative: the image is placed that far into the padding). */
export function cropOffset(size: number, out: number, rounding: 'floor' | 'round' = 'floor'): number {
  if (rounding === 'floor' || out > size) {
    // HF: floor((in - out) / 2) also when padding (image at ceil(pad / 2));
    // torchvision pads floor(pad / 2) before the image.
    return rounding === 'floor' ? Math.floor((size - out) / 2) : -Math.floor((out - size) / 2);
  }
  return roundHalfEven((size - out) / 2);
}

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
export function preprocessGeometry(
  spec: Pick<PreprocessSpec, 'resize' | 'centerCrop' | 'cropRounding'>,
  width: number,
  height: number,
): Geometry {
  const r = resizedSize(spec.resize, width, height);
  let left = 0;
  let top = 0;
  let fw = r.width;
  let fh = r.height;
  if (spec.centerCrop) {
    fw = spec.centerCrop.width;
    fh = spec.centerCrop.height;
    left = cropOffset(r.width, fw, spec.cropRounding);
    top = cropOffset(r.height, fh, spec.cropRounding);
  }
  return { srcWidth: width, srcHeight: height, resizedWidth: r.width, resizedHeight: r.height, left, top, width: fw, height: fh };
}

/** The [height, width] every image comes out at, or null when it depends on the image (shortest edge, no crop). */
export function specOutputSize(spec: Pick<PreprocessSpec, 'resize' | 'centerCrop'>): [number, number] | null {
  if (spec.centerCrop) return [spec.centerCrop.height, spec.centerCrop.width];
  if (spec.resize?.mode === 'exact' && (spec.resize.fit ?? 'fill') === 'fill') return [spec.resize.height, spec.resize.width];
  return null;
}

/**
 * Why `spec` gives images of different sizes (for error hints), or null when every image comes out
 * at one size.
 */
export function unfixedSizeReason(spec: PreprocessSpec): string | null {
  if (specOutputSize(spec)) return null;
  if (!spec.resize) return 'it does not resize (do_resize is false) and does not crop';
  if (spec.resize.mode === 'shortest_edge') return `it resizes the shortest edge to ${spec.resize.shortestEdge} and does not crop`;
  return 'it resizes keeping the aspect ratio and does not crop';
}

/** What `withImageSize(spec, size)` does to a spec that leaves the size to the image, in words. */
export function defaultGeometryText(spec: PreprocessSpec): string {
  if (!spec.resize && !hfDefaults(spec.processorType).intSizeIsShortestEdge)
    return `squashed to it, as ${spec.processorType} does by default`;
  return `resized on the shortest edge and centre-cropped to it, as ${spec.processorType} does by default`;
}

// ---------------------------------------------------------------------------------------------
// --image-size

/**
 * The same preprocessing for a model run at `size` ([height, width], e.g. `--image-size`):
 * - a centre crop becomes `size`;
 * - the resize before it keeps the ratio the spec had to its crop: timm specs redo timm's rule
 *   floor(side / crop_pct); others scale by size / crop and round (shortest edge 36 before a 32 crop
 *   becomes 54 for 48). A shortest-edge resize with a non-square `size` becomes a keep-ratio `cover`
 *   resize to the scaled box (so the crop always fits, as timm does for non-square inputs);
 * - without a crop, an exact (squashing) resize becomes `size`;
 * - a spec that leaves the size to the image (no resize, or a shortest-edge / keep-ratio resize
 *   with no crop: `do_resize` or `do_center_crop` false) gets the geometry its processor class uses
 *   by default, aimed at `size`: ViTImageProcessor squashes to `size`; the shortest-edge classes
 *   (CLIP, Bit/DINOv2, VideoMAE, ViViT) resize the shortest edge and centre-crop `size` (a keep-ratio
 *   cover resize when `size` is not square). So every image comes out at `size`.
 * A spec that already produces `size` comes back equal.
 */
export function withImageSize(spec: PreprocessSpec, size: number | readonly number[]): PreprocessSpec {
  const [h, w] = typeof size === 'number' ? [size, size] : [size[0]!, size[1] ?? size[0]!];
  if (!(Number.isInteger(h) && Number.isInteger(w) && h > 0 && w > 0)) {
    throw usageError(`image size must be positive integers, got ${JSON.stringify(size)}`);
  }
  const resize = spec.resize;
  if (!spec.centerCrop) {
    if (resize?.mode === 'exact' && (resize.fit ?? 'fill') === 'fill') return { ...spec, resize: { ...resize, height: h, width: w } };
    if (!resize && !hfDefaults(spec.processorType).intSizeIsShortestEdge) {
      return { ...spec, resize: { mode: 'exact', height: h, width: w } };
    }
    const keepRatio: ResizeSpec =
      h === w ? { mode: 'shortest_edge', shortestEdge: h } : { mode: 'exact', height: h, width: w, fit: 'cover' };
    return { ...spec, resize: keepRatio, centerCrop: { height: h, width: w } };
  }
  const crop = spec.centerCrop;
  const cropPct = spec.cropPct;
  const scaled = (side: number, resizedSide: number, cropSide: number): number =>
    cropPct !== undefined ? Math.floor(side / cropPct) : Math.max(1, Math.round((resizedSide * side) / cropSide));
  let out: ResizeSpec | null = null;
  if (resize?.mode === 'exact') {
    out = { ...resize, height: scaled(h, resize.height, crop.height), width: scaled(w, resize.width, crop.width) };
  } else if (resize?.mode === 'shortest_edge') {
    const cropMin = Math.min(crop.height, crop.width);
    if (h === w) {
      out = { mode: 'shortest_edge', shortestEdge: scaled(h, resize.shortestEdge, cropMin) };
    } else {
      out = {
        mode: 'exact',
        height: scaled(h, resize.shortestEdge, cropMin),
        width: scaled(w, resize.shortestEdge, cropMin),
        fit: 'cover',
      };
    }
  }
  return { ...spec, resize: out, centerCrop: { height: h, width: w } };
}
