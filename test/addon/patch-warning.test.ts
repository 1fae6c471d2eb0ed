// Patching two inputs the model treats alike (issue 21, item 2): the normalised effects divide by
// clean - corrupt, so a tiny difference gave "largest effect 7.53" drawn as if meaningful. The
// library reports the denominator and warnings, the CLI prints them on stderr and in report.json.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { patchWarnings, SMALL_DENOMINATOR } from '../../src/analysis/patch.js';
import { runCli } from '../../src/cli/main.js';
import { loadModel, patch, saveTensors, type Model } from '../../src/index.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';
import { lines, memoryIo } from '../helpers/io.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-patchwarn-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const CHELSEA = join(FIXTURES, 'images', 'chelsea.jpg');
const ASTRONAUT = join(FIXTURES, 'images', 'astronaut.png'); // top-1 'rocket' where chelsea's is 'person'
let model: Model;
let nearlyChelsea: string;

beforeAll(async () => {
  requireBuilt();
  model = await loadModel(MODEL);
  // chelsea's own pixels, moved by 1e-3: the model treats the two alike.
  const b = await model.loadInputs([CHELSEA]);
  const data = b.data.map((x, i) => x + (i % 2 === 0 ? 1e-3 : -1e-3));
  nearlyChelsea = join(tmp, 'nearly-chelsea.safetensors');
  await saveTensors(nearlyChelsea, [{ name: 'pixel_values', shape: [...b.shape], data }]);
});

const side = (value: number, index: number, label = `c${index}`) => ({ input: 'x', metric: { value, prob: 0 }, top1: { index, label } });

describe('patchWarnings', () => {
  it("warns when |clean - corrupt| is below SMALL_DENOMINATOR of the clean logits' spread (the issue's 0.275 vs 0.258)", () => {
    const logits = [1.5, -1.2, 0.3, 0.8, -0.4]; // std ~0.95: 0.017 is far below a tenth of it
    const target = { index: 0, label: 'cat' };
    const w = patchWarnings(
      { clean: side(0.275, 0), corrupt: side(0.258, 1), target, baselineSource: 'corrupt-top1', metric: 'logit_diff' },
      logits,
    );
    expect(w).toHaveLength(1);
    expect(w[0]).toMatch(/^clean and corrupted differ little on the logit difference \(0\.275 vs 0\.258, difference 0\.017/);
    expect(SMALL_DENOMINATOR).toBe(0.1);
    expect(
      patchWarnings({ clean: side(3, 0), corrupt: side(-1, 1), target, baselineSource: 'corrupt-top1', metric: 'logit_diff' }, logits),
    ).toEqual([]);
  });

  it('warns when both inputs share their top-1 class', () => {
    const w = patchWarnings(
      {
        clean: side(3, 2, 'coffee'),
        corrupt: side(-1, 2, 'coffee'),
        target: { index: 2, label: 'coffee' },
        baselineSource: 'none',
        metric: 'logit',
      },
      [0, 1, 2],
    );
    expect(w).toEqual([expect.stringMatching(/^both inputs' top-1 class is coffee, so there is no baseline class/)]);
  });
});

describe('patch: the denominator and the warnings, library and CLI', () => {
  it('a pair the model treats alike: warnings in the result; a pair it does not: none', async () => {
    const alike = await patch(model, CHELSEA, nearlyChelsea, { what: 'resid_pre', by: 'layer_pos' });
    expect(alike.denominator).toBe(alike.clean.metric.value - alike.corrupt.metric.value);
    expect(alike.warnings.length).toBeGreaterThanOrEqual(1);
    const apart = await patch(model, CHELSEA, ASTRONAUT, { what: 'resid_pre', by: 'layer_pos' });
    expect(apart.clean.top1.index).not.toBe(apart.corrupt.top1.index);
    expect(apart.warnings).toEqual([]);
  });

  it('prisma patch prints them on stderr and writes them to report.json', async () => {
    const out = join(tmp, 'report');
    const io = memoryIo();
    const code = await runCli(
      ['patch', MODEL, '--clean', CHELSEA, '--corrupt', nearlyChelsea, '--what', 'resid_pre', '--by', 'layer,pos', '--out', out],
      io,
    );
    expect(code).toBe(0);
    const warnings = lines(io.err()).filter((l) => l.startsWith('prisma: warning: '));
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as { result: { warnings: string[]; denominator: number } };
    expect(report.result.warnings.length).toBeGreaterThanOrEqual(1);
    expect(warnings).toEqual(report.result.warnings.map((w) => `prisma: warning: ${w}`));
    expect(io.out()).toContain(`(effects are (patched - corrupt) / `);
  });
});
