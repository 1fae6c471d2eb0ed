/** Pure mapping of user-facing option values (CLI flags or API options) to what the addon takes. */
import { usageError } from './errors.js';

export type Dtype = 'float32' | 'float16' | 'bfloat16';

const DTYPE_ALIASES: Record<string, Dtype> = {
  f32: 'float32',
  fp32: 'float32',
  float32: 'float32',
  float: 'float32',
  f16: 'float16',
  fp16: 'float16',
  float16: 'float16',
  half: 'float16',
  bf16: 'bfloat16',
  bfloat16: 'bfloat16',
};

/** 'f32' | 'f16' | 'bf16' (and long spellings) -> addon dtype name. */
export function normalizeDtype(value: string): Dtype {
  const d = DTYPE_ALIASES[value.trim().toLowerCase()];
  if (!d) throw usageError(`unknown dtype '${value}'`, 'use f32, f16 or bf16');
  return d;
}

/** 'cpu' | 'cuda' | 'cuda:N' | 'mps' | 'auto' (resolved at load time: cuda:0 when available, else cpu). */
export function normalizeDevice(value: string): string {
  const v = value.trim().toLowerCase();
  if (v === 'cpu' || v === 'cuda' || v === 'mps' || v === 'auto' || /^cuda:\d+$/.test(v)) return v;
  throw usageError(`unknown device '${value}'`, 'use cpu, cuda, cuda:N, mps or auto');
}

/** Flatten `--cache a,b --cache c` into unique patterns, in order. */
export function parseCachePatterns(values: readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const v of values ?? []) {
    for (const part of v.split(',')) {
      const p = part.trim();
      if (p && !out.includes(p)) out.push(p);
    }
  }
  return out;
}

/** Parse a non-negative integer flag value (`what` names the flag in the error). */
export function parseNonNegativeInt(value: string, what: string): number {
  if (!/^\d+$/.test(value.trim())) throw usageError(`${what} must be a non-negative integer, got '${value}'`);
  return Number.parseInt(value, 10);
}

/** Parse a positive integer flag value. */
export function parsePositiveInt(value: string, what: string): number {
  const n = parseNonNegativeInt(value, what);
  if (n === 0) throw usageError(`${what} must be at least 1`);
  return n;
}
