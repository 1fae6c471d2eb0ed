/** The terminal summary of `prisma heads`: per input, a table of each head's statistics. */
import type { HeadsAnalysis, HeadsQuery } from '../../analysis/heads.js';
import type { BatchReport } from '../commands/analysis.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';

export type HeadsReport = BatchReport<'heads', HeadsAnalysis, { query: HeadsQuery; layers: number[] | null }>;

export function headsSummary(r: HeadsReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(`${bold(res.input, color)}  query ${res.query.kind === 'cls' ? 'class token' : `patch ${res.query.patch}`}`);
    // mean->cls / mean->reg: attention to the class token / registers averaged over ALL queries
    // (docs/commands.md); the chosen query's own attention to cls is queryAttention[0] in the report.
    const regs = res.heads.some((h) => h.registerAttention !== null);
    lines.push(`  head     entropy  mean-ent  mean->cls${regs ? '  mean->reg' : ''}  distance  self`);
    for (const h of res.heads) {
      lines.push(
        `  L${h.layer}H${h.head}`.padEnd(10) +
          `${fmt(h.entropy).padStart(7)}  ${fmt(h.meanEntropy).padStart(8)}  ${(h.clsAttention === null ? '-' : fmt(h.clsAttention)).padStart(9)}${regs ? `  ${(h.registerAttention === null ? '-' : fmt(h.registerAttention)).padStart(9)}` : ''}  ${fmt(h.meanDistance).padStart(8)}  ${fmt(h.selfShare).padStart(5)}`,
      );
    }
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}
