/** Writing figures (PNG from SVG, and HTML) under a report folder; each write is atomic. */
import { join } from 'node:path';

import type { DisplaySource } from './overlay.js';
import { svgToPng, type Svg } from './svg.js';
import { writeFileAtomic, writePngAtomic } from './write.js';

export interface Figure {
  /** Relative to the report folder, with '/' separators. */
  path: string;
  /** What it shows (e.g. 'lens-prob', 'heads-grid'). */
  kind: string;
  /** 'png' | 'html' */
  format: 'png' | 'html';
  /** Pixel size (PNG only). */
  width?: number;
  height?: number;
}

/** One input of a figure: its label, a short name for file names, and how to show it. */
export interface FigureInput {
  input: string;
  name: string;
  display: DisplaySource;
}

export class FigureWriter {
  constructor(readonly outDir: string) {}

  async png(path: string, kind: string, svg: Svg | string): Promise<Figure> {
    const { png, width, height } = await svgToPng(svg);
    await writePngAtomic(join(this.outDir, ...path.split('/')), png);
    return { path, kind, format: 'png', width, height };
  }

  async html(path: string, kind: string, html: string): Promise<Figure> {
    await writeFileAtomic(join(this.outDir, ...path.split('/')), html);
    return { path, kind, format: 'html' };
  }
}

/** A file-name-safe version of `text` (letters, digits, '.', '_', '-'), at most `max` characters. */
export function sanitizeName(text: string, max = 64): string {
  const s = text
    .replace(/[^A-Za-z0-9._-]+/g, '_')
    .replace(/^[._]+/, '')
    .slice(0, max);
  return s.length > 0 ? s : 'input';
}
