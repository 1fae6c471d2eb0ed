// `prisma train --clip`: writes a CLIPModel folder (with its tokenizer) that `prisma classify` loads
// and answers exactly as the held-out evaluation did, refuses mis-combined flags, and a run killed
// midway continues with --resume from its last checkpoint to the weights of an uninterrupted run.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { COLOURS, largestObject, SHAPES, type ClevrRecord } from '../../src/dataset/clevr.js';
import { FIXTURES, prisma, requireBuilt } from '../helpers/cli.js';
import { expectKilledRunResumes } from '../helpers/training.js';

const work = mkdtempSync(join(tmpdir(), 'prisma-train-clip-'));
const data = join(work, 'clevr');
const tokenizer = join(FIXTURES, 'tokenizers', 'clevr-lite');
const common = [
  'train',
  '--clip',
  '--data',
  data,
  '--tokenizer',
  tokenizer,
  '--patch-size',
  '8',
  '--d-model',
  '32',
  '--layers',
  '2',
  '--heads',
  '2',
  '--text-layers',
  '1',
  '--steps',
  '200',
  '--batch-size',
  '32',
  '--checkpoint-every',
  '10',
  '--seed',
  '3',
  '--lr',
  '0.003',
];

interface ZeroShot {
  name: string;
  accuracy: number;
  chance: number;
  n: number;
  classes: string[];
  prompts: string[];
}
interface Summary {
  finished: boolean;
  steps: number;
  resumedFromStep: number | null;
  evaluation: { n: number; zeroShot: ZeroShot[] };
}

beforeAll(() => {
  requireBuilt();
  const r = prisma(['dataset', 'clevr-lite', '--n', '400', '--out', data, '--seed', '11', '--size', '32']);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);

describe('prisma train --clip', () => {
  it('writes a CLIPModel folder that prisma classify answers like the held-out evaluation', () => {
    const out = join(work, 'straight');
    const r = prisma([...common, '--out', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as Summary;
    expect(summary.finished).toBe(true);
    expect(summary.steps).toBe(200);
    const [colour, shape] = summary.evaluation.zeroShot;
    expect(colour!.name).toBe('largest_colour');
    expect(colour!.classes).toEqual([...COLOURS]);
    expect(colour!.chance).toBeCloseTo(1 / 6, 12);
    expect(shape!.name).toBe('largest_shape');
    expect(shape!.classes).toEqual([...SHAPES]);
    expect(shape!.chance).toBeCloseTo(1 / 3, 12);
    expect(colour!.prompts[0]).toBe('a large red');

    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
      model_type: string;
      architectures: string[];
      text_config: { eos_token_id: number };
    };
    expect(config.model_type).toBe('clip');
    expect(config.architectures).toEqual(['CLIPModel']);
    const vocab = JSON.parse(readFileSync(join(out, 'vocab.json'), 'utf8')) as Record<string, number>;
    expect(config.text_config.eos_token_id).toBe(vocab['<|endoftext|>']);
    for (const f of ['tokenizer.json', 'preprocessor_config.json', 'training.json', 'MODEL_CARD.md'])
      expect(existsSync(join(out, f)), f).toBe(true);
    expect(existsSync(join(out, 'checkpoint.safetensors'))).toBe(false);
    const card = readFileSync(join(out, 'MODEL_CARD.md'), 'utf8');
    expect(card).toContain('prisma train --clip --data');
    expect(card).toContain('prisma dataset clevr-lite --n 400');

    const inspect = prisma(['inspect', out, '--json']);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect((JSON.parse(inspect.stdout) as { model: { family: string } }).model.family).toBe('clip');

    // The held-out images are the last n of the folder; classify them through the saved folder.
    const records = readFileSync(join(data, 'labels.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as ClevrRecord);
    const heldOut = records.slice(records.length - summary.evaluation.n);
    for (const task of [colour!, shape!]) {
      const c = prisma([
        'classify',
        out,
        ...heldOut.map((h) => join(data, h.image)),
        '--labels',
        task.classes.join(','),
        '--template',
        'a large {}',
        '--json',
      ]);
      expect(c.code, c.stderr).toBe(0);
      const results = (JSON.parse(c.stdout) as { results: { predictions: { label: string }[] }[] }).results;
      const truth = heldOut.map((h) => {
        const o = h.objects[largestObject(h)]!;
        return task.name === 'largest_colour' ? o.colour : o.shape;
      });
      const hits = results.filter((res, i) => res.predictions[0]!.label === truth[i]).length;
      // Same pixels and weights; only a near-tie could flip under a different batch size.
      expect(Math.abs(hits / heldOut.length - task.accuracy), task.name).toBeLessThanOrEqual(1 / heldOut.length + 1e-12);
    }
  }, 180_000);

  it('refuses flags that do not go together', () => {
    const noTokenizer = prisma(['train', '--clip', '--data', data, '--out', join(work, 'x1')]);
    expect(noTokenizer.code).toBe(2);
    expect(noTokenizer.stderr).toContain('--tokenizer');
    const notClip = prisma(['train', '--data', data, '--question', 'count', '--tokenizer', tokenizer, '--out', join(work, 'x2')]);
    expect(notClip.code).toBe(2);
    expect(notClip.stderr).toContain('--clip');
    const question = prisma([...common, '--question', 'count', '--out', join(work, 'x3')]);
    expect(question.code).toBe(2);
    expect(question.stderr).toContain('--question');
  }, 60_000);

  it('continues a killed run from its last checkpoint to the same weights', async () => {
    // Killed hard as soon as a checkpoint exists (well before the 200 steps are done).
    await expectKilledRunResumes(common, join(work, 'killed'), join(work, 'straight'), 200, 2);
  }, 240_000);
});
