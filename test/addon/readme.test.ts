// The README's error example is what the CLI prints, code included (issue 21, item 8: the README
// showed `prisma: E_LAYER_RANGE: ...` while the CLI printed no code).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { ROOT, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';

beforeAll(() => requireBuilt());

describe('README examples', () => {
  it('the error example: the same line, with its stable code', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const m = /\$ npx prisma (run [^\n]+)\n(prisma: E_[A-Z_]+: [^\n]+)\n/.exec(readme);
    expect(m, 'README has a `$ npx prisma run ...` example followed by its error line').not.toBeNull();
    const r = prisma(m![1]!.split(/\s+/));
    expect(r.code).toBe(1);
    expect(stderrLines(r)[0]).toBe(m![2]);
  });
});
