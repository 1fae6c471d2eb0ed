// `prisma heads` writes a compact report by default (issue 21, item 15): on ViT-B one image gave
// 146 files and 38 MB (heads.html 8.9 MB). Default: the layer x head grid and a heads.html holding
// only the chosen query's attention; --all-heads adds one PNG per head and the full viewer.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { CLS, image, runReport } from '../helpers/report.js';

function viewerData(html: string): { compact: boolean; heads: { rowMax: number[] }[]; nPos: number } {
  return JSON.parse(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/.exec(html)![1]!) as never;
}

describe('prisma heads output', () => {
  it('default: the grid and a compact heads.html (one query row per head); --all-heads: a PNG per head and every row', async () => {
    const small = await runReport('heads', [CLS, image('chelsea.jpg')]);
    expect(small.doc.figures.map((f) => f.path).sort()).toEqual([
      'heads/chelsea/heads-grid.png',
      'heads/chelsea/heads.html',
      'heads/chelsea/rollout.png',
    ]);
    expect(readdirSync(join(small.out, 'heads', 'chelsea')).sort()).toEqual(['heads-grid.png', 'heads.html', 'rollout.png']);
    const compact = readFileSync(join(small.out, 'heads', 'chelsea', 'heads.html'), 'utf8');
    const c = viewerData(compact);
    expect(c.compact).toBe(true);
    for (const h of c.heads) expect(h.rowMax).toHaveLength(1);
    expect(compact).toContain('--all-heads');

    const full = await runReport('heads', [CLS, image('chelsea.jpg'), '--all-heads']);
    expect(full.doc.figures).toHaveLength(2 * 4 + 3);
    const f = viewerData(readFileSync(join(full.out, 'heads', 'chelsea', 'heads.html'), 'utf8'));
    expect(f.compact).toBe(false);
    for (const h of f.heads) expect(h.rowMax).toHaveLength(f.nPos);
    // The numbers a compact page shows are the full page's, for the chosen query (the class token).
    expect(c.heads.map((h) => h.rowMax[0])).toEqual(f.heads.map((h) => h.rowMax[0]));
    const size = (out: string) => statSync(join(out, 'heads', 'chelsea', 'heads.html')).size;
    expect(size(small.out)).toBeLessThan(size(full.out));
  });
});
