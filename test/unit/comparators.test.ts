// The test helpers' comparison itself: a NaN must never pass a tolerance, whichever side holds it.
import { describe, expect, it } from 'vitest';

import { absDiff } from '../helpers/safetensors.js';

describe('absDiff', () => {
  it('is Infinity when either side holds a NaN, so `max <= tol` fails', () => {
    const values = Float32Array.from([0.5, -1, 2, 3]);
    expect(absDiff(values, values)).toEqual({ max: 0, mean: 0 });
    const allNaN = new Float32Array(values.length).fill(Number.NaN);
    expect(absDiff(allNaN, values).max).toBe(Number.POSITIVE_INFINITY);
    expect(absDiff(values, allNaN).max).toBe(Number.POSITIVE_INFINITY);
    const oneNaN = Float32Array.from(values);
    oneNaN[2] = Number.NaN;
    expect(absDiff(oneNaN, values).max).toBe(Number.POSITIVE_INFINITY);
    expect(absDiff(values, Float32Array.from([0.5, -1, 2, 3.25])).max).toBe(0.25);
  });
});
