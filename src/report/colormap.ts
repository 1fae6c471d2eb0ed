/**
 * Colour maps and the colour bar. Sequential (viridis) for probabilities and attention;
 * diverging (blue - white - red, centred on 0) for signed values such as patching effects and
 * direct logit attribution.
 */
import { fmt, niceTicks, type Svg } from './svg.js';

type Rgb = [number, number, number];

// viridis, 9 stops (matplotlib)
const VIRIDIS: Rgb[] = [
  [68, 1, 84],
  [71, 45, 123],
  [59, 82, 139],
  [44, 114, 142],
  [33, 145, 140],
  [39, 173, 129],
  [92, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];
// RdBu reversed (matplotlib RdBu_r), 11 stops: negative blue, 0 white, positive red
const RDBU: Rgb[] = [
  [5, 48, 97],
  [33, 102, 172],
  [67, 147, 195],
  [146, 197, 222],
  [209, 229, 240],
  [247, 247, 247],
  [253, 219, 199],
  [244, 165, 130],
  [214, 96, 77],
  [178, 24, 43],
  [103, 0, 31],
];

function hex([r, g, b]: Rgb): string {
  const h = (v: number) =>
    Math.round(Math.max(0, Math.min(255, v)))
      .toString(16)
      .padStart(2, '0');
  return `#${h(r)}${h(g)}${h(b)}`;
}

function interp(stops: Rgb[], t: number): string {
  if (!Number.isFinite(t)) return '#bbbbbb';
  const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const a = stops[i]!;
  const b = stops[i + 1]!;
  return hex([a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f]);
}

/** Sequential colour for t in [0, 1]. */
export function sequential(t: number): string {
  return interp(VIRIDIS, t);
}

/** Diverging colour for t in [-1, 1] (0 = white). */
export function diverging(t: number): string {
  return interp(RDBU, (t + 1) / 2);
}

/** How values map to colours: sequential over [min, max], or diverging over [-absMax, absMax]. */
export interface ColorScale {
  kind: 'sequential' | 'diverging';
  min: number;
  max: number;
}

/** A scale for `values`: diverging and symmetric around 0 when `signed`, else sequential. */
export function scaleFor(values: Iterable<number>, signed: boolean, fixed?: { min?: number; max?: number }): ColorScale {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (!Number.isFinite(v)) continue;
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (lo === Infinity) {
    lo = 0;
    hi = 1;
  }
  if (signed) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    return { kind: 'diverging', min: -m, max: m };
  }
  const min = fixed?.min ?? lo;
  let max = fixed?.max ?? hi;
  if (max <= min) max = min + 1;
  return { kind: 'sequential', min, max };
}

export function colorOf(scale: ColorScale, v: number): string {
  if (scale.kind === 'diverging') return diverging(v / (scale.max || 1));
  return sequential((v - scale.min) / (scale.max - scale.min || 1));
}

/** A vertical colour bar with ticks at (x, y), `h` tall, and a rotated label on its right. */
export function drawColorbar(svg: Svg, x: number, y: number, h: number, scale: ColorScale, label: string, w = 14): void {
  const steps = 64;
  for (let i = 0; i < steps; i++) {
    const t = 1 - (i + 0.5) / steps;
    const v = scale.min + t * (scale.max - scale.min);
    svg.rect(x, y + (i * h) / steps, w, h / steps + 0.6, colorOf(scale, v));
  }
  svg.rect(x, y, w, h, 'none', 'stroke="#444" stroke-width="0.8"');
  const ticks = niceTicks(scale.min, scale.max, 5).filter((v) => v >= scale.min - 1e-12 && v <= scale.max + 1e-12);
  for (const v of ticks) {
    const ty = y + h * (1 - (v - scale.min) / (scale.max - scale.min || 1));
    svg.line(x + w, ty, x + w + 4, ty, '#444', 1);
    svg.text(x + w + 6, ty, fmt(v), { size: 10, baseline: 'middle' });
  }
  svg.text(x + w + 46, y + h / 2, label, { size: 11, anchor: 'middle', rotate: 90 });
}
