/**
 * The pixel side of preprocessing: decode with sharp/libvips -> EXIF orientation -> RGB (alpha
 * dropped, like PIL `convert("RGB")`) -> 8-bit -> resize (Pillow's algorithm, resample.ts) -> centre
 * crop (or pad) -> rescale -> offset -> normalise -> CHW float32. `PreprocessSpec` (spec.ts) says
 * what each step does. The reference processors (slow HF image processors, timm and open_clip via
 * torchvision) all resize with Pillow, so the pixels equal theirs; only JPEG decoding can differ by
 * one 8-bit level (docs/preprocessing.md).
 */
import { readFile } from 'node:fs/promises';

import sharp from 'sharp';

import { PrismaError } from '../errors.js';
import { resamplePil } from './resample.js';
import { oneSharpAtATime } from './sharp-lock.js';
import { cropOffset, preprocessGeometry, type PreprocessSpec, type Resample, type Size2 } from './spec.js';

/** File extensions read as images (and as video frames). */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.gif', '.tif', '.tiff', '.avif'] as const;

/** Interleaved 8-bit RGB. */
export interface RawRgb {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Preprocessed pixels: CHW float32 (`[3, H, W]`). */
export interface Chw {
  data: Float32Array;
  height: number;
  width: number;
}

function decodeError(path: string, err: unknown): PrismaError {
  const detail = ((err as Error).message ?? String(err)).split('\n')[0]!.trim();
  return new PrismaError('E_IMAGE_DECODE', `cannot decode image '${path}': ${detail}`, {
    hint: 'inputs must be images sharp can read (PNG, JPEG, WebP, GIF, TIFF, AVIF) or .npy/.safetensors tensors',
    data: { path },
  });
}

function asBytes(data: Buffer): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.length);
}

/** Decode one image (the first page of an animation) to 8-bit RGB, EXIF orientation applied. */
export async function decodeRgb(path: string): Promise<RawRgb> {
  try {
    // Read first, so that a file that cannot be read says why (EIO, EACCES) rather than 'unsupported format'.
    const bytes = await readFile(path);
    // failOn 'error' rejects truncated files; autoOrient applies EXIF orientation like HF's load_image.
    const { data, info } = await oneSharpAtATime(() =>
      sharp(bytes, { failOn: 'error', autoOrient: true })
        .removeAlpha()
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true }),
    );
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { data: asBytes(data), width: info.width, height: info.height };
  } catch (err) {
    throw decodeError(path, err);
  }
}

/**
 * Decode every page of an animated (or multi-page) image: GIF, WebP, TIFF. libvips renders each
 * GIF/WebP frame fully composited (disposal applied), as PIL's ImageSequence + convert("RGB") does;
 * the pages come back as one tall image, split here at `pageHeight`.
 */
export async function decodeFrames(path: string): Promise<RawRgb[]> {
  try {
    const { data, info } = await oneSharpAtATime(() =>
      sharp(path, { failOn: 'error', pages: -1 })
        .removeAlpha()
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true }),
    );
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    const pageHeight = info.pageHeight ?? info.height;
    const pages = Math.max(1, Math.round(info.height / pageHeight));
    if (pages * pageHeight !== info.height) throw new Error(`height ${info.height} is not a multiple of the page height ${pageHeight}`);
    const bytes = asBytes(data);
    const frameBytes = info.width * pageHeight * 3;
    return Array.from({ length: pages }, (_, i) => ({
      data: bytes.subarray(i * frameBytes, (i + 1) * frameBytes),
      width: info.width,
      height: pageHeight,
    }));
  } catch (err) {
    throw decodeError(path, err);
  }
}

/** Resize as Pillow does (see resample.ts), so that the pixels equal the reference processors'. */
export function resizeRgb(img: RawRgb, width: number, height: number, resample: Resample): RawRgb {
  if (img.width === width && img.height === height) return img;
  return { data: resamplePil(img.data, img.width, img.height, width, height, resample), width, height };
}

/**
 * Crop `crop` out of interleaved RGB starting at (`left`, `top`); parts outside the image are
 * `fill` (negative offsets place the image inside the padding).
 */
export function cropRgb(
  src: Uint8Array,
  width: number,
  height: number,
  crop: Size2,
  left: number,
  top: number,
  fill: readonly number[] = [0, 0, 0],
): Uint8Array {
  const out = new Uint8Array(crop.width * crop.height * 3);
  const [r, g, b] = [fill[0] ?? 0, fill[1] ?? 0, fill[2] ?? 0];
  if (r !== 0 || g !== 0 || b !== 0) {
    for (let p = 0; p < crop.width * crop.height; p++) {
      out[p * 3] = r;
      out[p * 3 + 1] = g;
      out[p * 3 + 2] = b;
    }
  }
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

/** HF `center_crop` on interleaved RGB uint8: top/left = floor((in - out) / 2), zero padding when smaller. */
export function centerCropRgb(src: Uint8Array, width: number, height: number, crop: Size2): Uint8Array {
  return cropRgb(src, width, height, crop, cropOffset(width, crop.width), cropOffset(height, crop.height));
}

/** Rescale, offset and normalise interleaved RGB uint8 into planar CHW float32, written at `out[offset..]`. */
export function toChw(
  rgb: Uint8Array,
  width: number,
  height: number,
  spec: Pick<PreprocessSpec, 'rescaleFactor' | 'normalize' | 'offset'>,
  out: Float32Array = new Float32Array(3 * width * height),
  offset = 0,
): Float32Array {
  const hw = width * height;
  const scale = spec.rescaleFactor ?? 1;
  const shift = spec.offset ?? 0;
  for (let c = 0; c < 3; c++) {
    const mean = spec.normalize ? spec.normalize.mean[c]! : 0;
    const std = spec.normalize ? spec.normalize.std[c]! : 1;
    const base = offset + c * hw;
    for (let p = 0; p < hw; p++) out[base + p] = (rgb[p * 3 + c]! * scale - shift - mean) / std;
  }
  return out;
}

/** Resize, crop and normalise decoded RGB with `spec` into CHW float32. */
export async function preprocessRgb(img: RawRgb, spec: PreprocessSpec): Promise<Chw> {
  const g = preprocessGeometry(spec, img.width, img.height);
  let cur = img;
  if (spec.resize) cur = resizeRgb(cur, g.resizedWidth, g.resizedHeight, spec.resample);
  if (spec.centerCrop) {
    const crop = { width: g.width, height: g.height };
    cur = { data: cropRgb(cur.data, cur.width, cur.height, crop, g.left, g.top, spec.padFill), ...crop };
  }
  return { data: toChw(cur.data, cur.width, cur.height, spec), height: cur.height, width: cur.width };
}

/** Decode and preprocess one image into CHW float32 (`[3, H, W]`), and report its final size. */
export async function preprocessImage(path: string, spec: PreprocessSpec): Promise<Chw> {
  return preprocessRgb(await decodeRgb(path), spec);
}
