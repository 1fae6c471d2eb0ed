/** Minimal safetensors reader for tests (F32, F16, BF16, I64, U8 -> Float32Array), independent of the addon. */
import { readFileSync } from 'node:fs';

export interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Float32Array;
}

export interface StFile {
  metadata: Record<string, string>;
  tensors: Map<string, StTensor>;
}

function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (m / 1024);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + m / 1024);
}

export function readSafetensors(path: string): StFile {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const base = 8 + n;
  const tensors = new Map<string, StTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = v as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const bytes = buf.subarray(base + data_offsets[0], base + data_offsets[1]);
    const copy = new Uint8Array(bytes).buffer; // aligned copy
    let data: Float32Array;
    if (dtype === 'F32') data = new Float32Array(copy);
    else if (dtype === 'F16') data = Float32Array.from(new Uint16Array(copy), f16);
    else if (dtype === 'BF16')
      data = Float32Array.from(new Uint16Array(copy), (x) => new Float32Array(new Uint32Array([x << 16]).buffer)[0]!);
    // Token ids / masks (I64) are small integers: exact in float32.
    else if (dtype === 'I64') data = Float32Array.from(new BigInt64Array(copy), (x) => Number(x));
    // 8-bit levels (fixtures/reference/photos.safetensors)
    else if (dtype === 'U8') data = Float32Array.from(new Uint8Array(copy));
    else throw new Error(`${path}: tensor ${name} has unsupported dtype ${dtype}`);
    tensors.set(name, { name, dtype, shape, data });
  }
  return { metadata, tensors };
}

/** Max and mean absolute difference of two equally long arrays. */
export function absDiff(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; mean: number } {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= max)) max = Number.isNaN(d) ? Infinity : Math.max(max, d);
    sum += d;
  }
  return { max, mean: a.length ? sum / a.length : 0 };
}
