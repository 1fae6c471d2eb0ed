// The library takes the CLI's spellings (issue 21, item 12): `by: 'layer,pos'` was refused with a
// message telling you to use `layer,pos`. Each spelling gives exactly the result of the canonical one.
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { ablate, heads, loadModel, logitLens, patch, type Model, type PatchWhat } from '../../src/index.js';
import type { AblationMode, LensSite } from '../../src/native.js';
import { FIXTURES, requireBuilt } from '../helpers/cli.js';

const image = (name: string) => join(FIXTURES, 'images', name);
let model: Model;

beforeAll(async () => {
  requireBuilt();
  model = await loadModel(join(FIXTURES, 'models', 'vit-tiny-cls'));
});

describe("the CLI's spellings in the library", () => {
  it.each([
    ['layer,pos', 'layer_pos', 'resid_pre'],
    ['layer,head', 'layer_head', 'head_z'],
    ['layer, pos, head', 'layer_pos_head', 'HEAD_Z'],
  ] as const)('patch by %s = by %s', async (cli, canonical, what) => {
    const a = await patch(model, image('chelsea.jpg'), image('coffee.png'), { what: what as PatchWhat, by: cli as never, method: 'exact' });
    const b = await patch(model, image('chelsea.jpg'), image('coffee.png'), {
      what: what.toLowerCase() as PatchWhat,
      by: canonical,
      method: 'Exact' as never,
    });
    expect(a.by).toBe(canonical);
    expect(a.exact!.value).toEqual(b.exact!.value);
  });

  it("logitLens reads 'hook_resid_post' as 'resid_post'", async () => {
    const a = await logitLens(model, [image('chelsea.jpg')], { sites: ['hook_resid_post' as LensSite] });
    const b = await logitLens(model, [image('chelsea.jpg')], { sites: ['resid_post'] });
    expect(a).toEqual(b);
  });

  it('heads takes a patch by the name reports print (r1c2 = patch 6 on the 4x4 grid; issue 21, item 13)', async () => {
    const a = await heads(model, image('chelsea.jpg'), { query: 'r1c2' });
    const b = await heads(model, image('chelsea.jpg'), { query: 6 });
    expect(a.query).toEqual({ kind: 'patch', token: 7, patch: 6 });
    expect(a.heads).toEqual(b.heads);
    await expect(heads(model, image('chelsea.jpg'), { query: 'r4c0' })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
  });

  it("ablate takes --mode's spelling ('ZERO')", async () => {
    const spec = 'blocks.0.attn.hook_z[head=1]';
    const a = await ablate(model, image('chelsea.jpg'), { ablate: [spec], mode: 'ZERO' as AblationMode });
    const b = await ablate(model, image('chelsea.jpg'), { ablate: [spec], mode: 'zero' });
    expect(a).toEqual(b);
  });
});
