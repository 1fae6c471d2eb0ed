// The CLI in process, for paths that fail before the addon is needed (usage errors, --help).
import { describe, expect, it } from 'vitest';

import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, runCli } from '../../src/cli/main.js';
import { formatJson } from '../../src/report/json.js';
import { expectUsageError, memoryIo } from '../helpers/io.js';

describe('prisma CLI usage errors', () => {
  it('--help prints to stdout and exits 0', async () => {
    const io = memoryIo();
    expect(await runCli(['--help'], io)).toBe(EXIT_OK);
    expect(io.out()).toMatch(/Usage: prisma/);
    expect(io.out()).toMatch(/inspect/);
    expect(io.out()).toMatch(/run/);
    expect(io.err()).toBe('');
  });

  it('--version prints the package version', async () => {
    const io = memoryIo();
    expect(await runCli(['--version'], io)).toBe(EXIT_OK);
    expect(io.out().trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it.each([
    [['run'], /missing required argument 'MODEL_DIR'/],
    [['run', 'model'], /missing required argument 'INPUT'/],
    [['inspect', 'm', '--bogus'], /unknown option '--bogus'/],
    [['run', 'm', 'a.png', '--top-k', 'abc'], /--top-k must be a non-negative integer/],
    [['run', 'm', 'a.png', '--top-k', '0'], /--top-k must be at least 1/],
    [['run', 'm', 'a.png', '--stop-at-layer', '-1'], /unknown option '-1'|--stop-at-layer/],
    [['run', 'm', 'a.png', '--out', 'acts.npz'], /--out must name a .safetensors file/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['inspect', 'a', 'b'], /too many arguments/],
  ])('%j -> exit 2 with one error line and a hint', async (argv, pattern) => {
    await expectUsageError(argv, pattern, /^hint: run `prisma .*--help`$/);
  });

  it('the hint names the --help of every registered command (derived from the program, so classify is included)', async () => {
    for (const command of ['inspect', 'run', 'classify', 'logit-lens', 'patch', 'heads', 'dla', 'ablate', 'dataset', 'train', 'demo']) {
      await expectUsageError([command, '--bogus'], /unknown option '--bogus'|required option/, `hint: run \`prisma ${command} --help\``);
    }
  });

  it.each([
    [['run', 'm', 'a.png', '--dtype', 'int8'], 'int8', 'hint: use f32, f16 or bf16'],
    [['run', 'm', 'a.png', '--device', 'tpu'], 'tpu', 'hint: use cpu, cuda, cuda:N, mps or auto'],
    [['patch', 'm', '--what', 'bogus'], 'bogus', /^hint: use one of resid_pre, .*head_pattern$/],
    [['patch', 'm', '--by', 'layer'], 'layer', 'hint: use layer,pos or layer,head or layer,pos,head'],
    [['logit-lens', 'm', 'a.png', '--site', 'resid_bogus'], 'resid_bogus', 'hint: use resid_pre, resid_mid, resid_post'],
    [['ablate', 'm', 'a.png', '--mode', 'avg'], 'avg', 'hint: use zero, mean or resample'],
  ])('%j -> one error line naming the bad value once, and the valid choices as the hint', async (argv, value, hint) => {
    await expectUsageError(argv, new RegExp(`^prisma: [^']*'${value}'[^']*$`), hint);
  });

  it('a --labels value that names a missing file is an error, not a single label', async () => {
    for (const value of ['/no/such/labels.txt', 'labels.txt', './classes']) {
      const io = memoryIo();
      expect(await runCli(['classify', 'm', 'a.png', '--labels', value], io)).toBe(EXIT_FAILURE);
      expect(io.err().split('\n')[0]).toBe(`prisma: E_INPUT: labels file not found: ${value}`);
    }
  });

  it('--json reports usage errors as JSON on stdout', async () => {
    const io = memoryIo();
    expect(await runCli(['run', 'm', 'a.png', '--top-k', 'x', '--json'], io)).toBe(EXIT_USAGE);
    expect(io.err()).toBe('');
    const doc = JSON.parse(io.out()) as { ok: boolean; error: { code: string; message: string; hint?: string } };
    expect(doc.ok).toBe(false);
    expect(doc.error.code).toBe('E_USAGE');
    expect(doc.error.message).toMatch(/--top-k/);
    expect(doc.error.hint).toMatch(/prisma run --help/);
  });

  it('bare `prisma` shows help on stderr and exits 2', async () => {
    const io = memoryIo();
    expect(await runCli([], io)).toBe(EXIT_USAGE);
    expect(io.err()).toMatch(/Usage: prisma/);
  });

  it('colours the prefix only on a TTY without NO_COLOR', async () => {
    const tty = memoryIo({}, true);
    await runCli(['frob'], tty);
    expect(tty.err()).toContain('\u001b[31mprisma:');
    const noColor = memoryIo({ NO_COLOR: '1' }, true);
    await runCli(['frob'], noColor);
    expect(noColor.err()).not.toContain('\u001b[');
    const pipe = memoryIo({}, false);
    await runCli(['frob'], pipe);
    expect(pipe.err()).not.toContain('\u001b[');
  });
});

describe('formatJson', () => {
  it('is valid JSON with shapes on one line', () => {
    const v = { ok: true, shape: [1, 17, 32], nested: [{ name: 'a', shape: [2] }], empty: [], nothing: undefined };
    const text = formatJson(v);
    expect(JSON.parse(text)).toEqual({ ok: true, shape: [1, 17, 32], nested: [{ name: 'a', shape: [2] }], empty: [] });
    expect(text).toContain('"shape": [1,17,32]');
  });
});
