// A checkpoint with a NaN or infinite weight is refused at load, naming the tensor (issue 21,
// item 18): it used to load and run, `prisma run` answering "ok": true with null logits.
// --allow-nonfinite loads it anyway, for looking at a broken model.
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadModel, readTensors, saveTensors } from '../../src/index.js';
import { FIXTURES, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-nonfinite-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const IMAGE = join(FIXTURES, 'images', 'chelsea.jpg');
const BAD_TENSOR = 'vit.encoder.layer.1.attention.attention.query.weight';

/** vit-tiny-cls with `values` written into the first entries of BAD_TENSOR. */
async function broken(name: string, values: number[]): Promise<string> {
  const dir = join(tmp, name);
  cpSync(join(FIXTURES, 'models', 'vit-tiny-cls'), dir, { recursive: true });
  const file = join(dir, 'model.safetensors');
  const tensors = readTensors(file);
  const t = tensors.find((x) => x.name === BAD_TENSOR)!;
  t.data.set(values, 0);
  await saveTensors(file, tensors);
  return dir;
}

let nanModel: string;
let infModel: string;
beforeAll(async () => {
  requireBuilt();
  nanModel = await broken('nan', [Number.NaN, Number.NaN]);
  infModel = await broken('inf', [Number.POSITIVE_INFINITY, 1, Number.NEGATIVE_INFINITY]);
});

describe('non-finite weights', () => {
  it.each([
    ['NaN', () => nanModel, '2 NaN and 0 infinite'],
    ['infinite', () => infModel, '0 NaN and 2 infinite'],
  ])('%s: E_WEIGHTS_NONFINITE names the tensor, exit 1, nothing on stdout', (_what, dir, counts) => {
    const r = prisma(['run', dir(), IMAGE]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    const lines = stderrLines(r);
    expect(lines[0]).toBe(
      `prisma: E_WEIGHTS_NONFINITE: ${join(dir(), 'model.safetensors')}: tensor '${BAD_TENSOR}' holds ${counts} values; the model's outputs would be NaN`,
    );
    expect(lines[1]).toMatch(/^hint: .*--allow-nonfinite/);
  });

  it('--json keeps the error data: file, tensor and counts', () => {
    const r = prisma(['run', nanModel, IMAGE, '--json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { ok: boolean; error: { code: string; data?: unknown } };
    expect(out.error.code).toBe('E_WEIGHTS_NONFINITE');
    expect(out.error.data).toEqual({ file: join(nanModel, 'model.safetensors'), tensor: BAD_TENSOR, nan: 2, inf: 0 });
  });

  it('--allow-nonfinite loads it (CLI and library); a healthy model is unaffected', async () => {
    const r = prisma(['run', nanModel, IMAGE, '--allow-nonfinite', '--json']);
    expect(r.code).toBe(0);
    await expect(loadModel(nanModel)).rejects.toMatchObject({ code: 'E_WEIGHTS_NONFINITE' });
    const m = await loadModel(nanModel, { allowNonfinite: true });
    const out = await m.run([IMAGE]);
    expect(Number.isNaN(out.output.data[0])).toBe(true);
    await expect(loadModel(join(FIXTURES, 'models', 'vit-tiny-cls'))).resolves.toBeDefined();
  });
});
