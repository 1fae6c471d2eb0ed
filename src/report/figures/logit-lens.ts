/**
 * Figures of `prisma logit-lens`, per input: the target's probability and rank by depth (one line
 * per residual site), and the target logit at every patch, one panel per layer and site.
 */
import { patchGrid, slicePanels } from '../../analysis/common.js';
import type { LogitLensResult } from '../../analysis/lens.js';
import type { LensSite, ModelInfo } from '../../native.js';
import { lineChartSvg, PALETTE } from '../chart.js';
import { scaleFor } from '../colormap.js';
import type { Figure, FigureInput, FigureWriter } from '../figures.js';
import { displayImage, overlaySvg } from '../overlay.js';
import { fmt } from '../svg.js';

/** Where each site sits on the depth axis: resid_pre of layer l at l, resid_mid at l+0.5, resid_post at l+1. */
const SITE_OFFSET: Record<LensSite, number> = { resid_pre: 0, resid_mid: 0.5, resid_post: 1 };

export async function lensFigures(
  info: ModelInfo,
  item: FigureInput,
  r: LogitLensResult,
  sites: LensSite[],
  w: FigureWriter,
): Promise<Figure[]> {
  const t = `${r.target.label} (${r.target.index})`;
  const series = (pick: (l: LogitLensResult['layers'][number]) => number) =>
    sites.map((site, k) => ({
      name: site,
      color: PALETTE[k]!,
      points: r.layers.filter((l) => l.site === site).map((l) => [l.layer + SITE_OFFSET[site], pick(l)] as [number, number]),
    }));
  const chart = lineChartSvg({
    title: `Logit lens: ${item.name}`,
    subtitle: `target ${t}${r.targetSource === 'top1' ? ", the model's top-1" : ''}; x = depth (resid_pre of layer l at l, resid_mid at l+0.5, resid_post at l+1)`,
    xLabel: 'depth (layer boundary)',
    xDomain: [0, info.nLayers],
    xTicks: Array.from({ length: info.nLayers + 1 }, (_, i) => ({ value: i, label: String(i) })),
    panels: [
      { title: 'target probability', yLabel: 'probability', yDomain: [0, 1], series: series((l) => l.targetProb) },
      {
        title: 'target rank (0 = top)',
        yLabel: 'rank',
        invertY: true,
        integerY: true,
        yDomain: [0, Math.max(1, info.nClasses - 1)],
        series: series((l) => l.targetRank),
      },
    ],
  });
  const figures = [await w.png(`lens-${item.name}-prob.png`, 'lens-prob', chart)];

  const image = await displayImage(item.display, 224);
  const panels = sites.flatMap((site) =>
    r.layers.filter((l) => l.site === site).flatMap((l) => slicePanels(info, l.posTargetLogit, `L${l.layer} p=${fmt(l.targetProb, 2)}`)),
  );
  const scale = scaleFor(
    panels.flatMap((p) => p.values),
    true,
  );
  const overlay = overlaySvg({
    title: `Logit lens per patch: ${item.name}`,
    subtitle: `target ${t} logit at each patch (class token excluded); rows: ${sites.join(', ')}; columns: layers`,
    image,
    grid: patchGrid(info),
    panels,
    scale,
    colorbarLabel: `${r.target.label} logit`,
    columns: info.nLayers,
    panelSize: info.nLayers <= 4 ? 180 : info.nLayers <= 8 ? 132 : 104,
    rowNames: sites.length > 1 ? sites.map((s) => s.replace('resid_', '')) : undefined,
  });
  figures.push(await w.png(`lens-${item.name}-patches.png`, 'lens-patches', overlay));
  return figures;
}
