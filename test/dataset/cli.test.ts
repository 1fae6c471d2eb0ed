// `prisma dataset ...` in process: outputs, exit codes and one-line errors. None of it needs the addon.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { EXIT_FAILURE, EXIT_OK, runCli } from '../../src/cli/main.js';
import { FASHION_MNIST_DIR } from '../../src/dataset/fashion-mnist.js';
import { FIXTURES } from '../helpers/cli.js';
import { expectUsageError, lines, memoryIo } from '../helpers/io.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-dataset-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI in process and requires success with nothing on stderr. */
async function runOk(argv: string[]): Promise<ReturnType<typeof memoryIo>> {
  const io = memoryIo();
  const code = await runCli(argv, io);
  expect(io.err()).toBe('');
  expect(code).toBe(EXIT_OK);
  return io;
}

describe('prisma dataset', () => {
  it('clevr-lite writes images, labels, dataset.json and patch labels', async () => {
    const out = join(tmp, 'clevr');
    const io = await runOk([
      'dataset',
      'clevr-lite',
      '--n',
      '4',
      '--out',
      out,
      '--seed',
      '3',
      '--size',
      '64',
      '--max-objects',
      '3',
      '--patch-size',
      '16',
      '--edit',
    ]);
    expect(JSON.parse(io.out())).toMatchObject({ ok: true, dataset: 'clevr-lite', n: 4, seed: 3, size: 64, maxObjects: 3 });
    for (const f of ['images/000003.png', 'labels.jsonl', 'dataset.json', 'patch-labels/000003.json', 'edited/000003.png', 'edits.jsonl']) {
      expect(existsSync(join(out, f)), f).toBe(true);
    }
    const meta = JSON.parse(readFileSync(join(out, 'dataset.json'), 'utf8'));
    expect(meta.questions.count.classes).toEqual(['1', '2', '3']);
    expect(JSON.parse(readFileSync(join(out, 'patch-labels', '000000.json'), 'utf8')).grid).toEqual([4, 4]);
  });

  it('patch-labels writes the labels file for a model folder', async () => {
    const out = join(tmp, 'labels.json');
    const io = await runOk([
      'dataset',
      'patch-labels',
      '--annotations',
      join(FIXTURES, 'annotations'),
      '--model',
      join(FIXTURES, 'models', 'vit-tiny-cls'),
      '--out',
      out,
      '--images',
      join(FIXTURES, 'images'),
    ]);
    const summary = JSON.parse(io.out());
    expect(summary).toMatchObject({ ok: true, dataset: 'patch-labels', patchSize: 8, threshold: 0.5 });
    expect(summary.images).toHaveLength(4);
    const doc = JSON.parse(readFileSync(out, 'utf8'));
    expect(doc.images[1].labels.filter((l: string | null) => l !== null)).toHaveLength(12); // chelsea: rows 1-3
  });

  it('fashion-mnist exports PNGs, or fails with the install hint', async () => {
    const out = join(tmp, 'fmnist');
    const io = memoryIo();
    const code = await runCli(['dataset', 'fashion-mnist', '--out', out, '--n', '3'], io);
    if (existsSync(join(FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz'))) {
      expect(code).toBe(EXIT_OK);
      expect(lines(readFileSync(join(out, 'labels.jsonl'), 'utf8'))).toHaveLength(3);
      expect(existsSync(join(out, 'images', '000002.png'))).toBe(true);
    } else {
      expect(code).toBe(EXIT_FAILURE);
    }
    const missing = memoryIo();
    expect(await runCli(['dataset', 'fashion-mnist', '--out', out, '--dir', join(tmp, 'nowhere')], missing)).toBe(EXIT_FAILURE);
    const err = lines(missing.err());
    expect(err).toHaveLength(2);
    expect(err[0]).toMatch(/^prisma: E_\w+: Fashion-MNIST file not found: /);
    expect(err[1]).toBe('hint: apt-get install dataset-fashion-mnist');
  });

  it.each([
    [['dataset', 'clevr-lite', '--n', '2', '--out', 'x'], /required option '--seed <seed>' not specified/],
    [['dataset', 'clevr-lite', '--n', '0', '--out', 'x', '--seed', '1'], /--n must be at least 1/],
    [['dataset', 'clevr-lite', '--n', '2', '--out', 'x', '--seed', '1', '--size', '8'], /size must be an integer from 16/],
    [
      ['dataset', 'clevr-lite', '--n', '2', '--out', 'x', '--seed', '1', '--patch-min-fraction', '0.2'],
      /--patch-min-fraction needs --patch-size/,
    ],
    [['dataset', 'patch-labels', '--annotations', 'a', '--out', 'x.json'], /give --model MODEL_DIR, or --image-size and --patch-size/],
    [['dataset', 'patch-labels', '--annotations', 'a', '--out', 'x.json', '--image-size', '22a'], /--image-size must be N or HxW/],
    [
      ['dataset', 'patch-labels', '--annotations', 'a', '--out', 'x.json', '--threshold', '1.5'],
      /--threshold must be a number in \(0, 1\]/,
    ],
    [['dataset', 'fashion-mnist', '--out', 'x', '--split', 'val'], /argument 'val' is invalid/],
    [['dataset', 'frobnicate'], /unknown command 'frobnicate'/],
  ])('%j -> exit 2 with one error line and a hint', async (argv, pattern) => {
    await expectUsageError(argv, pattern, 'hint: run `prisma dataset --help`');
  });

  it('--json reports errors as JSON on stdout', async () => {
    const io = memoryIo();
    expect(await runCli(['dataset', 'fashion-mnist', '--out', join(tmp, 'j'), '--dir', join(tmp, 'nowhere'), '--json'], io)).toBe(
      EXIT_FAILURE,
    );
    expect(JSON.parse(io.out())).toMatchObject({ ok: false, error: { code: 'E_DATASET', hint: 'apt-get install dataset-fashion-mnist' } });
    expect(io.err()).toBe('');
  });

  it('dataset --help lists the three generators', async () => {
    const io = memoryIo();
    expect(await runCli(['dataset', '--help'], io)).toBe(EXIT_OK);
    expect(io.out()).toMatch(/clevr-lite/);
    expect(io.out()).toMatch(/patch-labels/);
    expect(io.out()).toMatch(/fashion-mnist/);
  });
});
