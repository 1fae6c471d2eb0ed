/**
 * Video clips for video models (VideoMAE, ViViT: `ModelInfo.numFrames > 0`, input [B, T, C, H, W]).
 * One input path is one clip:
 * - a folder of frame images (image files only, sorted by name in code-point order, not recursive;
 *   animated images in it are skipped: they are clips themselves);
 * - an animated GIF or WebP (or a multi-page TIFF): every page, composited, in order;
 * - a pre-processed tensor (`.npy` / `.safetensors`, [B, T, C, H, W] or [T, C, H, W]; handled in
 *   preprocess.ts, never resampled).
 * A clip with more frames than the model takes is sampled at evenly spaced indices,
 * `np.round(np.linspace(0, n - 1, T)).astype(int)` (first and last frame kept, halves rounded to
 * even); exactly T frames are used as they are; fewer is E_INPUT. Each frame is preprocessed with the
 * model's spec, exactly like a still image.
 */
import { readdir, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';

import sharp from 'sharp';

import { PrismaError } from '../errors.js';
import { IMAGE_EXTENSIONS, decodeFrames, decodeRgb, preprocessRgb, type RawRgb } from './pixels.js';
import type { PreprocessSpec } from './spec.js';

/** True for video models (they take one clip of `numFrames` frames per batch entry). */
export function isVideoModel(info: { numFrames?: number | undefined }): boolean {
  // Library callers may describe an image model without `numFrames` (InputTarget).
  return (info.numFrames ?? 0) > 0;
}

function clipHint(wanted: number): string {
  return `a video model takes clips of at least ${wanted} frames: a folder of frame images (photos of any size work: each file is one frame), an animated GIF/WebP, or a [T, C, H, W] tensor (longer clips are sampled evenly)`;
}

/**
 * Which of `available` frames to use for a `wanted`-frame model: all of them when equal, else
 * `np.round(np.linspace(0, available - 1, wanted))` (numpy's arithmetic: k * step, last = n - 1;
 * round half to even). Fewer frames than wanted: E_INPUT naming `what`.
 */
export function sampleFrameIndices(available: number, wanted: number, what = 'the clip'): number[] {
  if (!Number.isInteger(wanted) || wanted <= 0)
    throw new PrismaError('E_INPUT', `frames per clip must be a positive integer, got ${wanted}`);
  if (available < wanted) {
    throw new PrismaError('E_INPUT', `${what} has ${available} frame${available === 1 ? '' : 's'}, the model takes ${wanted}`, {
      hint: clipHint(wanted),
      data: { available, wanted },
    });
  }
  if (available === wanted) return Array.from({ length: wanted }, (_, i) => i);
  if (wanted === 1) return [0];
  const step = (available - 1) / (wanted - 1);
  const out = Array.from({ length: wanted }, (_, k) => {
    const x = k * step;
    const f = Math.floor(x);
    const d = x - f;
    return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
  });
  out[wanted - 1] = available - 1;
  return out;
}

/** Formats that can hold several pages (an animation is a clip, not a frame). */
const MULTI_PAGE_EXTENSIONS = ['.gif', '.webp', '.tif', '.tiff'];

async function isAnimated(path: string): Promise<boolean> {
  try {
    return ((await sharp(path).metadata()).pages ?? 1) > 1;
  } catch {
    return false; // not decodable: decoding it as a frame reports E_IMAGE_DECODE
  }
}

/**
 * Frame images in a folder, sorted by name (code point order). Animated images (GIF/WebP/TIFF with
 * more than one page) are clips of their own and are left out, so a folder holding both the frames
 * and the same clip as a GIF (like fixtures/video) is the clip of its still frames.
 */
export async function listFrameFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isFile() && (IMAGE_EXTENSIONS as readonly string[]).includes(extname(e.name).toLowerCase()))
    .map((e) => e.name)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const out: string[] = [];
  for (const name of names) {
    const path = join(dir, name);
    if (MULTI_PAGE_EXTENSIONS.includes(extname(name).toLowerCase()) && (await isAnimated(path))) continue;
    out.push(path);
  }
  return out;
}

/** Decode the `numFrames` frames of one clip (folder of frames or animated image), sampled as `sampleFrameIndices`. */
export async function readClipFrames(path: string, numFrames: number): Promise<RawRgb[]> {
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch {
    throw new PrismaError('E_INPUT', `input not found: ${path}`, { data: { path } });
  }
  if (isDir) {
    const files = await listFrameFiles(path);
    if (files.length === 0) {
      throw new PrismaError('E_INPUT', `no frame images in folder ${path}`, { hint: clipHint(numFrames), data: { path } });
    }
    const picked = sampleFrameIndices(files.length, numFrames, `clip ${path}`);
    const frames: RawRgb[] = [];
    for (const i of picked) frames.push(await decodeRgb(files[i]!));
    return frames;
  }
  const all = await decodeFrames(path);
  return sampleFrameIndices(all.length, numFrames, `clip ${path}`).map((i) => all[i]!);
}

/** One clip preprocessed frame by frame: `[T, 3, H, W]` float32, time-major. */
export async function preprocessClip(
  path: string,
  spec: PreprocessSpec,
  numFrames: number,
): Promise<{ data: Float32Array; frames: number; height: number; width: number }> {
  const frames = await readClipFrames(path, numFrames);
  let data: Float32Array | undefined;
  let height = 0;
  let width = 0;
  for (const [t, frame] of frames.entries()) {
    const chw = await preprocessRgb(frame, spec);
    if (!data) {
      height = chw.height;
      width = chw.width;
      data = new Float32Array(frames.length * chw.data.length);
    } else if (chw.height !== height || chw.width !== width) {
      throw new PrismaError('E_SHAPE', `${path}: frame ${t} preprocesses to ${chw.height}x${chw.width}, frame 0 to ${height}x${width}`, {
        hint: `frames of one clip must come out the same size; check size / crop_size in ${spec.source}`,
      });
    }
    data.set(chw.data, t * chw.data.length);
  }
  return { data: data!, frames: frames.length, height, width };
}
