// The library API against the addon: error codes, runs, interventions vs the HF reference.
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { PrismaError, SafetensorsWriter, loadModel, readTensors, saveTensors, type Model, type PixelBatch } from '../../src/index.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';
import { absDiff, readSafetensors, type StTensor } from '../helpers/safetensors.js';

const ATOL = 1e-4;
const CLS = join(FIXTURES, 'models', 'vit-tiny-cls');
const ref = () => readSafetensors(join(FIXTURES, 'reference', 'vit-tiny-cls.safetensors')).tensors;
const iv = () => readSafetensors(join(FIXTURES, 'reference', 'interventions.safetensors')).tensors;

function pixels(t: StTensor): PixelBatch {
  return { data: t.data, shape: t.shape as [number, number, number, number], labels: ['a', 'b', 'c'] };
}

function close(got: { data: Float32Array; shape: number[] }, want: StTensor, what: string): void {
  expect(got.shape, what).toEqual(want.shape);
  const d = absDiff(got.data, want.data);
  expect(d.max, `${what}: max abs diff ${d.max}`).toBeLessThanOrEqual(ATOL);
}

let model: Model;

beforeAll(async () => {
  requireBuilt();
  model = await loadModel(CLS, { device: 'cpu', dtype: 'f32' });
});

describe('loadModel', () => {
  it('reports the config', () => {
    expect(model.info).toMatchObject({
      family: 'vit',
      architecture: 'ViTForImageClassification',
      imageSize: [32, 32],
      patchSize: 8,
      nLayers: 2,
      nHeads: 4,
      dModel: 32,
      dHead: 8,
      dMlp: 64,
      nPos: 17,
      nPatches: 16,
      nClasses: 5,
      labels: ['cat', 'dog', 'coffee', 'person', 'rocket'],
      device: 'cpu',
      dtype: 'float32',
    });
  });

  it.each([
    ['no-config', 'E_MODEL_DIR'],
    ['truncated-model', 'E_WEIGHTS_FORMAT'],
    ['text-model', 'E_UNSUPPORTED_MODEL'],
  ])('%s rejects with PrismaError %s', async (dir, code) => {
    const err = await loadModel(join(FIXTURES, 'bad', dir)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PrismaError);
    expect((err as PrismaError).code).toBe(code);
    expect((err as PrismaError).message).not.toMatch(/^E_/);
  });

  it('rejects bad device and dtype names before the addon sees them', async () => {
    await expect(loadModel(CLS, { dtype: 'int4' })).rejects.toMatchObject({ code: 'E_USAGE' });
    await expect(loadModel(CLS, { device: 'tpu' })).rejects.toMatchObject({ code: 'E_USAGE' });
  });
});

describe('hooks', () => {
  it('hookShapes scales with the batch and matches the reference keys', () => {
    const shapes = model.hookShapes(3);
    const r = ref();
    // reference keys at the model's own size (res*.* / pixel_values_* are other resolutions)
    const atThisSize = [...r.keys()].filter((k) => !k.startsWith('pixel_values') && !k.startsWith('res'));
    expect(new Set(shapes.map((s) => s.name))).toEqual(new Set(atThisSize));
    for (const s of shapes) expect(s.shape, s.name).toEqual(r.get(s.name)!.shape);
  });

  it('matchHooks resolves globs, and throws E_UNKNOWN_HOOK', () => {
    expect(model.matchHooks(['blocks.*.hook_resid_post'])).toEqual(['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']);
    expect(() => model.matchHooks(['blocks.*.nothing'])).toThrowError(expect.objectContaining({ code: 'E_UNKNOWN_HOOK' }));
  });
});

describe('run', () => {
  it('returns the output and a cache keyed by hook name', async () => {
    const r = ref();
    const { output, cache, inputs } = await model.run(pixels(r.get('pixel_values')!), { cache: ['blocks.1.*', 'hook_embed'] });
    expect(inputs).toEqual(['a', 'b', 'c']);
    close(output, r.get('hook_logits')!, 'hook_logits');
    expect(cache.has('hook_embed')).toBe(true);
    expect([...cache.keys()].every((k) => k === 'hook_embed' || k.startsWith('blocks.1.'))).toBe(true);
    for (const [k, t] of cache) close(t, r.get(k)!, k);
  });

  it('rejects a pixel batch of the wrong size with E_SHAPE', async () => {
    const bad: PixelBatch = { data: new Float32Array(3 * 16 * 16), shape: [1, 3, 16, 16], labels: ['x'] };
    await expect(model.run(bad)).rejects.toMatchObject({ code: 'E_SHAPE' });
  });

  it('rejects an out-of-range stopAtLayer with E_LAYER_RANGE', async () => {
    await expect(model.run(pixels(ref().get('pixel_values')!), { stopAtLayer: 3 })).rejects.toMatchObject({ code: 'E_LAYER_RANGE' });
  });

  it('runs concurrently', async () => {
    const p = pixels(ref().get('pixel_values')!);
    const [a, b] = await Promise.all([model.run(p), model.run(p)]);
    expect(a.output.data).toEqual(b.output.data);
  });

  it('startAtLayer resumes from a residual', async () => {
    const t = iv();
    const resid = t.get('clean.blocks.1.hook_resid_pre')!;
    const { output } = await model.run([], { startAtLayer: 1, startResid: { shape: resid.shape, data: resid.data } });
    close(output, t.get('clean.logits')!, 'logits from resid_pre 1');
  });
});

describe('interventions vs reference (fixtures/reference/interventions.safetensors)', () => {
  it('zero-ablates head 1 of layer 0 at hook_z', async () => {
    const t = iv();
    const { output, cache } = await model.run(pixels(ref().get('pixel_values')!), {
      cache: ['blocks.1.hook_resid_pre'],
      interventions: [{ hook: 'blocks.0.attn.hook_z', select: { head: [1] }, action: 'zero' }],
    });
    close(output, t.get('zero_head.logits')!, 'zero_head.logits');
    close(cache.get('blocks.1.hook_resid_pre')!, t.get('zero_head.blocks.1.hook_resid_pre')!, 'zero_head resid');
  });

  it('sets blocks.1.hook_resid_pre at position 3 from another run', async () => {
    const t = iv();
    const source = t.get('patch_resid.source')!;
    const { output } = await model.run(pixels(ref().get('pixel_values')!), {
      interventions: [{ hook: 'blocks.1.hook_resid_pre', select: { pos: [3] }, action: 'set', tensor: 'source' }],
      tensors: { source: { shape: source.shape, data: source.data } },
    });
    close(output, t.get('patch_resid.logits')!, 'patch_resid.logits');
  });

  it('scales blocks.0.hook_mlp_out by 0.5', async () => {
    const { output } = await model.run(pixels(ref().get('pixel_values')!), {
      interventions: [{ hook: 'blocks.0.hook_mlp_out', action: 'scale', factor: 0.5 }],
    });
    close(output, iv().get('scale_mlp.logits')!, 'scale_mlp.logits');
  });

  it('adds 0.7 x a direction to blocks.0.hook_attn_out at positions 2 and 5 of batch entries 0 and 2', async () => {
    const t = iv();
    const dir = t.get('add_dir.direction')!;
    const { output } = await model.run(pixels(ref().get('pixel_values')!), {
      interventions: [{ hook: 'blocks.0.hook_attn_out', select: { batch: [0, 2], pos: [2, 5] }, action: 'add', tensor: 'dir', coeff: 0.7 }],
      tensors: { dir: { shape: dir.shape, data: dir.data } },
    });
    close(output, t.get('add_dir.logits')!, 'add_dir.logits');
  });

  it('sets head 0 of blocks.1.attn.hook_z of batch entry 1 to the mean over runs', async () => {
    const t = iv();
    const runs = t.get('mean_head.runs')!;
    const { output } = await model.run(pixels(ref().get('pixel_values')!), {
      interventions: [{ hook: 'blocks.1.attn.hook_z', select: { batch: [1], head: [0] }, action: 'mean', tensor: 'runs' }],
      tensors: { runs: { shape: runs.shape, data: runs.data } },
    });
    close(output, t.get('mean_head.logits')!, 'mean_head.logits');
  });

  it('an intervention on an unknown hook fails with a code', async () => {
    await expect(
      model.run(pixels(ref().get('pixel_values')!), { interventions: [{ hook: 'blocks.0.hook_nothing', action: 'zero' }] }),
    ).rejects.toBeInstanceOf(PrismaError);
  });
});

describe('tensor files', () => {
  it('saveTensors / readTensors round-trip with metadata', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'prisma-lib-')), 't.safetensors');
    const data = Float32Array.from({ length: 6 }, (_, i) => i / 3);
    await saveTensors(path, [{ name: 'x', shape: [2, 3], data }], { note: 'hi' });
    const [t] = readTensors(path);
    expect(t).toMatchObject({ name: 'x', shape: [2, 3], dtype: 'float32' });
    expect(t!.data).toEqual(data);
    expect(readSafetensors(path).metadata['note']).toBe('hi');
  });

  it('SafetensorsWriter: rows written a batch at a time, in any order, give the bytes of saveTensors', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-lib-'));
    const zeta = Float32Array.from({ length: 4 * 3 }, (_, i) => i / 4 - 1);
    const alpha = Float32Array.from({ length: 4 * 2 * 2 }, (_, i) => Math.sin(i));
    const metadata = { generator: 'test', inputs: JSON.stringify(['a.png', 'b "quoted".png']), note: 'déjà vu' };
    const whole = join(dir, 'whole.safetensors');
    await saveTensors(
      whole,
      [
        { name: 'zeta', shape: [4, 3], data: zeta },
        { name: 'alpha', shape: [4, 2, 2], data: alpha },
      ],
      metadata,
    );
    const rows = join(dir, 'rows.safetensors');
    const writer = await SafetensorsWriter.create(
      rows,
      [
        { name: 'zeta', shape: [4, 3] },
        { name: 'alpha', shape: [4, 2, 2] },
      ],
      metadata,
    );
    await writer.writeRows('alpha', 2, alpha.subarray(8));
    await writer.writeRows('zeta', 0, zeta.subarray(0, 6));
    await writer.writeRows('zeta', 2, zeta.subarray(6));
    await writer.writeRows('alpha', 0, alpha.subarray(0, 8));
    expect(existsSync(rows)).toBe(false);
    await writer.finish();
    expect(Buffer.compare(readFileSync(rows), readFileSync(whole))).toBe(0);
  });

  it('SafetensorsWriter: rows past the end are refused; abort leaves no file behind', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-lib-'));
    const writer = await SafetensorsWriter.create(join(dir, 'x.safetensors'), [{ name: 'x', shape: [2, 3] }]);
    await expect(writer.writeRows('x', 1, new Float32Array(6))).rejects.toMatchObject({ code: 'E_SHAPE' });
    await writer.abort();
    expect(readdirSync(dir)).toEqual([]);
  });

  it('readTensors on a missing file -> PrismaError', () => {
    expect(() => readTensors('/no/such.safetensors')).toThrowError(PrismaError);
  });
});
