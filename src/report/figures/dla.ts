/**
 * Figures of `prisma dla`, per input: every component's contribution as bars grouped by layer, the
 * layer × head matrix, and with per-position results the top four heads split by source patch.
 */
import { firstPatchToken, patchGrid, slicePanels } from '../../analysis/common.js';
import type { DlaAnalysis } from '../../analysis/dla.js';
import type { ModelInfo } from '../../native.js';
import { barChartSvg } from '../chart.js';
import { scaleFor } from '../colormap.js';
import type { Figure, FigureInput, FigureWriter } from '../figures.js';
import { matrixSvg } from '../heatmap.js';
import { displayImage, overlaySvg } from '../overlay.js';
import { fmt } from '../svg.js';

export const KIND_COLORS: Record<string, string> = {
  embed: '#7f7f7f',
  pos_embed: '#bcbd22',
  attn_bias: '#9467bd',
  head: '#1f77b4',
  mlp: '#ff7f0e',
};

export async function dlaFigures(info: ModelInfo, item: FigureInput, a: DlaAnalysis, w: FigureWriter): Promise<Figure[]> {
  const metric = a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit difference`;
  const sub = `target ${metric} = ${fmt(a.logit)} = sum of components ${fmt(a.sumOfComponents)} + constant ${fmt(a.constant)}`;
  const comps = a.components;
  const groups: { label: string; start: number; end: number }[] = [];
  comps.forEach((c, i) => {
    const label = c.layer === null ? 'emb' : `L${c.layer}`;
    const last = groups[groups.length - 1];
    if (last && last.label === label) last.end = i + 1;
    else groups.push({ label, start: i, end: i + 1 });
  });
  const kinds = [...new Set(comps.map((c) => c.kind))];
  const figures = [
    await w.png(
      `dla-${item.name}-components.png`,
      'dla-components',
      barChartSvg({
        title: `Direct logit attribution: ${item.name}`,
        subtitle: sub,
        yLabel: `contribution to ${metric}`,
        bars: comps.map((c) => ({ label: c.name, value: c.value, color: KIND_COLORS[c.kind] ?? '#333' })),
        legend: kinds.map((k) => ({ name: k, color: KIND_COLORS[k] ?? '#333' })),
        groups,
      }),
    ),
    await w.png(
      `dla-${item.name}-heads.png`,
      'dla-heads',
      matrixSvg({
        title: `Direct logit attribution per head: ${item.name}`,
        subtitle: sub,
        panels: [{ rows: info.nLayers, cols: info.nHeads, values: a.heads }],
        rowLabel: 'layer',
        colLabel: 'head',
        scale: scaleFor(a.heads, true),
        colorbarLabel: `contribution to ${a.target.label}`,
      }),
    ),
  ];
  if (a.headPositions) {
    const positions = a.headPositions;
    const nPos = positions.length / (info.nLayers * info.nHeads);
    const first = firstPatchToken(info);
    const top = a.heads
      .map((v, i) => ({ v, i }))
      .sort((x, y) => Math.abs(y.v) - Math.abs(x.v))
      .slice(0, 4);
    const panels = top.flatMap(({ v, i }) => {
      const l = Math.floor(i / info.nHeads);
      const h = i % info.nHeads;
      const row = positions.slice(i * nPos, (i + 1) * nPos);
      return slicePanels(info, row, `L${l}H${h} total ${fmt(v, 2)}${first ? `, cls ${fmt(row[0]!, 2)}` : ''}`);
    });
    figures.push(
      await w.png(
        `dla-${item.name}-top-heads.png`,
        'dla-top-heads',
        overlaySvg({
          title: `Top heads by |DLA|, split by source patch: ${item.name}`,
          subtitle: `each head's contribution to ${metric} through the value of each source patch (class token in the title)`,
          image: await displayImage(item.display, 224),
          grid: patchGrid(info),
          panels,
          scale: scaleFor(
            panels.flatMap((p) => p.values),
            true,
          ),
          colorbarLabel: 'contribution',
          columns: 4,
          panelSize: 200,
        }),
      ),
    );
  }
  return figures;
}
