// Patching over a dataset (issue 21, item 3): many pairs, from `prisma dataset clevr-lite --edit`'s
// edits.jsonl or from two folders matched by file name; each pair through the single-pair engine,
// then per effect the mean and spread of the normalised values. The aggregate is checked against
// single-pair runs through the library (a naive mean and sample standard deviation).
import { mkdtempSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runCli } from '../../src/cli/main.js';
import { loadModel, patch, type Model } from '../../src/index.js';
import { ROOT, requireBuilt } from '../helpers/cli.js';
import { lines, memoryIo } from '../helpers/io.js';
import { validateSchema } from '../helpers/report.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-pairs-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MODEL = join(ROOT, 'models', 'clevr-vit');
const DATA = join(tmp, 'clevr');
let model: Model;

interface Edit {
  source: string;
  image: string;
  from: string;
  to: string;
}

beforeAll(async () => {
  requireBuilt();
  const io = memoryIo();
  expect(await runCli(['dataset', 'clevr-lite', '--n', '4', '--seed', '7', '--edit', '--out', DATA], io)).toBe(0);
  model = await loadModel(MODEL);
});

async function cli(argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, out: io.out(), err: lines(io.err()) };
}

describe('prisma patch over many pairs', () => {
  it('edits.jsonl: each edit is a pair with its colours as target/baseline; mean and sd equal single-pair runs', async () => {
    const out = join(tmp, 'report-jsonl');
    const r = await cli([
      'patch',
      MODEL,
      '--pairs',
      join(DATA, 'edits.jsonl'),
      '--what',
      'resid_pre',
      '--by',
      'layer,pos',
      '--out',
      out,
      '--json',
    ]);
    expect(r.err).toEqual([]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as {
      result: {
        pairs: { clean: string; target: { label: string }; baseline: { label: string } | null; included: boolean }[];
        exact: { mean: number[]; std: number[]; n: number; dims: number[] };
      };
    };
    validateSchema('patch', doc as never);
    const edits = readFileSync(join(DATA, 'edits.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Edit);
    expect(doc.result.pairs).toHaveLength(edits.length);
    const singles: number[][] = [];
    for (const [i, e] of edits.entries()) {
      expect(doc.result.pairs[i]!.target.label).toBe(e.from);
      expect(doc.result.pairs[i]!.baseline?.label).toBe(e.to);
      const one = await patch(model, join(DATA, e.source), join(DATA, e.image), {
        what: 'resid_pre',
        by: 'layer_pos',
        target: e.from,
        baseline: e.to,
      });
      if (doc.result.pairs[i]!.included) singles.push(one.exact!.normalised);
    }
    const n = singles.length;
    expect(doc.result.exact.n).toBe(n);
    expect(n).toBeGreaterThanOrEqual(2);
    for (let k = 0; k < singles[0]!.length; k++) {
      const xs = singles.map((s) => s[k]!);
      const mean = xs.reduce((a, b) => a + b, 0) / n;
      const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
      expect(Math.abs(doc.result.exact.mean[k]! - mean)).toBeLessThan(1e-9 * Math.max(1, Math.abs(mean)));
      expect(Math.abs(doc.result.exact.std[k]! - sd)).toBeLessThan(1e-9 * Math.max(1, sd));
    }
  });

  it('two folders matched by file name; a name on one side only is one E_INPUT line', async () => {
    const byName = [
      'patch',
      MODEL,
      '--clean',
      join(DATA, 'images'),
      '--corrupt',
      join(DATA, 'edited'),
      '--what',
      'resid_pre',
      '--by',
      'layer,pos',
    ];
    const r = await cli(byName);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/over 4 pairs/);
    unlinkSync(join(DATA, 'edited', '000003.png'));
    const bad = await cli(byName);
    expect(bad.code).toBe(1);
    expect(bad.err[0]).toMatch(
      /^prisma: E_INPUT: --clean .* and --corrupt .* do not hold the same file names; only in --clean: 000003\.png$/,
    );
  });
});
