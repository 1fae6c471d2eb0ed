/**
 * Image overlays: the input image as the model sees it (same resize / crop geometry, shown at
 * e.g. 224 px) with a semi-transparent heatmap over its patch grid. Grid = imageSize / patchSize;
 * values are per patch, row-major; the class token is not part of a spatial map.
 */
import sharp from 'sharp';

import { oneSharpAtATime } from '../image/sharp-lock.js';

import { preprocessGeometry, type PreprocessSpec } from '../image/preprocess.js';
import { colorOf, drawColorbar, type ColorScale } from './colormap.js';
import { Svg, textWidth } from './svg.js';

export interface DisplayImage {
  /** PNG data URL. */
  dataUrl: string;
  width: number;
  height: number;
}

export interface DisplaySource {
  /** The image file, when the input was an image (else the pixels are shown). */
  path?: string;
  /** The preprocessed image, CHW float32. */
  pixels: Float32Array;
  /** [height, width] the model takes. */
  imageSize: readonly number[];
  spec?: PreprocessSpec;
}

async function fromFile(path: string, spec: PreprocessSpec, width: number, height: number): Promise<Buffer | undefined> {
  const oriented = await oneSharpAtATime(() =>
    sharp(path, { autoOrient: true }).removeAlpha().toColourspace('srgb').png().toBuffer({ resolveWithObject: true }),
  );
  const ow = oriented.info.width;
  const oh = oriented.info.height;
  const { resizedWidth: rw, resizedHeight: rh, left, top, width: cw, height: ch } = preprocessGeometry(spec, ow, oh);
  if (left < 0 || top < 0) return undefined; // the crop pads with zeros: show the pixels instead
  const sx = ow / rw;
  const sy = oh / rh;
  const region = {
    left: Math.min(ow - 1, Math.max(0, Math.round(left * sx))),
    top: Math.min(oh - 1, Math.max(0, Math.round(top * sy))),
    width: Math.max(1, Math.round(cw * sx)),
    height: Math.max(1, Math.round(ch * sy)),
  };
  region.width = Math.min(region.width, ow - region.left);
  region.height = Math.min(region.height, oh - region.top);
  return oneSharpAtATime(() =>
    sharp(oriented.data).extract(region).resize(width, height, { fit: 'fill', kernel: 'lanczos3' }).png().toBuffer(),
  );
}

async function fromPixels(src: DisplaySource, width: number, height: number): Promise<Buffer> {
  const [h, w] = src.imageSize as [number, number];
  const hw = h * w;
  const rgb = new Uint8Array(hw * 3);
  const norm = src.spec?.normalize;
  const rescale = src.spec?.rescaleFactor ?? null;
  let lo = Infinity;
  let hi = -Infinity;
  if (!norm && rescale === null)
    for (const v of src.pixels.subarray(0, 3 * hw)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < hw; p++) {
      const x = src.pixels[c * hw + p] ?? 0;
      let v: number;
      if (norm || rescale !== null) {
        const unnorm = norm ? x * norm.std[c]! + norm.mean[c]! : x;
        // ViViT-style `offset`: 1 was subtracted after rescaling; add it back first.
        v = (unnorm + (src.spec?.offset ?? 0)) / (rescale ?? 1 / 255);
      } else {
        v = ((x - lo) / (hi - lo || 1)) * 255;
      }
      rgb[p * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
    }
  }
  return oneSharpAtATime(() =>
    sharp(rgb, { raw: { width: w, height: h, channels: 3 } })
      .resize(width, height, { fit: 'fill', kernel: 'cubic' })
      .png()
      .toBuffer(),
  );
}

/** The input image at display size (`size` px wide), as the model sees it. */
export async function displayImage(src: DisplaySource, size = 224): Promise<DisplayImage> {
  const [h, w] = src.imageSize as [number, number];
  const width = size;
  const height = Math.max(1, Math.round((size * h) / w));
  let png: Buffer | undefined;
  if (src.path && src.spec) {
    try {
      png = await fromFile(src.path, src.spec, width, height);
    } catch {
      png = undefined;
    }
  }
  png ??= await fromPixels(src, width, height);
  return { dataUrl: `data:image/png;base64,${png.toString('base64')}`, width, height };
}

export interface OverlayPanel {
  title?: string;
  /** gridRows × gridCols values, row-major. */
  values: ArrayLike<number>;
  /** Patch index to outline (e.g. the query patch). */
  mark?: number;
}

export interface OverlayFigure {
  title: string;
  subtitle?: string;
  image: DisplayImage;
  /** [rows, cols] of the patch grid. */
  grid: readonly [number, number];
  panels: OverlayPanel[];
  scale: ColorScale;
  colorbarLabel: string;
  /** Panels per figure row (default min(panels, 6)). */
  columns?: number;
  /** Width of each panel in px (default 224, or smaller for many panels). */
  panelSize?: number;
  /** Labels left of each figure row / above each figure column (e.g. L0.. / H0..). */
  rowNames?: string[];
  colNames?: string[];
  /** Heatmap opacity (default 0.6). */
  alpha?: number;
}

export function overlaySvg(fig: OverlayFigure): Svg {
  const perRow = fig.columns ?? Math.min(fig.panels.length, 6);
  const nRows = Math.ceil(fig.panels.length / perRow);
  const pw = fig.panelSize ?? (perRow <= 4 ? 224 : 160);
  const ph = Math.round((pw * fig.image.height) / fig.image.width);
  const [gh, gw] = fig.grid;
  const cw = pw / gw;
  const chh = ph / gh;
  const left = fig.rowNames ? 40 : 14;
  const colHead = fig.colNames ? 18 : 0;
  const top = (fig.subtitle ? 54 : 38) + colHead;
  const titleH = fig.panels.some((p) => p.title) ? 16 : 0;
  const gap = pw < 100 ? 6 : 12;
  const width = Math.max(
    left + perRow * pw + (perRow - 1) * gap + 96,
    textWidth(fig.title, 15) + 24,
    textWidth(fig.subtitle ?? '', 11) + 24,
  );
  const barH = Math.max(textWidth(fig.colorbarLabel, 11) + 16, Math.min(nRows * (ph + titleH + gap) - gap - titleH, 320));
  const height = Math.max(top + nRows * (ph + titleH) + (nRows - 1) * gap + 16, top + titleH + barH + 16);
  const svg = new Svg(width, height);
  svg.def(
    `<image id="img" x="0" y="0" width="${pw}" height="${ph}" href="${fig.image.dataUrl}" xlink:href="${fig.image.dataUrl}" preserveAspectRatio="none"/>`,
  );
  svg.text(12, 22, fig.title, { size: 15, weight: 'bold' });
  if (fig.subtitle) svg.text(12, 40, fig.subtitle, { size: 11, fill: '#555' });
  const alpha = fig.alpha ?? 0.6;
  fig.colNames?.forEach((name, c) => {
    if (c < perRow) svg.text(left + c * (pw + gap) + pw / 2, top - 6, name, { size: 11, anchor: 'middle', weight: 'bold' });
  });
  fig.panels.forEach((panel, k) => {
    const r = Math.floor(k / perRow);
    const x = left + (k % perRow) * (pw + gap);
    const y = top + r * (ph + titleH + gap) + titleH;
    if (panel.title) svg.text(x + pw / 2, y - 4, panel.title, { size: pw < 100 ? 9 : 11, anchor: 'middle' });
    if (k % perRow === 0 && fig.rowNames?.[r] !== undefined) {
      svg.text(left - 8, y + ph / 2, fig.rowNames[r]!, { size: 11, anchor: 'end', baseline: 'middle', weight: 'bold' });
    }
    svg.raw(`<use href="#img" xlink:href="#img" x="${x}" y="${y}"/>`);
    const cells: string[] = [];
    for (let i = 0; i < gh; i++) {
      for (let j = 0; j < gw; j++) {
        const v = panel.values[i * gw + j] ?? 0;
        cells.push(
          `<rect x="${(x + j * cw).toFixed(2)}" y="${(y + i * chh).toFixed(2)}" width="${(cw + 0.2).toFixed(2)}" height="${(chh + 0.2).toFixed(2)}" fill="${colorOf(fig.scale, v)}"/>`,
        );
      }
    }
    svg.raw(`<g fill-opacity="${alpha}">${cells.join('')}</g>`);
    if (panel.mark !== undefined && panel.mark >= 0 && panel.mark < gh * gw) {
      const mi = Math.floor(panel.mark / gw);
      const mj = panel.mark % gw;
      svg.rect(x + mj * cw, y + mi * chh, cw, chh, 'none', 'stroke="#ff00ff" stroke-width="2"');
    }
    svg.rect(x, y, pw, ph, 'none', 'stroke="#444" stroke-width="0.6"');
  });
  const barTop = top + titleH;
  drawColorbar(svg, left + perRow * pw + (perRow - 1) * gap + 18, barTop, barH, fig.scale, fig.colorbarLabel);
  return svg;
}
