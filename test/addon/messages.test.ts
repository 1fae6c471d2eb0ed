// Messages a new user meets first (issue 21, item 9), in process: hook-name typos get the nearest
// names; a missing model path says "not found"; classify without --labels points at its --help;
// the logit lens on a headless backbone mentions --probe; `--cache PATTERN` before the inputs no
// longer swallows the first input.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { runCli } from '../../src/cli/main.js';
import { editDistance, nearestHooks } from '../../src/hook-suggest.js';
import { FIXTURES } from '../helpers/cli.js';
import { lines, memoryIo } from '../helpers/io.js';

const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const IMAGE = join(FIXTURES, 'images', 'chelsea.jpg');

async function run(argv: string[]) {
  const io = memoryIo();
  const code = await runCli(argv, io);
  return { code, out: io.out(), err: lines(io.err()) };
}

describe('hook-name typos', () => {
  it('edit distance counts a swap of neighbours as one edit', () => {
    expect(editDistance('resid_pst', 'resid_post')).toBe(1);
    expect(editDistance('hook_rseid', 'hook_resid')).toBe(1);
    expect(nearestHooks('blocks.0.hook_resid_pst', ['blocks.0.hook_resid_post', 'blocks.0.hook_resid_pre', 'hook_embed'])).toEqual([
      'blocks.0.hook_resid_post',
    ]);
    expect(nearestHooks('blocks.0.ln1.hook_scal', ['blocks.0.ln1.hook_scale', 'blocks.0.ln2.hook_scale'])).toEqual([
      'blocks.0.ln1.hook_scale',
    ]);
    expect(nearestHooks('nothing_like_it', ['hook_embed'])).toEqual([]);
  });

  it.each([
    ['blocks.0.hook_resid_pst', "did you mean 'blocks.0.hook_resid_post'?"],
    ['blocks.*.hook_resid_pst', "did you mean 'blocks.*.hook_resid_post'?"],
    ['blocks.1.attn.hook_patern', "did you mean 'blocks.1.attn.hook_pattern'?"],
  ])('--cache %s suggests the nearest names', async (pattern, suggestion) => {
    const r = await run(['run', MODEL, IMAGE, '--cache', pattern]);
    expect(r.code).toBe(1);
    expect(r.err[0]).toMatch(/^prisma: E_UNKNOWN_HOOK: /);
    expect(r.err[1]).toBe(`hint: ${suggestion} (\`prisma inspect MODEL\` lists every hook)`);
  });
});

describe('first-run messages', () => {
  it('a model path that does not exist: "not found"', async () => {
    const r = await run(['run', join(FIXTURES, 'models', 'nope'), IMAGE]);
    expect(r.code).toBe(1);
    expect(r.err[0]).toBe(`prisma: E_MODEL_DIR: model not found: ${join(FIXTURES, 'models', 'nope')}`);
  });

  it('classify without --labels points at its --help', async () => {
    const r = await run(['classify', join(FIXTURES, 'models', 'clip-tiny'), IMAGE]);
    expect(r.code).toBe(2);
    expect(r.err).toEqual([
      'prisma: E_USAGE: classify needs --labels (comma-separated, or a file with one label per line)',
      'hint: run `prisma classify --help`',
    ]);
  });

  it('the logit lens on a headless backbone mentions --probe', async () => {
    const r = await run(['logit-lens', join(FIXTURES, 'models', 'dinov2-reg-tiny'), IMAGE]);
    expect(r.code).toBe(1);
    expect(r.err[1]).toMatch(/^hint: give it a linear probe with --probe FILE/);
  });

  it('--cache PATTERN before the inputs takes one pattern, not the input after it', async () => {
    const r = await run(['run', MODEL, '--cache', 'blocks.0.hook_resid_post', IMAGE, '--json']);
    expect(r.err).toEqual([]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { inputs: string[]; cached: string[] };
    expect(doc.inputs).toEqual([IMAGE]);
    expect(doc.cached).toEqual(['blocks.0.hook_resid_post']);
  });
});
