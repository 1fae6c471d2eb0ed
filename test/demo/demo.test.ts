// `prisma demo`: the README's main command runs every technique on the shipped models and writes a
// report folder whose index.html links only figures that exist and render.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { prisma, requireBuilt } from '../helpers/cli.js';

describe('prisma demo', () => {
  it('writes index.html, summary.md and every figure it links', async () => {
    requireBuilt();
    const out = join(mkdtempSync(join(tmpdir(), 'prisma-demo-')), 'report');
    const r = prisma(['demo', '--out', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { sections: { title: string; lines: string[]; report: string; figures: string[] }[] };
    expect(summary.sections.length).toBeGreaterThanOrEqual(5);
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    expect(html).not.toMatch(/https?:\/\//);
    const pngs = summary.sections.flatMap((s) => s.figures).filter((f) => f.endsWith('.png'));
    expect(pngs.length).toBeGreaterThan(10);
    for (const s of summary.sections) expect(existsSync(join(out, s.report)), s.report).toBe(true);
    for (const f of pngs) {
      expect(html).toContain(f);
      const meta = await sharp(join(out, f)).metadata();
      expect(meta.format).toBe('png');
      const stats = await sharp(join(out, f)).stats();
      expect(
        stats.channels.some((c) => c.stdev > 0),
        f,
      ).toBe(true);
    }
    // The written findings carry the numbers they were computed from.
    const patching = summary.sections[0]!.lines.join(' ');
    expect(patching).toMatch(/restores -?\d+% of the clean metric/);
    expect(readFileSync(join(out, 'summary.md'), 'utf8')).toContain('Direct logit attribution');
  }, 180_000);
});
