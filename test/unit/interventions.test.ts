import { describe, expect, it } from 'vitest';

import { serializeInterventions, type Intervention } from '../../src/interventions.js';

describe('serializeInterventions', () => {
  it('serialises typed interventions to the addon JSON', () => {
    const direction = { shape: [4], data: new Float32Array([1, 0, 0, 0]) };
    const list: Intervention[] = [
      { hook: 'blocks.0.attn.hook_z', select: { head: [1] }, action: 'zero' },
      { hook: 'blocks.0.hook_mlp_out', action: 'scale', factor: 0.5 },
      { hook: 'blocks.1.hook_resid_pre', select: { pos: [3] }, action: 'set', tensor: 'src' },
      { hook: 'blocks.1.hook_resid_post', action: 'add', tensor: direction, coeff: 2 },
    ];
    const { json, tensors } = serializeInterventions(list, { src: { shape: [4], data: new Float32Array(4) } });
    expect(JSON.parse(json)).toEqual([
      { hook: 'blocks.0.attn.hook_z', select: { head: [1] }, action: 'zero' },
      { hook: 'blocks.0.hook_mlp_out', action: 'scale', factor: 0.5 },
      { hook: 'blocks.1.hook_resid_pre', select: { pos: [3] }, action: 'set', tensor: 'src' },
      { hook: 'blocks.1.hook_resid_post', action: 'add', tensor: '__intervention_3', coeff: 2 },
    ]);
    expect(tensors.map((t) => t.name)).toEqual(['src', '__intervention_3']);
    expect(tensors[1]!.data).toBe(direction.data);
  });

  it.each([
    [[{ hook: '', action: 'zero' }], /'hook'/],
    [[{ hook: 'h', action: 'explode' }], /unknown action/],
    [[{ hook: 'h', action: 'scale' }], /finite 'factor'/],
    [[{ hook: 'h', action: 'scale', factor: Infinity }], /finite 'factor'/],
    [[{ hook: 'h', action: 'set', tensor: 'missing' }], /not among the tensors/],
    [[{ hook: 'h', action: 'patch' }], /needs a 'tensor'/],
    [[{ hook: 'h', action: 'zero', select: { pos: [-1] } }], /non-negative integers/],
    [[{ hook: 'h', action: 'zero', select: { head: [0.5] } }], /non-negative integers/],
  ])('rejects %j with E_INTERVENTION', (list, pattern) => {
    expect(() => serializeInterventions(list as unknown as Intervention[])).toThrowError(
      expect.objectContaining({ code: 'E_INTERVENTION', message: expect.stringMatching(pattern) }),
    );
  });

  it('checks tensor shapes and names', () => {
    expect(() => serializeInterventions([], [{ name: 'a', shape: [3], data: new Float32Array(2) }])).toThrowError(
      expect.objectContaining({ code: 'E_SHAPE' }),
    );
    expect(() => serializeInterventions([], [{ shape: [1], data: new Float32Array(1) }])).toThrowError(/has no name/);
    const t = { name: 'a', shape: [1], data: new Float32Array(1) };
    expect(() => serializeInterventions([], [t, t])).toThrowError(/given twice/);
  });
});
