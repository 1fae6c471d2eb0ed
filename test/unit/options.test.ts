import { describe, expect, it } from 'vitest';

import { normalizeDevice, normalizeDtype, parseCachePatterns, parseNonNegativeInt, parsePositiveInt } from '../../src/options.js';

describe('argument mapping', () => {
  it('maps dtype spellings to addon names', () => {
    expect(normalizeDtype('f32')).toBe('float32');
    expect(normalizeDtype('FP16')).toBe('float16');
    expect(normalizeDtype('bf16')).toBe('bfloat16');
    expect(normalizeDtype('bfloat16')).toBe('bfloat16');
    expect(() => normalizeDtype('int8')).toThrowError(expect.objectContaining({ code: 'E_USAGE' }));
  });

  it('accepts cpu, cuda, cuda:N, mps, auto', () => {
    for (const d of ['cpu', 'cuda', 'cuda:1', 'mps', 'auto', 'CPU']) expect(() => normalizeDevice(d)).not.toThrow();
    expect(normalizeDevice('CUDA:0')).toBe('cuda:0');
    expect(() => normalizeDevice('gpu')).toThrowError(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => normalizeDevice('cuda:x')).toThrowError(expect.objectContaining({ code: 'E_USAGE' }));
  });

  it('flattens repeated and comma-separated cache patterns, dropping duplicates', () => {
    expect(parseCachePatterns(undefined)).toEqual([]);
    expect(parseCachePatterns(['blocks.*.hook_resid_post,hook_embed', 'hook_embed', ' ln_final.* '])).toEqual([
      'blocks.*.hook_resid_post',
      'hook_embed',
      'ln_final.*',
    ]);
  });

  it('parses integer flags strictly', () => {
    expect(parseNonNegativeInt('0', '--stop-at-layer')).toBe(0);
    expect(parseNonNegativeInt('12', '--stop-at-layer')).toBe(12);
    for (const bad of ['-1', '1.5', 'abc', '', '1e3']) {
      expect(() => parseNonNegativeInt(bad, '--stop-at-layer')).toThrowError(expect.objectContaining({ code: 'E_USAGE' }));
    }
    expect(() => parsePositiveInt('0', '--top-k')).toThrowError(/at least 1/);
    expect(parsePositiveInt('5', '--top-k')).toBe(5);
  });
});
