// --jsonl: one JSON line per input on stdout as it finishes, failed inputs as lines with their code;
// `find DIR -name '*.jpg' | prisma logit-lens MODEL - --jsonl` works. Unreadable, truncated and
// non-image files in a folder are error lines and the job goes on (logit-lens, run, classify).
// Needs the built addon and CLI.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';

import { BIN, FIXTURES, prisma, requireBuilt } from '../helpers/cli.js';

const CLS = join(FIXTURES, 'models', 'vit-tiny-cls');
const CLIP = join(FIXTURES, 'models', 'clip-tiny');

interface Line {
  position: number;
  file: string;
  input: string;
  ok: boolean;
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
}

let root = '';
let folder = '';
/** The bad files of `folder` and what their error message must say. */
const BAD: Record<string, RegExp> = {
  'cut.jpg': /premature end of JPEG/i, // a JPEG cut in the middle of its image data
  'truncated.png': /libpng read error/,
  'notes.jpg': /unsupported image format/, // text named .jpg
  'unreadable.jpg': /EIO/, // reading it fails (a link to /proc/self/mem: refused to root as well)
};

async function makeFolder(dir: string, count: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
  for (let i = 0; i < count; i++) {
    await sharp(sources[i % 3]!)
      .resize(48 + 4 * i, 40 + 6 * i, { fit: 'cover' })
      .jpeg({ quality: 85 })
      .toFile(join(dir, `photo-${String(i).padStart(2, '0')}.jpg`));
  }
}

beforeAll(async () => {
  requireBuilt();
  root = mkdtempSync(join(tmpdir(), 'prisma-jsonl-'));
  folder = join(root, 'photos');
  await makeFolder(folder, 5);
  const jpeg = readFileSync(join(folder, 'photo-01.jpg'));
  writeFileSync(join(folder, 'cut.jpg'), jpeg.subarray(0, Math.floor(jpeg.length * 0.6)));
  copyFileSync(join(FIXTURES, 'bad', 'truncated.png'), join(folder, 'truncated.png'));
  writeFileSync(join(folder, 'notes.jpg'), 'not an image\n');
  symlinkSync('/proc/self/mem', join(folder, 'unreadable.jpg'));
});

const parseLines = (stdout: string): Line[] =>
  stdout
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as Line);

function checkLines(lines: Line[], files: string[]): void {
  expect(lines.map((l) => l.file)).toEqual(files);
  expect(lines.map((l) => l.position)).toEqual(files.map((_, i) => i));
  for (const l of lines) {
    const name = l.file.split('/').at(-1)!;
    if (name in BAD) {
      expect(l.ok, name).toBe(false);
      expect(l.error?.code, name).toBe('E_IMAGE_DECODE');
      expect(l.error?.message, name).toMatch(BAD[name]!);
    } else {
      expect(l.ok, `${name}: ${l.error?.message}`).toBe(true);
    }
  }
}

describe('--jsonl', { timeout: 300_000 }, () => {
  it("find DIR -name '*.jpg' | prisma logit-lens MODEL - --jsonl: a line per input, bad files as error lines", () => {
    const r = spawnSync(
      'sh',
      ['-c', `find "${folder}" -name '*.jpg' | sort | "${process.execPath}" "${BIN}" logit-lens "${CLS}" - --jsonl`],
      {
        encoding: 'utf8',
        env: { ...process.env, NO_COLOR: '1' },
        timeout: 120_000,
      },
    );
    expect(r.status, r.stderr).toBe(3);
    const listed = spawnSync('sh', ['-c', `find "${folder}" -name '*.jpg' | sort`], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter(Boolean);
    const lines = parseLines(r.stdout);
    checkLines(lines, listed);
    // The lines hold what the report holds.
    const out = join(root, 'lens-report');
    expect(prisma(['logit-lens', CLS, folder, '--out', out]).code).toBe(3);
    const report = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as { results: Record<string, unknown>[] };
    const fromLines = lines.filter((l) => l.ok && l.file.endsWith('.jpg')).map((l) => l.result);
    const ok = report.results.filter((x) => String(x.input).endsWith('.jpg'));
    expect(fromLines).toEqual(ok.map(({ name: _n, figures: _f, ...rest }) => rest));
  });

  it.each([
    ['run', ['run', CLS], ['--cache', 'hook_embed']],
    ['classify', ['classify', CLIP], ['--labels', 'cat,dog']],
    ['logit-lens', ['logit-lens', CLS], []],
  ])('%s over a folder with bad files: error lines, the job goes on', (_name, head, tail) => {
    const r = prisma([...head, folder, ...tail, '--jsonl']);
    expect(r.code, r.stderr).toBe(3);
    const lines = parseLines(r.stdout);
    const files = lines.map((l) => l.file);
    expect(files.map((f) => f.split('/').at(-1)).sort()).toEqual([
      'cut.jpg',
      'notes.jpg',
      'photo-00.jpg',
      'photo-01.jpg',
      'photo-02.jpg',
      'photo-03.jpg',
      'photo-04.jpg',
      'truncated.png',
      'unreadable.jpg',
    ]);
    checkLines(lines, files);
  });

  it('prints each line as its input finishes (a killed job has printed its first lines)', async () => {
    const many = join(root, 'many');
    await makeFolder(many, 40);
    const child = spawn(process.execPath, [BIN, 'logit-lens', CLS, many, '--site', 'resid_pre,resid_mid,resid_post', '--jsonl'], {
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let text = '';
    const ended = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    child.stdout.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8');
      if (text.includes('\n')) child.kill('SIGKILL');
    });
    expect(await ended, 'the job ended before its first line was read').toBe('SIGKILL');
    const first = JSON.parse(text.split('\n')[0]!) as Line;
    expect(first).toMatchObject({ position: 0, ok: true, file: join(many, 'photo-00.jpg') });
  });

  it('every input failing: their lines, then one error line and exit 1', () => {
    const r = prisma(['logit-lens', CLS, join(folder, 'notes.jpg'), join(folder, 'truncated.png'), '--jsonl']);
    expect(r.code).toBe(1);
    expect(parseLines(r.stdout).map((l) => l.error?.code)).toEqual(['E_IMAGE_DECODE', 'E_IMAGE_DECODE']);
    expect(r.stderr.split('\n')[0]).toMatch(/^prisma: E_IMAGE_DECODE: .*notes\.jpg.*\(all 2 inputs failed\)$/);
  });
});
