// Errors cross the binding as data: the core's code arrives as `err.code` on the raw addon's JS
// Error (nothing parsed out of the message), with `hint` and structured `data`; the TypeScript
// registry (src/errors.ts) holds exactly the codes the core can emit; `--json` keeps `data`.
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { ERROR_CODES, NATIVE_CODES, exitStatusFor, type ErrorCode } from '../../src/errors.js';
import { loadNative } from '../../src/setup/load.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';

interface RawError extends Error {
  code?: unknown;
  hint?: unknown;
  data?: unknown;
}
interface Raw {
  errorCodes(): string[];
  readTensorFile(path: string): unknown;
  NativeModel: {
    load(dir: string): Promise<{ matchHooks(p: string[]): string[]; run(px: Float32Array, shape: number[], o?: object): Promise<unknown> }>;
  };
}

let raw: Raw;
beforeAll(() => {
  requireBuilt();
  raw = loadNative() as Raw;
});

async function rejection(p: Promise<unknown>): Promise<RawError> {
  try {
    await p;
  } catch (err) {
    return err as RawError;
  }
  throw new Error('expected a rejection');
}

function thrown(f: () => unknown): RawError {
  try {
    f();
  } catch (err) {
    return err as RawError;
  }
  throw new Error('expected a throw');
}

describe('the error registry', () => {
  it('lists exactly the codes the core emits, in its order', () => {
    expect(raw.errorCodes().length).toBeGreaterThan(15);
    expect([...NATIVE_CODES]).toEqual(raw.errorCodes());
  });

  it('E_USAGE and E_ARGUMENT exit 2, every other code 1', () => {
    const two = (Object.keys(ERROR_CODES) as ErrorCode[]).filter((c) => exitStatusFor(c) === 2);
    expect(two.sort()).toEqual(['E_ARGUMENT', 'E_USAGE']);
  });
});

describe('native errors are data', () => {
  it('a rejected promise carries code and data; the message has no code prefix', async () => {
    const e = await rejection(raw.NativeModel.load(join(FIXTURES, 'does-not-exist')));
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('E_MODEL_DIR');
    expect(e.message).not.toMatch(/^E_/);
    expect(e.data).toEqual({ path: join(FIXTURES, 'does-not-exist') });
  });

  it('a synchronous throw carries the code', async () => {
    const model = await raw.NativeModel.load(join(FIXTURES, 'models', 'vit-tiny-cls'));
    const e = thrown(() => model.matchHooks(['blocks.0.hook_nonsense']));
    expect(e.code).toBe('E_UNKNOWN_HOOK');
    expect(e.message).not.toMatch(/^E_/);
    const f = thrown(() => raw.readTensorFile(join(FIXTURES, 'nope.safetensors')));
    expect(f.code).toBe('E_IO');
    expect(f.data).toEqual({ path: join(FIXTURES, 'nope.safetensors') });
  });
});
