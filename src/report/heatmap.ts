/** Matrix heatmaps (layer × head, layer × position, ...) with axes, ticks and a colour bar. */
import { colorOf, drawColorbar, type ColorScale } from './colormap.js';
import { fmt, indexTicks, Svg, textWidth } from './svg.js';

export interface MatrixPanel {
  title?: string;
  rows: number;
  cols: number;
  /** Row-major, rows × cols. */
  values: ArrayLike<number>;
}

export interface MatrixFigure {
  title: string;
  subtitle?: string;
  panels: MatrixPanel[];
  rowLabel: string;
  colLabel: string;
  /** Tick text for each row / column (default: the index). */
  rowNames?: string[];
  colNames?: string[];
  scale: ColorScale;
  colorbarLabel: string;
  /** Panels per figure row (default: all in one row, at most 4). */
  columns?: number;
}

const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, v));

export function matrixSvg(fig: MatrixFigure): Svg {
  const { rows, cols } = fig.panels[0] ?? { rows: 1, cols: 1 };
  const perRow = fig.columns ?? Math.min(4, fig.panels.length);
  const nRows = Math.ceil(fig.panels.length / perRow);
  const maxPlotW = perRow === 1 ? 900 : Math.max(200, Math.floor(1200 / perRow));
  const cellW = clamp(Math.floor(maxPlotW / cols), 2, 56);
  const cellH = clamp(Math.floor((perRow === 1 ? 420 : 260) / rows), 6, 36);
  const plotW = Math.max(cellW * cols, 1);
  const plotH = cellH * rows;
  const left = 62;
  const top = fig.subtitle ? 56 : 40;
  const panelTitle = fig.panels.some((p) => p.title) ? 20 : 0;
  const gapX = 60;
  const gapY = 52 + panelTitle;
  const cellWidthTotal = perRow * plotW + (perRow - 1) * gapX;
  const width = Math.max(left + cellWidthTotal + 110, 360, textWidth(fig.title, 15) + 24, textWidth(fig.subtitle ?? '', 11) + 24);
  const barH = Math.max(plotH, textWidth(fig.colorbarLabel, 11) + 16, 80);
  const height = Math.max(top + nRows * (plotH + panelTitle) + (nRows - 1) * (gapY - panelTitle) + 56, top + panelTitle + barH + 16);
  const svg = new Svg(width, height);
  svg.text(12, 22, fig.title, { size: 15, weight: 'bold' });
  if (fig.subtitle) svg.text(12, 42, fig.subtitle, { size: 11, fill: '#555' });
  const annotate = cellW >= 34 && cellH >= 16 && rows * cols <= 400;
  const rowTicks = indexTicks(rows, Math.max(2, Math.floor(plotH / 14)));
  const colTicks = indexTicks(cols, Math.max(2, Math.floor(plotW / 28)));

  fig.panels.forEach((p, k) => {
    const px = left + (k % perRow) * (plotW + gapX);
    const py = top + Math.floor(k / perRow) * (plotH + gapY) + panelTitle;
    if (p.title) svg.text(px + plotW / 2, py - 7, p.title, { size: 12, anchor: 'middle', weight: 'bold' });
    for (let r = 0; r < p.rows; r++) {
      for (let c = 0; c < p.cols; c++) {
        const v = p.values[r * p.cols + c]!;
        svg.rect(px + c * cellW, py + r * cellH, cellW + 0.3, cellH + 0.3, colorOf(fig.scale, v));
        if (annotate) {
          const t =
            fig.scale.kind === 'diverging'
              ? Math.abs(v) / (fig.scale.max || 1)
              : (v - fig.scale.min) / (fig.scale.max - fig.scale.min || 1);
          const dark = fig.scale.kind === 'diverging' ? t > 0.6 : t < 0.55;
          svg.text(px + (c + 0.5) * cellW, py + (r + 0.5) * cellH, fmt(v, 2), {
            size: 9,
            anchor: 'middle',
            baseline: 'middle',
            fill: dark ? '#fff' : '#111',
          });
        }
      }
    }
    svg.rect(px, py, plotW, plotH, 'none', 'stroke="#444" stroke-width="0.8"');
    for (const r of rowTicks) {
      const y = py + (r + 0.5) * cellH;
      svg.line(px - 4, y, px, y, '#444');
      svg.text(px - 6, y, fig.rowNames?.[r] ?? String(r), { size: 10, anchor: 'end', baseline: 'middle' });
    }
    for (const c of colTicks) {
      const x = px + (c + 0.5) * cellW;
      svg.line(x, py + plotH, x, py + plotH + 4, '#444');
      svg.text(x, py + plotH + 15, fig.colNames?.[c] ?? String(c), { size: 10, anchor: 'middle' });
    }
    svg.text(px + plotW / 2, py + plotH + 32, fig.colLabel, { size: 11, anchor: 'middle' });
    svg.text(px - 40, py + plotH / 2, fig.rowLabel, { size: 11, anchor: 'middle', rotate: -90 });
  });
  drawColorbar(svg, left + cellWidthTotal + 24, top + panelTitle, barH, fig.scale, fig.colorbarLabel);
  return svg;
}
