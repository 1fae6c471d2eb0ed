/**
 * A small SVG builder for figures. Figures are SVG strings rendered to PNG by sharp (librsvg),
 * so they need no browser and no canvas library. Text uses DejaVu Sans when installed (any
 * sans-serif otherwise).
 */
import sharp from 'sharp';

import { oneSharpAtATime } from '../image/sharp-lock.js';

import { PrismaError } from '../errors.js';

export const FONT = "'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif";

export function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Coordinates with at most 2 decimals (keeps the SVG small). */
export function n(v: number): string {
  return String(Math.round(v * 100) / 100);
}

/** Approximate rendered width of `text` in DejaVu Sans at `size` px (for layout). */
export function textWidth(text: string, size = 12): number {
  return Math.ceil(text.length * size * 0.6);
}

/** A number for a tick or a label: 3 significant digits, no exponent for ordinary magnitudes. */
export function fmt(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(digits - 1).replace('e+', 'e');
  const s = Number(v.toPrecision(digits)).toString();
  return s === '-0' ? '0' : s;
}

export interface TextOptions {
  size?: number;
  anchor?: 'start' | 'middle' | 'end';
  weight?: 'normal' | 'bold';
  fill?: string;
  /** Degrees, around (x, y). */
  rotate?: number;
  baseline?: 'auto' | 'middle' | 'hanging';
}

export class Svg {
  private readonly parts: string[] = [];
  private readonly defs: string[] = [];

  constructor(
    readonly width: number,
    readonly height: number,
    background = '#ffffff',
  ) {
    this.parts.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="${background}"/>`);
  }

  raw(s: string): this {
    this.parts.push(s);
    return this;
  }

  def(s: string): this {
    this.defs.push(s);
    return this;
  }

  rect(x: number, y: number, w: number, h: number, fill: string, extra = ''): this {
    this.parts.push(
      `<rect x="${n(x)}" y="${n(y)}" width="${n(Math.max(0, w))}" height="${n(Math.max(0, h))}" fill="${fill}"${extra ? ` ${extra}` : ''}/>`,
    );
    return this;
  }

  line(x1: number, y1: number, x2: number, y2: number, stroke = '#333', width = 1, extra = ''): this {
    this.parts.push(
      `<line x1="${n(x1)}" y1="${n(y1)}" x2="${n(x2)}" y2="${n(y2)}" stroke="${stroke}" stroke-width="${width}"${extra ? ` ${extra}` : ''}/>`,
    );
    return this;
  }

  polyline(points: [number, number][], stroke: string, width = 2, extra = ''): this {
    const pts = points.map(([x, y]) => `${n(x)},${n(y)}`).join(' ');
    this.parts.push(
      `<polyline points="${pts}" fill="none" stroke="${stroke}" stroke-width="${width}" stroke-linejoin="round"${extra ? ` ${extra}` : ''}/>`,
    );
    return this;
  }

  circle(x: number, y: number, r: number, fill: string, extra = ''): this {
    this.parts.push(`<circle cx="${n(x)}" cy="${n(y)}" r="${n(r)}" fill="${fill}"${extra ? ` ${extra}` : ''}/>`);
    return this;
  }

  text(x: number, y: number, content: string, o: TextOptions = {}): this {
    const attrs = [`x="${n(x)}"`, `y="${n(y)}"`, `font-family="${FONT}"`, `font-size="${o.size ?? 12}"`, `fill="${o.fill ?? '#222'}"`];
    if (o.anchor && o.anchor !== 'start') attrs.push(`text-anchor="${o.anchor}"`);
    if (o.weight === 'bold') attrs.push('font-weight="bold"');
    if (o.baseline && o.baseline !== 'auto') attrs.push(`dominant-baseline="${o.baseline === 'middle' ? 'central' : 'hanging'}"`);
    if (o.rotate) attrs.push(`transform="rotate(${o.rotate} ${n(x)} ${n(y)})"`);
    this.parts.push(`<text ${attrs.join(' ')}>${esc(content)}</text>`);
    return this;
  }

  toString(): string {
    const defs = this.defs.length > 0 ? `<defs>${this.defs.join('')}</defs>` : '';
    return `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="${this.width}" height="${this.height}" viewBox="0 0 ${this.width} ${this.height}">${defs}${this.parts.join('')}</svg>`;
  }
}

export interface Png {
  png: Buffer;
  width: number;
  height: number;
}

/** Render an SVG document to PNG with sharp (librsvg). */
export async function svgToPng(svg: Svg | string): Promise<Png> {
  const text = svg.toString();
  try {
    const { data, info } = await oneSharpAtATime(() =>
      sharp(Buffer.from(text), { density: 72, limitInputPixels: false })
        .flatten({ background: '#ffffff' })
        .png({ compressionLevel: 6 })
        .toBuffer({ resolveWithObject: true }),
    );
    return { png: data, width: info.width, height: info.height };
  } catch (err) {
    throw new PrismaError('E_INTERNAL', `cannot render a figure: ${(err as Error).message}`, { cause: err });
  }
}

/** "Nice" tick values covering [min, max] (about `count` of them). */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [0];
  if (min === max) {
    const d = Math.abs(min) > 0 ? Math.abs(min) * 0.5 : 1;
    min -= d;
    max += d;
  }
  const span = max - min;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) ?? 10 * mag;
  const first = Math.ceil(min / step - 1e-9) * step;
  const out: number[] = [];
  for (let v = first; v <= max + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  return out;
}

/** Extend [min, max] to nice tick boundaries. */
export function niceDomain(min: number, max: number, count = 5): [number, number] {
  if (min === max) {
    const d = Math.abs(min) > 0 ? Math.abs(min) * 0.5 : 1;
    return [min - d, max + d];
  }
  const span = max - min;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) ?? 10 * mag;
  return [Math.floor(min / step + 1e-9) * step, Math.ceil(max / step - 1e-9) * step];
}

/** Integer ticks 0..n-1, thinned to at most `max` labels (always keeping 0). */
export function indexTicks(count: number, max = 12): number[] {
  if (count <= 0) return [];
  const steps = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 250, 500, 1000];
  const step = steps.find((s) => Math.ceil(count / s) <= max) ?? Math.ceil(count / max);
  const out: number[] = [];
  for (let i = 0; i < count; i += step) out.push(i);
  return out;
}
