// The analysis commands, spawned: partial batches (exit 3), coded one-line errors, no --out.
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { FIXTURES, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';
import { CLS, image, model, runReport, tmp, validateSchema, type Report } from '../helpers/report.js';

beforeAll(() => requireBuilt());

describe('batches: per-input errors and exit code 3', () => {
  it('a folder with a corrupt image: the rest is reported, the failure recorded, exit 3', async () => {
    const dir = tmp();
    copyFileSync(image('coffee.png'), join(dir, 'a.png'));
    copyFileSync(join(FIXTURES, 'bad', 'truncated.png'), join(dir, 'b.png'));
    copyFileSync(image('chelsea.jpg'), join(dir, 'c.jpg'));
    for (const command of ['dla', 'logit-lens', 'heads', 'ablate']) {
      const { doc, r } = await runReport(command, [CLS, dir], 3);
      expect(doc.results).toHaveLength(2);
      expect(doc.errors).toEqual([
        { input: join(dir, 'b.png'), code: 'E_IMAGE_DECODE', message: expect.stringMatching(/b\.png/) as unknown as string },
      ]);
      expect(r.code).toBe(3);
    }
    const human = prisma(['dla', CLS, dir]);
    expect(human.code).toBe(3);
    expect(stderrLines(human)).toEqual([expect.stringMatching(/^failed: .*b\.png: E_IMAGE_DECODE: /)]);
  });

  it('every input failing is a plain failure (exit 1) with the report still written', () => {
    const out = tmp();
    const r = prisma(['dla', CLS, join(FIXTURES, 'bad', 'truncated.png'), '--out', out]);
    expect(r.code).toBe(1);
    expect(stderrLines(r)[0]).toMatch(/^prisma: .*truncated\.png/);
    const doc = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as Report;
    validateSchema('dla', doc);
    expect(doc.errors).toHaveLength(1);
  });
});

describe('analysis errors: one line, an E_ code, nothing written', () => {
  const pair = ['--clean', image('chelsea.jpg'), '--corrupt', image('coffee.png')];
  const cases: [string, string[], string, number][] = [
    ['unknown target label', ['logit-lens', CLS, image('coffee.png'), '--target', 'zebra'], 'E_ARGUMENT', 2],
    ['target index out of range', ['dla', CLS, image('coffee.png'), '--target', '9'], 'E_ARGUMENT', 2],
    ['unknown baseline label', ['patch', CLS, ...pair, '--what', 'resid_pre', '--by', 'layer,pos', '--baseline', 'zebra'], 'E_ARGUMENT', 2],
    ['resid_pre has no heads', ['patch', CLS, ...pair, '--what', 'resid_pre', '--by', 'layer,head'], 'E_ARGUMENT', 2],
    ['model without a head', ['logit-lens', model('vit-tiny-base'), image('coffee.png')], 'E_UNSUPPORTED_MODEL', 1],
    ['dla without a head', ['dla', model('vit-tiny-base'), image('coffee.png')], 'E_UNSUPPORTED_MODEL', 1],
    [
      'bad layer in --layers (patch)',
      ['patch', CLS, ...pair, '--what', 'resid_pre', '--by', 'layer,pos', '--layers', '0,5'],
      'E_LAYER_RANGE',
      1,
    ],
    ['bad layer in --layers (heads)', ['heads', CLS, image('coffee.png'), '--layers', '2'], 'E_LAYER_RANGE', 1],
    ['query patch out of range', ['heads', CLS, image('coffee.png'), '--query', '16'], 'E_ARGUMENT', 2],
    [
      '--fast-linear on a half-precision model',
      ['patch', CLS, ...pair, '--what', 'head_z', '--by', 'layer,head', '--dtype', 'f16', '--fast-linear'],
      'E_ARGUMENT',
      2,
    ],
    ['unknown hook in --ablate', ['ablate', CLS, image('coffee.png'), '--ablate', 'blocks.0.attn.hook_nope[head=1]'], 'E_UNKNOWN_HOOK', 1],
    ['malformed --ablate', ['ablate', CLS, image('coffee.png'), '--ablate', 'blocks.0.attn.hook_z[head=1'], 'E_USAGE', 2],
    ['mean without --reference', ['ablate', CLS, image('coffee.png'), '--mode', 'mean'], 'E_USAGE', 2],
    [
      '--fast-linear with --ablate specs',
      ['ablate', CLS, image('coffee.png'), '--ablate', 'blocks.0.attn.hook_z[head=1]', '--fast-linear'],
      'E_USAGE',
      2,
    ],
    ['bad --what', ['patch', CLS, ...pair, '--what', 'nope', '--by', 'layer,pos'], 'E_USAGE', 2],
    ['bad --site', ['logit-lens', CLS, image('coffee.png'), '--site', 'resid_nope'], 'E_USAGE', 2],
  ];

  it.each(cases)('%s', (_what, args, code, exit) => {
    const dir = tmp();
    const out = join(dir, 'out');
    const r = prisma([...args, '--out', out]);
    expect(r.code, r.stderr).toBe(exit);
    expect(r.stdout).toBe('');
    const lines = stderrLines(r);
    expect(lines.length === 1 || (lines.length === 2 && lines[1]!.startsWith('hint: ')), r.stderr).toBe(true);
    expect(lines[0]).toMatch(/^prisma: \S/);
    expect(existsSync(join(out, 'report.json'))).toBe(false);

    const j = prisma([...args, '--json']);
    expect(j.code).toBe(exit);
    const doc = JSON.parse(j.stdout) as { ok: boolean; error: { code: string } };
    expect(doc.ok).toBe(false);
    expect(doc.error.code).toBe(code);
  });

  it("a library error names the library's option (the CLI adds its flag: src/cli/main.ts)", async () => {
    const { loadModel, ablate } = await import('../../src/index.js');
    const m = await loadModel(CLS);
    await expect(ablate(m, image('coffee.png'), { ablate: ['blocks.0.attn.hook_z'], mode: 'mean' })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: "mode 'mean' needs reference images",
      data: { option: 'references' },
    });
    await expect(ablate(m, image('coffee.png'), { ablate: [] })).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: 'no ablation spec given',
    });
  });

  it('the CLI names its flag after a library error about an option', () => {
    const r = prisma(['heads', CLS, image('coffee.png'), '--query', 'r9c9']);
    expect(r.code).toBe(2);
    expect(stderrLines(r)[0]).toBe('prisma: E_ARGUMENT: query r9c9 is not on the 4x4 patch grid (r0c0..r3c3) (--query)');
  });

  it('--resume needs --out', () => {
    const r = prisma(['dla', CLS, image('coffee.png'), '--resume']);
    expect(r.code).toBe(2);
    expect(stderrLines(r)[0]).toMatch(/--resume needs --out/);
  });
});

describe('no --out: nothing written', () => {
  it('writes no files in the working folder', () => {
    const cwd = tmp();
    mkdirSync(join(cwd, 'x'));
    const r = prisma(['heads', CLS, image('coffee.png'), '--json'], {}, cwd);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as Report).figures).toEqual([]);
    expect(readdirSync(cwd)).toEqual(['x']);
  });
});
