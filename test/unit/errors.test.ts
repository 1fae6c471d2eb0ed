import { describe, expect, it } from 'vitest';

import { ERROR_CODES, PrismaError, errorJson, hintFor, isErrorCode, oneLine, toPrismaError, usageError } from '../../src/errors.js';
import { fromNativeError } from '../../src/native.js';

describe('PrismaError', () => {
  it('carries code, hint and data', () => {
    const e = new PrismaError('E_SHAPE', 'bad shape', { hint: 'fix it', data: { shape: [1] } });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('PrismaError');
    expect(e.code).toBe('E_SHAPE');
    expect(e.hint).toBe('fix it');
    expect(e.data).toEqual({ shape: [1] });
    expect(JSON.parse(JSON.stringify(e))).toEqual({ code: 'E_SHAPE', message: 'bad shape', hint: 'fix it', data: { shape: [1] } });
  });

  it('usage errors have code E_USAGE', () => {
    const e = usageError('nope', 'try --help');
    expect(e.code).toBe('E_USAGE');
    expect(errorJson(e)).toEqual({ code: 'E_USAGE', message: 'nope', hint: 'try --help' });
    expect(errorJson(usageError('x'))).toEqual({ code: 'E_USAGE', message: 'x' });
  });
});

describe('native error conversion', () => {
  it('takes the code, hint and data the addon set as properties', () => {
    const raw = Object.assign(new Error("no hook matches 'blocks.9.hook_resid_post'\n(model has 2 layers)"), {
      code: 'E_UNKNOWN_HOOK',
      data: { pattern: 'blocks.9.hook_resid_post' },
    });
    const e = fromNativeError(raw);
    expect(e).toBeInstanceOf(PrismaError);
    expect(e.code).toBe('E_UNKNOWN_HOOK');
    expect(e.message).toBe("no hook matches 'blocks.9.hook_resid_post'; (model has 2 layers)");
    expect(e.hint).toBe(hintFor('E_UNKNOWN_HOOK'));
    expect(e.data).toEqual({ pattern: 'blocks.9.hook_resid_post' });
    expect(e.cause).toBe(raw);
  });

  it("prefers the error's own hint to the code's default", () => {
    const raw = Object.assign(new Error('libtorch: size mismatch'), { code: 'E_SHAPE', hint: 'check the input' });
    expect(fromNativeError(raw).hint).toBe('check the input');
  });

  it('never parses a code out of a message', () => {
    expect(toPrismaError(new Error('E_IO: disk full')).code).toBe('E_INTERNAL');
  });

  it('maps uncoded errors, unknown codes and non-errors to E_INTERNAL', () => {
    expect(fromNativeError(Object.assign(new Error('Failed to convert napi value'), { code: 'InvalidArg' })).code).toBe('E_INTERNAL');
    expect(fromNativeError(Object.assign(new Error('x'), { code: 'E_NOT_A_CODE' })).code).toBe('E_INTERNAL');
    expect(fromNativeError('boom').code).toBe('E_INTERNAL');
    expect(toPrismaError(new TypeError('x is undefined')).code).toBe('E_INTERNAL');
  });

  it('oneLine collapses newlines', () => {
    expect(oneLine('a\n  b\r\nc ')).toBe('a; b; c');
  });
});

describe('the registry', () => {
  it('knows every code the library throws', () => {
    for (const c of ['E_DATASET', 'E_UNSAFE_PICKLE', 'E_WEIGHTS_NONFINITE', 'E_OUT_OF_MEMORY', 'E_USAGE', 'E_HUB'])
      expect(isErrorCode(c)).toBe(true);
    expect(isErrorCode('E_NOPE')).toBe(false);
    expect(isErrorCode('toString')).toBe(false);
    for (const spec of Object.values(ERROR_CODES)) expect(spec.meaning.length).toBeGreaterThan(0);
  });
});
