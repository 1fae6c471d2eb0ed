import { describe, expect, it } from 'vitest';

import { PrismaError, errorJson, hintFor, oneLine, parseCodedMessage, toPrismaError, usageError } from '../../src/errors.js';
import { fromNativeError } from '../../src/native.js';

describe('PrismaError', () => {
  it('carries code, hint and data', () => {
    const e = new PrismaError('E_SHAPE', 'bad shape', { hint: 'fix it', data: { shape: [1] } });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('PrismaError');
    expect(e.code).toBe('E_SHAPE');
    expect(e.hint).toBe('fix it');
    expect(e.data).toEqual({ shape: [1] });
    expect(JSON.parse(JSON.stringify(e))).toEqual({ code: 'E_SHAPE', message: 'bad shape', hint: 'fix it' });
  });

  it('usage errors have code E_USAGE', () => {
    const e = usageError('nope', 'try --help');
    expect(e.code).toBe('E_USAGE');
    expect(errorJson(e)).toEqual({ code: 'E_USAGE', message: 'nope', hint: 'try --help' });
    expect(errorJson(usageError('x'))).toEqual({ code: 'E_USAGE', message: 'x' });
  });
});

describe('native error conversion', () => {
  it('parses the `E_CODE: message` prefix', () => {
    expect(parseCodedMessage("E_UNKNOWN_HOOK: no hook matches 'x'")).toEqual({ code: 'E_UNKNOWN_HOOK', message: "no hook matches 'x'" });
    expect(parseCodedMessage('plain message')).toBeUndefined();
    expect(parseCodedMessage('E_IO:  spaced\nsecond line')).toEqual({ code: 'E_IO', message: 'spaced\nsecond line' });
  });

  it('turns a napi Error into a PrismaError with a hint and one-line message', () => {
    const raw = Object.assign(new Error("E_UNKNOWN_HOOK: no hook matches 'blocks.9.hook_resid_post'\n(model has 2 layers)"), {
      code: 'GenericFailure',
    });
    const e = fromNativeError(raw);
    expect(e).toBeInstanceOf(PrismaError);
    expect(e.code).toBe('E_UNKNOWN_HOOK');
    expect(e.message).toBe("no hook matches 'blocks.9.hook_resid_post'; (model has 2 layers)");
    expect(e.hint).toBe(hintFor('E_UNKNOWN_HOOK'));
    expect(e.cause).toBe(raw);
  });

  it('prefers an E_ code property and keeps data', () => {
    const raw = Object.assign(new Error('E_SHAPE: wrong'), { code: 'E_SHAPE', data: { got: [1, 2] } });
    const e = fromNativeError(raw);
    expect(e.code).toBe('E_SHAPE');
    expect(e.data).toEqual({ got: [1, 2] });
  });

  it('maps uncoded errors and non-errors to E_INTERNAL', () => {
    expect(fromNativeError(new Error('Failed to convert napi value')).code).toBe('E_INTERNAL');
    expect(fromNativeError('boom').code).toBe('E_INTERNAL');
    expect(toPrismaError(new TypeError('x is undefined')).code).toBe('E_INTERNAL');
    expect(toPrismaError(new Error('E_IO: disk full')).code).toBe('E_IO');
  });

  it('oneLine collapses newlines', () => {
    expect(oneLine('a\n  b\r\nc ')).toBe('a; b; c');
  });
});
