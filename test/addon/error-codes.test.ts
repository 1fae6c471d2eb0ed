// Errors cross the binding as data: the core's code arrives as `err.code` on the raw addon's JS
// Error (nothing parsed out of the message), with `hint` and structured `data`; the TypeScript
// registry (src/errors.ts) holds exactly the codes the core can emit; `--json` keeps `data`.
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { requireHead } from '../../src/analysis/common.js';
import { ERROR_CODES, NATIVE_CODES, exitStatusFor, type ErrorCode } from '../../src/errors.js';
import { loadModel } from '../../src/model.js';
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
    load(dir: string): Promise<{
      matchHooks(p: string[]): string[];
      run(px: Float32Array, shape: number[], o?: object): Promise<unknown>;
      logitLens(px: Float32Array, shape: number[], optionsJson: string): Promise<string>;
    }>;
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

  it('a missing head is one code and one message in the core and in the library preflight', async () => {
    const dir = join(FIXTURES, 'models', 'vit-tiny-base');
    const model = await raw.NativeModel.load(dir);
    const e = await rejection(model.logitLens(new Float32Array(3 * 32 * 32), [1, 3, 32, 32], '{}'));
    const lib = await loadModel(dir);
    const f = thrown(() => requireHead(lib, 'the logit lens'));
    expect(e.code).toBe('E_UNSUPPORTED_MODEL');
    expect(f.code).toBe(e.code);
    expect(f.message).toBe(e.message);
    expect(f.hint).toBe(e.hint);
    expect(e.data).toEqual({ path: dir, architecture: 'ViTModel' });
  });
});
