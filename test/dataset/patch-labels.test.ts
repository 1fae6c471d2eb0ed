// ImageNet-style patch labels. Expected labels are worked out by hand from the fixture boxes
// (fixtures/annotations/README.md) and each model's resize / crop geometry; see the comments.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';

import { decodeIndexPng } from '../../src/dataset/index-png.js';
import {
  computePatchLabels,
  findPatchLabels,
  loadPatchLabels,
  parseVocXml,
  preprocessGeometry,
  unionArea,
  writePatchLabels,
  type PatchLabelsEntry,
} from '../../src/dataset/patch-labels.js';
import { FIXTURES } from '../helpers/cli.js';

const ANN = join(FIXTURES, 'annotations');
const IMAGES = join(FIXTURES, 'images');
const TINY = join(FIXTURES, 'models', 'vit-tiny-cls'); // 32x32 exact resize, patch 8: a 4x4 grid

const tmp = mkdtempSync(join(tmpdir(), 'prisma-patch-labels-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const CAT = 'n02123045';
const HELMET = 'n03127747';
const CUP = 'n07930864';
const ESPRESSO = 'n07920052';

/** A 4x4 grid of nulls with some cells set, as [row, col, label]. */
function grid4(cells: [number, number, string][]): (string | null)[] {
  const out: (string | null)[] = new Array(16).fill(null);
  for (const [r, c, l] of cells) out[r * 4 + c] = l;
  return out;
}

async function one(annotation: string, options: Record<string, unknown> = {}): Promise<PatchLabelsEntry> {
  const doc = await computePatchLabels({ annotations: join(ANN, annotation), modelDir: TINY, ...options });
  expect(doc.images).toHaveLength(1);
  return doc.images[0]!;
}

/** A CLIP-style model folder: shortest edge 32, centre crop 32x32, patch 8. */
function clipModel(): string {
  const dir = join(tmp, 'clip-model');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'clip_vision_model', image_size: 32, patch_size: 8 }));
  writeFileSync(
    join(dir, 'preprocessor_config.json'),
    JSON.stringify({
      image_processor_type: 'CLIPImageProcessor',
      size: { shortest_edge: 32 },
      crop_size: { height: 32, width: 32 },
      do_center_crop: true,
    }),
  );
  return dir;
}

describe('patch labels, exact resize to 32x32 (vit-tiny-cls)', () => {
  it('chelsea: the cat box starts at y = 10 * 32/70 = 4.57, so row 0 is 3/7 covered (below 0.5)', async () => {
    const e = await one('chelsea.xml');
    expect(e.grid).toEqual([4, 4]);
    expect(e.size).toEqual([32, 32]);
    expect(e.sourceSize).toEqual([50, 70]);
    expect(e.image).toBe('chelsea.jpg');
    expect(e.labels).toEqual([null, null, null, null, ...new Array(12).fill(CAT)]);
    expect(e.coverage.slice(0, 4)).toEqual(new Array(4).fill(Number((3 / 7).toFixed(6))));
    expect(e.coverage.slice(4)).toEqual(new Array(12).fill(1));
    // With threshold 0.4, 3/7 is enough.
    expect((await one('chelsea.xml', { threshold: 0.4 })).labels).toEqual(new Array(16).fill(CAT));
  });

  it('astronaut: x scales by 1/2, y by 2/3; the <part> is ignored', async () => {
    // face [20,36]x[0,16] -> [10,18]x[0,10.67]: patch (0,1) 6/8 * 1 = 0.75; (0,2) 0.25; (1,1) 0.75 * 1/3 = 0.25.
    // helmet [36,64]x[34,48] -> [18,32]x[22.67,32]: (3,2) 0.75, (3,3) 1, (2,3) 1/6, (2,2) 0.75/6.
    const e = await one('astronaut.xml');
    expect(e.labels).toEqual(
      grid4([
        [0, 1, 'face'],
        [3, 2, HELMET],
        [3, 3, HELMET],
      ]),
    );
    const cov = (r: number, c: number) => e.coverage[r * 4 + c];
    expect(cov(0, 1)).toBe(0.75);
    expect(cov(0, 2)).toBe(0.25);
    expect(cov(1, 1)).toBe(0.25);
    expect(cov(1, 2)).toBeCloseTo(1 / 12, 6);
    expect(cov(2, 2)).toBe(0.125);
    expect(cov(2, 3)).toBeCloseTo(1 / 6, 6);
    expect(cov(3, 2)).toBe(0.75);
    expect(cov(3, 3)).toBe(1);
    expect(cov(0, 0)).toBe(0);
  });

  it('coffee (boxes): the cup box contains the espresso box, so the cup wins every patch it covers', async () => {
    // cup [20,56]x[0,48] -> x [8,22.4], y [0,25.6]: columns 1 and 2 cover 1 and 0.8; row 3 covers 0.2.
    const e = await one('coffee.xml');
    expect(e.labels).toEqual(
      grid4([
        [0, 1, CUP],
        [0, 2, CUP],
        [1, 1, CUP],
        [1, 2, CUP],
        [2, 1, CUP],
        [2, 2, CUP],
      ]),
    );
    expect([0, 1, 2].map((r) => e.coverage[r * 4 + 2])).toEqual([0.8, 0.8, 0.8]);
    expect(e.coverage[3 * 4 + 1]).toBe(0.2);
    expect(e.coverage[3 * 4 + 2]).toBe(0.16);
    expect(e.mask).toBeNull();
  });

  it('coffee (mask): the espresso region is no longer cup, so it wins the patches it mostly fills', async () => {
    // espresso [26,50)x[14,30) -> x [10.4,20], y [7.47,16]; cup = its box minus that; the 255 strip is ignored.
    // (1,1): espresso 5.6/8 = 0.7, cup 0.3.  (1,2): espresso 4/8 = 0.5 (>= 0.5 counts), cup 0.8 - 0.5.
    // (0,1): cup 1 - 0.7 * (0.53/8) = 0.953.  (0,2): cup 0.8 - 0.5 * 0.0667 = 0.767.  Row 3: 0.2 and 0.16.
    const e = await one('coffee-seg.xml');
    expect(e.mask).toBe(join(ANN, 'coffee-seg.png'));
    expect(e.labels).toEqual(
      grid4([
        [0, 1, CUP],
        [0, 2, CUP],
        [1, 1, ESPRESSO],
        [1, 2, ESPRESSO],
        [2, 1, CUP],
        [2, 2, CUP],
      ]),
    );
    const cov = (r: number, c: number) => e.coverage[r * 4 + c]!;
    expect(cov(1, 1)).toBeCloseTo(0.7, 6);
    expect(cov(1, 2)).toBeCloseTo(0.5, 6);
    expect(cov(0, 1)).toBeCloseTo(1 - (0.7 * (8 - 448 / 60)) / 8, 6);
    expect(cov(0, 2)).toBeCloseTo(0.8 - (0.5 * (8 - 448 / 60)) / 8, 6);
    expect(cov(2, 2)).toBeCloseTo(0.8, 6);
    expect(cov(3, 1)).toBeCloseTo(0.2, 6);
    expect(cov(3, 2)).toBeCloseTo(0.16, 6);
    expect(cov(0, 3)).toBe(0); // the ignored strip maps to x in [22.4, 23.2], inside column 2 anyway
  });

  it('a folder gives every XML in name order, and --images finds the photos (ILSVRC names have no extension)', async () => {
    const doc = await computePatchLabels({ annotations: ANN, modelDir: TINY, images: IMAGES });
    expect(doc.images.map((e) => e.annotation)).toEqual(
      ['astronaut.xml', 'chelsea.xml', 'coffee-seg.xml', 'coffee.xml'].map((f) => join(ANN, f)),
    );
    expect(doc.images.map((e) => e.image)).toEqual(
      ['astronaut.png', 'chelsea.jpg', 'coffee.png', 'coffee.png'].map((f) => join(IMAGES, f)),
    );
    expect(doc.classes).toEqual([CUP, ESPRESSO, CAT, HELMET, 'face'].sort());
    expect(doc).toMatchObject({ schemaVersion: 1, kind: 'patch-labels', patchSize: 8, threshold: 0.5 });
    expect(doc.preprocess.resize).toEqual({ mode: 'exact', height: 32, width: 32 });
  });

  it('the same sizes from flags give the same labels as the model folder', async () => {
    const fromModel = await one('astronaut.xml');
    const fromFlags = await computePatchLabels({ annotations: join(ANN, 'astronaut.xml'), imageSize: [32, 32], patchSize: 8 });
    expect(fromFlags.images[0]!.labels).toEqual(fromModel.labels);
    expect(fromFlags.preprocess.source).toBe('flags');
  });
});

describe('patch labels, shortest-edge resize + centre crop (CLIP style)', () => {
  it('computes the geometry like the preprocessing does', () => {
    const spec = { resize: { mode: 'shortest_edge' as const, shortestEdge: 32 }, centerCrop: { height: 32, width: 32 } };
    // 50x70: width is the short edge -> 32 x trunc(32 * 70 / 50 = 44.8) = 44, crop top floor(12 / 2) = 6.
    expect(preprocessGeometry(spec, 50, 70)).toEqual({
      srcWidth: 50,
      srcHeight: 70,
      resizedWidth: 32,
      resizedHeight: 44,
      left: 0,
      top: 6,
      width: 32,
      height: 32,
    });
    // 64x48: trunc(32 * 64 / 48 = 42.67) = 42 wide, crop left floor(10 / 2) = 5.
    expect(preprocessGeometry(spec, 64, 48)).toMatchObject({ resizedWidth: 42, resizedHeight: 32, left: 5, top: 0 });
  });

  it('chelsea: the crop removes the top 6 rows, so row 0 is (8 - (10 * 44/70 - 6)) / 8 = 27/28 cat', async () => {
    const e = await one('chelsea.xml', { modelDir: clipModel() });
    expect(e.labels).toEqual(new Array(16).fill(CAT));
    expect(e.coverage[0]).toBeCloseTo(27 / 28, 6);
  });

  it('astronaut: face x [20,36] -> [8.125, 18.625], helmet x [36,64] -> [18.625, 32]', async () => {
    const e = await one('astronaut.xml', { modelDir: clipModel() });
    expect(e.labels).toEqual(
      grid4([
        [0, 1, 'face'],
        [3, 2, HELMET],
        [3, 3, HELMET],
      ]),
    );
    expect(e.coverage[1]).toBeCloseTo(7.875 / 8, 6);
    expect(e.coverage[2]).toBeCloseTo(2.625 / 8, 6);
    expect(e.coverage[14]).toBeCloseTo(5.375 / 8, 6);
    // --shortest-edge without a model folder does the same.
    const flags = await computePatchLabels({
      annotations: join(ANN, 'astronaut.xml'),
      imageSize: [32, 32],
      patchSize: 8,
      shortestEdge: 32,
    });
    expect(flags.images[0]!.labels).toEqual(e.labels);
  });
});

describe('patch label rules', () => {
  function xml(objects: [string, number, number, number, number][], size = [32, 32]): string {
    const objs = objects
      .map(
        ([n, a, b, c, d]) =>
          `<object><name>${n}</name><bndbox><xmin>${a}</xmin><ymin>${b}</ymin><xmax>${c}</xmax><ymax>${d}</ymax></bndbox></object>`,
      )
      .join('');
    return `<annotation><filename>x.png</filename><size><width>${size[0]}</width><height>${size[1]}</height></size>${objs}</annotation>`;
  }
  async function labelsFor(text: string, name = 'rule.xml') {
    const path = join(tmp, name);
    writeFileSync(path, text);
    return (await computePatchLabels({ annotations: path, imageSize: [32, 32], patchSize: 8 })).images[0]!;
  }

  it('uses the union of boxes of one class, not their sum', async () => {
    // [0,8]x[0,4] and [0,8]x[2,6]: union 8 x 6 = 48/64 = 0.75 (the sum would be 1).
    const e = await labelsFor(
      xml([
        ['a', 0, 0, 8, 4],
        ['a', 0, 2, 8, 6],
      ]),
    );
    expect(e.coverage[0]).toBe(0.75);
    expect(
      unionArea([
        [0, 0, 4, 4],
        [2, 2, 6, 6],
      ]),
    ).toBe(28);
  });

  it('breaks ties by XML order', async () => {
    const b: [string, number, number, number, number] = ['b', 0, 0, 8, 4];
    const a: [string, number, number, number, number] = ['a', 0, 4, 8, 8];
    expect((await labelsFor(xml([b, a]))).labels[0]).toBe('b');
    expect((await labelsFor(xml([a, b]))).labels[0]).toBe('a');
  });

  it('clips boxes to the image', async () => {
    const e = await labelsFor(xml([['a', -10, -10, 4, 40]]));
    expect(e.coverage.slice(0, 4)).toEqual([0.5, 0, 0, 0]);
  });

  it('rejects malformed annotations with E_DATASET', async () => {
    await expect(labelsFor('<nope/>')).rejects.toMatchObject({ code: 'E_DATASET' });
    await expect(labelsFor(xml([['a', 8, 0, 8, 4]]))).rejects.toMatchObject({ code: 'E_DATASET', message: /empty box/ });
    await expect(labelsFor(xml([['a', 0, 0, 4, 4]]).replace('<xmax>4</xmax>', '<xmax>four</xmax>'))).rejects.toMatchObject({
      code: 'E_DATASET',
    });
    await expect(labelsFor(xml([['a', 0, 0, 4, 4]]).replace(/<size>.*<\/size>/, ''))).rejects.toMatchObject({
      code: 'E_DATASET',
      hint: /--images/,
    });
  });

  it('parses entities and skips comments and parts', () => {
    const ann = parseVocXml(
      '<annotation><!-- <object><name>x</name></object> --><size><width>4</width><height>3</height></size>' +
        '<object><name>a &amp; b</name><part><name>p</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>1</xmax><ymax>1</ymax></bndbox></part>' +
        '<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2.5</xmax><ymax>3</ymax></bndbox></object></annotation>',
    );
    expect(ann).toEqual({ filename: null, width: 4, height: 3, objects: [{ name: 'a & b', bbox: [1, 1, 2.5, 3] }] });
  });

  it('reads greyscale masks and rejects values that name no object, or a wrong size', async () => {
    const dir = join(tmp, 'masks');
    mkdirSync(dir, { recursive: true });
    const grey = new Uint8Array(32 * 32);
    for (let y = 0; y < 8; y++) for (let x = 0; x < 4; x++) grey[y * 32 + x] = 1; // half of patch 0
    for (let y = 0; y < 8; y++) for (let x = 8; x < 16; x++) grey[y * 32 + x] = 1; // all of patch 1
    const png = await sharp(grey, { raw: { width: 32, height: 32, channels: 1 } })
      .toColourspace('b-w')
      .png()
      .toBuffer();
    expect(decodeIndexPng(png).colourType).toBe('grey');
    // The same values stored as RGB (R = G = B) read the same.
    const rgbPng = await sharp(grey, { raw: { width: 32, height: 32, channels: 1 } })
      .png()
      .toBuffer();
    expect(decodeIndexPng(rgbPng)).toMatchObject({ colourType: 'rgb', data: grey });
    expect(decodeIndexPng(png).data).toEqual(grey);
    writeFileSync(join(dir, 'm.png'), png);
    writeFileSync(join(dir, 'm.xml'), xml([['a', 0, 0, 32, 32]]));
    const e = (await computePatchLabels({ annotations: join(dir, 'm.xml'), imageSize: [32, 32], patchSize: 8 })).images[0]!;
    expect(e.labels.slice(0, 3)).toEqual(['a', 'a', null]); // the box is ignored: only mask pixels count
    expect(e.coverage.slice(0, 3)).toEqual([0.5, 1, 0]);

    grey[0] = 2;
    writeFileSync(
      join(dir, 'm.png'),
      await sharp(grey, { raw: { width: 32, height: 32, channels: 1 } })
        .toColourspace('b-w')
        .png()
        .toBuffer(),
    );
    await expect(computePatchLabels({ annotations: join(dir, 'm.xml'), imageSize: [32, 32], patchSize: 8 })).rejects.toMatchObject({
      code: 'E_DATASET',
      message: /value 2/,
    });
    writeFileSync(join(dir, 'm.xml'), xml([['a', 0, 0, 32, 32]], [32, 30]));
    await expect(computePatchLabels({ annotations: join(dir, 'm.xml'), imageSize: [32, 32], patchSize: 8 })).rejects.toMatchObject({
      code: 'E_DATASET',
      message: /32x32/,
    });
    const coloured = Buffer.alloc(32 * 30 * 3);
    coloured[4] = 7; // pixel (1, 0) has G != R
    writeFileSync(
      join(dir, 'm.png'),
      await sharp(coloured, { raw: { width: 32, height: 30, channels: 3 } })
        .png()
        .toBuffer(),
    );
    await expect(computePatchLabels({ annotations: join(dir, 'm.xml'), imageSize: [32, 32], patchSize: 8 })).rejects.toMatchObject({
      code: 'E_DATASET',
      message: /\(1, 0\) is not grey/,
    });
  });

  it('needs a model folder or sizes', async () => {
    await expect(computePatchLabels({ annotations: ANN })).rejects.toMatchObject({ code: 'E_USAGE' });
    await expect(computePatchLabels({ annotations: ANN, modelDir: join(tmp, 'nowhere') })).rejects.toMatchObject({ code: 'E_MODEL_DIR' });
    await expect(computePatchLabels({ annotations: join(tmp, 'missing.xml'), modelDir: TINY })).rejects.toMatchObject({ code: 'E_INPUT' });
  });
});

describe('patch-labels files', () => {
  it('round-trips through writePatchLabels / loadPatchLabels and finds entries by image', async () => {
    const out = join(tmp, 'labels.json');
    const written = await writePatchLabels(out, { annotations: ANN, modelDir: TINY, images: IMAGES });
    const loaded = await loadPatchLabels(out);
    expect(loaded).toEqual(JSON.parse(JSON.stringify(written)));
    expect(findPatchLabels(loaded, join(IMAGES, 'chelsea.jpg'))?.annotation).toBe(join(ANN, 'chelsea.xml'));
    expect(findPatchLabels(loaded, '/elsewhere/chelsea.jpg')?.annotation).toBe(join(ANN, 'chelsea.xml'));
    expect(findPatchLabels(loaded, 'coffee.png')).toBeUndefined(); // two entries: ambiguous
    expect(findPatchLabels(loaded, 'dog.png')).toBeUndefined();
  });

  it('rejects files that are not patch labels', async () => {
    const bad = join(tmp, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify({ schemaVersion: 1, kind: 'patch-labels', images: [{ image: 'a.png', grid: [2, 2], labels: [null], coverage: [0] }] }),
    );
    await expect(loadPatchLabels(bad)).rejects.toMatchObject({ code: 'E_DATASET', message: /4 strings or nulls/ });
    writeFileSync(bad, '{"kind": "report"}');
    await expect(loadPatchLabels(bad)).rejects.toMatchObject({ code: 'E_DATASET' });
    writeFileSync(bad, 'not json');
    await expect(loadPatchLabels(bad)).rejects.toMatchObject({ code: 'E_DATASET' });
    await expect(loadPatchLabels(join(tmp, 'absent.json'))).rejects.toMatchObject({ code: 'E_INPUT' });
  });
});
