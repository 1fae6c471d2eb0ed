/**
 * Figures of `prisma patch`: per patching method, the normalised effect as layer × position /
 * layer × head matrices and as overlays on the clean image; with both methods, exact against
 * attribution as a scatter plot.
 */
import { firstPatchToken, patchGrid, slicePanels, timeSlices } from '../../analysis/common.js';
import type { PatchAnalysis, PatchMatrix, PatchMethod } from '../../analysis/patch.js';
import type { Model } from '../../model.js';
import type { PatchBy } from '../../native.js';
import type { PixelBatch } from '../../tensor.js';
import { scatterSvg } from '../chart.js';
import { scaleFor } from '../colormap.js';
import type { Figure, FigureWriter } from '../figures.js';
import { matrixSvg, type MatrixPanel } from '../heatmap.js';
import { displayImage, overlaySvg } from '../overlay.js';
import { fmt } from '../svg.js';

const NOTES: Record<PatchBy, string> = {
  layer_pos:
    'patch-<method>-overlay.png: normalised effect per layer over the clean image (class token value in each panel title); patch-<method>-matrix.png: layer x position (position 0 = class token)',
  layer_head: 'patch-<method>-heads.png: layer x head matrix of the normalised effect',
  layer_pos_head:
    'patch-<method>-matrix.png: one layer x position panel per head; patch-<method>-overlay.png: per layer, the normalised effect summed over heads, over the clean image',
};

/** What the figures of a run patched `by` with `method` show (written into the report with or without --out). */
export function patchFigureNotes(by: PatchBy, method: PatchMethod): string[] {
  return [NOTES[by].replace(/<method>/g, method === 'both' ? '{exact,attribution}' : method)];
}

/** The clean image (its file when it is an image, else its pixels) under each method's figures. */
export interface PatchFigureInput {
  clean: PixelBatch;
  cleanPath: string | undefined;
}

/** Every figure of a patching analysis, and the notes that describe them. */
export async function patchFigures(
  model: Model,
  a: PatchAnalysis,
  input: PatchFigureInput,
  w: FigureWriter,
): Promise<{ figures: Figure[]; notes: string[] }> {
  const figures: Figure[] = [];
  const notes = patchFigureNotes(a.by, a.method);
  for (const m of [a.exact, a.attribution]) if (m) figures.push(...(await matrixFigures(model, a, m, input, w)));
  if (a.exact && a.attribution) {
    const attribution = a.attribution;
    const pts = a.exact.normalised.map((v, i) => [v, attribution.normalised[i]!] as [number, number]);
    figures.push(
      await w.png(
        'patch-scatter.png',
        'patch-scatter',
        scatterSvg({
          title: `Exact vs attribution patching (${a.what})`,
          subtitle: `normalised effects, one point per ${a.by.replace(/_/g, ' x ')}; Pearson r = ${a.correlation === null || a.correlation === undefined ? 'undefined' : fmt(a.correlation)}`,
          xLabel: 'exact (normalised)',
          yLabel: 'attribution (normalised)',
          points: pts,
          diagonal: true,
        }),
      ),
    );
    notes.push('patch-scatter.png: exact vs attribution normalised effects, with y = x');
  }
  return { figures, notes };
}

async function matrixFigures(model: Model, a: PatchAnalysis, m: PatchMatrix, input: PatchFigureInput, w: FigureWriter): Promise<Figure[]> {
  const info = model.info;
  const metric = a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit diff`;
  const sub = `${m.method} patching of ${a.what} (clean -> corrupt); metric: ${metric}; normalised = (patched - corrupt) / ${fmt(a.denominator)}: 0 = corrupt (${fmt(a.corrupt.metric.value)}), 1 = clean (${fmt(a.clean.metric.value)})${a.warnings.length > 0 ? '; WARNING: see the warnings in report.json' : ''}`;
  const figures: Figure[] = [];
  const name = `patch-${m.method}`;
  const nL = m.layers.length;
  const first = firstPatchToken(info);
  const matrix = (file: string, kind: string, title: string, panels: MatrixPanel[], colLabel: string, columns?: number) =>
    w.png(
      `${name}-${file}.png`,
      kind,
      matrixSvg({
        title: `Patching ${a.what}: ${title} (${m.method})`,
        subtitle: sub,
        panels,
        rowLabel: 'layer',
        colLabel,
        rowNames: m.layers.map(String),
        scale: scaleFor(m.normalised, true),
        colorbarLabel: 'normalised effect',
        columns,
      }),
    );
  const overlay = async (perLayer: number[][], title: string) => {
    const image = await displayImage(
      {
        ...(input.cleanPath ? { path: input.cleanPath } : {}),
        pixels: input.clean.data,
        imageSize: info.imageSize,
        spec: await model.preprocessSpec().catch(() => undefined),
      },
      224,
    );
    return w.png(
      `${name}-overlay.png`,
      'patch-overlay',
      overlaySvg({
        title: `Patching ${a.what} ${title} (${m.method})`,
        subtitle: sub,
        image,
        grid: patchGrid(info),
        panels: perLayer.flatMap((vals, i) => slicePanels(info, vals, `L${m.layers[i]}${first ? ` cls=${fmt(perLayer[i]![0]!, 2)}` : ''}`)),
        scale: scaleFor(perLayer.flat(), true),
        colorbarLabel: 'normalised effect',
        columns: Math.min(nL * timeSlices(info), 6),
        panelSize: nL <= 4 ? 200 : 150,
      }),
    );
  };
  if (a.by === 'layer_pos') {
    const nPos = m.dims[1]!;
    const rows = m.layers.map((_, i) => m.normalised.slice(i * nPos, (i + 1) * nPos));
    figures.push(await overlay(rows, 'by layer and position'));
    const colLabel = first ? 'position (0 = class token, then patches row-major)' : 'position (patches, row-major)';
    figures.push(await matrix('matrix', 'patch-matrix', 'layer x position', [{ rows: nL, cols: nPos, values: m.normalised }], colLabel));
  } else if (a.by === 'layer_head') {
    const nH = m.dims[1]!;
    figures.push(await matrix('heads', 'patch-heads', 'layer x head', [{ rows: nL, cols: nH, values: m.normalised }], 'head'));
  } else {
    const [, nPos, nH] = m.dims as [number, number, number];
    const panels = Array.from({ length: nH }, (_, h) => {
      const values = new Float64Array(nL * nPos);
      for (let l = 0; l < nL; l++) for (let p = 0; p < nPos; p++) values[l * nPos + p] = m.normalised[(l * nPos + p) * nH + h]!;
      return { title: `head ${h}`, rows: nL, cols: nPos, values };
    });
    const title = 'layer x position, one panel per head';
    figures.push(await matrix('matrix', 'patch-matrix', title, panels, 'position (0 = class token)', Math.min(nH, nPos > 60 ? 2 : 4)));
    const summed = m.layers.map((_, l) =>
      Array.from({ length: nPos }, (_, p) => {
        let s = 0;
        for (let h = 0; h < nH; h++) s += m.normalised[(l * nPos + p) * nH + h]!;
        return s;
      }),
    );
    figures.push(await overlay(summed, 'by layer, position and head, summed over heads'));
  }
  return figures;
}
