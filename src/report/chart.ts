/** Charts: line charts in stacked panels sharing an x axis, bar charts and scatter plots. */
import { fmt, niceDomain, niceTicks, Svg, textWidth } from './svg.js';

export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

export interface LinePanel {
  title?: string;
  yLabel: string;
  series: Series[];
  /** Fixed y range (default: the data, extended to nice ticks). */
  yDomain?: [number, number];
  /** Draw larger values lower (e.g. ranks, where 0 is best). */
  invertY?: boolean;
  /** Only integer ticks on y. */
  integerY?: boolean;
}

export interface LineFigure {
  title: string;
  subtitle?: string;
  xLabel: string;
  xDomain: [number, number];
  xTicks: { value: number; label: string }[];
  panels: LinePanel[];
}

function legend(svg: Svg, x: number, y: number, items: { name: string; color: string }[]): void {
  items.forEach((it, i) => {
    const yy = y + i * 18;
    svg.rect(x, yy - 6, 14, 12, it.color);
    svg.text(x + 20, yy, it.name, { size: 11, baseline: 'middle' });
  });
}

export function lineChartSvg(fig: LineFigure): Svg {
  const left = 70;
  const plotW = 520;
  const plotH = 190;
  const top = fig.subtitle ? 60 : 44;
  const gap = 64;
  const names = [...new Map(fig.panels.flatMap((p) => p.series).map((s) => [s.name, s.color])).entries()].map(([name, color]) => ({
    name,
    color,
  }));
  const legendW = Math.max(...names.map((s) => s.name.length * 7 + 30), 80);
  const width = Math.max(left + plotW + 24 + legendW, textWidth(fig.subtitle ?? '', 11) + 24);
  const height = top + fig.panels.length * plotH + (fig.panels.length - 1) * gap + 50;
  const svg = new Svg(width, height);
  svg.text(12, 22, fig.title, { size: 15, weight: 'bold' });
  if (fig.subtitle) svg.text(12, 42, fig.subtitle, { size: 11, fill: '#555' });
  const [x0, x1] = fig.xDomain;
  const sx = (x: number) => left + ((x - x0) / (x1 - x0 || 1)) * plotW;

  fig.panels.forEach((panel, k) => {
    const py = top + k * (plotH + gap);
    const ys = panel.series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
    let [y0, y1] = panel.yDomain ?? niceDomain(Math.min(...ys, panel.integerY ? 0 : Infinity), Math.max(...ys));
    if (!Number.isFinite(y0) || !Number.isFinite(y1)) [y0, y1] = [0, 1];
    const sy = (y: number) => (panel.invertY ? py + ((y - y0) / (y1 - y0 || 1)) * plotH : py + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH);
    if (panel.title) svg.text(left, py - 8, panel.title, { size: 12, weight: 'bold' });
    let yt = niceTicks(y0, y1, 5).filter((v) => v >= y0 - 1e-9 && v <= y1 + 1e-9);
    if (panel.integerY) yt = yt.filter((v) => Number.isInteger(v));
    for (const v of yt) {
      svg.line(left, sy(v), left + plotW, sy(v), '#e4e4e4', 1);
      svg.text(left - 8, sy(v), fmt(v), { size: 10, anchor: 'end', baseline: 'middle' });
    }
    for (const t of fig.xTicks) {
      svg.line(sx(t.value), py, sx(t.value), py + plotH, '#f0f0f0', 1);
      svg.line(sx(t.value), py + plotH, sx(t.value), py + plotH + 4, '#444', 1);
      svg.text(sx(t.value), py + plotH + 16, t.label, { size: 10, anchor: 'middle' });
    }
    svg.line(left, py + plotH, left + plotW, py + plotH, '#444', 1);
    svg.line(left, py, left, py + plotH, '#444', 1);
    svg.text(left - 48, py + plotH / 2, panel.yLabel, { size: 11, anchor: 'middle', rotate: -90 });
    svg.text(left + plotW / 2, py + plotH + 34, fig.xLabel, { size: 11, anchor: 'middle' });
    for (const s of panel.series) {
      const pts = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y]) => [sx(x), sy(y)] as [number, number]);
      if (pts.length > 1) svg.polyline(pts, s.color, 2);
      for (const [x, y] of pts) svg.circle(x, y, 3.2, s.color, 'stroke="#fff" stroke-width="1"');
    }
  });
  legend(svg, left + plotW + 20, top + 8, names);
  return svg;
}

export interface Bar {
  label: string;
  value: number;
  color: string;
}

export interface BarFigure {
  title: string;
  subtitle?: string;
  yLabel: string;
  bars: Bar[];
  legend: { name: string; color: string }[];
  /** Spans of bars labelled under the axis (e.g. per layer) when bars are too many to label each. */
  groups?: { label: string; start: number; end: number }[];
}

export function barChartSvg(fig: BarFigure): Svg {
  const nb = fig.bars.length;
  const labelEach = nb <= 48;
  const barW = Math.max(3, Math.min(28, Math.floor(900 / Math.max(1, nb))));
  const plotW = Math.max(260, nb * barW);
  const plotH = 260;
  const left = 70;
  const top = fig.subtitle ? 60 : 44;
  const labelH = labelEach ? Math.min(110, 8 + 6.2 * Math.max(...fig.bars.map((b) => b.label.length), 1)) : 40;
  const legendW = Math.max(...fig.legend.map((s) => s.name.length * 7 + 30), 80);
  const width = Math.max(left + plotW + 30 + legendW, textWidth(fig.subtitle ?? '', 11) + 24);
  const height = top + plotH + labelH + 40;
  const svg = new Svg(width, height);
  svg.text(12, 22, fig.title, { size: 15, weight: 'bold' });
  if (fig.subtitle) svg.text(12, 42, fig.subtitle, { size: 11, fill: '#555' });
  const vals = fig.bars.map((b) => b.value).filter(Number.isFinite);
  const [y0, y1] = niceDomain(Math.min(0, ...vals), Math.max(0, ...vals));
  const sy = (y: number) => top + plotH - ((y - y0) / (y1 - y0 || 1)) * plotH;
  for (const v of niceTicks(y0, y1, 6).filter((v) => v >= y0 - 1e-9 && v <= y1 + 1e-9)) {
    svg.line(left, sy(v), left + plotW, sy(v), '#e6e6e6', 1);
    svg.text(left - 8, sy(v), fmt(v), { size: 10, anchor: 'end', baseline: 'middle' });
  }
  const step = plotW / Math.max(1, nb);
  fig.bars.forEach((b, i) => {
    const x = left + i * step + step * 0.12;
    const w = step * 0.76;
    const yv = sy(b.value);
    const y0p = sy(0);
    svg.rect(x, Math.min(yv, y0p), w, Math.abs(y0p - yv), b.color);
    if (labelEach) svg.text(x + w / 2, top + plotH + 8, b.label, { size: 9, anchor: 'end', rotate: -60, baseline: 'middle' });
  });
  svg.line(left, sy(0), left + plotW, sy(0), '#222', 1);
  svg.line(left, top, left, top + plotH, '#444', 1);
  if (!labelEach && fig.groups) {
    for (const g of fig.groups) {
      const xa = left + g.start * step;
      const xb = left + g.end * step;
      svg.line(xa + 1, top + plotH + 6, xb - 1, top + plotH + 6, '#666', 1);
      svg.text((xa + xb) / 2, top + plotH + 20, g.label, { size: 10, anchor: 'middle' });
    }
  }
  svg.text(left - 50, top + plotH / 2, fig.yLabel, { size: 11, anchor: 'middle', rotate: -90 });
  legend(svg, left + plotW + 22, top + 8, fig.legend);
  return svg;
}

export interface ScatterFigure {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  points: [number, number][];
  /** Draw the y = x line. */
  diagonal?: boolean;
}

export function scatterSvg(fig: ScatterFigure): Svg {
  const left = 70;
  const top = fig.subtitle ? 60 : 44;
  const size = 360;
  const svg = new Svg(Math.max(left + size + 40, textWidth(fig.subtitle ?? '', 11) + 24, textWidth(fig.title, 15) + 24), top + size + 56);
  svg.text(12, 22, fig.title, { size: 15, weight: 'bold' });
  if (fig.subtitle) svg.text(12, 42, fig.subtitle, { size: 11, fill: '#555' });
  const finite = fig.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const all = finite.flat();
  const [d0, d1] = niceDomain(Math.min(...all, 0), Math.max(...all, 1));
  const sx = (x: number) => left + ((x - d0) / (d1 - d0 || 1)) * size;
  const sy = (y: number) => top + size - ((y - d0) / (d1 - d0 || 1)) * size;
  for (const v of niceTicks(d0, d1, 6).filter((v) => v >= d0 - 1e-9 && v <= d1 + 1e-9)) {
    svg.line(left, sy(v), left + size, sy(v), '#eee', 1);
    svg.line(sx(v), top, sx(v), top + size, '#eee', 1);
    svg.text(left - 8, sy(v), fmt(v), { size: 10, anchor: 'end', baseline: 'middle' });
    svg.text(sx(v), top + size + 16, fmt(v), { size: 10, anchor: 'middle' });
  }
  svg.rect(left, top, size, size, 'none', 'stroke="#444" stroke-width="1"');
  if (fig.diagonal) svg.line(sx(d0), sy(d0), sx(d1), sy(d1), '#999', 1, 'stroke-dasharray="4 3"');
  for (const [x, y] of finite) svg.circle(sx(x), sy(y), 2.6, '#1f77b4', 'fill-opacity="0.7"');
  svg.text(left + size / 2, top + size + 36, fig.xLabel, { size: 11, anchor: 'middle' });
  svg.text(left - 50, top + size / 2, fig.yLabel, { size: 11, anchor: 'middle', rotate: -90 });
  return svg;
}
