// `prisma inspect` says what a batch entry is (issue 21, item 14): a CLIP model's text hooks have one
// row per prompt (none before --labels: shown as P, not 0), and a video model's shapes are for one clip.
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { runCli } from '../../src/cli/main.js';
import { FIXTURES } from '../helpers/cli.js';
import { memoryIo } from '../helpers/io.js';

async function inspect(...argv: string[]): Promise<string> {
  const io = memoryIo();
  expect(await runCli(['inspect', ...argv], io)).toBe(0);
  return io.out();
}

describe('prisma inspect: what the shapes are for', () => {
  it('CLIP without --labels: text hooks are [P, ...], never a batch of 0', async () => {
    const out = await inspect(join(FIXTURES, 'models', 'clip-tiny'));
    expect(out).toMatch(/^hooks \(\d+, shapes for 1 image; text\.\* hooks: P = the number of prompts, none until --labels\)$/m);
    expect(out).toMatch(/^ {2}text\.hook_embed +\[P, 16, 32\]$/m);
    expect(out).not.toMatch(/\[0, /);
  });

  it('CLIP with --labels: the prompts are counted', async () => {
    const out = await inspect(
      join(FIXTURES, 'models', 'clip-tiny'),
      '--labels',
      'cat,dog,cow',
      '--template',
      'a {}',
      '--template',
      'the {}',
    );
    expect(out).toMatch(/text\.\* hooks: 6 prompts \(--labels x --template\)\)$/m);
    expect(out).toMatch(/^ {2}text\.hook_embed +\[6, /m);
  });

  it('a video model: shapes for one clip', async () => {
    const out = await inspect(join(FIXTURES, 'models', 'videomae-tiny'));
    expect(out).toMatch(/^hooks \(\d+, shapes for 1 clip of 4 frames\)$/m);
    expect(out).not.toMatch(/shapes for 1 image/);
  });
});
