/** The terminal summary of `prisma patch`: the metric on both images and, per method, the largest effect. */
import { largestEffect } from '../../analysis/patch.js';
import type { PatchAnalysis, PatchMethod } from '../../analysis/patch.js';
import type { PatchPairsAnalysis } from '../../analysis/patch-pairs.js';
import type { PatchBy, PatchWhat } from '../../native.js';
import type { ReportBase } from '../commands/analysis.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';

export interface PatchReport extends ReportBase {
  command: 'patch';
  options: {
    clean: string | null;
    corrupt: string | null;
    pairs: string | null;
    what: PatchWhat;
    by: PatchBy;
    method: PatchMethod;
    target: string | null;
    baseline: string | null;
    layers: number[] | null;
    fastLinear: boolean;
  };
  result: PatchAnalysis & { figureNotes: string[] };
}

/** The report of a run over many pairs (schemas/patch.schema.json, `pairsResult`). */
export interface PatchPairsReport extends Omit<PatchReport, 'result'> {
  result: PatchPairsAnalysis & { figureNotes: string[] };
}

export function patchSummary(r: PatchReport, color: boolean): string {
  const a = r.result;
  const metric = a.metric === 'logit' ? `logit[${a.target.label}]` : `logit[${a.target.label}] - logit[${a.baseline!.label}]`;
  const lines = [
    bold(`patch ${a.what} by ${a.by.replace(/_/g, ',')} (${a.method})`, color),
    `  metric ${metric}: clean ${fmt(a.clean.metric.value)} (top-1 ${a.clean.top1.label}), corrupt ${fmt(a.corrupt.metric.value)} (top-1 ${a.corrupt.top1.label})`,
  ];
  for (const m of [a.exact, a.attribution]) {
    if (!m) continue;
    const largest = largestEffect(m);
    const where = largest.at.map(({ axis, index }) => `${axis} ${index}`).join(', ');
    lines.push(
      `  ${m.method}: ${m.patchedRuns} patched runs in ${m.batchedForwards} batched forwards; largest normalised effect ${fmt(largest.value)} at ${where} (effects are (patched - corrupt) / ${fmt(a.denominator)})`,
    );
  }
  if (a.correlation !== undefined)
    lines.push(`  correlation exact vs attribution (normalised): ${a.correlation === null ? 'undefined' : fmt(a.correlation)}`);
  if (r.figures.length > 0) lines.push(`  wrote report.json and ${r.figures.length} figures`);
  return `${lines.join('\n')}\n`;
}

/** Over many pairs: how many were averaged, and per method the effect with the largest mean (with its spread). */
export function patchPairsSummary(r: PatchPairsReport, color: boolean): string {
  const a = r.result;
  const used = a.pairs.filter((p) => p.included).length;
  const lines = [
    bold(`patch ${a.what} by ${a.by.replace(/_/g, ',')} (${a.method}) over ${a.pairs.length} pairs`, color),
    `  ${used} pairs in the mean${used < a.pairs.length ? ` (${a.pairs.length - used} left out: clean and corrupt differ little)` : ''}`,
  ];
  for (const m of [a.exact, a.attribution]) {
    if (!m || m.n === 0) continue;
    const largest = largestEffect({ ...m, value: m.mean, prob: [], normalised: m.mean, batchedForwards: 0, patchedRuns: 0 });
    const flat = m.mean.indexOf(largest.value);
    const where = largest.at.map(({ axis, index }) => `${axis} ${index}`).join(', ');
    lines.push(
      `  ${m.method}: largest mean normalised effect ${fmt(largest.value)} ± ${fmt(m.std[flat] ?? 0)} (sd over ${m.n} pairs) at ${where}`,
    );
  }
  if (r.figures.length > 0) lines.push(`  wrote report.json and ${r.figures.length} figures`);
  return `${lines.join('\n')}\n`;
}
