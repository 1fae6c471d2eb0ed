/**
 * clevr-lite: a tiny, fully deterministic CLEVR-like dataset for probing and patching experiments.
 *
 * A scene is 1..maxObjects flat shapes (circle, square, triangle) in six colours and two sizes at
 * non-overlapping positions on a grey background (plain, or with seeded luminance noise). Scenes are
 * drawn from a seeded PRNG (src/dataset/prng.ts), one independent stream per image, so image i is
 * the same whatever `n` is. Rendering builds an SVG string, rasterises it with sharp (librsvg),
 * blends it over the background in integer arithmetic and encodes PNG with fixed options and no
 * metadata: the same seed and the same sharp build give byte-identical files.
 *
 * Geometry (scene units = pixels at `scene.size`; pixel (x, y) covers [x, x+1) x [y, y+1)):
 *   circle   centre c, radius r
 *   square   [cx - r, cx + r] x [cy - r, cy + r]
 *   triangle apex (cx, cy - r), base (cx - r, cy + r) .. (cx + r, cy + r)
 * so every object's bounding box is [cx - r, cy - r, cx + r, cy + r].
 *
 * Tie rule for `largest_colour`: a generated scene with two or more objects has exactly one large
 * object (a one-object scene may be small or large), so the answer is never tied. For hand-made or
 * edited scenes the rule is: larger size class, then larger area (circle pi r^2, square 4 r^2,
 * triangle 2 r^2), then the earlier object (objects are listed in raster order of their centres).
 */
import { join } from 'node:path';

import sharp from 'sharp';

import { PrismaError, usageError } from '../errors.js';
import { ensureDir, jsonLines, mapPool, stem, writeFileAtomic, writeJsonAtomic } from './io.js';
import { Rng, streamFor } from './prng.js';

/** Bump when the same seed would give different scenes or pixels. */
export const CLEVR_LITE_VERSION = 1;

export const SHAPES = ['circle', 'square', 'triangle'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'purple', 'cyan'] as const;
export const SIZES = ['small', 'large'] as const;

export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];
export type SizeClass = (typeof SIZES)[number];

/** Fill colours, chosen to stay distinct from each other and from the grey background at 48 px. */
export const COLOUR_RGB: Record<Colour, readonly [number, number, number]> = {
  red: [220, 30, 30],
  green: [30, 170, 50],
  blue: [40, 70, 235],
  yellow: [245, 220, 30],
  purple: [150, 50, 200],
  cyan: [40, 215, 225],
};

/** Object radius as a fraction of the image size, before rounding to half pixels. */
export const RADIUS_FRACTION: Record<SizeClass, number> = { small: 0.11, large: 0.21 };
/** Minimum gap in pixels between two objects' bounding boxes, and between a box and the border. */
export const OBJECT_GAP = 2;
export const BORDER = 1;

export const QUESTIONS = ['largest_colour', 'count', 'has_red_circle'] as const;
export type Question = (typeof QUESTIONS)[number];

export interface SceneObject {
  shape: Shape;
  colour: Colour;
  size: SizeClass;
  /** Centre [x, y] in scene pixels. */
  center: [number, number];
  /** Half-extent in scene pixels (a multiple of 0.5). */
  radius: number;
}

export interface Background {
  /** Base grey level (0..255). */
  grey: number;
  /** Luminance noise amplitude in levels (0 = plain). */
  noise: number;
  /** Seed of the noise pattern. */
  seed: number;
}

export interface Scene {
  /** Image size the geometry is expressed in (square images). */
  size: number;
  background: Background;
  objects: SceneObject[];
}

export interface ObjectRecord extends SceneObject {
  /** [x0, y0, x1, y1] in pixels at the record's size. */
  bbox: [number, number, number, number];
}

export interface Answers {
  largest_colour: Colour;
  count: number;
  has_red_circle: boolean;
}

export type AnswerIndex = Record<Question, number>;

/** One line of labels.jsonl. */
export interface ClevrRecord {
  index: number;
  image: string;
  size: number;
  background: Background;
  objects: ObjectRecord[];
  answers: Answers;
  /** Index of each answer in `dataset.json` `questions[q].classes`. */
  answer_index: AnswerIndex;
  caption: string;
}

export interface GenerateOptions {
  /** Image size in pixels (square). Default 48. */
  size?: number;
  /** Objects per scene are drawn uniformly from 1..maxObjects. Default 4. */
  maxObjects?: number;
}

export const DEFAULT_SIZE = 48;
export const DEFAULT_MAX_OBJECTS = 4;
export const MIN_SIZE = 16;
export const MAX_SIZE = 1024;
export const MAX_OBJECTS_LIMIT = 6;

function halfRound(x: number): number {
  return Math.max(1, Math.round(2 * x) / 2);
}

export function radiusFor(size: SizeClass, imageSize: number): number {
  return halfRound(RADIUS_FRACTION[size] * imageSize);
}

export function bboxOf(o: Pick<SceneObject, 'center' | 'radius'>): [number, number, number, number] {
  const [cx, cy] = o.center;
  return [cx - o.radius, cy - o.radius, cx + o.radius, cy + o.radius];
}

export function areaOf(o: Pick<SceneObject, 'shape' | 'radius'>): number {
  const r = o.radius;
  return o.shape === 'circle' ? Math.PI * r * r : o.shape === 'square' ? 4 * r * r : 2 * r * r;
}

/** Is the point (x, y) (scene units) inside the object? Edges count as inside. */
export function insideObject(o: Pick<SceneObject, 'shape' | 'center' | 'radius'>, x: number, y: number): boolean {
  const dx = x - o.center[0];
  const dy = y - o.center[1];
  const r = o.radius;
  switch (o.shape) {
    case 'circle':
      return dx * dx + dy * dy <= r * r;
    case 'square':
      return Math.abs(dx) <= r && Math.abs(dy) <= r;
    case 'triangle':
      // Apex at dy = -r, base at dy = +r; half-width grows from 0 to r.
      return dy >= -r && dy <= r && 2 * Math.abs(dx) <= dy + r;
  }
}

function checkSize(size: number, what = 'size'): void {
  if (!Number.isInteger(size) || size < MIN_SIZE || size > MAX_SIZE) {
    throw usageError(`${what} must be an integer from ${MIN_SIZE} to ${MAX_SIZE}, got ${size}`);
  }
}

function checkMaxObjects(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_OBJECTS_LIMIT) {
    throw usageError(`max-objects must be an integer from 1 to ${MAX_OBJECTS_LIMIT}, got ${n}`);
  }
}

export function checkSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw usageError(`seed must be an integer from 0 to 4294967295, got ${seed}`);
}

type Box = [number, number, number, number];

function separated(a: Box, b: Box): boolean {
  return a[2] + OBJECT_GAP <= b[0] || b[2] + OBJECT_GAP <= a[0] || a[3] + OBJECT_GAP <= b[1] || b[3] + OBJECT_GAP <= a[1];
}

/** Integer centres keeping the box at least BORDER px inside the image. */
function centreRange(radius: number, size: number): [number, number] {
  return [Math.ceil(radius + BORDER), Math.floor(size - BORDER - radius)];
}

function place(rng: Rng, radii: number[], size: number): [number, number][] | undefined {
  // Place larger objects first (they are the hardest to fit); results go back in input order.
  const order = radii.map((_, i) => i).sort((a, b) => radii[b]! - radii[a]! || a - b);
  const centres: [number, number][] = new Array(radii.length);
  const boxes: Box[] = [];
  for (const i of order) {
    const r = radii[i]!;
    const [lo, hi] = centreRange(r, size);
    if (lo > hi) return undefined;
    let placed = false;
    for (let attempt = 0; attempt < 200 && !placed; attempt++) {
      const c: [number, number] = [rng.int(lo, hi), rng.int(lo, hi)];
      const box = bboxOf({ center: c, radius: r });
      if (boxes.every((b) => separated(b, box))) {
        centres[i] = c;
        boxes.push(box);
        placed = true;
      }
    }
    if (!placed) return undefined;
  }
  return centres;
}

/** The scene of image `index` of a clevr-lite dataset with this seed. */
export function generateScene(seed: number, index: number, options: GenerateOptions = {}): Scene {
  const size = options.size ?? DEFAULT_SIZE;
  const maxObjects = options.maxObjects ?? DEFAULT_MAX_OBJECTS;
  checkSeed(seed);
  checkSize(size);
  checkMaxObjects(maxObjects);
  const rng = streamFor(seed, index, 'clevr-lite/scene');

  const count = rng.int(1, maxObjects);
  const large = count === 1 ? (rng.bool() ? 0 : -1) : rng.int(0, count - 1);
  const drafts = Array.from({ length: count }, (_, i) => ({
    shape: rng.pick(SHAPES),
    colour: rng.pick(COLOURS),
    size: (i === large ? 'large' : 'small') as SizeClass,
  }));
  const background: Background = {
    grey: rng.int(100, 140),
    noise: rng.bool() ? rng.int(4, 10) : 0,
    seed: rng.nextU32(),
  };
  const radii = drafts.map((d) => radiusFor(d.size, size));
  let centres: [number, number][] | undefined;
  for (let attempt = 0; attempt < 100 && !centres; attempt++) centres = place(rng, radii, size);
  if (!centres) {
    throw new PrismaError('E_DATASET', `cannot place ${count} objects without overlap in a ${size}x${size} image`, {
      hint: 'use a larger --size or a smaller --max-objects',
    });
  }
  const objects: SceneObject[] = drafts.map((d, i) => ({ ...d, center: centres![i]!, radius: radii[i]! }));
  // Raster order of the centres: the order of `objects`, captions and patch-label ids.
  objects.sort((a, b) => a.center[1] - b.center[1] || a.center[0] - b.center[0]);
  return { size, background, objects };
}

/** Index of the largest object (see the tie rule in the module comment). */
export function largestObject(scene: Pick<Scene, 'objects'>): number {
  let best = -1;
  for (let i = 0; i < scene.objects.length; i++) {
    if (best < 0) {
      best = i;
      continue;
    }
    const o = scene.objects[i]!;
    const b = scene.objects[best]!;
    const byClass = SIZES.indexOf(o.size) - SIZES.indexOf(b.size);
    if (byClass > 0 || (byClass === 0 && areaOf(o) > areaOf(b))) best = i;
  }
  if (best < 0) throw new PrismaError('E_DATASET', 'a scene needs at least one object');
  return best;
}

export function answersFor(scene: Pick<Scene, 'objects'>): Answers {
  return {
    largest_colour: scene.objects[largestObject(scene)]!.colour,
    count: scene.objects.length,
    has_red_circle: scene.objects.some((o) => o.colour === 'red' && o.shape === 'circle'),
  };
}

/** Class lists per question, in index order (what `dataset.json` stores). */
export function questionClasses(maxObjects: number): Record<Question, string[]> {
  return {
    largest_colour: [...COLOURS],
    count: Array.from({ length: maxObjects }, (_, i) => String(i + 1)),
    has_red_circle: ['no', 'yes'],
  };
}

export function answerIndex(a: Answers): AnswerIndex {
  return { largest_colour: COLOURS.indexOf(a.largest_colour), count: a.count - 1, has_red_circle: a.has_red_circle ? 1 : 0 };
}

/** "a large red circle, a small blue square and a small green triangle" (objects in scene order). */
export function captionFor(scene: Pick<Scene, 'objects'>): string {
  const parts = scene.objects.map((o) => `a ${o.size} ${o.colour} ${o.shape}`);
  if (parts.length <= 1) return parts.join('');
  return `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}`;
}

/** The labels.jsonl record of a scene. */
export function sceneRecord(scene: Scene, index: number, image = `images/${stem(index)}.png`): ClevrRecord {
  const answers = answersFor(scene);
  return {
    index,
    image,
    size: scene.size,
    background: { ...scene.background },
    objects: scene.objects.map((o) => ({
      shape: o.shape,
      colour: o.colour,
      size: o.size,
      center: [o.center[0], o.center[1]],
      radius: o.radius,
      bbox: bboxOf(o),
    })),
    answers,
    answer_index: answerIndex(answers),
    caption: captionFor(scene),
  };
}

/** A copy of `scene` with object `objectIndex` in `newColour` (background and geometry unchanged). */
export function recolour(scene: Scene, objectIndex: number, newColour: Colour): Scene {
  if (!Number.isInteger(objectIndex) || objectIndex < 0 || objectIndex >= scene.objects.length) {
    throw usageError(`object index ${objectIndex} is out of range: the scene has ${scene.objects.length} objects`);
  }
  if (!(COLOURS as readonly string[]).includes(newColour)) {
    throw usageError(`unknown colour '${newColour}'`, `colours: ${COLOURS.join(', ')}`);
  }
  return {
    size: scene.size,
    background: { ...scene.background },
    objects: scene.objects.map((o, i) => ({ ...o, center: [o.center[0], o.center[1]], colour: i === objectIndex ? newColour : o.colour })),
  };
}

// ---------------------------------------------------------------------------------------------
// Rendering

function fmt(x: number): string {
  // Geometry is in half pixels; keep the text exact and locale-free.
  return Number.isInteger(x) ? String(x) : x.toFixed(2).replace(/0+$/, '');
}

/** The objects as an SVG document of `size` px (geometry in scene units via the viewBox). */
export function sceneSvg(scene: Scene, size = scene.size): string {
  const shapes = scene.objects.map((o) => {
    const [r, g, b] = COLOUR_RGB[o.colour];
    const fill = `fill="rgb(${r},${g},${b})"`;
    const [cx, cy] = o.center;
    const rad = o.radius;
    switch (o.shape) {
      case 'circle':
        return `<circle cx="${fmt(cx)}" cy="${fmt(cy)}" r="${fmt(rad)}" ${fill}/>`;
      case 'square':
        return `<rect x="${fmt(cx - rad)}" y="${fmt(cy - rad)}" width="${fmt(2 * rad)}" height="${fmt(2 * rad)}" ${fill}/>`;
      case 'triangle':
        return `<polygon points="${fmt(cx)},${fmt(cy - rad)} ${fmt(cx - rad)},${fmt(cy + rad)} ${fmt(cx + rad)},${fmt(cy + rad)}" ${fill}/>`;
      default:
        throw new Error(`unknown shape ${o.shape satisfies never}`);
    }
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${scene.size} ${scene.size}">` +
    `${shapes.join('')}</svg>`
  );
}

/** The background as interleaved RGB: grey plus per-pixel luminance noise from the seed. */
export function backgroundRgb(bg: Background, size: number): Uint8Array {
  const out = new Uint8Array(size * size * 3);
  const rng = new Rng(bg.seed);
  for (let p = 0; p < size * size; p++) {
    const delta = bg.noise === 0 ? 0 : rng.int(-bg.noise, bg.noise);
    const v = Math.max(0, Math.min(255, bg.grey + delta));
    out[3 * p] = v;
    out[3 * p + 1] = v;
    out[3 * p + 2] = v;
  }
  return out;
}

/** Render to interleaved 8-bit RGB (`size * size * 3` bytes). */
export async function renderSceneRgb(scene: Scene, size = scene.size): Promise<Uint8Array> {
  checkSize(size, 'render size');
  const out = backgroundRgb(scene.background, size);
  if (scene.objects.length === 0) return out;
  const { data, info } = await sharp(Buffer.from(sceneSvg(scene, size)), { density: 72 })
    .ensureAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size || info.channels !== 4) {
    throw new PrismaError('E_INTERNAL', `SVG rasterised to ${info.width}x${info.height}x${info.channels}, expected ${size}x${size}x4`);
  }
  for (let p = 0; p < size * size; p++) {
    const a = data[4 * p + 3]!;
    if (a === 0) continue;
    for (let c = 0; c < 3; c++) {
      const d = 3 * p + c;
      out[d] = Math.floor((data[4 * p + c]! * a + out[d]! * (255 - a) + 127) / 255);
    }
  }
  return out;
}

/** PNG chunks kept by `stripPngMetadata`: image data only (no pHYs, tIME, tEXt, iCCP, ...). */
const PNG_KEEP = new Set(['IHDR', 'PLTE', 'tRNS', 'IDAT', 'IEND']);

/** Drop every ancillary PNG chunk except tRNS (chunk CRCs cover single chunks, so the rest stay valid). */
export function stripPngMetadata(png: Buffer): Buffer {
  const parts: Buffer[] = [png.subarray(0, 8)];
  let i = 8;
  while (i + 12 <= png.length) {
    const len = png.readUInt32BE(i);
    const type = png.toString('latin1', i + 4, i + 8);
    const end = i + 12 + len;
    if (PNG_KEEP.has(type)) parts.push(png.subarray(i, end));
    i = end;
  }
  return Buffer.concat(parts);
}

/** Encode interleaved 8-bit RGB (or grey, `channels` 1) as PNG with fixed options and no metadata chunks. */
export async function encodePngRgb(rgb: Uint8Array, width: number, height: number, channels: 1 | 3 = 3): Promise<Buffer> {
  const png = await sharp(rgb, { raw: { width, height, channels } })
    .png({ compressionLevel: 9, adaptiveFiltering: false, palette: false, progressive: false, force: true })
    .toBuffer();
  return stripPngMetadata(png);
}

/** Render a scene to PNG bytes at `size` px (default: the scene's own size). */
export async function renderScene(scene: Scene, size = scene.size): Promise<Buffer> {
  return encodePngRgb(await renderSceneRgb(scene, size), size, size);
}

// ---------------------------------------------------------------------------------------------
// Patch labels

/** What `patchLabels` needs from a record or scene. */
export interface PatchGeometry {
  size: number;
  objects: readonly Pick<SceneObject, 'shape' | 'center' | 'radius'>[];
}

export interface PatchLabelOptions {
  /**
   * Instead of the plurality rule, label a patch with the object having the most pixels in it as
   * soon as that object covers at least this fraction of the patch (e.g. 0.01: any visible part).
   */
  minFraction?: number;
}

/**
 * Per-patch object ids for an image of `imageSize` px cut into `patchSize` px patches (row-major,
 * grid floor(imageSize / patchSize) squared; pixels past the last full patch are ignored, as in a
 * ViT patch embedding). Each pixel belongs to the object whose shape contains its centre (objects
 * never overlap); a patch gets the label with the most pixels among background (0) and objects
 * (object index + 1), ties going to the lower label (background first). With `minFraction`, the
 * object with the most pixels wins if it covers at least that fraction of the patch (ties to the
 * earlier object), else background.
 */
export function patchLabels(record: PatchGeometry, imageSize: number, patchSize: number, options: PatchLabelOptions = {}): Int32Array {
  if (!Number.isInteger(imageSize) || imageSize < 1) throw usageError(`image size must be a positive integer, got ${imageSize}`);
  if (!Number.isInteger(patchSize) || patchSize < 1 || patchSize > imageSize) {
    throw usageError(`patch size must be an integer from 1 to the image size (${imageSize}), got ${patchSize}`);
  }
  if (options.minFraction !== undefined && !(options.minFraction > 0 && options.minFraction <= 1)) {
    throw usageError(`minimum patch fraction must be in (0, 1], got ${options.minFraction}`);
  }
  const grid = Math.floor(imageSize / patchSize);
  const nObj = record.objects.length;
  const counts = new Int32Array(grid * grid * (nObj + 1));
  const scale = record.size / imageSize;
  const used = grid * patchSize;
  for (let y = 0; y < used; y++) {
    const sy = (y + 0.5) * scale;
    const row = Math.floor(y / patchSize);
    for (let x = 0; x < used; x++) {
      const sx = (x + 0.5) * scale;
      let label = 0;
      for (let k = 0; k < nObj; k++) {
        if (insideObject(record.objects[k]!, sx, sy)) {
          label = k + 1;
          break;
        }
      }
      counts[(row * grid + Math.floor(x / patchSize)) * (nObj + 1) + label]!++;
    }
  }
  const out = new Int32Array(grid * grid);
  const { minFraction } = options;
  const minPixels = minFraction === undefined ? 0 : minFraction * patchSize * patchSize;
  for (let p = 0; p < grid * grid; p++) {
    const base = p * (nObj + 1);
    if (minFraction === undefined) {
      let best = 0;
      for (let k = 1; k <= nObj; k++) if (counts[base + k]! > counts[base + best]!) best = k;
      out[p] = best;
    } else {
      let best = 0;
      for (let k = 1; k <= nObj; k++) if (counts[base + k]! > (best === 0 ? 0 : counts[base + best]!)) best = k;
      out[p] = best > 0 && counts[base + best]! >= minPixels ? best : 0;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writing a dataset

export interface WriteClevrLiteOptions extends GenerateOptions {
  out: string;
  n: number;
  seed: number;
  /** Also write `patch-labels/NNNNNN.json` for this patch size. */
  patchSize?: number;
  /** `minFraction` for those patch labels (default: the plurality rule). */
  patchMinFraction?: number;
  /** Also write a recoloured copy of each image (`edited/`, `edits.jsonl`) for clean/corrupt pairs. */
  edit?: boolean;
  /** Images rendered concurrently (outputs do not depend on it). Default 8. */
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface EditRecord {
  index: number;
  source: string;
  image: string;
  object: number;
  from: Colour;
  to: Colour;
  record: ClevrRecord;
}

export interface ClevrLiteSummary {
  out: string;
  n: number;
  seed: number;
  size: number;
  maxObjects: number;
  files: string[];
}

/** What a clevr-lite folder was generated with (recorded in its dataset.json). */
export interface ClevrDatasetOptions {
  n: number;
  seed: number;
  size: number;
  maxObjects: number;
  patchSize?: number;
  patchMinFraction?: number;
  edit?: boolean;
}

export function datasetJson(options: ClevrDatasetOptions): Record<string, unknown> {
  const classes = questionClasses(options.maxObjects);
  return {
    schemaVersion: 1,
    name: 'clevr-lite',
    generator: 'vit-prisma clevr-lite',
    generatorVersion: CLEVR_LITE_VERSION,
    renderer: {
      sharp: sharp.versions.sharp,
      vips: sharp.versions.vips,
      rsvg: (sharp.versions as Record<string, string | undefined>)['rsvg'] ?? null,
    },
    seed: options.seed,
    n: options.n,
    size: options.size,
    maxObjects: options.maxObjects,
    shapes: [...SHAPES],
    colours: [...COLOURS],
    sizes: [...SIZES],
    questions: {
      largest_colour: { classes: classes.largest_colour, description: 'colour of the largest object' },
      count: { classes: classes.count, description: 'number of objects' },
      has_red_circle: { classes: classes.has_red_circle, description: 'is there a red circle' },
    },
    files: {
      images: 'images/NNNNNN.png',
      labels: 'labels.jsonl',
      ...(options.patchSize === undefined
        ? {}
        : { patchLabels: 'patch-labels/NNNNNN.json', patchSize: options.patchSize, patchMinFraction: options.patchMinFraction ?? null }),
      ...(options.edit ? { edited: 'edited/NNNNNN.png', edits: 'edits.jsonl' } : {}),
    },
    rules: {
      largestColour:
        'scenes with 2+ objects have exactly one large object; otherwise larger size class, then larger area, then earlier object',
      objectOrder: 'raster order of centres (y, then x)',
      patchLabels:
        'per pixel centre inside test; per patch the most common of background (0) and object index + 1; ties to the lower label',
      edit: 'the largest object recoloured to a different colour drawn from the edit stream',
    },
  };
}

/** The edit used for clean/corrupt pairs: recolour the largest object to another colour. */
export function editScene(scene: Scene, seed: number, index: number): { scene: Scene; object: number; from: Colour; to: Colour } {
  const object = largestObject(scene);
  const from = scene.objects[object]!.colour;
  const to = streamFor(seed, index, 'clevr-lite/edit').pick(COLOURS.filter((c) => c !== from));
  return { scene: recolour(scene, object, to), object, from, to };
}

/** Generate `n` images with their labels into `out` (see docs/datasets.md for the layout). */
export async function writeClevrLite(options: WriteClevrLiteOptions): Promise<ClevrLiteSummary> {
  const size = options.size ?? DEFAULT_SIZE;
  const maxObjects = options.maxObjects ?? DEFAULT_MAX_OBJECTS;
  const { out, n, seed } = options;
  if (!Number.isInteger(n) || n < 1) throw usageError(`n must be a positive integer, got ${n}`);
  checkSeed(seed);
  checkSize(size);
  checkMaxObjects(maxObjects);
  if (options.patchSize !== undefined && (!Number.isInteger(options.patchSize) || options.patchSize < 1 || options.patchSize > size)) {
    throw usageError(`patch size must be an integer from 1 to --size (${size}), got ${options.patchSize}`);
  }
  const minFraction = options.patchMinFraction;
  if (minFraction !== undefined) {
    if (options.patchSize === undefined) throw usageError('a minimum patch fraction needs a patch size');
    if (!(minFraction > 0 && minFraction <= 1)) throw usageError(`minimum patch fraction must be in (0, 1], got ${minFraction}`);
  }
  await ensureDir(join(out, 'images'));
  if (options.patchSize !== undefined) await ensureDir(join(out, 'patch-labels'));
  if (options.edit) await ensureDir(join(out, 'edited'));

  const results = await mapPool(
    n,
    options.concurrency ?? 8,
    async (i) => {
      const scene = generateScene(seed, i, { size, maxObjects });
      const record = sceneRecord(scene, i);
      await writeFileAtomic(join(out, record.image), await renderScene(scene));
      if (options.patchSize !== undefined) {
        const labels = patchLabels(record, size, options.patchSize, minFraction === undefined ? {} : { minFraction });
        const grid = Math.floor(size / options.patchSize);
        await writeJsonAtomic(join(out, 'patch-labels', `${stem(i)}.json`), {
          image: record.image,
          imageSize: size,
          patchSize: options.patchSize,
          grid: [grid, grid],
          minFraction: minFraction ?? null,
          labels: Array.from(labels),
        });
      }
      let edit: EditRecord | undefined;
      if (options.edit) {
        const e = editScene(scene, seed, i);
        const image = `edited/${stem(i)}.png`;
        await writeFileAtomic(join(out, image), await renderScene(e.scene));
        edit = { index: i, source: record.image, image, object: e.object, from: e.from, to: e.to, record: sceneRecord(e.scene, i, image) };
      }
      return { record, edit };
    },
    (done) => options.onProgress?.(done, n),
  );

  const files = ['images/', 'labels.jsonl', 'dataset.json'];
  await writeFileAtomic(join(out, 'labels.jsonl'), jsonLines(results.map((r) => r.record)));
  if (options.patchSize !== undefined) files.push('patch-labels/');
  if (options.edit) {
    await writeFileAtomic(join(out, 'edits.jsonl'), jsonLines(results.map((r) => r.edit)));
    files.push('edited/', 'edits.jsonl');
  }
  // dataset.json last: its presence means the folder is complete.
  await writeJsonAtomic(
    join(out, 'dataset.json'),
    datasetJson({
      n,
      seed,
      size,
      maxObjects,
      ...(options.patchSize === undefined ? {} : { patchSize: options.patchSize }),
      ...(minFraction === undefined ? {} : { patchMinFraction: minFraction }),
      ...(options.edit ? { edit: true } : {}),
    }),
  );
  return { out, n, seed, size, maxObjects, files };
}
