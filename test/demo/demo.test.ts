// `prisma demo`: the README's main command runs every technique on the shipped models and writes a
// report folder whose index.html links only figures that exist and render.
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { ROOT, prisma, requireBuilt } from '../helpers/cli.js';

describe('prisma demo', () => {
  it('writes index.html, summary.md and every figure it links', async () => {
    requireBuilt();
    const out = join(mkdtempSync(join(tmpdir(), 'prisma-demo-')), 'report');
    const r = prisma(['demo', '--out', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as {
      sections: { title: string; command: string; lines: string[]; report: string; figures: { path: string; caption: string }[] }[];
    };
    expect(summary.sections.length).toBeGreaterThanOrEqual(5);
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    expect(html).not.toMatch(/https?:\/\//);
    const pngs = summary.sections.flatMap((s) => s.figures.map((f) => f.path)).filter((f) => f.endsWith('.png'));
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
    const md = readFileSync(join(out, 'summary.md'), 'utf8');
    expect(md).toContain('Direct logit attribution');

    // Issue 21, item 16. Every section shows the command that makes its report, and that command,
    // run as printed, gives the same results (checked on the clevr-lite logit lens).
    for (const s of summary.sections) expect(s.command, s.title).toMatch(/^prisma (patch|logit-lens|heads|dla) /);
    expect(html.match(/<pre class="cmd">\$ prisma /g)).toHaveLength(summary.sections.length);
    const lens = summary.sections.find((s) => s.title === 'Logit lens (clevr-lite)')!;
    const again = join(mkdtempSync(join(tmpdir(), 'prisma-demo-again-')), 'lens');
    const args = lens.command
      .replace(/^prisma /, '')
      .split(' ')
      .map((a) => a.replace(/^'|'$/g, ''));
    args[args.indexOf('--out') + 1] = again;
    const rerun = prisma([...args, '--json'], {}, ROOT);
    expect(rerun.code, rerun.stderr).toBe(0);
    // (the input label is the path as given: absolute in the demo, as printed in the rerun)
    const results = (p: string) =>
      (JSON.parse(readFileSync(p, 'utf8')) as { results: { input: string }[] }).results.map(({ input: _, ...r }) => r);
    expect(results(join(again, 'report.json'))).toEqual(results(join(out, lens.report)));
    // No "-0%", no "up to layer 0"; summary.md has no heading without findings; captions say what a
    // figure shows, not its file name.
    for (const text of [html, md, ...summary.sections.flatMap((s) => s.lines)]) {
      expect(text).not.toMatch(/-0%/);
      expect(text).not.toMatch(/up to layer 0\b/);
    }
    for (const part of md.split(/^## /m).slice(1))
      expect(
        part.split('\n').some((l) => l.startsWith('- ')),
        part,
      ).toBe(true);
    for (const s of summary.sections) for (const f of s.figures) expect(f.caption, f.path).not.toMatch(/\.(png|html)$|\//);
  }, 300_000);
});
