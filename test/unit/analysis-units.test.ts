// Pure parts of the analysis commands: spec and flag parsers, class resolution, head statistics,
// report names, chart helpers and schema checks. No addon needed.
import { describe, expect, it } from 'vitest';

import { formatAblateSpec, parseAblateSpec } from '../../src/analysis/ablate-spec.js';
import { checkLayers, pearson, resolveClass, seededRandom } from '../../src/analysis/common.js';
import { entropy, headStats, parseHeadsQuery } from '../../src/analysis/heads.js';
import { checkWhatBy, parsePatchBy } from '../../src/analysis/patch.js';
import { parseLayerList } from '../../src/cli/commands/analysis.js';
import { figureNames, itemId } from '../../src/cli/batch.js';
import { sanitizeName } from '../../src/report/figures.js';
import { validateReport } from '../../src/report/schema.js';
import { indexTicks, niceTicks } from '../../src/report/svg.js';

describe('parseAblateSpec', () => {
  it.each([
    ['blocks.3.attn.hook_z[head=5]', 'blocks.3.attn.hook_z', { head: [5] }],
    ['blocks.0.hook_resid_post', 'blocks.0.hook_resid_post', {}],
    ['blocks.1.attn.hook_z[head=1|2|3]', 'blocks.1.attn.hook_z', { head: [1, 2, 3] }],
    ['blocks.1.attn.hook_z[head=0-3]', 'blocks.1.attn.hook_z', { head: [0, 1, 2, 3] }],
    ['blocks.*.attn.hook_z[ head = 0-1|4 , pos=0 ,batch=0 ]', 'blocks.*.attn.hook_z', { head: [0, 1, 4], pos: [0], batch: [0] }],
    ['blocks.2.attn.hook_pattern[pos=3|1|3]', 'blocks.2.attn.hook_pattern', { pos: [1, 3] }],
  ])('%s', (text, hook, select) => {
    const spec = parseAblateSpec(text);
    expect(spec.hook).toBe(hook);
    expect(spec.select).toEqual(select);
    expect(parseAblateSpec(formatAblateSpec(spec)).select).toEqual(select);
  });

  it.each([
    ['', /expected a hook name/],
    ['[head=1]', /expected a hook name/],
    ['blocks.0.attn.hook_z[head=1', /expected '\]' at the end/],
    ['blocks.0.attn.hook_z[head=]', /expected a number/],
    ['blocks.0.attn.hook_z[layer=1]', /unknown key 'layer'/],
    ['blocks.0.attn.hook_z[head=1,head=2]', /'head' is given twice/],
    ['blocks.0.attn.hook_z[head=3-1]', /runs backwards/],
    ['blocks.0.attn.hook_z[head=1]x', /unexpected 'x'/],
    ['blocks.0.attn.hook_z[head:1]', /expected '='/],
    ['blocks.0.attn.hook_z[head=-1]', /expected a number/],
  ])('rejects %j', (text, pattern) => {
    expect(() => parseAblateSpec(text)).toThrowError(pattern);
    try {
      parseAblateSpec(text);
    } catch (err) {
      expect((err as { code: string }).code).toBe('E_USAGE');
    }
  });
});

describe('flags', () => {
  it('--layers lists and ranges', () => {
    expect(parseLayerList('0,3,5')).toEqual([0, 3, 5]);
    expect(parseLayerList('4-6, 1')).toEqual([1, 4, 5, 6]);
    expect(() => parseLayerList('a')).toThrowError(/--layers/);
    expect(() => parseLayerList('3-1')).toThrowError(/backwards/);
    expect(() => checkLayers([0, 2], 2)).toThrowError(expect.objectContaining({ code: 'E_LAYER_RANGE' }));
    expect(checkLayers([1, 0, 1], 2)).toEqual([0, 1]);
  });

  it('--by and --what', () => {
    expect(parsePatchBy('layer,pos,head')).toBe('layer_pos_head');
    expect(parsePatchBy('layer_head')).toBe('layer_head');
    expect(() => parsePatchBy('pos')).toThrowError(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => checkWhatBy('resid_pre', 'layer_head')).toThrowError(expect.objectContaining({ code: 'E_ARGUMENT' }));
    expect(() => checkWhatBy('head_z', 'layer_pos_head')).not.toThrow();
    expect(parseHeadsQuery('cls')).toBe('cls');
    expect(parseHeadsQuery('12')).toBe(12);
    expect(() => parseHeadsQuery('x')).toThrow();
  });

  it('--target: index, exact label, case-insensitive label; errors are E_ARGUMENT', () => {
    const info = { labels: ['cat', 'dog', 'Coffee', '7'], nClasses: 4 };
    expect(resolveClass('2', info)).toBe(2);
    expect(resolveClass(1, info)).toBe(1);
    expect(resolveClass('dog', info)).toBe(1);
    expect(resolveClass('coffee', info)).toBe(2);
    expect(resolveClass('7', info)).toBe(3);
    expect(() => resolveClass('zebra', info)).toThrowError(
      expect.objectContaining({ code: 'E_ARGUMENT', message: expect.stringMatching(/unknown --target 'zebra'/) }),
    );
    expect(() => resolveClass('9', info, 'baseline')).toThrowError(
      expect.objectContaining({ code: 'E_ARGUMENT', message: expect.stringMatching(/--baseline 9 is out of range/) }),
    );
  });
});

describe('head statistics', () => {
  const grid = [2, 2] as const; // 4 patches + class token
  const nPos = 5;

  it('uniform attention: entropy ln(5), class-token share 1/5', () => {
    const a = new Float32Array(nPos * nPos).fill(1 / nPos);
    const s = headStats(a, 0, nPos, grid, 1, 0);
    expect(s.entropy).toBeCloseTo(Math.log(5), 6);
    expect(s.meanEntropy).toBeCloseTo(Math.log(5), 6);
    expect(s.clsAttention).toBeCloseTo(0.2, 6);
    expect(s.selfShare).toBeCloseTo(0.2, 6);
    // each patch query: distances 0, 1, 1, sqrt2 to the four patches, equally weighted
    expect(s.meanDistance).toBeCloseTo((2 + Math.SQRT2) / 4, 6);
  });

  it('attention to self: zero entropy and distance, self share 1', () => {
    const a = new Float32Array(nPos * nPos);
    for (let i = 0; i < nPos; i++) a[i * nPos + i] = 1;
    const s = headStats(a, 0, nPos, grid, 1, 3);
    expect(s.entropy).toBe(0);
    expect(s.selfShare).toBe(1);
    expect(s.meanDistance).toBe(0);
    expect(s.queryAttention).toEqual([0, 0, 0, 1, 0]);
  });

  it('patch 0 attending to patch 3 (the opposite corner): distance sqrt 2', () => {
    const a = new Float32Array(nPos * nPos);
    for (let q = 0; q < nPos; q++) a[q * nPos + 4] = 1;
    const s = headStats(a, 0, nPos, grid, 1, 1);
    // queries 1..4 (patches 0..3) -> patch 3: distances sqrt2, 1, 1, 0
    expect(s.meanDistance).toBeCloseTo((Math.SQRT2 + 2) / 4, 6);
    expect(entropy([0.5, 0.5])).toBeCloseTo(Math.log(2), 9);
  });
});

describe('helpers', () => {
  it('pearson', () => {
    expect(pearson([1, 2, 3], [2, 4, 6])).toBeCloseTo(1, 12);
    expect(pearson([1, 2, 3], [3, 2, 1])).toBeCloseTo(-1, 12);
    expect(pearson([1, 1, 1], [1, 2, 3])).toBeNull();
  });

  it('seeded choices repeat', () => {
    const a = seededRandom(7);
    const b = seededRandom(7);
    expect([a(), a(), a()]).toEqual([b(), b(), b()]);
  });

  it('names for records and figures', () => {
    expect(sanitizeName('a b/c?.png')).toBe('a_b_c_.png');
    expect(itemId('/x/y/cat.png')).toMatch(/^cat\.png-[0-9a-f]{8}$/);
    expect(itemId('/x/y/cat.png')).not.toBe(itemId('/x/z/cat.png'));
    expect(itemId('/x/t.npy[1]')).not.toBe(itemId('/x/t.npy[2]'));
    const names = figureNames(['/a/cat.png', '/b/cat.png', '/a/dog.jpg']);
    expect(names.get('/a/dog.jpg')).toBe('dog');
    expect(names.get('/a/cat.png')).toMatch(/^cat-[0-9a-f]{6}$/);
    expect(names.get('/a/cat.png')).not.toBe(names.get('/b/cat.png'));
  });

  it('ticks', () => {
    expect(niceTicks(0, 1, 5)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(indexTicks(197, 12).length).toBeLessThanOrEqual(12);
    expect(indexTicks(4, 12)).toEqual([0, 1, 2, 3]);
  });

  it('a report that does not match its schema is E_INTERNAL', () => {
    expect(() => validateReport('dla', { schemaVersion: 1, command: 'dla' })).toThrowError(expect.objectContaining({ code: 'E_INTERNAL' }));
  });
});
