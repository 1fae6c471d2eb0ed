/**
 * A minimal PNG reader for label masks, where each pixel is a small integer: 8-bit (or lower)
 * greyscale, or palette images read as their palette *indices* (PASCAL VOC's SegmentationObject
 * masks are palette PNGs whose index is the object id). A general decoder (sharp) would turn a
 * palette image into RGB colours and lose the ids, so this reads the index plane itself.
 * Supported: grey and palette at bit depths 1/2/4/8, and 8-bit grey+alpha, RGB and RGBA whose
 * pixels are grey (R = G = B; alpha ignored), without interlacing.
 */
import { inflateSync } from 'node:zlib';

import { PrismaError } from '../errors.js';

export interface IndexImage {
  width: number;
  height: number;
  /** One value per pixel, row-major. */
  data: Uint8Array;
  colourType: 'grey' | 'palette' | 'rgb';
}

/** Samples per pixel for each PNG colour type. */
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function fail(source: string, message: string): PrismaError {
  return new PrismaError('E_DATASET', `mask ${source}: ${message}`, {
    hint: 'masks must be greyscale or palette PNGs (or RGB with R = G = B) whose value is the object index (0 background, 255 ignored)',
  });
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

export function decodeIndexPng(png: Uint8Array, source = 'mask'): IndexImage {
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  if (buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) throw fail(source, 'not a PNG file');
  let width = 0;
  let height = 0;
  let depth = 0;
  let colourType = -1;
  let interlace = 0;
  const idat: Buffer[] = [];
  let i = 8;
  while (i + 12 <= buf.length) {
    const len = buf.readUInt32BE(i);
    const type = buf.toString('latin1', i + 4, i + 8);
    const body = buf.subarray(i + 8, i + 8 + len);
    if (body.length !== len) throw fail(source, 'truncated file');
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      depth = body[8]!;
      colourType = body[9]!;
      interlace = body[12]!;
    } else if (type === 'IDAT') {
      idat.push(body);
    } else if (type === 'IEND') {
      break;
    }
    i += 12 + len;
  }
  if (width === 0 || height === 0) throw fail(source, 'no image header');
  const channels = CHANNELS[colourType];
  if (channels === undefined) throw fail(source, `unknown colour type ${colourType}`);
  if (channels === 1 ? ![1, 2, 4, 8].includes(depth) : depth !== 8) throw fail(source, `bit depth ${depth} is not supported (use 8)`);
  if (interlace !== 0) throw fail(source, 'interlaced PNGs are not supported');
  let raw: Buffer;
  try {
    raw = inflateSync(Buffer.concat(idat));
  } catch (err) {
    throw fail(source, `corrupt image data (${(err as Error).message})`);
  }
  const stride = Math.ceil((width * depth * channels) / 8);
  const bpp = Math.max(1, (depth * channels) / 8);
  if (raw.length < height * (stride + 1)) throw fail(source, 'truncated image data');
  const rows = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const off = y * stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? rows[off + x - bpp]! : 0;
      const b = y > 0 ? rows[off - stride + x]! : 0;
      const c = x >= bpp && y > 0 ? rows[off - stride + x - bpp]! : 0;
      let v = src[x]!;
      switch (filter) {
        case 0:
          break;
        case 1:
          v += a;
          break;
        case 2:
          v += b;
          break;
        case 3:
          v += (a + b) >> 1;
          break;
        case 4:
          v += paeth(a, b, c);
          break;
        default:
          throw fail(source, `unknown row filter ${filter}`);
      }
      rows[off + x] = v & 0xff;
    }
  }
  const data = new Uint8Array(width * height);
  const perByte = 8 / depth;
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (channels > 1) {
        const p = y * stride + x * channels;
        const v = rows[p]!;
        if (channels >= 3 && (rows[p + 1] !== v || rows[p + 2] !== v)) {
          throw fail(source, `pixel (${x}, ${y}) is not grey (R = G = B), so it holds no object index`);
        }
        data[y * width + x] = v;
      } else if (depth === 8) {
        data[y * width + x] = rows[y * stride + x]!;
      } else {
        const byte = rows[y * stride + Math.floor(x / perByte)]!;
        const shift = 8 - depth * ((x % perByte) + 1);
        data[y * width + x] = (byte >> shift) & mask;
      }
    }
  }
  return { width, height, data, colourType: colourType === 3 ? 'palette' : colourType === 0 || colourType === 4 ? 'grey' : 'rgb' };
}
