// `prisma logit-lens --patch-labels`: per-patch lens accuracy layer by layer against a patch-labels
// file (the format `prisma dataset patch-labels` writes).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { FIXTURES, prisma, requireBuilt } from '../helpers/cli.js';
import { validateSchema } from '../helpers/report.js';

const CLS = join(FIXTURES, 'models', 'vit-tiny-cls'); // 32 px, patch 8: a 4x4 grid after the class token
const IMAGE = join(FIXTURES, 'images', 'chelsea.jpg');

function labelsFile(dir: string, labels: (string | null)[], grid: [number, number] = [4, 4]): string {
  const file = join(dir, 'labels.json');
  const classes = [...new Set(labels.filter((l): l is string => l !== null))].sort();
  writeFileSync(
    file,
    JSON.stringify({
      schemaVersion: 1,
      kind: 'patch-labels',
      patchSize: 8,
      threshold: 0.5,
      preprocess: { source: 'test', resize: { kind: 'exact', height: 32, width: 32 }, centerCrop: null },
      classes,
      images: [
        {
          image: 'chelsea.jpg',
          annotation: 'hand-made',
          mask: null,
          sourceSize: [50, 70],
          size: [32, 32],
          grid,
          labels,
          coverage: labels.map(() => 1),
        },
      ],
    }),
  );
  return file;
}

describe('logit-lens --patch-labels', () => {
  it('scores each layer against the labelled patches', async () => {
    requireBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'prisma-lens-labels-'));
    // Top row 'cat', second row 'dog', the rest unlabelled.
    const labels = Array.from({ length: 16 }, (_, p) => (p < 4 ? 'cat' : p < 8 ? 'dog' : null));
    const r = prisma([
      'logit-lens',
      CLS,
      IMAGE,
      '--site',
      'resid_pre,resid_post',
      '--patch-labels',
      labelsFile(dir, labels),
      '--out',
      join(dir, 'out'),
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(readFileSync(join(dir, 'out', 'report.json'), 'utf8')) as {
      results: {
        layers: { layer: number; site: string; posTop1: number[] }[];
        patchLabels: { layer: number; site: string; correct: number; labelled: number; accuracy: number }[];
      }[];
      patchLabelAccuracy: { correct: number; labelled: number }[];
    };
    await validateSchema('logit-lens', report);
    const [res] = report.results;
    expect(res!.patchLabels).toHaveLength(res!.layers.length);
    res!.layers.forEach((l, i) => {
      // Token 1 + p is patch p; the model's classes are cat=0, dog=1.
      let expected = 0;
      for (let p = 0; p < 8; p++) if (l.posTop1[1 + p] === (p < 4 ? 0 : 1)) expected++;
      expect(res!.patchLabels[i]).toMatchObject({ layer: l.layer, site: l.site, correct: expected, labelled: 8, accuracy: expected / 8 });
    });
    expect(report.patchLabelAccuracy.map((s) => s.correct)).toEqual(res!.patchLabels.map((s) => s.correct));
  }, 60_000);

  it('rejects labels on another grid or with no class of the model', () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-lens-labels-'));
    const wrongGrid = prisma(['logit-lens', CLS, IMAGE, '--patch-labels', labelsFile(dir, Array(9).fill('cat'), [3, 3])]);
    expect(wrongGrid.code).toBe(1);
    expect(wrongGrid.stderr).toContain('3x3');
    const noClass = prisma(['logit-lens', CLS, IMAGE, '--patch-labels', labelsFile(dir, Array(16).fill('n02123045'))]);
    expect(noClass.code).not.toBe(0);
    expect(noClass.stderr.split('\n').filter(Boolean).length).toBeLessThanOrEqual(2);
  }, 60_000);
});
