// clevr-lite: determinism, scene invariants, rendering, recolouring and patch labels.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { afterAll, describe, expect, it } from 'vitest';

import {
  COLOURS,
  COLOUR_RGB,
  answersFor,
  captionFor,
  generateScene,
  largestObject,
  patchLabels,
  recolour,
  renderScene,
  renderSceneRgb,
  sceneRecord,
  writeClevrLite,
  type ClevrRecord,
  type Scene,
} from '../../src/dataset/clevr.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-clevr-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1))
    .sort();
}

function pngChunks(png: Buffer): string[] {
  const types: string[] = [];
  for (let i = 8; i + 12 <= png.length; i += 12 + png.readUInt32BE(i)) types.push(png.toString('latin1', i + 4, i + 8));
  return types;
}

const plain = { grey: 120, noise: 0, seed: 1 };

describe('clevr-lite determinism', () => {
  it('the same seed gives byte-identical files; another seed gives different ones', async () => {
    const opts = { n: 12, seed: 7, patchSize: 8, edit: true };
    const a = join(tmp, 'a');
    const b = join(tmp, 'b');
    const c = join(tmp, 'c');
    await writeClevrLite({ ...opts, out: a });
    await writeClevrLite({ ...opts, out: b, concurrency: 1 }); // scheduling must not matter
    await writeClevrLite({ ...opts, out: c, seed: 8 });
    const files = filesUnder(a);
    expect(files).toContain('images/000011.png');
    expect(files).toContain('patch-labels/000000.json');
    expect(files).toContain('edited/000003.png');
    expect(files).toEqual(filesUnder(b));
    for (const f of files) expect(readFileSync(join(b, f)).equals(readFileSync(join(a, f))), f).toBe(true);

    expect(readFileSync(join(c, 'labels.jsonl'), 'utf8')).not.toBe(readFileSync(join(a, 'labels.jsonl'), 'utf8'));
    const differing = files.filter((f) => f.startsWith('images/') && !readFileSync(join(c, f)).equals(readFileSync(join(a, f))));
    expect(differing.length).toBeGreaterThan(10);
  });

  it('image i does not depend on n', async () => {
    const small = join(tmp, 'small');
    await writeClevrLite({ out: small, n: 3, seed: 7, patchSize: 8, edit: true });
    for (let i = 0; i < 3; i++) {
      const f = `images/00000${i}.png`;
      expect(readFileSync(join(small, f)).equals(readFileSync(join(tmp, 'a', f)))).toBe(true);
    }
    const lines = (d: string) => readFileSync(join(d, 'labels.jsonl'), 'utf8').split('\n');
    expect(lines(small).slice(0, 3)).toEqual(lines(join(tmp, 'a')).slice(0, 3));
  });

  it('writes dataset.json with class lists, and records whose answer indices point into them', () => {
    const dir = join(tmp, 'a');
    const meta = JSON.parse(readFileSync(join(dir, 'dataset.json'), 'utf8'));
    expect(meta).toMatchObject({ name: 'clevr-lite', generatorVersion: 1, seed: 7, n: 12, size: 48, maxObjects: 4 });
    expect(meta.questions.largest_colour.classes).toEqual(['red', 'green', 'blue', 'yellow', 'purple', 'cyan']);
    expect(meta.questions.count.classes).toEqual(['1', '2', '3', '4']);
    expect(meta.questions.has_red_circle.classes).toEqual(['no', 'yes']);
    const records: ClevrRecord[] = readFileSync(join(dir, 'labels.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(records).toHaveLength(12);
    for (const [i, r] of records.entries()) {
      expect(r.index).toBe(i);
      expect(r.image).toBe(`images/${String(i).padStart(6, '0')}.png`);
      expect(meta.questions.largest_colour.classes[r.answer_index.largest_colour]).toBe(r.answers.largest_colour);
      expect(meta.questions.count.classes[r.answer_index.count]).toBe(String(r.answers.count));
      expect(meta.questions.has_red_circle.classes[r.answer_index.has_red_circle]).toBe(r.answers.has_red_circle ? 'yes' : 'no');
      expect(r.answers.count).toBe(r.objects.length);
    }
    const edits = readFileSync(join(dir, 'edits.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    for (const [i, e] of edits.entries()) {
      const r = records[i]!;
      expect(e.from).toBe(r.answers.largest_colour);
      expect(e.to).not.toBe(e.from);
      expect(e.record.answers.largest_colour).toBe(e.to);
      expect(e.record.objects.map((o: { center: number[] }) => o.center)).toEqual(r.objects.map((o) => o.center));
    }
  });
});

describe('clevr-lite scenes', () => {
  const scenes = Array.from({ length: 400 }, (_, i) => generateScene(123, i));

  it('has 1..4 objects, inside the image, with gaps between bounding boxes', () => {
    for (const s of scenes) {
      expect(s.objects.length).toBeGreaterThanOrEqual(1);
      expect(s.objects.length).toBeLessThanOrEqual(4);
      const boxes = sceneRecord(s, 0).objects.map((o) => o.bbox);
      for (const b of boxes) {
        expect(b[0]).toBeGreaterThanOrEqual(1);
        expect(b[1]).toBeGreaterThanOrEqual(1);
        expect(b[2]).toBeLessThanOrEqual(47);
        expect(b[3]).toBeLessThanOrEqual(47);
      }
      for (let i = 0; i < boxes.length; i++) {
        for (let j = i + 1; j < boxes.length; j++) {
          const [a, b] = [boxes[i]!, boxes[j]!];
          const apart = a[2] + 2 <= b[0] || b[2] + 2 <= a[0] || a[3] + 2 <= b[1] || b[3] + 2 <= a[1];
          expect(apart).toBe(true);
        }
      }
    }
  });

  it('has exactly one large object when there are two or more (the largest_colour rule)', () => {
    for (const s of scenes) {
      if (s.objects.length >= 2) expect(s.objects.filter((o) => o.size === 'large')).toHaveLength(1);
      const large = s.objects.find((o) => o.size === 'large');
      expect(answersFor(s).largest_colour).toBe((large ?? s.objects[0]!).colour);
    }
    // Every count, shape, colour and size shows up.
    const all = scenes.flatMap((s) => s.objects);
    expect(new Set(scenes.map((s) => s.objects.length))).toEqual(new Set([1, 2, 3, 4]));
    expect(new Set(all.map((o) => o.shape)).size).toBe(3);
    expect(new Set(all.map((o) => o.colour)).size).toBe(6);
    expect(new Set(all.map((o) => o.size)).size).toBe(2);
    expect(scenes.some((s) => answersFor(s).has_red_circle)).toBe(true);
  });

  it('lists objects in raster order of their centres', () => {
    for (const s of scenes) {
      for (let i = 1; i < s.objects.length; i++) {
        const [a, b] = [s.objects[i - 1]!.center, s.objects[i]!.center];
        expect(a[1] < b[1] || (a[1] === b[1] && a[0] < b[0])).toBe(true);
      }
    }
  });

  it('breaks largest ties in hand-made scenes by size class, then area, then order', () => {
    const obj = (shape: 'circle' | 'square' | 'triangle', colour: 'red' | 'blue' | 'green', size: 'small' | 'large', x: number) => ({
      shape,
      colour,
      size,
      center: [x, 20] as [number, number],
      radius: size === 'large' ? 10 : 5.5,
    });
    expect(largestObject({ objects: [obj('square', 'red', 'small', 8), obj('triangle', 'blue', 'large', 30)] })).toBe(1);
    // Both large: the square (4 r^2) beats the circle (pi r^2) and the triangle (2 r^2).
    expect(
      largestObject({
        objects: [obj('circle', 'red', 'large', 8), obj('square', 'blue', 'large', 30), obj('triangle', 'green', 'large', 40)],
      }),
    ).toBe(1);
    // Same shape and size: the first.
    expect(largestObject({ objects: [obj('circle', 'green', 'large', 8), obj('circle', 'blue', 'large', 30)] })).toBe(0);
  });

  it('captions objects in order', () => {
    const o = (colour: 'red' | 'blue' | 'green', shape: 'circle' | 'square' | 'triangle', size: 'small' | 'large') => ({
      shape,
      colour,
      size,
      center: [0, 0] as [number, number],
      radius: 1,
    });
    expect(captionFor({ objects: [o('red', 'circle', 'large')] })).toBe('a large red circle');
    expect(captionFor({ objects: [o('red', 'circle', 'large'), o('blue', 'square', 'small')] })).toBe(
      'a large red circle and a small blue square',
    );
    expect(captionFor({ objects: [o('red', 'circle', 'large'), o('blue', 'square', 'small'), o('green', 'triangle', 'small')] })).toBe(
      'a large red circle, a small blue square and a small green triangle',
    );
  });

  it('rejects bad options with usage errors', () => {
    expect(() => generateScene(1, 0, { size: 8 })).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => generateScene(1, 0, { maxObjects: 0 })).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => generateScene(-1, 0)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
  });
});

describe('clevr-lite rendering', () => {
  it('writes 48x48 RGB PNGs with no metadata chunks, objects in their exact colours', async () => {
    const scene = generateScene(5, 3);
    const png = await renderScene(scene);
    expect(pngChunks(png)).toEqual(['IHDR', 'IDAT', 'IEND']);
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([48, 48, 3]);
    for (const o of scene.objects) {
      const p = (o.center[1] * 48 + o.center[0]) * 3; // the pixel holding the centre is fully covered
      expect([data[p], data[p + 1], data[p + 2]]).toEqual([...COLOUR_RGB[o.colour]]);
    }
    // The corner pixel is background: grey within the noise amplitude.
    expect(Math.abs(data[0]! - scene.background.grey)).toBeLessThanOrEqual(scene.background.noise);
    expect(data[0]).toBe(data[1]);
  });

  it('recolour changes only that object, in pixels and labels', async () => {
    const scene = generateScene(11, 2, { maxObjects: 4 });
    const k = scene.objects.length - 1;
    const to = COLOURS.find((c) => c !== scene.objects[k]!.colour)!;
    const edited = recolour(scene, k, to);
    expect(scene.objects[k]!.colour).not.toBe(to); // the input is not modified
    expect(edited.objects[k]!.colour).toBe(to);
    const [a, b] = [await renderSceneRgb(scene), await renderSceneRgb(edited)];
    const [x0, y0, x1, y1] = sceneRecord(scene, 0).objects[k]!.bbox;
    let changed = 0;
    for (let y = 0; y < 48; y++) {
      for (let x = 0; x < 48; x++) {
        const p = (y * 48 + x) * 3;
        if (a[p] !== b[p] || a[p + 1] !== b[p + 1] || a[p + 2] !== b[p + 2]) {
          changed++;
          expect(x >= Math.floor(x0) && x < Math.ceil(x1) && y >= Math.floor(y0) && y < Math.ceil(y1)).toBe(true);
        }
      }
    }
    expect(changed).toBeGreaterThan(20);
    expect(() => recolour(scene, 9, 'red')).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => recolour(scene, 0, 'pink' as never)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
  });

  it('renders at another size from the same scene', async () => {
    const png = await renderScene(generateScene(5, 3), 96);
    const meta = await sharp(png).metadata();
    expect([meta.width, meta.height]).toEqual([96, 96]);
  });
});

describe('patchLabels', () => {
  // Hand-made 48 px scene. Pixel x is inside when its centre x + 0.5 is.
  const scene: Scene = {
    size: 48,
    background: plain,
    objects: [
      // Square [8, 16] x [8, 16]: pixel centres 8.5..15.5 -> exactly the 64 pixels of patch (1, 1).
      { shape: 'square', colour: 'red', size: 'small', center: [12, 12], radius: 4 },
      // Triangle apex (12, 32), base y = 40 from x = 8 to 16, all in patch (4, 1). Rows dy = -3.5..3.5
      // have half-width (dy + 4) / 2 = 0.25 .. 3.75, holding 0, 2, 2, 4, 4, 6, 6, 8 pixel centres:
      // 32 of 64 pixels, a tie with background.
      { shape: 'triangle', colour: 'green', size: 'small', center: [12, 36], radius: 4 },
      // Circle r = 6 at (36, 36): patch (4, 4) (pixel centres 32.5..39.5, |d| <= 3.5, 3.5^2 * 2 < 36) is
      // all inside. In patch (4, 3) only columns dx = -5.5 (|dy| <= sqrt(36 - 30.25) = 2.4: 4 rows) and
      // dx = -4.5 (|dy| <= sqrt(15.75) = 3.97: 8 rows) are inside: 12 pixels. Same for (3, 4), (4, 5), (5, 4).
      { shape: 'circle', colour: 'blue', size: 'large', center: [36, 36], radius: 6 },
    ],
  };

  it('labels each patch with the most common of background and objects (ties to background)', () => {
    const labels = patchLabels(scene, 48, 8);
    expect(labels).toBeInstanceOf(Int32Array);
    const expected = new Array(36).fill(0);
    expected[1 * 6 + 1] = 1;
    expected[4 * 6 + 4] = 3;
    expect(Array.from(labels)).toEqual(expected);
  });

  it('with minFraction, labels every patch where an object covers at least that fraction', () => {
    const expected = new Array(36).fill(0);
    expected[1 * 6 + 1] = 1;
    expected[4 * 6 + 1] = 2; // 32 / 64 >= 0.1
    for (const p of [4 * 6 + 4, 4 * 6 + 3, 3 * 6 + 4, 4 * 6 + 5, 5 * 6 + 4]) expected[p] = 3; // 12 / 64 >= 0.1
    expect(Array.from(patchLabels(scene, 48, 8, { minFraction: 0.1 }))).toEqual(expected);
    // 12 / 64 < 0.2: the circle's side patches drop out.
    const strict = Array.from(patchLabels(scene, 48, 8, { minFraction: 0.2 }));
    expect(strict[4 * 6 + 3]).toBe(0);
    expect(strict[4 * 6 + 1]).toBe(2);
    // 32 / 64 >= 0.5 (at least, not more than).
    expect(patchLabels(scene, 48, 8, { minFraction: 0.5 })[4 * 6 + 1]).toBe(2);
  });

  it('scales the geometry to other image sizes and patch sizes', () => {
    // At 96 px the square covers [16, 32]^2: patch (1, 1) of a 16 px grid.
    expect(Array.from(patchLabels(scene, 96, 16))).toEqual(Array.from(patchLabels(scene, 48, 8)));
    // 48 / 16 = 3x3 grid; the square is 64 of 256 pixels of patch (0, 0): background.
    const coarse = patchLabels(scene, 48, 16);
    expect(coarse).toHaveLength(9);
    expect(coarse[0]).toBe(0);
    // Patch size not dividing the image: floor(48 / 10) = 4 patches per side.
    expect(patchLabels(scene, 48, 10)).toHaveLength(16);
    expect(() => patchLabels(scene, 48, 64)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
  });

  it('agrees with the files written by --patch-size', () => {
    const dir = join(tmp, 'a');
    const records: ClevrRecord[] = readFileSync(join(dir, 'labels.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const file = JSON.parse(readFileSync(join(dir, 'patch-labels', '000004.json'), 'utf8'));
    expect(file).toMatchObject({ image: 'images/000004.png', imageSize: 48, patchSize: 8, grid: [6, 6] });
    expect(file.labels).toEqual(Array.from(patchLabels(records[4]!, 48, 8)));
  });
});
