/**
 * Activation patching over many pairs: the same patching sweep on every (clean, corrupt) pair, and
 * per effect (layer × position / head) the mean and spread of the normalised values over pairs.
 *
 * Each pair goes through the single-pair engine (`patch`, one native sweep batched over that pair's
 * patched runs), so a pair's values are exactly those of `prisma patch --clean A --corrupt B`: the
 * engine batches patched runs, not pairs, and a pair's sweep already fills a batch on any model
 * larger than the fixtures, so stacking pairs would add memory, not speed.
 *
 * Pairs whose clean and corrupt metrics differ little (patchWarnings' first test) would divide by
 * almost nothing; they are listed but left out of the mean and spread.
 */
import { readFileSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';

import { PrismaError } from '../errors.js';
import { IMAGE_EXTENSIONS } from '../image/pixels.js';
import type { Model } from '../model.js';
import type { PatchBy, PatchWhat } from '../native.js';
import type { PixelBatch } from '../tensor.js';
import type { ClassInfo, ClassRef } from './common.js';
import { patch, SMALL_DENOMINATOR, type PatchMethod, type PatchOptions } from './patch.js';

export interface PatchPair {
  clean: string | PixelBatch;
  corrupt: string | PixelBatch;
  /** This pair's target / baseline (e.g. the colours of a clevr-lite edit); else the options' or the defaults. */
  target?: ClassRef;
  baseline?: ClassRef | null;
}

export interface PairSummary {
  clean: string;
  corrupt: string;
  target: ClassInfo;
  baseline: ClassInfo | null;
  metric: 'logit' | 'logit_diff';
  cleanMetric: number;
  corruptMetric: number;
  denominator: number;
  warnings: string[];
  /** False when the pair is left out of the mean (clean and corrupt differ little). */
  included: boolean;
}

export interface PatchEffectStats {
  method: 'exact' | 'attribution';
  axes: string[];
  dims: number[];
  layers: number[];
  /** Per effect (row-major over dims): mean of the included pairs' normalised values. */
  mean: number[];
  /** Their sample standard deviation (n - 1; 0 for one pair). */
  std: number[];
  /** Pairs in the mean. */
  n: number;
}

export interface PatchPairsAnalysis {
  what: PatchWhat;
  by: PatchBy;
  method: PatchMethod;
  layers: number[];
  pairs: PairSummary[];
  exact?: PatchEffectStats;
  attribution?: PatchEffectStats;
}

class Welford {
  n = 0;
  mean: Float64Array;
  m2: Float64Array;
  constructor(size: number) {
    this.mean = new Float64Array(size);
    this.m2 = new Float64Array(size);
  }
  add(xs: readonly number[]): void {
    this.n += 1;
    for (let i = 0; i < xs.length; i++) {
      const d = xs[i]! - this.mean[i]!;
      this.mean[i]! += d / this.n;
      this.m2[i]! += d * (xs[i]! - this.mean[i]!);
    }
  }
  std(): number[] {
    return Array.from(this.m2, (v) => (this.n > 1 ? Math.sqrt(v / (this.n - 1)) : 0));
  }
}

const labelOf = (x: string | PixelBatch) => (typeof x === 'string' ? x : (x.labels[0] ?? 'pixels'));

/** Patching over `pairs`; `onPair(done, total)` after each. */
export async function patchPairs(
  model: Model,
  pairs: readonly PatchPair[],
  options: PatchOptions,
  onPair?: (done: number, total: number) => void,
): Promise<PatchPairsAnalysis> {
  if (pairs.length === 0) throw new PrismaError('E_INPUT', 'no pairs to patch');
  const stats: Partial<Record<'exact' | 'attribution', { acc: Welford; meta: Omit<PatchEffectStats, 'mean' | 'std' | 'n'> }>> = {};
  const summaries: PairSummary[] = [];
  let head: { what: PatchWhat; by: PatchBy; method: PatchMethod; layers: number[] } | undefined;
  for (const [i, pair] of pairs.entries()) {
    const target = pair.target ?? options.target;
    const baseline = pair.baseline !== undefined ? pair.baseline : options.baseline;
    const a = await patch(model, pair.clean, pair.corrupt, {
      ...options,
      ...(target === undefined ? {} : { target }),
      ...(baseline === undefined ? {} : { baseline }),
    });
    head ??= { what: a.what, by: a.by, method: a.method, layers: a.layers };
    const scale = Math.abs(a.denominator);
    // Left out: the metric's own warning says the normalised values are ratios of small numbers.
    const included = !a.warnings.some((w) => w.startsWith('clean and corrupted differ little')) && scale > 0;
    summaries.push({
      clean: labelOf(pair.clean),
      corrupt: labelOf(pair.corrupt),
      target: a.target,
      baseline: a.baseline,
      metric: a.metric,
      cleanMetric: a.clean.metric.value,
      corruptMetric: a.corrupt.metric.value,
      denominator: a.denominator,
      warnings: a.warnings,
      included,
    });
    for (const m of [a.exact, a.attribution]) {
      if (!m) continue;
      stats[m.method] ??= {
        acc: new Welford(m.normalised.length),
        meta: { method: m.method, axes: m.axes, dims: m.dims, layers: m.layers },
      };
      if (included) stats[m.method]!.acc.add(m.normalised);
    }
    onPair?.(i + 1, pairs.length);
  }
  const finish = (s: (typeof stats)['exact']): PatchEffectStats | undefined =>
    s && { ...s.meta, mean: Array.from(s.acc.mean), std: s.acc.std(), n: s.acc.n };
  const exact = finish(stats.exact);
  const attribution = finish(stats.attribution);
  return {
    ...head!,
    pairs: summaries,
    ...(exact ? { exact } : {}),
    ...(attribution ? { attribution } : {}),
  };
}

export { SMALL_DENOMINATOR };

const isImage = (name: string) => (IMAGE_EXTENSIONS as readonly string[]).includes(extname(name).toLowerCase());

/**
 * Pairs from two folders, matched by file name: every image in `cleanDir` with a file of the same
 * name in `corruptDir`. Names on one side only are an E_INPUT error listing them (a silent
 * mismatch would average the wrong pairs).
 */
export async function pairsFromFolders(cleanDir: string, corruptDir: string): Promise<PatchPair[]> {
  const list = async (d: string) => (await readdir(d)).filter(isImage).sort();
  const a = await list(cleanDir);
  const b = new Set(await list(corruptDir));
  const onlyClean = a.filter((n) => !b.has(n));
  const onlyCorrupt = [...b].filter((n) => !a.includes(n));
  if (onlyClean.length + onlyCorrupt.length > 0 || a.length === 0) {
    const say = (xs: string[]) => `${xs.slice(0, 3).join(', ')}${xs.length > 3 ? `, … (${xs.length})` : ''}`;
    throw new PrismaError(
      'E_INPUT',
      a.length === 0
        ? `no images in ${cleanDir}`
        : `--clean ${cleanDir} and --corrupt ${corruptDir} do not hold the same file names${onlyClean.length ? `; only in --clean: ${say(onlyClean)}` : ''}${onlyCorrupt.length ? `; only in --corrupt: ${say(onlyCorrupt)}` : ''}`,
      { hint: 'pairs are matched by file name: give both folders the same names' },
    );
  }
  return a.map((n) => ({ clean: join(cleanDir, n), corrupt: join(corruptDir, n) }));
}

/**
 * Pairs from a JSON-lines file: `prisma dataset clevr-lite --edit`'s edits.jsonl (`source` = the
 * clean image, `image` = the edited one, `from` / `to` = the colours, used as target / baseline when
 * the model has classes of those names), or lines `{clean, corrupt[, target, baseline]}`. Paths are
 * relative to the file's folder.
 */
export function pairsFromJsonl(file: string, classNames: readonly string[] = []): PatchPair[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new PrismaError('E_INPUT', `pairs file not found: ${file}`);
  }
  const base = dirname(resolve(file));
  const at = (p: unknown, line: number, key: string): string => {
    if (typeof p !== 'string' || p === '') throw new PrismaError('E_INPUT', `${file}:${line}: '${key}' must be a path`);
    return resolve(base, p);
  };
  const pairs: PatchPair[] = [];
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    if (raw.trim() === '') continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      throw new PrismaError('E_INPUT', `${file}:${i + 1}: not a JSON line`);
    }
    const edit = o['source'] !== undefined;
    const pair: PatchPair = edit
      ? { clean: at(o['source'], i + 1, 'source'), corrupt: at(o['image'], i + 1, 'image') }
      : { clean: at(o['clean'], i + 1, 'clean'), corrupt: at(o['corrupt'], i + 1, 'corrupt') };
    const target = edit ? o['from'] : o['target'];
    const baseline = edit ? o['to'] : o['baseline'];
    const known = (c: unknown) => typeof c === 'number' || (typeof c === 'string' && (!edit || classNames.includes(c)));
    if (known(target)) pair.target = target as ClassRef;
    if (known(baseline)) pair.baseline = baseline as ClassRef;
    pairs.push(pair);
  }
  if (pairs.length === 0) throw new PrismaError('E_INPUT', `${file} holds no pairs`);
  return pairs;
}

/** True for a folder (pairs by name) rather than one image. */
export function isFolder(path: string): boolean {
  return statSync(path, { throwIfNoEntry: false })?.isDirectory() === true;
}

export const pairName = (p: PairSummary) => basename(p.clean);
