/**
 * Pillow's `Image.resize` for 8-bit RGB, ported so that our pixels are the reference's pixels: the
 * slow Hugging Face image processors, timm and open_clip (torchvision on PIL images) all resize with
 * Pillow (`reducing_gap=None`, the whole image as the box), so the same arithmetic gives the same
 * bytes. Port of Pillow's `src/libImaging/Resample.c` (unchanged from Pillow 9 to 13): a
 * separable convolution, horizontal pass first, with the filter's support widened by the scale
 * factor when shrinking (antialiasing), coefficients normalised to sum 1 and rounded to 22-bit
 * fixed point, each pass rounded and clipped to uint8. NEAREST is Pillow's `ImagingScaleAffine`
 * (source coordinate accumulated from scale / 2 in steps of scale, truncated).
 *
 * sharp/libvips is not used for this: its `resize` shrinks by a box filter first for large factors
 * and centres upsampling differently, which moved photos by up to 59 levels (mean 8 on a 20x14
 * image upsampled to 32x32; mean 1.5 on a 128x128 photo shrunk 4x) against Pillow.
 */
import type { Resample } from './spec.js';

interface Filter {
  support: number;
  weight: (x: number) => number;
}

// Pillow's constants are C floats where it writes `0.54f`.
const F054 = Math.fround(0.54);
const F046 = Math.fround(0.46);

function sinc(x: number): number {
  if (x === 0.0) return 1.0;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

const FILTERS: Record<Exclude<Resample, 'nearest'>, Filter> = {
  box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: {
    support: 1.0,
    weight: (x) => {
      const a = Math.abs(x);
      return a < 1.0 ? 1.0 - a : 0.0;
    },
  },
  hamming: {
    support: 1.0,
    weight: (x) => {
      const a = Math.abs(x);
      if (a === 0.0) return 1.0;
      if (a >= 1.0) return 0.0;
      const px = a * Math.PI;
      return (Math.sin(px) / px) * (F054 + F046 * Math.cos(px));
    },
  },
  bicubic: {
    support: 2.0,
    weight: (x) => {
      const a = -0.5;
      const t = Math.abs(x);
      if (t < 1.0) return ((a + 2.0) * t - (a + 3.0)) * t * t + 1;
      if (t < 2.0) return (((t - 5) * t + 8) * t - 4) * a;
      return 0.0;
    },
  },
  lanczos: { support: 3.0, weight: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0) },
};

const PRECISION_BITS = 32 - 8 - 2;

interface Coeffs {
  ksize: number;
  /** Per output pixel: first input index and count. */
  bounds: Int32Array;
  /** Fixed-point weights, `ksize` per output pixel. */
  kk: Int32Array;
}

/** Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, inSize). */
function coeffs(inSize: number, outSize: number, filter: Filter): Coeffs {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    k.fill(0);
    for (let x = 0; x < xmax; x++) {
      const w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x]! / ww : k[x]!;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Horizontal pass over rows [y0, y0 + rows) of `src` (width `w`), giving `outW` columns. */
function horizontal(src: Uint8Array, w: number, y0: number, rows: number, outW: number, c: Coeffs): Uint8Array {
  const out = new Uint8Array(outW * rows * 3);
  const { ksize, bounds, kk } = c;
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < rows; yy++) {
    const row = (yy + y0) * w * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2]!;
      const xmax = bounds[xx * 2 + 1]!;
      const kb = xx * ksize;
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let x = 0; x < xmax; x++) {
        const kx = kk[kb + x]!;
        const p = row + (x + xmin) * 3;
        s0 += src[p]! * kx;
        s1 += src[p + 1]! * kx;
        s2 += src[p + 2]! * kx;
      }
      const d = (yy * outW + xx) * 3;
      out[d] = clip8(s0);
      out[d + 1] = clip8(s1);
      out[d + 2] = clip8(s2);
    }
  }
  return out;
}

/** Vertical pass: `outH` rows from `src` (width `w`). */
function vertical(src: Uint8Array, w: number, outH: number, c: Coeffs, shift: number): Uint8Array {
  const out = new Uint8Array(w * outH * 3);
  const { ksize, bounds, kk } = c;
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2]! - shift;
    const ymax = bounds[yy * 2 + 1]!;
    const kb = yy * ksize;
    for (let xx = 0; xx < w; xx++) {
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let y = 0; y < ymax; y++) {
        const ky = kk[kb + y]!;
        const p = ((y + ymin) * w + xx) * 3;
        s0 += src[p]! * ky;
        s1 += src[p + 1]! * ky;
        s2 += src[p + 2]! * ky;
      }
      const d = (yy * w + xx) * 3;
      out[d] = clip8(s0);
      out[d + 1] = clip8(s1);
      out[d + 2] = clip8(s2);
    }
  }
  return out;
}

/** Pillow's `ImagingScaleAffine`: source coordinates accumulated step by step from scale / 2, truncated. */
function nearest(src: Uint8Array, w: number, h: number, outW: number, outH: number): Uint8Array {
  const out = new Uint8Array(outW * outH * 3);
  const xin = new Int32Array(outW);
  for (let x = 0, xo = (w / outW) * 0.5; x < outW; x++, xo += w / outW) xin[x] = Math.min(w - 1, Math.trunc(xo));
  for (let y = 0, yo = (h / outH) * 0.5; y < outH; y++, yo += h / outH) {
    const yi = Math.min(h - 1, Math.trunc(yo));
    for (let x = 0; x < outW; x++) {
      const s = (yi * w + xin[x]!) * 3;
      const d = (y * outW + x) * 3;
      out[d] = src[s]!;
      out[d + 1] = src[s + 1]!;
      out[d + 2] = src[s + 2]!;
    }
  }
  return out;
}

/** Interleaved 8-bit RGB `w` x `h` resized to `outW` x `outH` exactly as Pillow's `Image.resize(..., resample)`. */
export function resamplePil(src: Uint8Array, w: number, h: number, outW: number, outH: number, resample: Resample): Uint8Array {
  if (outW === w && outH === h) return src;
  if (resample === 'nearest') return nearest(src, w, h, outW, outH);
  const filter = FILTERS[resample];
  const needH = outW !== w;
  const needV = outH !== h;
  const ch = coeffs(w, outW, filter);
  const cv = coeffs(h, outH, filter);
  // Only the source rows the vertical pass reads go through the horizontal pass (as Pillow does).
  const first = cv.bounds[0]!;
  const last = cv.bounds[outH * 2 - 2]! + cv.bounds[outH * 2 - 1]!;
  let cur = src;
  let curW = w;
  let shift = 0;
  if (needH) {
    cur = horizontal(src, w, needV ? first : 0, needV ? last - first : h, outW, ch);
    curW = outW;
    shift = needV ? first : 0;
  }
  return needV ? vertical(cur, curW, outH, cv, shift) : cur;
}
