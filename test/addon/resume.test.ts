// --resume: a folder run of 20 images killed midway, then resumed, ends with 20 results and no
// input computed twice (the first run's item records are left untouched).
import { mkdtempSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';

import { FIXTURES, prisma, requireBuilt, spawnAndKillWhen } from '../helpers/cli.js';
import { validateSchema } from '../helpers/report.js';

const CLS = join(FIXTURES, 'models', 'vit-tiny-cls');
const N = 20;

async function makeImages(dir: string): Promise<void> {
  const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
  for (let i = 0; i < N; i++) {
    const size = 96 + 8 * i;
    let img = sharp(sources[i % 3]!).resize(size, size, { fit: 'cover' });
    if (i % 2 === 1) img = img.flop();
    await img
      .modulate({ brightness: 0.8 + 0.02 * i })
      .png()
      .toFile(join(dir, `img-${String(i).padStart(2, '0')}.png`));
  }
}

const jsonFiles = (dir: string): string[] => {
  try {
    return readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
};

beforeAll(() => requireBuilt());

describe('--resume', () => {
  it('a killed 20-image run, resumed, has 20 results and computes none twice', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-resume-'));
    const images = join(root, 'images');
    const out = join(root, 'out');
    const items = join(out, 'items');
    await import('node:fs').then((fs) => fs.mkdirSync(images));
    await makeImages(images);

    // First run: kill it (SIGKILL, no clean-up) once a few items are on disk.
    let killedAt = -1;
    await spawnAndKillWhen(
      ['logit-lens', CLS, images, '--site', 'resid_pre,resid_mid,resid_post', '--out', out, '--json'],
      () => {
        const n = jsonFiles(items).length;
        if (n >= 3) killedAt = n;
        return n >= 3;
      },
      'no items written',
    );
    expect(killedAt, 'the first run finished before it could be killed').toBeGreaterThanOrEqual(3);
    const before = new Map(
      jsonFiles(items).map((n) => [n, { text: readFileSync(join(items, n), 'utf8'), mtime: statSync(join(items, n)).mtimeMs }]),
    );
    const k = before.size;
    expect(k).toBeGreaterThanOrEqual(3);
    expect(k).toBeLessThan(N);
    expect(readdirSync(out)).not.toContain('report.json');

    // Second run: resume.
    const r = prisma(['logit-lens', CLS, images, '--site', 'resid_pre,resid_mid,resid_post', '--out', out, '--json', '--resume']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout) as {
      resumed: number;
      computed: number;
      results: { input: string; figures: string[] }[];
      figures: { path: string }[];
    };
    validateSchema('logit-lens', doc);
    expect(doc.resumed).toBe(k);
    expect(doc.computed).toBe(N - k);
    expect(doc.results).toHaveLength(N);
    expect(new Set(doc.results.map((x) => x.input)).size).toBe(N);
    expect(doc.results.map((x) => x.input)).toEqual(
      readdirSync(images)
        .sort()
        .map((n) => join(images, n)),
    );
    expect(doc.figures).toHaveLength(2 * N);
    expect(JSON.parse(readFileSync(join(out, 'report.json'), 'utf8'))).toEqual(doc);

    // The first run's records were reused, not rewritten; the new ones were added.
    expect(jsonFiles(items)).toHaveLength(N);
    for (const [name, was] of before) {
      expect(readFileSync(join(items, name), 'utf8')).toBe(was.text);
      expect(statSync(join(items, name)).mtimeMs).toBe(was.mtime);
    }
    expect(readdirSync(items).filter((n) => !n.endsWith('.json'))).toEqual([]);

    // Resuming a finished run computes nothing.
    const again = JSON.parse(
      prisma(['logit-lens', CLS, images, '--site', 'resid_pre,resid_mid,resid_post', '--out', out, '--json', '--resume']).stdout,
    ) as { resumed: number; computed: number };
    expect(again).toMatchObject({ resumed: N, computed: 0 });

    // Other options cannot resume this folder.
    const other = prisma(['logit-lens', CLS, images, '--out', out, '--resume']);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/different run/);
  });
});
