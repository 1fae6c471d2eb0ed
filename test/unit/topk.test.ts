import { describe, expect, it } from 'vitest';

import { softmax, topK } from '../../src/index.js';

describe('topK', () => {
  const logits = { shape: [2, 4], data: new Float32Array([0, 2, 1, 2, 5, -1, 0, 3]) };

  it('ranks each row, ties by index, with softmax probabilities', () => {
    const [a, b] = topK(logits, 3, ['w', 'x', 'y', 'z']);
    expect(a!.map((p) => p.index)).toEqual([1, 3, 2]);
    expect(a!.map((p) => p.label)).toEqual(['x', 'z', 'y']);
    expect(b!.map((p) => p.index)).toEqual([0, 3, 2]);
    const e = [0, 2, 1, 2].map(Math.exp);
    const z = e.reduce((s, v) => s + v, 0);
    expect(a![0]!.prob).toBeCloseTo(e[1]! / z, 12);
    expect(a![0]!.logit).toBe(2);
  });

  it('clamps k, falls back to index labels, accepts one row', () => {
    const rows = topK({ shape: [4], data: new Float32Array([1, 2, 3, 4]) }, 10);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.map((p) => p.label)).toEqual(['3', '2', '1', '0']);
  });

  it('rejects non-2D logits', () => {
    expect(() => topK({ shape: [1, 2, 2], data: new Float32Array(4) }, 1)).toThrowError(expect.objectContaining({ code: 'E_SHAPE' }));
  });

  it('softmax is stable for large logits', () => {
    const p = softmax([1000, 1000]);
    expect([...p]).toEqual([0.5, 0.5]);
  });
});
