// `prisma train`: learns clevr-lite above chance, writes a folder every command loads, and a run
// killed midway continues with --resume from its last checkpoint to exactly the weights an
// uninterrupted run produces.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { prisma, requireBuilt } from '../helpers/cli.js';
import { expectKilledRunResumes } from '../helpers/training.js';

const work = mkdtempSync(join(tmpdir(), 'prisma-train-'));
const data = join(work, 'clevr');
const common = [
  '--data',
  data,
  '--question',
  'count',
  '--patch-size',
  '8',
  '--d-model',
  '32',
  '--layers',
  '2',
  '--heads',
  '2',
  '--steps',
  '120',
  '--batch-size',
  '32',
  '--checkpoint-every',
  '10',
  '--seed',
  '3',
  '--lr',
  '0.003',
];

beforeAll(() => {
  requireBuilt();
  const r = prisma(['dataset', 'clevr-lite', '--n', '600', '--out', data, '--seed', '11', '--size', '32']);
  expect(r.code, r.stderr).toBe(0);
}, 120_000);

describe('prisma train', () => {
  it('trains, records the held-out result and writes a loadable model', () => {
    const out = join(work, 'straight');
    const r = prisma(['train', ...common, '--out', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { finished: boolean; evaluation: { accuracy: number }; chance: number; steps: number };
    expect(summary.finished).toBe(true);
    expect(summary.steps).toBe(120);
    // learns: held-out accuracy above chance (1 of 4 counts)
    expect(summary.chance).toBeGreaterThan(0);
    expect(summary.evaluation.accuracy).toBeGreaterThan(summary.chance);
    const card = readFileSync(join(out, 'MODEL_CARD.md'), 'utf8');
    expect(card).toContain('prisma train --data');
    expect(existsSync(join(out, 'checkpoint.safetensors'))).toBe(false);
    const inspect = prisma(['inspect', out, '--json']);
    expect(inspect.code, inspect.stderr).toBe(0);
    const info = JSON.parse(inspect.stdout) as { model: { labels: string[]; nLayers: number } };
    expect(info.model.labels).toEqual(['1', '2', '3', '4']);
    expect(info.model.nLayers).toBe(2);
  }, 180_000);

  it('without --question: a missing folder is reported as such, a clevr-lite folder lists its questions', () => {
    const missing = prisma(['train', '--data', join(work, 'nope'), '--out', join(work, 'q1')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^prisma: E_\w+: \S+nope is not a clevr-lite folder/);
    expect(missing.stderr).toContain('hint: make one with `prisma dataset clevr-lite --n N --seed S --out DIR`');
    const noQuestion = prisma(['train', '--data', data, '--out', join(work, 'q2')]);
    expect(noQuestion.code).toBe(2);
    expect(noQuestion.stderr).toContain('hint: choose one of: largest_colour, count, has_red_circle');
  });

  it('continues a killed run from its last checkpoint to the same weights', async () => {
    // Killed hard as soon as a checkpoint exists (well before the 120 steps are done).
    await expectKilledRunResumes(['train', ...common], join(work, 'killed'), join(work, 'straight'), 120, 5);
  }, 240_000);
});
