/**
 * Figures of `prisma ablate`, per input: the metric before and after ablating the given
 * selections, or the layer × head matrix of effects of a head sweep.
 */
import type { AblateAnalysis, AblateSweepAnalysis } from '../../analysis/ablate.js';
import { barChartSvg } from '../chart.js';
import { scaleFor } from '../colormap.js';
import type { Figure, FigureInput, FigureWriter } from '../figures.js';
import { matrixSvg } from '../heatmap.js';
import { fmt } from '../svg.js';

/** The metric in words: 'cat logit' or 'cat - dog logit diff'. */
export function ablationMetricName(a: { metric: string; target: { label: string }; baseline: { label: string } | null }): string {
  return a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit diff`;
}

export async function ablateSweepFigures(item: FigureInput, a: AblateSweepAnalysis, w: FigureWriter): Promise<Figure[]> {
  const [nL, nH] = a.dims as [number, number];
  const replaced =
    a.mode === 'zero'
      ? 'zeroed'
      : a.mode === 'mean'
        ? 'replaced by its reference mean'
        : `taken from ${a.resample?.reference ?? 'a reference image'}`;
  return [
    await w.png(
      `ablate-${item.name}-heads.png`,
      'ablate-heads',
      matrixSvg({
        title: `Ablating each head (${a.mode}): ${item.name}`,
        subtitle: `change of the ${ablationMetricName(a)} (before: ${fmt(a.before.value)}) when hook_z of that head is ${replaced}`,
        panels: [{ rows: nL, cols: nH, values: a.effects }],
        rowLabel: 'layer',
        colLabel: 'head',
        scale: scaleFor(a.effects, true),
        colorbarLabel: 'effect (after - before)',
      }),
    ),
  ];
}

export async function ablateFigures(item: FigureInput, a: AblateAnalysis, w: FigureWriter): Promise<Figure[]> {
  return [
    await w.png(
      `ablate-${item.name}-effect.png`,
      'ablate-effect',
      barChartSvg({
        title: `Ablation (${a.mode}): ${item.name}`,
        subtitle: `${a.ablations.map((x) => x.spec).join('; ')}: effect ${fmt(a.effect)}`,
        yLabel: ablationMetricName(a),
        bars: [
          { label: 'before', value: a.before.value, color: '#1f77b4' },
          { label: 'after', value: a.after.value, color: '#d62728' },
        ],
        legend: [
          { name: `before (p=${fmt(a.before.prob, 2)})`, color: '#1f77b4' },
          { name: `after (p=${fmt(a.after.prob, 2)})`, color: '#d62728' },
        ],
      }),
    ),
  ];
}
