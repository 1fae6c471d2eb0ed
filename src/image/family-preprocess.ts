/**
 * Preprocessing specs from the files each model family ships, and `readPreprocessSpec`, which picks
 * the right one in a model folder:
 *
 * 1. `preprocessor_config.json` (Hugging Face image processors: ViT, CLIP, Bit/DINOv2, VideoMAE, ViViT);
 * 2. `open_clip_config.json` (`preprocess_cfg` + `model_cfg.vision_cfg.image_size`), as open_clip's
 *    `image_transform` (open_clip 3.3.0 `transform.py`) builds its eval transform;
 * 3. `config.json` with timm's `pretrained_cfg` (or `architecture` and no `model_type`), as timm's
 *    `resolve_data_config` + `transforms_imagenet_eval` (timm 1.0.31) build theirs;
 * 4. otherwise the default (resize to the model size, mean/std 0.5).
 *
 * torchvision's transforms on PIL images resize with PIL, like the slow HF processors, so all of
 * them run through the same sharp pipeline; only the geometry rules differ (keep-ratio sizes use
 * Python's round(), torchvision's CenterCrop rounds the offset half-to-even).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { PrismaError } from '../errors.js';
import {
  IMAGENET_DEFAULT_MEAN,
  IMAGENET_DEFAULT_STD,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  configError,
  defaultPreprocessSpec,
  meanStd,
  parsePreprocessorConfig,
  positiveInt,
  roundHalfEven,
  type Json,
  type PreprocessSpec,
  type Resample,
  type ResizeSpec,
} from './spec.js';

const TIMM_HINT = "fix pretrained_cfg in config.json (timm's input_size, interpolation, crop_pct, crop_mode, mean, std)";
const OPEN_CLIP_HINT = 'fix preprocess_cfg in open_clip_config.json (mean, std, interpolation, resize_mode, fill_color)';

function object(v: unknown): Json | undefined {
  return v && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined;
}

/** An int or [height, width] (also [C, H, W] when `chw`). */
function sizeOf(v: unknown, what: string, source: string, hint: string): [number, number] | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number') {
    const n = positiveIntOr(v, what, source, hint);
    return [n, n];
  }
  if (Array.isArray(v) && (v.length === 2 || v.length === 3)) {
    const hw = v.slice(-2);
    return [positiveIntOr(hw[0], what, source, hint), positiveIntOr(hw[1], what, source, hint)];
  }
  throw configError(source, `${what} must be an integer or [height, width]`, hint);
}

function positiveIntOr(v: unknown, what: string, source: string, hint: string): number {
  try {
    return positiveInt(v, what, source);
  } catch {
    throw configError(source, `${what} must be a positive integer`, hint);
  }
}

function withHint<T>(hint: string, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof PrismaError && err.code === 'E_CONFIG') throw new PrismaError('E_CONFIG', err.message, { hint });
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// timm

const TIMM_INTERPOLATION: Record<string, Resample> = {
  nearest: 'nearest',
  bilinear: 'bilinear',
  bicubic: 'bicubic',
  box: 'box',
  hamming: 'hamming',
  lanczos: 'lanczos',
};

/** timm writes `pretrained_cfg`; older exports only `architecture` (HF configs always have `model_type`). */
export function isTimmConfig(json: unknown): boolean {
  const cfg = object(json);
  if (!cfg) return false;
  return object(cfg['pretrained_cfg']) !== undefined || (typeof cfg['architecture'] === 'string' && cfg['model_type'] === undefined);
}

/**
 * timm's eval transform from config.json: `resolve_data_config(pretrained_cfg)` (input_size,
 * interpolation 'bicubic', mean/std ImageNet, crop_pct 0.875 and crop_mode 'center' by default;
 * a falsy crop_pct means the default) then `transforms_imagenet_eval`:
 * scale = floor(side / crop_pct) per side;
 * - center: Resize(scale) on the shortest edge when both scales agree, else ResizeKeepRatio(scale)
 *   (`cover`), then CenterCrop(size);
 * - squash: Resize((scaleH, scaleW)) ignoring aspect, then CenterCrop(size);
 * - border: ResizeKeepRatio(scale, longest) (`contain`), then CenterCropOrPad(size) with fill
 *   round(255 * mean);
 * then ToTensor (/255) and Normalize(mean, std). Without `input_size`, `model_args.img_size`, then
 * `imageSize`.
 */
export function parseTimmConfig(json: unknown, imageSize: readonly number[], source = 'config.json'): PreprocessSpec {
  const cfg = object(json);
  if (!cfg) throw configError(source, 'expected a JSON object', TIMM_HINT);
  const pc = object(cfg['pretrained_cfg']) ?? {};
  const args = object(cfg['model_args']) ?? {};
  const [h, w] = sizeOf(pc['input_size'], "'pretrained_cfg.input_size'", source, TIMM_HINT) ??
    sizeOf(args['img_size'], "'model_args.img_size'", source, TIMM_HINT) ?? [imageSize[0]!, imageSize[1]!];

  const interp = pc['interpolation'] || 'bicubic';
  const resample = typeof interp === 'string' ? TIMM_INTERPOLATION[interp.toLowerCase()] : undefined;
  if (!resample) {
    throw configError(
      source,
      `unknown 'pretrained_cfg.interpolation' ${JSON.stringify(interp)} (timm eval takes ${Object.keys(TIMM_INTERPOLATION).join(', ')})`,
      TIMM_HINT,
    );
  }
  const cropPctRaw = pc['crop_pct'] || 0.875;
  if (typeof cropPctRaw !== 'number' || !Number.isFinite(cropPctRaw) || cropPctRaw <= 0) {
    throw configError(source, `'pretrained_cfg.crop_pct' must be a positive number`, TIMM_HINT);
  }
  const cropPct = cropPctRaw;
  const mode = pc['crop_mode'] || 'center';
  if (typeof mode !== 'string') throw configError(source, `'pretrained_cfg.crop_mode' must be 'center', 'squash' or 'border'`, TIMM_HINT);
  const normalize = withHint(TIMM_HINT, () =>
    meanStd(pc['mean'] || undefined, pc['std'] || undefined, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, source, [
      'pretrained_cfg.mean',
      'pretrained_cfg.std',
    ]),
  );

  const sh = Math.floor(h / cropPct);
  const sw = Math.floor(w / cropPct);
  let resize: ResizeSpec;
  let padFill: [number, number, number] | undefined;
  if (mode === 'squash') {
    resize = { mode: 'exact', height: sh, width: sw };
  } else if (mode === 'border') {
    resize = { mode: 'exact', height: sh, width: sw, fit: 'contain' };
    padFill = normalize.mean.map((m) => Math.max(0, Math.min(255, roundHalfEven(255 * m)))) as [number, number, number];
  } else {
    // 'center', and timm's fallback for any other value
    resize = sh === sw ? { mode: 'shortest_edge', shortestEdge: sh } : { mode: 'exact', height: sh, width: sw, fit: 'cover' };
  }
  return {
    source,
    processorType: 'timm',
    resize,
    resample,
    centerCrop: { height: h, width: w },
    cropRounding: 'round',
    ...(padFill ? { padFill } : {}),
    rescaleFactor: 1 / 255,
    normalize,
    cropPct,
  };
}

// ---------------------------------------------------------------------------------------------
// open_clip

/**
 * open_clip's eval transform (`image_transform_v2(PreprocessCfg)`, is_train False). Size: the
 * visual tower's `image_size` (`model_cfg.vision_cfg.image_size`, which open_clip copies over
 * `preprocess_cfg.size`), else `preprocess_cfg.size`, else `imageSize`. interpolation 'bicubic'
 * (default; 'random' is bicubic too) or 'bilinear'; mean/std OpenAI CLIP by default.
 * - shortest (default): Resize(size) on the shortest edge + CenterCrop(size) for a square size;
 *   a non-square size uses ResizeKeepRatio(size) (`cover`), which open_clip builds without its
 *   interpolation argument, so it is always bicubic;
 * - longest: ResizeKeepRatio(size, longest=1) (`contain`) + CenterCropOrPad(size, fill_color);
 * - squash: Resize((h, w)) ignoring aspect, no crop.
 */
export function parseOpenClipConfig(json: unknown, imageSize: readonly number[], source = 'open_clip_config.json'): PreprocessSpec {
  const cfg = object(json);
  if (!cfg) throw configError(source, 'expected a JSON object', OPEN_CLIP_HINT);
  const pp = object(cfg['preprocess_cfg']) ?? {};
  const vision = object(object(cfg['model_cfg'])?.['vision_cfg']) ?? {};
  const [h, w] = sizeOf(vision['image_size'], "'model_cfg.vision_cfg.image_size'", source, OPEN_CLIP_HINT) ??
    sizeOf(pp['size'], "'preprocess_cfg.size'", source, OPEN_CLIP_HINT) ?? [imageSize[0]!, imageSize[1]!];

  const interp = pp['interpolation'] ?? 'bicubic';
  if (interp !== 'bicubic' && interp !== 'bilinear' && interp !== 'random') {
    throw configError(
      source,
      `'preprocess_cfg.interpolation' must be 'bicubic', 'bilinear' or 'random', got ${JSON.stringify(interp)}`,
      OPEN_CLIP_HINT,
    );
  }
  let resample: Resample = interp === 'bilinear' ? 'bilinear' : 'bicubic';
  const mode = pp['resize_mode'] ?? 'shortest';
  const fillRaw = pp['fill_color'] ?? 0;
  if (typeof fillRaw !== 'number' || !Number.isInteger(fillRaw) || fillRaw < 0 || fillRaw > 255) {
    throw configError(source, `'preprocess_cfg.fill_color' must be an integer 0..255`, OPEN_CLIP_HINT);
  }
  const normalize = withHint(OPEN_CLIP_HINT, () =>
    meanStd(pp['mean'] || undefined, pp['std'] || undefined, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, source, [
      'preprocess_cfg.mean',
      'preprocess_cfg.std',
    ]),
  );

  let resize: ResizeSpec;
  let crop: PreprocessSpec['centerCrop'] = { height: h, width: w };
  let padFill: [number, number, number] | undefined;
  if (mode === 'shortest') {
    if (h === w) {
      resize = { mode: 'shortest_edge', shortestEdge: h };
    } else {
      resize = { mode: 'exact', height: h, width: w, fit: 'cover' };
      resample = 'bicubic';
    }
  } else if (mode === 'longest') {
    resize = { mode: 'exact', height: h, width: w, fit: 'contain' };
    padFill = [fillRaw, fillRaw, fillRaw];
  } else if (mode === 'squash') {
    resize = { mode: 'exact', height: h, width: w };
    crop = null;
  } else {
    throw configError(
      source,
      `'preprocess_cfg.resize_mode' must be 'shortest', 'longest' or 'squash', got ${JSON.stringify(mode)}`,
      OPEN_CLIP_HINT,
    );
  }
  return {
    source,
    processorType: 'open_clip',
    resize,
    resample,
    centerCrop: crop,
    ...(crop ? { cropRounding: 'round' as const } : {}),
    ...(padFill ? { padFill } : {}),
    rescaleFactor: 1 / 255,
    normalize,
  };
}

// ---------------------------------------------------------------------------------------------
// Model folders

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new PrismaError('E_IO', `cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw configError(path, `invalid JSON (${(err as Error).message})`);
  }
}

/**
 * The preprocessing for the model in `modelDir`: preprocessor_config.json (HF), else
 * open_clip_config.json, else timm's config.json, else `defaultPreprocessSpec(imageSize)`.
 * `imageSize` ([height, width]) is used only where those files give no size; to run at another
 * size, pass the result through `withImageSize`.
 */
export async function readPreprocessSpec(modelDir: string, imageSize: readonly number[]): Promise<PreprocessSpec> {
  const hfPath = join(modelDir, 'preprocessor_config.json');
  const hf = await readJson(hfPath);
  if (hf !== undefined) return parsePreprocessorConfig(hf, imageSize, hfPath);

  const ocPath = join(modelDir, 'open_clip_config.json');
  const oc = await readJson(ocPath);
  if (oc !== undefined) return parseOpenClipConfig(oc, imageSize, ocPath);

  // config.json belongs to the model loader, which reports it when unreadable; here it only says "timm".
  const cfgPath = join(modelDir, 'config.json');
  const cfg = await readJson(cfgPath).catch(() => undefined);
  if (cfg !== undefined && isTimmConfig(cfg)) return parseTimmConfig(cfg, imageSize, cfgPath);

  return defaultPreprocessSpec(imageSize);
}
