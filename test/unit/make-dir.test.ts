// Output folders are created without Node's recursive mkdir, which loops forever at 100% CPU under
// paths like /proc/x/y (issue 21, item 19). The CLI cases are spawned with a short timeout so a
// hang fails the test instead of stalling the suite.
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { isPrismaError } from '../../src/errors.js';
import { makeDir, makeDirSync, writeFileAtomic } from '../../src/report/write.js';
import { FIXTURES, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-mkdir-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const onLinux = existsSync('/proc/self');

function ioError(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(isPrismaError(err) && err.code).toBe('E_IO');
    return (err as Error).message;
  }
  throw new Error('expected E_IO');
}

describe('makeDirSync', () => {
  it('creates missing parents one level at a time', async () => {
    makeDirSync(join(tmp, 'a', 'b', 'c'));
    expect(statSync(join(tmp, 'a', 'b', 'c')).isDirectory()).toBe(true);
    makeDirSync(join(tmp, 'a', 'b', 'c')); // already there: nothing to do
    await makeDir(join(tmp, 'a', 'd'));
    expect(statSync(join(tmp, 'a', 'd')).isDirectory()).toBe(true);
  });

  it('a file in the way is one E_IO line naming it', () => {
    writeFileSync(join(tmp, 'file'), 'x');
    expect(ioError(() => makeDirSync(join(tmp, 'file', 'sub')))).toMatch(/file exists and is not a folder$/);
  });

  it.runIf(onLinux)('/proc/x/y fails at once instead of looping (Node recursive mkdir hangs there)', async () => {
    expect(ioError(() => makeDirSync('/proc/x/y'))).toMatch(/^cannot create folder \/proc\/x\/y: /);
    await expect(writeFileAtomic('/proc/x/report.json', '{}')).rejects.toMatchObject({ code: 'E_IO' });
  });
});

describe.runIf(onLinux)('--out under /proc: one line and exit 1, never a hang', () => {
  const img = join(FIXTURES, 'images', 'chelsea.jpg');
  const model = join(FIXTURES, 'models', 'vit-tiny-cls');
  it.each([
    ['heads', ['heads', model, img, '--out', '/proc/x']],
    ['logit-lens', ['logit-lens', model, img, '--out', '/proc/x/y']],
    ['dataset clevr-lite', ['dataset', 'clevr-lite', '--n', '1', '--seed', '1', '--out', '/proc/x']],
  ])('%s', (_name, args) => {
    requireBuilt();
    const r = prisma(args, {}, undefined, 30_000);
    expect(r.code).toBe(1);
    const lines = stderrLines(r);
    expect(lines[0]).toMatch(/^prisma: E_IO: cannot create folder \/proc\/x/);
    expect(lines.length).toBeLessThanOrEqual(2); // the error, perhaps a hint
  });
});
