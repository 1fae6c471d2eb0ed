// Folders as inputs (issue 21, item 4): symlinked files and folders are followed, --recursive reads
// class-per-folder layouts, and whatever a folder holds that is not read is named on stderr; and
// `-` (paths on stdin) for `prisma run` and `prisma classify` (item 5), as the analysis commands had.
// In process (runCli with in-memory streams), the addon loaded once.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { runCli } from '../../src/cli/main.js';
import { FIXTURES } from '../helpers/cli.js';
import { lines, memoryIo } from '../helpers/io.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-inputs-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const CLIP = join(FIXTURES, 'models', 'clip-tiny');
const img = (name: string) => join(FIXTURES, 'images', name);

async function run(argv: string[], stdin?: string) {
  const io = memoryIo();
  const withStdin =
    stdin === undefined
      ? io
      : {
          ...io,
          stdin: (async function* () {
            yield stdin;
          })(),
        };
  const code = await runCli(argv, withStdin);
  return { code, out: io.out(), err: io.err() };
}

const inputsOf = (out: string) => (JSON.parse(out) as { inputs: string[] }).inputs;

describe('folders', () => {
  it('follows symlinked files and a symlinked subfolder (with --recursive); a broken link is named', async () => {
    const links = join(tmp, 'links');
    mkdirSync(links);
    symlinkSync(img('chelsea.jpg'), join(links, 'a.jpg'));
    symlinkSync(img('coffee.png'), join(links, 'b.png'));
    symlinkSync(join(tmp, 'nowhere.png'), join(links, 'c.png'));
    symlinkSync(join(FIXTURES, 'images'), join(links, 'more'));
    const flat = await run(['run', MODEL, links]); // prints its JSON summary; --json would also silence the skip notes
    expect(flat.code).toBe(0);
    expect(inputsOf(flat.out)).toEqual([join(links, 'a.jpg'), join(links, 'b.png')]);
    expect(lines(flat.err)).toEqual([`prisma: skipped in ${links}: c.png (a broken link), more/ (a folder: --recursive reads it)`]);
    const deep = await run(['run', MODEL, links, '--recursive']);
    expect(deep.code).toBe(0);
    expect(inputsOf(deep.out)).toEqual([
      join(links, 'a.jpg'),
      join(links, 'b.png'),
      join(links, 'more', 'astronaut.png'),
      join(links, 'more', 'chelsea.jpg'),
      join(links, 'more', 'coffee.png'),
    ]);
  });

  it('a class-per-folder layout: without --recursive one E_INPUT line that names it, with it every image in order', async () => {
    const data = join(tmp, 'classes');
    for (const [cls, name] of [
      ['cat', 'chelsea.jpg'],
      ['coffee', 'coffee.png'],
    ] as const) {
      mkdirSync(join(data, cls), { recursive: true });
      copyFileSync(img(name), join(data, cls, name));
    }
    writeFileSync(join(data, 'README.txt'), 'labels are folder names');
    const flat = await run(['run', MODEL, data]);
    expect(flat.code).toBe(1);
    expect(lines(flat.err).slice(-2)).toEqual([
      `prisma: E_INPUT: no images in folder ${data}`,
      'hint: it has 2 subfolders (cat, coffee): pass --recursive to read the images in them',
    ]);
    const deep = await run(['run', MODEL, data, '-r']);
    expect(deep.code).toBe(0);
    expect(inputsOf(deep.out)).toEqual([join(data, 'cat', 'chelsea.jpg'), join(data, 'coffee', 'coffee.png')]);
    expect(lines(deep.err)).toEqual([`prisma: skipped in ${data}: README.txt (not an image)`]);
  });

  it('a symlink cycle under --recursive ends, and is named', async () => {
    const loop = join(tmp, 'loop');
    mkdirSync(loop);
    copyFileSync(img('coffee.png'), join(loop, 'x.png'));
    symlinkSync(loop, join(loop, 'self'));
    const r = await run(['run', MODEL, loop, '--recursive']);
    expect(r.code).toBe(0);
    expect(inputsOf(r.out)).toEqual([join(loop, 'x.png')]);
    expect(r.err).toContain('self (already read)');
  });
});

describe("'-': paths on stdin", () => {
  it('prisma run', async () => {
    const r = await run(['run', MODEL, '-', '--json'], `${img('chelsea.jpg')}\n${img('coffee.png')}\n`);
    expect(r.code).toBe(0);
    expect(inputsOf(r.out)).toEqual([img('chelsea.jpg'), img('coffee.png')]);
  });

  it('prisma classify', async () => {
    const r = await run(['classify', CLIP, '-', '--labels', 'cat,coffee', '--json'], `${img('coffee.png')}\n`);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.out) as { results: { input: string }[] }).results.map((x) => x.input)).toEqual([img('coffee.png')]);
  });
});
