/** The terminal summary of `prisma logit-lens`: per input and site, the target's probability and rank by layer. */
import type { LogitLensResult, PatchScore } from '../../analysis/lens.js';
import type { LensSite } from '../../native.js';
import type { BatchReport } from '../commands/analysis.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';

export type LogitLensItem = Omit<LogitLensResult, 'input'> & { patchLabels?: PatchScore[] | null };

export type LogitLensReport = BatchReport<
  'logit-lens',
  LogitLensItem,
  { sites: LensSite[]; target: string | null; topK: number; patchLabels?: string | null },
  /** With --patch-labels: per layer, over every labelled patch of every image. */
  { patchLabelAccuracy?: PatchScore[] | null }
>;

export function logitLensSummary(r: LogitLensReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(
      `${bold(`${res.input}`, color)}  target ${res.target.label} (${res.target.index})${res.targetSource === 'top1' ? ', own top-1' : ''}`,
    );
    for (const site of r.options.sites) {
      const ls = res.layers.filter((l) => l.site === site);
      lines.push(
        `  ${site.padEnd(10)} p: ${ls.map((l) => fmt(l.targetProb, 2)).join(' ')}   rank: ${ls.map((l) => l.targetRank).join(' ')}`,
      );
    }
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}
