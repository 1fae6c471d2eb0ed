// Set-up as an installed package meets it: a copy of the package (bin/, dist/, package.json and this
// clone's addon, without the clone's record of its libtorch) run with HOME, the cache and the
// environment chosen per test. Bad set-ups are one line and a hint pointing at `prisma doctor`; a
// good one is set up on first use and silent afterwards.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { inspectLibtorch, TORCH_VERSION } from '../../src/setup/libtorch.js';
import { ADDON, ROOT, requireBuilt } from '../helpers/cli.js';

const MODEL = join(ROOT, 'models', 'clevr-vit');

let tmp: string;
/** The torch/lib folder this clone's addon was built against (scripts/setup.mjs records it). */
let torchLib: string;

beforeAll(() => {
  requireBuilt();
  tmp = mkdtempSync(join(tmpdir(), 'prisma-setup-'));
  const build = JSON.parse(readFileSync(join(ROOT, 'native', 'prisma.build.json'), 'utf8')) as { libtorchLib: string };
  torchLib = build.libtorchLib;
});

let copies = 0;
/**
 * A copy of the package whose addon claims to be built for `libtorch` (no local libtorch path), or
 * with no addon at all (`null`: what a platform without a prebuilt addon gets, Rust sources and all).
 */
function packageCopy(libtorch: string | null = `${TORCH_VERSION}+cpu`): string {
  const root = join(tmp, `pkg-${++copies}`);
  for (const dir of ['bin', 'dist']) cpSync(join(ROOT, dir), join(root, dir), { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  if (libtorch === null) {
    for (const f of ['crates', 'Cargo.toml', 'Cargo.lock']) symlinkSync(join(ROOT, f), join(root, f));
    return root;
  }
  mkdirSync(join(root, 'native'));
  symlinkSync(ADDON, join(root, 'native', 'prisma.node'));
  const build = { version: '0.1.0', target: 'x86_64-unknown-linux-gnu', libtorch };
  writeFileSync(join(root, 'native', 'prisma.build.json'), JSON.stringify(build));
  return root;
}

/** A fresh HOME, a PATH with nothing on it but what is asked for, and no LIBTORCH / PRISMA_*. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const home = mkdtempSync(join(tmp, 'home-'));
  const bin = join(home, 'bin');
  mkdirSync(bin);
  return { HOME: home, PATH: bin, NO_COLOR: '1', ...extra };
}

/** A `python` that reports `torchDir` as its torch (what the finder asks Python), without Python. */
function fakePython(torchDir: string): string {
  const path = join(mkdtempSync(join(tmp, 'py-')), 'python');
  writeFileSync(path, `#!/bin/sh\necho ${dirname(path)}\necho ${join(torchDir, '__init__.py')}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A folder that looks like libtorch `version` (empty libraries, a build-version file). */
function fakeLibtorch(version: string): string {
  const dir = mkdtempSync(join(tmp, 'libtorch-'));
  mkdirSync(join(dir, 'lib'));
  for (const lib of ['libtorch_cpu.so', 'libc10.so']) writeFileSync(join(dir, 'lib', lib), '');
  writeFileSync(join(dir, 'build-version'), `${version}\n`);
  return dir;
}

function run(root: string, args: string[], env: NodeJS.ProcessEnv) {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'prisma.js'), ...args], { cwd: tmp, env, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, lines: r.stderr.split('\n').filter((l) => l.length > 0) };
}

/**
 * The command fails with one error line and one hint naming `prisma doctor` (after the set-up's own
 * progress lines, `progress`); --json has the code.
 */
function expectSetupError(root: string, env: NodeJS.ProcessEnv, code: string, message: string, progress: RegExp[] = []) {
  const r = run(root, ['inspect', MODEL], env);
  expect(r.code, r.stderr).toBe(1);
  expect(r.lines).toEqual([
    ...progress.map((p) => expect.stringMatching(p)),
    `prisma: ${code}: ${message}`,
    expect.stringMatching(/^hint: .*`prisma doctor`/),
  ]);
  const j = run(root, ['inspect', MODEL, '--json'], env);
  expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, error: { code, message } });
  return r;
}

describe('bad set-ups: one line and a hint', () => {
  it('no Python and no LIBTORCH', () => {
    const root = packageCopy();
    const env = cleanEnv();
    expectSetupError(
      root,
      env,
      'E_LIBTORCH',
      `libtorch ${TORCH_VERSION} not found: LIBTORCH is not set, no Python has torch ${TORCH_VERSION}, and there is no python3 to pip-install it`,
    );
    // doctor says the same, lists what it looked at, and exits non-zero.
    const d = run(root, ['doctor'], env);
    expect(d.code).toBe(1);
    expect(d.stdout).toMatch(/^! libtorch /m);
    expect(d.stdout).toContain(`cache     ${join(env.HOME!, '.cache', 'vit-prisma')}`);
    expect(d.stderr).toMatch(/^prisma: E_LIBTORCH: libtorch 2\.11\.0 not found.*\nhint: install Python 3/);
  });

  it('a LIBTORCH of the wrong version', () => {
    const libtorch = fakeLibtorch('2.10.0+cpu');
    expectSetupError(
      packageCopy(),
      cleanEnv({ LIBTORCH: libtorch }),
      'E_LIBTORCH_VERSION',
      `LIBTORCH=${libtorch} is libtorch 2.10.0+cpu; vit-prisma needs ${TORCH_VERSION}`,
    );
  });

  it('a Python whose torch is the wrong version, and no other', () => {
    const torch = join(mkdtempSync(join(tmp, 'site-')), 'torch');
    mkdirSync(join(torch, 'lib'), { recursive: true });
    for (const lib of ['libtorch_cpu.so', 'libc10.so']) writeFileSync(join(torch, 'lib', lib), '');
    writeFileSync(join(torch, 'version.py'), "__version__ = '2.10.0+cpu'\ncuda: Optional[str] = None\n");
    const python = fakePython(torch);
    const r = run(packageCopy(), ['inspect', MODEL], cleanEnv({ PRISMA_PYTHON: python }));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      `[setup] PRISMA_PYTHON=${python} has torch 2.10.0+cpu, not ${TORCH_VERSION}; looking further`,
      expect.stringMatching(/^prisma: E_LIBTORCH: libtorch 2\.11\.0 not found: /),
      expect.stringMatching(/^hint: .*`prisma doctor`/),
    ]);
  });

  it('an addon built for another libtorch', () => {
    const root = packageCopy('2.10.0+cpu');
    const libtorch = dirname(torchLib);
    const version = inspectLibtorch(torchLib)!.version;
    const r = expectSetupError(
      root,
      cleanEnv({ LIBTORCH: libtorch }),
      'E_NATIVE_MISMATCH',
      `the native addon ${join(root, 'native', 'prisma.node')} was built for libtorch 2.10.0+cpu, but the libtorch set up is ${version} (${torchLib})`,
    );
    expect(r.lines[1]).toContain('reinstall vit-prisma');
  });

  it('a libtorch whose libraries lack what the addon needs (undefined symbols at load)', () => {
    // Real shared libraries with libtorch's names and nothing in them, claiming to be 2.11.0.
    const libtorch = fakeLibtorch(`${TORCH_VERSION}+cpu`);
    const source = join(libtorch, 'empty.c');
    writeFileSync(source, 'int prisma_test_placeholder(void) { return 0; }\n');
    for (const name of ['libc10.so', 'libtorch_cpu.so']) {
      const cc = spawnSync('cc', ['-shared', '-fPIC', `-Wl,-soname,${name}`, '-o', join(libtorch, 'lib', name), source], {
        encoding: 'utf8',
      });
      expect(cc.status, cc.stderr).toBe(0);
    }
    const root = packageCopy();
    const r = run(root, ['inspect', MODEL], cleanEnv({ LIBTORCH: libtorch }));
    expect(r.code).toBe(1);
    expect(r.lines).toEqual([
      expect.stringMatching(
        new RegExp(
          `^prisma: E_NATIVE_MISMATCH: the native addon ${join(root, 'native', 'prisma.node')} does not fit libtorch ${TORCH_VERSION}\\+cpu in ${join(libtorch, 'lib')} \\(.*undefined symbol: \\S+\\)$`,
        ),
      ),
      expect.stringMatching(/^hint: reinstall vit-prisma .*`prisma doctor`/),
    ]);
  });

  it('a cache directory that cannot be written', () => {
    const file = join(tmp, 'a-file');
    writeFileSync(file, '');
    const cache = join(file, 'cache');
    expectSetupError(
      packageCopy(),
      cleanEnv({ PRISMA_PYTHON: fakePython(dirname(torchLib)), PRISMA_CACHE_DIR: cache }),
      'E_CACHE',
      `cannot write the cache directory ${cache} (ENOTDIR)`,
      [/^\[setup\] libtorch: torch 2\.11\.0\S* from /],
    );
  });

  it('no prebuilt addon for the platform and no Rust to build one', () => {
    const root = packageCopy(null);
    const env = cleanEnv({ LIBTORCH: dirname(torchLib) });
    expectSetupError(root, env, 'E_NATIVE_MISSING', 'no prebuilt native addon for linux-x64-gnu, and no Rust toolchain to build one');
    const d = run(root, ['doctor'], env);
    expect(d.code).toBe(1);
    expect(d.stdout).toMatch(/^! addon +no addon for linux-x64-gnu \(no vit-prisma-linux-x64-gnu, no source build in /m);
    expect(d.lines.at(-1)).toMatch(/^hint: .*install Rust/);
  });
});

describe('a good set-up', () => {
  it('is found and recorded on first use, with [setup] lines; later runs are silent and need no Python', () => {
    const root = packageCopy(inspectLibtorch(torchLib)!.version);
    const python = fakePython(dirname(torchLib));
    const env = cleanEnv({ PRISMA_PYTHON: python });
    const record = join(env.HOME!, '.cache', 'vit-prisma', `libtorch-${TORCH_VERSION}.json`);

    const d = run(root, ['doctor'], env);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toMatch(
      new RegExp(`^ {2}libtorch +\\S+ in ${torchLib} \\(torch of ${python}; found now, recorded on first use\\)$`, 'm'),
    );
    expect(d.stdout).toMatch(/^ {2}loads +yes/m);
    expect(d.stdout).toMatch(/^ {2}cuda +(yes|no: )/m);
    expect(existsSync(record)).toBe(false);

    const first = run(root, ['inspect', MODEL], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.lines).toEqual([`[setup] libtorch: torch ${inspectLibtorch(torchLib)!.version} from ${python}`]);
    expect(JSON.parse(readFileSync(record, 'utf8'))).toMatchObject({ lib: torchLib, source: { kind: 'python', python } });

    // The record is enough: no Python asked, nothing printed.
    const second = run(root, ['inspect', MODEL], { ...env, PRISMA_PYTHON: '/nonexistent/python' });
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toBe('');
    expect(second.stdout).toContain('ViTForImageClassification');
  });

  it('sets up again when the recorded libtorch is gone', () => {
    const root = packageCopy(inspectLibtorch(torchLib)!.version);
    const env = cleanEnv({ PRISMA_PYTHON: fakePython(dirname(torchLib)) });
    const record = join(env.HOME!, '.cache', 'vit-prisma', `libtorch-${TORCH_VERSION}.json`);
    mkdirSync(dirname(record), { recursive: true });
    const gone = join(tmp, 'gone', 'torch', 'lib');
    writeFileSync(
      record,
      JSON.stringify({ schemaVersion: 1, torch: TORCH_VERSION, lib: gone, version: '2.11.0', cuda: null, source: { kind: 'build' } }),
    );
    const r = run(root, ['inspect', MODEL], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.lines[0]).toBe(`[setup] libtorch: the recorded ${gone} is gone (${record}); setting up again`);
    expect(JSON.parse(readFileSync(record, 'utf8'))).toMatchObject({ lib: torchLib });
  });
});

describe('inspectLibtorch reads what a libtorch folder is without loading it', () => {
  it('a Python torch package: version.py gives the version and the CUDA release', () => {
    const torch = join(mkdtempSync(join(tmpdir(), 'prisma-torch-')), 'torch');
    mkdirSync(join(torch, 'lib'), { recursive: true });
    for (const lib of ['libtorch_cpu.so', 'libc10.so', 'libtorch_cuda.so']) writeFileSync(join(torch, 'lib', lib), '');
    writeFileSync(join(torch, 'version.py'), "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n");
    expect(inspectLibtorch(join(torch, 'lib'))).toEqual({ lib: join(torch, 'lib'), version: '2.11.0+cu130', cuda: '13.0' });
  });

  it('a libtorch download: build-version, CUDA from its suffix; CPU-only without libtorch_cuda', () => {
    const cuda = fakeLibtorch('2.11.0+cu126');
    writeFileSync(join(cuda, 'lib', 'libtorch_cuda.so'), '');
    expect(inspectLibtorch(join(cuda, 'lib'))).toMatchObject({ version: '2.11.0+cu126', cuda: '12.6' });
    expect(inspectLibtorch(join(fakeLibtorch('2.11.0+cpu'), 'lib'))).toMatchObject({ version: '2.11.0+cpu', cuda: null });
    expect(inspectLibtorch(tmpdir())).toBeUndefined();
  });
});
