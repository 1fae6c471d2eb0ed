/** The terminal summary of `prisma ablate`: per input, the metric before and after, or a sweep's most negative heads. */
import type { AblateAnalysis, AblateSweepAnalysis, AblationMode } from '../../analysis/ablate.js';
import type { BatchReport } from '../commands/analysis.js';
import { ablationMetricName } from '../../report/figures/ablate.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';

export type AblateItem = (Omit<AblateAnalysis, 'input'> & { kind: 'specs' }) | (Omit<AblateSweepAnalysis, 'input'> & { kind: 'sweep' });

export type AblateReport = BatchReport<
  'ablate',
  AblateItem,
  {
    ablate: string[];
    sweep: string | null;
    mode: AblationMode;
    reference: string | null;
    seed: number;
    target: string | null;
    baseline: string | null;
    fastLinear: boolean;
  }
>;

export function ablateSummary(r: AblateReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(`${bold(res.input, color)}  ${ablationMetricName(res)} before ${fmt(res.before.value)} (p=${fmt(res.before.prob, 2)})`);
    if (res.kind === 'specs') {
      lines.push(
        `  ${res.mode} ${res.ablations.map((x) => x.spec).join(', ')}: after ${fmt(res.after.value)} (p=${fmt(res.after.prob, 2)}), effect ${fmt(res.effect)}`,
      );
    } else {
      const nH = res.dims[1]!;
      const order = res.effects.map((v, i) => ({ v, i })).sort((a, b) => a.v - b.v);
      const name = (i: number) => `L${Math.floor(i / nH)}H${i % nH}`;
      lines.push(
        `  ${res.mode} sweep over ${res.effects.length} heads; most negative: ${order
          .slice(0, 3)
          .map((o) => `${name(o.i)} ${fmt(o.v)}`)
          .join(', ')}`,
      );
    }
    if (res.resample) lines.push(`  resampled from ${res.resample.reference} (seed ${res.resample.seed})`);
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}
