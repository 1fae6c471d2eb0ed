/** The terminal summary of `prisma dla`: per input, the logit, the sum check and the largest components. */
import type { DlaAnalysis, DlaCheck } from '../../analysis/dla.js';
import type { BatchReport } from '../commands/analysis.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';

export type DlaItem = DlaAnalysis & { check: DlaCheck };

export type DlaReport = BatchReport<'dla', DlaItem, { target: string | null; baseline: string | null; perPosition: boolean }>;

export function dlaSummary(r: DlaReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    const top = [...res.components].sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, 5);
    lines.push(
      `${bold(res.input, color)}  ${res.metric === 'logit' ? `logit[${res.target.label}]` : `logit[${res.target.label}] - logit[${res.baseline!.label}]`} = ${fmt(res.logit)}`,
    );
    lines.push(
      `  sum of components ${fmt(res.sumOfComponents)} + constant ${fmt(res.constant)} = ${fmt(res.check.sumPlusConstant)} (${res.check.ok ? 'ok' : 'MISMATCH'})`,
    );
    lines.push(`  largest: ${top.map((c) => `${c.name} ${fmt(c.value)}`).join(', ')}`);
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}
