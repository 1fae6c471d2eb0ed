import { describe, expect, it } from 'vitest';

import {
  centerCropRgb,
  defaultPreprocessSpec,
  parsePreprocessorConfig,
  readPreprocessSpec,
  shortestEdgeSize,
  toChw,
} from '../../src/image/preprocess.js';
import { FIXTURES } from '../helpers/cli.js';

describe('parsePreprocessorConfig', () => {
  it('reads a ViTImageProcessor config', () => {
    const spec = parsePreprocessorConfig(
      {
        do_normalize: true,
        do_rescale: true,
        do_resize: true,
        image_mean: [0.485, 0.456, 0.406],
        image_std: [0.229, 0.224, 0.225],
        image_processor_type: 'ViTImageProcessor',
        resample: 3,
        rescale_factor: 0.00392156862745098,
        size: { height: 32, width: 32 },
      },
      [224, 224],
    );
    expect(spec.resize).toEqual({ mode: 'exact', height: 32, width: 32 });
    expect(spec.resample).toBe('bicubic');
    expect(spec.centerCrop).toBeNull();
    expect(spec.rescaleFactor).toBeCloseTo(1 / 255, 12);
    expect(spec.normalize).toEqual({ mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });
  });

  it('reads a CLIP-style config (shortest edge + centre crop, int sizes)', () => {
    const spec = parsePreprocessorConfig(
      {
        image_processor_type: 'CLIPImageProcessor',
        size: { shortest_edge: 224 },
        crop_size: { height: 224, width: 224 },
        do_center_crop: true,
        resample: 3,
        image_mean: [0.48145466, 0.4578275, 0.40821073],
        image_std: [0.26862954, 0.26130258, 0.27577711],
      },
      [224, 224],
    );
    expect(spec.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 224 });
    expect(spec.centerCrop).toEqual({ height: 224, width: 224 });
    const legacy = parsePreprocessorConfig({ feature_extractor_type: 'CLIPFeatureExtractor', size: 224, crop_size: 224 }, [224, 224]);
    expect(legacy.resize).toEqual({ mode: 'shortest_edge', shortestEdge: 224 });
    expect(legacy.centerCrop).toEqual({ height: 224, width: 224 });
    expect(legacy.resample).toBe('bicubic');
    // CLIPImageProcessor's own defaults (transformers 4.57): OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, not 0.5.
    expect(legacy.normalize).toEqual({ mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] });
  });

  it('an int size on a ViT processor is square; missing keys fall back to the model size', () => {
    expect(parsePreprocessorConfig({ size: 48 }, [32, 32]).resize).toEqual({ mode: 'exact', height: 48, width: 48 });
    const bare = parsePreprocessorConfig({}, [30, 40]);
    expect(bare.resize).toEqual({ mode: 'exact', height: 30, width: 40 });
    expect(bare.resample).toBe('bilinear');
    expect(bare.normalize).toEqual({ mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
  });

  it('honours do_* switches and scalar mean/std', () => {
    const spec = parsePreprocessorConfig(
      { do_resize: false, do_rescale: false, do_normalize: true, image_mean: 0.5, image_std: [0.25] },
      [32, 32],
    );
    expect(spec.resize).toBeNull();
    expect(spec.rescaleFactor).toBeNull();
    expect(spec.normalize).toEqual({ mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] });
    expect(parsePreprocessorConfig({ do_normalize: false }, [32, 32]).normalize).toBeNull();
  });

  it("maps every PIL resample value to Pillow's filter", () => {
    const filters = [0, 1, 2, 3, 4, 5].map((r) => parsePreprocessorConfig({ resample: r }, [8, 8]).resample);
    expect(filters).toEqual(['nearest', 'lanczos', 'bilinear', 'bicubic', 'box', 'hamming']);
  });

  it.each([
    [{ resample: 9 }, /unknown 'resample'/],
    [{ size: { longest_edge: 10 } }, /'size' must be/],
    [{ size: { height: 0, width: 3 } }, /size.height' must be a positive integer/],
    [{ image_mean: [0.5, 0.5] }, /'image_mean' must have 3 entries/],
    [{ image_std: [0, 1, 1] }, /must not contain 0/],
    [{ do_resize: 'yes' }, /'do_resize' must be true or false/],
    [[1, 2], /expected a JSON object/],
  ])('rejects %j with E_CONFIG', (json, pattern) => {
    expect(() => parsePreprocessorConfig(json, [32, 32], 'x/preprocessor_config.json')).toThrowError(
      expect.objectContaining({ code: 'E_CONFIG', message: expect.stringMatching(pattern) }),
    );
  });

  it('reads the fixture configs, and defaults without one', async () => {
    const cls = await readPreprocessSpec(`${FIXTURES}/models/vit-tiny-cls`, [32, 32]);
    expect(cls.resample).toBe('bilinear');
    expect(cls.source).toMatch(/preprocessor_config\.json$/);
    const none = await readPreprocessSpec(`${FIXTURES}/bad/no-config`, [16, 16]);
    expect(none).toEqual(defaultPreprocessSpec([16, 16]));
  });
});

describe('geometry helpers', () => {
  it('shortest edge keeps aspect and truncates the long side like HF', () => {
    expect(shortestEdgeSize(640, 480, 224)).toEqual({ height: 224, width: 298 });
    expect(shortestEdgeSize(50, 70, 32)).toEqual({ width: 32, height: 44 });
    expect(shortestEdgeSize(64, 64, 32)).toEqual({ width: 32, height: 32 });
  });

  it('centre crop uses floor offsets and zero-pads when the image is smaller', () => {
    // 3x2 image, pixel value = x + 10*y on every channel
    const src = new Uint8Array(3 * 2 * 3);
    for (let y = 0; y < 2; y++) for (let x = 0; x < 3; x++) src.fill(x + 10 * y, (y * 3 + x) * 3, (y * 3 + x) * 3 + 3);
    const c = centerCropRgb(src, 3, 2, { width: 2, height: 1 });
    expect([...c.filter((_, i) => i % 3 === 0)]).toEqual([0, 1]);
    const padded = centerCropRgb(src, 3, 2, { width: 3, height: 4 });
    expect([...padded.filter((_, i) => i % 3 === 0)]).toEqual([0, 0, 0, 0, 1, 2, 10, 11, 12, 0, 0, 0]);
  });

  it('toChw rescales, normalises and goes planar', () => {
    const rgb = new Uint8Array([255, 0, 51, 0, 255, 102]); // 2 pixels
    const out = toChw(rgb, 2, 1, { rescaleFactor: 1 / 255, normalize: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } });
    expect([...out].map((v) => Number(v.toFixed(4)))).toEqual([1, -1, -1, 1, -0.6, -0.2]);
  });
});
