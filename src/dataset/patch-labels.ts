/**
 * ImageNet-style patch labels: PASCAL VOC / ILSVRC bounding-box XML (and optional object masks)
 * turned into one class per patch of a model's patch grid, following the model's preprocessing
 * geometry (exact resize, or shortest-edge resize + centre crop, as in src/image/preprocess.ts).
 *
 * Conventions (docs/datasets.md):
 * - Box coordinates are continuous pixel edges: the box covers [xmin, xmax] x [ymin, ymax] of an
 *   image whose pixel (x, y) spans [x, x+1) x [y, y+1). (VOC's 1-based inclusive indices would
 *   move an edge by at most one source pixel; no correction is made.) Boxes are clipped to the image.
 * - A mask `<stem>.png` next to `<stem>.xml` replaces the boxes: its pixel value k (1..objects) marks
 *   the k-th <object> of the XML, 0 is background and 255 (VOC's "void") is ignored. Greyscale or
 *   palette PNGs (palette indices are the values), the size of the XML's <size>.
 * - Coverage of class c in a patch = area of the patch covered by c's boxes (their union) or mask
 *   pixels, over the patch area, computed exactly in the preprocessed image's coordinates.
 * - Label = the class with the largest coverage if it is at least `threshold` (default 0.5), else
 *   null; ties go to the class whose first object comes first in the XML.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';

import sharp from 'sharp';

import { PrismaError, usageError } from '../errors.js';
import {
  IMAGE_EXTENSIONS,
  defaultPreprocessSpec,
  preprocessGeometry,
  readPreprocessSpec,
  type Geometry,
  type PreprocessSpec,
} from '../image/preprocess.js';
import { decodeIndexPng, type IndexImage } from './index-png.js';
import { writeJsonAtomic } from './io.js';

export const PATCH_LABELS_SCHEMA_VERSION = 1;
export const DEFAULT_THRESHOLD = 0.5;
/** Mask value that marks pixels to ignore (PASCAL VOC's object borders). */
export const MASK_IGNORE = 255;

// ---------------------------------------------------------------------------------------------
// VOC XML

export interface VocObject {
  name: string;
  /** [xmin, ymin, xmax, ymax] in source pixels. */
  bbox: [number, number, number, number];
}

export interface VocAnnotation {
  /** The XML's <filename> (ILSVRC omits the extension), or null. */
  filename: string | null;
  /** From <size>; 0 when absent. */
  width: number;
  height: number;
  objects: VocObject[];
}

function datasetError(message: string, hint?: string): PrismaError {
  return new PrismaError('E_DATASET', message, hint === undefined ? {} : { hint });
}

function decodeEntities(text: string): string {
  return text
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&#x([0-9a-f]+);/gi, (_, h: string) => String.fromCodePoint(Number.parseInt(h, 16)))
    .replace(/&amp;/g, '&');
}

/** Text of the first <tag> element directly in `xml` (no nesting inside it), or undefined. */
function tagText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}(?:\\s[^>]*)?>([^<]*)</${tag}>`).exec(xml);
  return m ? decodeEntities(m[1]!.trim()) : undefined;
}

function block(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`).exec(xml);
  return m ? m[1] : undefined;
}

function num(xml: string, tag: string, source: string, where: string): number {
  const t = tagText(xml, tag);
  const v = t === undefined ? Number.NaN : Number(t);
  if (t === undefined || t === '' || !Number.isFinite(v)) throw datasetError(`${source}: ${where} needs a numeric <${tag}>`);
  return v;
}

/** Parse PASCAL VOC / ILSVRC annotation XML (objects' <part> children are skipped). */
export function parseVocXml(text: string, source = 'annotation'): VocAnnotation {
  const xml = text.replace(/<!--[\s\S]*?-->/g, '').replace(/<\?[\s\S]*?\?>/g, '');
  const root = block(xml, 'annotation');
  if (root === undefined) throw datasetError(`${source}: no <annotation> element`, 'expected PASCAL VOC / ILSVRC bounding-box XML');
  const sizeBlock = block(root, 'size');
  let width = 0;
  let height = 0;
  if (sizeBlock !== undefined) {
    width = num(sizeBlock, 'width', source, '<size>');
    height = num(sizeBlock, 'height', source, '<size>');
    if (width < 0 || height < 0 || !Number.isInteger(width) || !Number.isInteger(height)) {
      throw datasetError(`${source}: <size> must hold non-negative integers`);
    }
  }
  const objects: VocObject[] = [];
  const objectRe = /<object(?:\s[^>]*)?>([\s\S]*?)<\/object>/g;
  for (let m = objectRe.exec(root); m; m = objectRe.exec(root)) {
    const body = m[1]!.replace(/<part(?:\s[^>]*)?>[\s\S]*?<\/part>/g, '');
    const where = `object ${objects.length + 1}`;
    const name = tagText(body, 'name');
    if (!name) throw datasetError(`${source}: ${where} has no <name>`);
    const box = block(body, 'bndbox');
    if (box === undefined) throw datasetError(`${source}: ${where} (${name}) has no <bndbox>`);
    const bbox: [number, number, number, number] = [
      num(box, 'xmin', source, where),
      num(box, 'ymin', source, where),
      num(box, 'xmax', source, where),
      num(box, 'ymax', source, where),
    ];
    if (bbox[2] <= bbox[0] || bbox[3] <= bbox[1]) {
      throw datasetError(`${source}: ${where} (${name}) has an empty box [${bbox.join(', ')}] (needs xmax > xmin and ymax > ymin)`);
    }
    objects.push({ name, bbox });
  }
  const filename = tagText(root, 'filename');
  return { filename: filename ? filename : null, width, height, objects };
}

// ---------------------------------------------------------------------------------------------
// Geometry

export { preprocessGeometry, type Geometry } from '../image/preprocess.js';

export function mapX(g: Geometry, x: number): number {
  return (x * g.resizedWidth) / g.srcWidth - g.left;
}

export function mapY(g: Geometry, y: number): number {
  return (y * g.resizedHeight) / g.srcHeight - g.top;
}

type Rect = [number, number, number, number];

/** Area of the union of axis-aligned rectangles (coordinate compression; fine for a few boxes). */
export function unionArea(rects: readonly Rect[]): number {
  const live = rects.filter((r) => r[2] > r[0] && r[3] > r[1]);
  if (live.length === 0) return 0;
  if (live.length === 1) return (live[0]![2] - live[0]![0]) * (live[0]![3] - live[0]![1]);
  const xs = [...new Set(live.flatMap((r) => [r[0], r[2]]))].sort((a, b) => a - b);
  const ys = [...new Set(live.flatMap((r) => [r[1], r[3]]))].sort((a, b) => a - b);
  let area = 0;
  for (let i = 0; i + 1 < xs.length; i++) {
    const mx = (xs[i]! + xs[i + 1]!) / 2;
    for (let j = 0; j + 1 < ys.length; j++) {
      const my = (ys[j]! + ys[j + 1]!) / 2;
      if (live.some((r) => r[0] <= mx && mx <= r[2] && r[1] <= my && my <= r[3])) area += (xs[i + 1]! - xs[i]!) * (ys[j + 1]! - ys[j]!);
    }
  }
  return area;
}

function clipRect(r: Rect, c: Rect): Rect {
  return [Math.max(r[0], c[0]), Math.max(r[1], c[1]), Math.min(r[2], c[2]), Math.min(r[3], c[3])];
}

export interface PatchCoverage {
  grid: [number, number];
  /** Distinct class names in XML order. */
  classes: string[];
  /** coverage[c][p]: fraction of patch p (row-major) covered by classes[c]. */
  coverage: Float64Array[];
}

/**
 * Per-class coverage of each patch of the preprocessed image. With `mask`, object k's region is the
 * set of mask pixels equal to k (boxes ignored); otherwise it is its box.
 */
export function patchCoverage(ann: VocAnnotation, g: Geometry, patchSize: number, mask?: IndexImage): PatchCoverage {
  if (!Number.isInteger(patchSize) || patchSize < 1) throw usageError(`patch size must be a positive integer, got ${patchSize}`);
  const gh = Math.floor(g.height / patchSize);
  const gw = Math.floor(g.width / patchSize);
  if (gh < 1 || gw < 1) throw usageError(`patch size ${patchSize} is larger than the preprocessed image (${g.width}x${g.height})`);
  const classes: string[] = [];
  const classOf = ann.objects.map((o) => {
    let c = classes.indexOf(o.name);
    if (c < 0) c = classes.push(o.name) - 1;
    return c;
  });
  const area = patchSize * patchSize;
  const coverage = classes.map(() => new Float64Array(gh * gw));
  const image: Rect = [0, 0, g.width, g.height];

  if (!mask) {
    const mapped = ann.objects.map(
      (o): Rect =>
        clipRect(
          [
            mapX(g, Math.max(0, o.bbox[0])),
            mapY(g, Math.max(0, o.bbox[1])),
            mapX(g, Math.min(g.srcWidth, o.bbox[2])),
            mapY(g, Math.min(g.srcHeight, o.bbox[3])),
          ],
          image,
        ),
    );
    for (let c = 0; c < classes.length; c++) {
      const rects = mapped.filter((_, k) => classOf[k] === c);
      for (let py = 0; py < gh; py++) {
        for (let px = 0; px < gw; px++) {
          const patch: Rect = [px * patchSize, py * patchSize, (px + 1) * patchSize, (py + 1) * patchSize];
          coverage[c]![py * gw + px] = unionArea(rects.map((r) => clipRect(r, patch))) / area;
        }
      }
    }
    return { grid: [gh, gw], classes, coverage };
  }

  // Mask: every mask pixel is a rectangle in source coordinates; add its mapped area to the patches it meets.
  const xEdges = Float64Array.from({ length: mask.width + 1 }, (_, x) => mapX(g, x));
  const yEdges = Float64Array.from({ length: mask.height + 1 }, (_, y) => mapY(g, y));
  for (let y = 0; y < mask.height; y++) {
    const y0 = Math.max(0, yEdges[y]!);
    const y1 = Math.min(gh * patchSize, yEdges[y + 1]!);
    if (y1 <= y0) continue;
    for (let x = 0; x < mask.width; x++) {
      const v = mask.data[y * mask.width + x]!;
      if (v === 0 || v === MASK_IGNORE) continue;
      const c = classOf[v - 1];
      if (c === undefined) continue; // checked by the caller
      const x0 = Math.max(0, xEdges[x]!);
      const x1 = Math.min(gw * patchSize, xEdges[x + 1]!);
      if (x1 <= x0) continue;
      const cov = coverage[c]!;
      for (let py = Math.floor(y0 / patchSize); py < gh && py * patchSize < y1; py++) {
        const oy = Math.min(y1, (py + 1) * patchSize) - Math.max(y0, py * patchSize);
        if (oy <= 0) continue;
        for (let px = Math.floor(x0 / patchSize); px < gw && px * patchSize < x1; px++) {
          const ox = Math.min(x1, (px + 1) * patchSize) - Math.max(x0, px * patchSize);
          if (ox > 0) cov[py * gw + px]! += (ox * oy) / area;
        }
      }
    }
  }
  return { grid: [gh, gw], classes, coverage };
}

/** Label per patch: the best-covered class if its coverage >= threshold, else null (ties: XML order). */
export function labelsFromCoverage(cov: PatchCoverage, threshold = DEFAULT_THRESHOLD): { labels: (string | null)[]; coverage: number[] } {
  const n = cov.grid[0] * cov.grid[1];
  const labels: (string | null)[] = [];
  const best: number[] = [];
  for (let p = 0; p < n; p++) {
    let bc = -1;
    let bv = 0;
    for (let c = 0; c < cov.classes.length; c++) {
      const v = cov.coverage[c]![p]!;
      if (v > bv) {
        bv = v;
        bc = c;
      }
    }
    // Guard against float noise just above 1 (e.g. 1.0000000000000002) in the reported number.
    const value = Math.min(1, bv);
    labels.push(bc >= 0 && value >= threshold - 1e-12 ? cov.classes[bc]! : null);
    best.push(Math.round(value * 1e6) / 1e6);
  }
  return { labels, coverage: best };
}

// ---------------------------------------------------------------------------------------------
// Files

/** One image of a patch-labels file. */
export interface PatchLabelsEntry {
  /** Image path (from --images) or the XML's <filename>. */
  image: string;
  annotation: string;
  mask: string | null;
  /** Source image [width, height]. */
  sourceSize: [number, number];
  /** Preprocessed image [height, width]. */
  size: [number, number];
  grid: [number, number];
  /** Synset (class name) or null per patch, row-major; token index = 1 + patch index with a class token. */
  labels: (string | null)[];
  /** Coverage of the best-covered class per patch (0..1), also when it is below the threshold. */
  coverage: number[];
}

export interface PatchLabelsFile {
  schemaVersion: 1;
  kind: 'patch-labels';
  patchSize: number;
  threshold: number;
  preprocess: { source: string; resize: PreprocessSpec['resize']; centerCrop: PreprocessSpec['centerCrop'] };
  /** Every class that labels at least one patch, sorted. */
  classes: string[];
  images: PatchLabelsEntry[];
}

/** Where the patch grid comes from: a model folder, or explicit sizes. */
export interface PatchLabelsTarget {
  modelDir?: string;
  /** [height, width]; overrides the model's config. */
  imageSize?: [number, number];
  patchSize?: number;
  /** Without a model: resize the shortest edge to this, then centre-crop to imageSize (CLIP style). */
  shortestEdge?: number;
}

export interface ResolvedTarget {
  spec: PreprocessSpec;
  patchSize: number;
  imageSize: [number, number];
}

function sizePair(v: unknown): [number, number] | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v > 0) return [v, v];
  if (Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === 'number' && Number.isInteger(x) && x > 0))
    return [v[0] as number, v[1] as number];
  return undefined;
}

/** image_size / patch_size from a model folder's config.json (top level or `vision_config`). */
export async function readModelGrid(modelDir: string): Promise<{ imageSize?: [number, number]; patchSize?: number }> {
  const path = join(modelDir, 'config.json');
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PrismaError('E_MODEL_DIR', code === 'ENOENT' ? `${path} not found` : `cannot read ${path}: ${(err as Error).message}`, {
      hint: 'MODEL_DIR must be a folder holding config.json (Hugging Face layout), or pass --image-size and --patch-size',
    });
  }
  const vision = cfg['vision_config'] && typeof cfg['vision_config'] === 'object' ? (cfg['vision_config'] as Record<string, unknown>) : cfg;
  const imageSize = sizePair(vision['image_size'] ?? cfg['image_size']);
  const patch = sizePair(vision['patch_size'] ?? cfg['patch_size']);
  if (patch && patch[0] !== patch[1]) throw datasetError(`${path}: non-square patches (${patch.join('x')}) are not supported`);
  return { ...(imageSize ? { imageSize } : {}), ...(patch ? { patchSize: patch[0] } : {}) };
}

export async function resolveTarget(target: PatchLabelsTarget): Promise<ResolvedTarget> {
  let imageSize = target.imageSize;
  let patchSize = target.patchSize;
  let spec: PreprocessSpec;
  if (target.modelDir !== undefined) {
    if (target.shortestEdge !== undefined)
      throw usageError('--shortest-edge is only used without --model (the model folder says how it resizes)');
    const grid = await readModelGrid(target.modelDir);
    imageSize ??= grid.imageSize;
    patchSize ??= grid.patchSize;
    if (!imageSize) throw datasetError(`${target.modelDir}/config.json has no image_size`, 'pass --image-size');
    spec = await readPreprocessSpec(target.modelDir, imageSize);
  } else {
    if (!imageSize) throw usageError('give --model MODEL_DIR, or --image-size and --patch-size');
    if (target.shortestEdge !== undefined) {
      spec = {
        ...defaultPreprocessSpec(imageSize),
        source: 'flags',
        resize: { mode: 'shortest_edge', shortestEdge: target.shortestEdge },
        centerCrop: { height: imageSize[0], width: imageSize[1] },
      };
    } else {
      spec = { ...defaultPreprocessSpec(imageSize), source: 'flags' };
    }
  }
  if (!patchSize) throw datasetError('no patch size: the model config has no patch_size', 'pass --patch-size');
  return { spec, patchSize, imageSize };
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** The image an annotation belongs to, in `imagesDir`: <filename> as given, or with an image extension. */
export async function findImage(imagesDir: string, ann: VocAnnotation, xmlPath: string): Promise<string | undefined> {
  const stems = [...new Set([ann.filename, basename(xmlPath, extname(xmlPath))].filter((s): s is string => !!s))];
  for (const s of stems) {
    if (extname(s) && (await exists(join(imagesDir, s)))) return join(imagesDir, s);
    const bare = IMAGE_EXTENSIONS.some((e) => s.toLowerCase().endsWith(e)) ? s.slice(0, -extname(s).length) : s;
    for (const ext of IMAGE_EXTENSIONS) {
      for (const e of [ext, ext.toUpperCase()]) {
        const p = join(imagesDir, bare + e);
        if (await exists(p)) return p;
      }
    }
  }
  return undefined;
}

/** Oriented size of an image file (EXIF orientation applied, as preprocessing does). */
async function imageSize(path: string): Promise<[number, number]> {
  try {
    const m = await sharp(path).metadata();
    return [m.autoOrient.width, m.autoOrient.height];
  } catch (err) {
    throw new PrismaError('E_IMAGE_DECODE', `cannot read image '${path}': ${((err as Error).message ?? String(err)).split('\n')[0]}`);
  }
}

/** The annotation XML files: a single .xml file, or the .xml files of a folder sorted by name. */
export async function listAnnotations(path: string): Promise<string[]> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch {
    throw new PrismaError('E_INPUT', `annotations not found: ${path}`);
  }
  if (st.isFile()) return [path];
  const names = (await readdir(path, { withFileTypes: true }))
    .filter((e) => e.isFile() && extname(e.name).toLowerCase() === '.xml')
    .map((e) => e.name)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (names.length === 0) throw new PrismaError('E_INPUT', `no .xml annotation files in ${path}`);
  return names.map((n) => join(path, n));
}

export interface PatchLabelsOptions extends PatchLabelsTarget {
  /** An .xml file or a folder of them (masks: `<stem>.png` beside each XML). */
  annotations: string;
  /** Folder of the images (to record their paths, and their sizes when the XML has none). */
  images?: string;
  threshold?: number;
  onProgress?: (done: number, total: number, path: string) => void;
}

/** Compute a patch-labels document (see docs/datasets.md) without writing it. */
export async function computePatchLabels(options: PatchLabelsOptions): Promise<PatchLabelsFile> {
  const threshold = options.threshold ?? DEFAULT_THRESHOLD;
  if (!(threshold > 0 && threshold <= 1)) throw usageError(`threshold must be in (0, 1], got ${threshold}`);
  const { spec, patchSize } = await resolveTarget(options);
  const files = await listAnnotations(options.annotations);
  const images: PatchLabelsEntry[] = [];
  const used = new Set<string>();
  for (const [i, xmlPath] of files.entries()) {
    let text: string;
    try {
      text = await readFile(xmlPath, 'utf8');
    } catch (err) {
      throw new PrismaError('E_IO', `cannot read ${xmlPath}: ${(err as Error).message}`);
    }
    const ann = parseVocXml(text, xmlPath);
    let image = ann.filename ?? basename(xmlPath, extname(xmlPath));
    let width = ann.width;
    let height = ann.height;
    if (options.images !== undefined) {
      const found = await findImage(options.images, ann, xmlPath);
      if (!found)
        throw datasetError(
          `${xmlPath}: no image for '${image}' in ${options.images}`,
          'images are matched by <filename>, or by the XML file name, with any image extension',
        );
      image = found;
      const [w, h] = await imageSize(found);
      if (width === 0 || height === 0) {
        width = w;
        height = h;
      } else if (w !== width || h !== height) {
        throw datasetError(`${xmlPath}: <size> says ${width}x${height} but ${found} is ${w}x${h}`);
      }
    }
    if (width === 0 || height === 0)
      throw datasetError(`${xmlPath}: no <size> in the XML`, 'pass --images DIR so the size can be read from the image');

    const maskPath = join(`${xmlPath.slice(0, -extname(xmlPath).length)}.png`);
    let mask: IndexImage | undefined;
    if (await exists(maskPath)) {
      mask = decodeIndexPng(await readFile(maskPath), maskPath);
      if (mask.width !== width || mask.height !== height) {
        throw datasetError(`${maskPath}: mask is ${mask.width}x${mask.height} but the image is ${width}x${height}`);
      }
      for (const v of mask.data) {
        if (v !== 0 && v !== MASK_IGNORE && v > ann.objects.length) {
          throw datasetError(
            `${maskPath}: mask value ${v} names no object (the XML has ${ann.objects.length})`,
            'mask values are 1-based <object> indices; 0 background, 255 ignored',
          );
        }
      }
    }

    const g = preprocessGeometry(spec, width, height);
    const cov = patchCoverage(ann, g, patchSize, mask);
    const { labels, coverage } = labelsFromCoverage(cov, threshold);
    for (const l of labels) if (l !== null) used.add(l);
    images.push({
      image,
      annotation: xmlPath,
      mask: mask ? maskPath : null,
      sourceSize: [width, height],
      size: [g.height, g.width],
      grid: cov.grid,
      labels,
      coverage,
    });
    options.onProgress?.(i + 1, files.length, xmlPath);
  }
  return {
    schemaVersion: PATCH_LABELS_SCHEMA_VERSION,
    kind: 'patch-labels',
    patchSize,
    threshold,
    preprocess: { source: spec.source, resize: spec.resize, centerCrop: spec.centerCrop },
    classes: [...used].sort(),
    images,
  };
}

/** Compute patch labels and write them to `out` (atomically). */
export async function writePatchLabels(out: string, options: PatchLabelsOptions): Promise<PatchLabelsFile> {
  const doc = await computePatchLabels(options);
  await writeJsonAtomic(out, doc);
  return doc;
}

function invalid(file: string, message: string): PrismaError {
  return datasetError(`${file} is not a valid patch-labels file: ${message}`, 'create it with `prisma dataset patch-labels`');
}

/** Read and check a file written by `prisma dataset patch-labels`. */
export async function loadPatchLabels(file: string): Promise<PatchLabelsFile> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PrismaError('E_INPUT', `patch labels file not found: ${file}`);
    throw invalid(file, (err as Error).message);
  }
  if (!doc || typeof doc !== 'object') throw invalid(file, 'expected a JSON object');
  const d = doc as Record<string, unknown>;
  if (d['kind'] !== 'patch-labels') throw invalid(file, "'kind' is not 'patch-labels'");
  if (d['schemaVersion'] !== PATCH_LABELS_SCHEMA_VERSION)
    throw invalid(file, `unsupported schemaVersion ${JSON.stringify(d['schemaVersion'])}`);
  if (!Array.isArray(d['images'])) throw invalid(file, "'images' must be a list");
  for (const [i, e] of (d['images'] as unknown[]).entries()) {
    const entry = e as Partial<PatchLabelsEntry> | null;
    const grid = entry?.grid;
    if (!entry || typeof entry.image !== 'string') throw invalid(file, `images[${i}].image must be a string`);
    if (!Array.isArray(grid) || grid.length !== 2 || !grid.every((x) => Number.isInteger(x) && x > 0))
      throw invalid(file, `images[${i}].grid must be [rows, cols]`);
    const n = grid[0]! * grid[1]!;
    if (!Array.isArray(entry.labels) || entry.labels.length !== n || !entry.labels.every((l) => l === null || typeof l === 'string')) {
      throw invalid(file, `images[${i}].labels must hold ${n} strings or nulls`);
    }
    if (!Array.isArray(entry.coverage) || entry.coverage.length !== n || !entry.coverage.every((c) => typeof c === 'number')) {
      throw invalid(file, `images[${i}].coverage must hold ${n} numbers`);
    }
  }
  return doc as PatchLabelsFile;
}

/** The entry for `image`: same path, same resolved path, or (if unique) the same file name. */
export function findPatchLabels(file: PatchLabelsFile, image: string): PatchLabelsEntry | undefined {
  const exact = file.images.find((e) => e.image === image);
  if (exact) return exact;
  const abs = resolve(image);
  const byPath = file.images.find((e) => resolve(e.image) === abs);
  if (byPath) return byPath;
  const name = basename(image);
  const stemOf = (p: string) => basename(p, extname(p));
  const byName = file.images.filter((e) => basename(e.image) === name || (extname(e.image) === '' && e.image === stemOf(name)));
  return byName.length === 1 ? byName[0] : undefined;
}
