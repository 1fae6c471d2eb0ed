// Video inputs for video models (numFrames > 0): frame folders, animated GIF / WebP, tensors, frame
// sampling and errors. Needs sharp, not the addon (tensor files are checked through tensorToBatch).
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { loadInputs, readClipFrames, sampleFrameIndices, tensorToBatch, type InputTarget } from '../../src/image/preprocess.js';
import { concatBatches } from '../../src/tensor.js';
import { FIXTURES } from '../helpers/cli.js';

const VIDEO = join(FIXTURES, 'video');
const GIF = join(VIDEO, 'clip.gif');
const FRAMES = [0, 1, 2, 3].map((i) => join(VIDEO, `frame_00${i}.png`));
const video: InputTarget = {
  info: { modelDir: join(FIXTURES, 'models', 'videomae-tiny'), imageSize: [32, 32], numChannels: 3, numFrames: 4 },
};
const image: InputTarget = { info: { modelDir: join(FIXTURES, 'models', 'vit-tiny-cls'), imageSize: [32, 32], numChannels: 3 } };
const FRAME = 3 * 32 * 32;

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'prisma-video-'));
}

/** A folder holding `sources` copied as f00.png, f01.png, … */
function frameFolder(sources: readonly string[]): string {
  const dir = tmp();
  sources.forEach((src, i) => {
    copyFileSync(src, join(dir, `f${String(i).padStart(2, '0')}.png`));
  });
  return dir;
}

describe('sampleFrameIndices', () => {
  // expected values from np.round(np.linspace(0, n - 1, T)).astype(int) (numpy 2, the fixture venv)
  it.each([
    [4, 4, [0, 1, 2, 3]],
    [10, 4, [0, 3, 6, 9]],
    [6, 4, [0, 2, 3, 5]],
    [4, 3, [0, 2, 3]],
    [6, 3, [0, 2, 5]],
    [7, 2, [0, 6]],
    [100, 16, [0, 7, 13, 20, 26, 33, 40, 46, 53, 59, 66, 73, 79, 86, 92, 99]],
    [5, 1, [0]],
  ])('%i frames for a %i-frame model -> %j', (n, t, expected) => {
    expect(sampleFrameIndices(n, t)).toEqual(expected);
  });

  it('fewer frames than the model takes -> E_INPUT', () => {
    expect(() => sampleFrameIndices(3, 4, 'clip x')).toThrow(
      expect.objectContaining({ code: 'E_INPUT', message: 'clip x has 3 frames, the model takes 4' }),
    );
  });
});

describe('loadInputs for a video model', () => {
  it('the frame folder, the GIF and an animated WebP of it give identical [1, 4, 3, 32, 32] tensors', async () => {
    const webp = join(tmp(), 'clip.webp');
    await sharp(GIF, { pages: -1 }).webp({ lossless: true }).toFile(webp);
    const folder = await loadInputs([VIDEO], video);
    const gif = await loadInputs([GIF], video);
    const anim = await loadInputs([webp], video);
    for (const b of [folder, gif, anim]) expect(b.shape).toEqual([1, 4, 3, 32, 32]);
    expect(gif.data).toEqual(folder.data);
    expect(anim.data).toEqual(folder.data);
    expect([folder.labels, gif.labels, anim.labels]).toEqual([[VIDEO], [GIF], [webp]]);
  });

  it('the GIF decodes to exactly the pixels of the PNG frames (fixtures/README.md)', async () => {
    const fromGif = await readClipFrames(GIF, 4);
    const fromPngs = await readClipFrames(frameFolder(FRAMES), 4);
    expect(fromGif.map((f) => [f.width, f.height])).toEqual(fromPngs.map((f) => [f.width, f.height]));
    fromGif.forEach((f, i) => {
      expect(f.data).toEqual(fromPngs[i]!.data);
    });
  });

  it('a folder is sorted by name and animated images in it are left out (fixtures/video holds clip.gif too)', async () => {
    const frames = await readClipFrames(VIDEO, 4);
    const direct = await readClipFrames(frameFolder(FRAMES), 4);
    frames.forEach((f, i) => {
      expect(f.data).toEqual(direct[i]!.data);
    });
  });

  it('one label and one batch entry per clip, in the order given', async () => {
    const b = await loadInputs([GIF, VIDEO, GIF], video);
    expect(b.shape).toEqual([3, 4, 3, 32, 32]);
    expect(b.labels).toEqual([GIF, VIDEO, GIF]);
    expect(b.data.subarray(0, 4 * FRAME)).toEqual(b.data.subarray(2 * 4 * FRAME));
  });

  it('a longer clip is sampled at round(linspace(0, n - 1, T)): 8 frames -> 0, 2, 5, 7', async () => {
    // f00..f07 = frames 0 1 2 3 0 1 2 3; indices 0, 2, 5, 7 are frames 0, 2, 1, 3
    const long = frameFolder([...FRAMES, ...FRAMES]);
    const reordered = frameFolder([FRAMES[0]!, FRAMES[2]!, FRAMES[1]!, FRAMES[3]!]);
    const got = await loadInputs([long], video);
    const want = await loadInputs([reordered], video);
    expect(got.shape).toEqual([1, 4, 3, 32, 32]);
    expect(got.data).toEqual(want.data);
  });

  it('a clip with too few frames -> E_INPUT naming the clip', async () => {
    const short = frameFolder(FRAMES.slice(0, 3));
    await expect(loadInputs([short], video)).rejects.toMatchObject({
      code: 'E_INPUT',
      message: `clip ${short} has 3 frames, the model takes 4`,
    });
    await expect(loadInputs([FRAMES[0]!], video)).rejects.toMatchObject({
      code: 'E_INPUT',
      message: `clip ${FRAMES[0]} has 1 frame, the model takes 4`,
    });
  });

  it('missing paths and folders without frames -> E_INPUT', async () => {
    await expect(loadInputs(['/no/such/clip'], video)).rejects.toMatchObject({ code: 'E_INPUT' });
    await expect(loadInputs([tmp()], video)).rejects.toMatchObject({
      code: 'E_INPUT',
      message: expect.stringContaining('no frame images'),
    });
    await expect(loadInputs([], video)).rejects.toMatchObject({ code: 'E_INPUT' });
  });

  it('an unreadable frame -> E_IMAGE_DECODE naming the file', async () => {
    const dir = frameFolder(FRAMES);
    const bad = join(dir, 'f99.png');
    copyFileSync(join(FIXTURES, 'bad', 'truncated.png'), bad);
    // 5 files -> indices 0, 1, 3, 4: the truncated f99.png is decoded
    await expect(loadInputs([dir], video)).rejects.toMatchObject({ code: 'E_IMAGE_DECODE', message: expect.stringContaining(bad) });
  });
});

describe('image models are unchanged', () => {
  it("a folder is a folder of images (fixtures/video: 4 frames + the GIF's first frame)", async () => {
    const b = await loadInputs([VIDEO], image);
    expect(b.shape).toEqual([5, 3, 32, 32]);
    expect(b.labels.map((l) => l.split('/').pop())).toEqual([
      'clip.gif',
      'frame_000.png',
      'frame_001.png',
      'frame_002.png',
      'frame_003.png',
    ]);
    expect(b.data.subarray(0, FRAME)).toEqual(b.data.subarray(FRAME, 2 * FRAME));
  });
});

describe('tensor inputs', () => {
  const t = (shape: number[]) => ({ name: 'pixel_values', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });

  it('video: [B, T, C, H, W] or [T, C, H, W], T = numFrames', () => {
    expect(tensorToBatch(t([1, 4, 3, 32, 32]), 'c.safetensors', video.info)).toMatchObject({
      shape: [1, 4, 3, 32, 32],
      labels: ['c.safetensors'],
    });
    expect(tensorToBatch(t([4, 3, 32, 32]), 'c.npy', video.info)).toMatchObject({ shape: [1, 4, 3, 32, 32], labels: ['c.npy'] });
    expect(tensorToBatch(t([2, 4, 3, 32, 32]), 'c.npy', video.info).labels).toEqual(['c.npy[0]', 'c.npy[1]']);
    expect(() => tensorToBatch(t([1, 8, 3, 32, 32]), 'c.npy', video.info)).toThrow(
      expect.objectContaining({
        code: 'E_SHAPE',
        message: "c.npy: tensor 'pixel_values' has shape [1, 8, 3, 32, 32], the model needs [B, 4, 3, 32, 32] or [4, 3, 32, 32]",
      }),
    );
    expect(() => tensorToBatch(t([1, 3, 32, 32]), 'c.npy', video.info)).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  });

  it('image models still take [B, C, H, W] or [C, H, W] only', () => {
    expect(tensorToBatch(t([3, 32, 32]), 'i.npy', image.info).shape).toEqual([1, 3, 32, 32]);
    expect(() => tensorToBatch(t([1, 4, 3, 32, 32]), 'i.npy', image.info)).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  });

  it('concatBatches joins clips along B and refuses to mix ranks', () => {
    const a = tensorToBatch(t([1, 4, 3, 32, 32]), 'a', video.info);
    const b = tensorToBatch(t([2, 4, 3, 32, 32]), 'b', video.info);
    expect(concatBatches([a, b])).toMatchObject({ shape: [3, 4, 3, 32, 32], labels: ['a', 'b[0]', 'b[1]'] });
    const img = tensorToBatch(t([1, 3, 32, 32]), 'i', image.info);
    expect(() => concatBatches([a, img])).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  });
});
