// `npm install -g vit-prisma` on a machine that never saw the source, as near as a test gets: the
// tarballs `npm run pack` makes (vit-prisma and its platform package) installed into a new prefix,
// then run with HOME, the cache and the working directory all new and no LD_LIBRARY_PATH. torch is
// reused through the documented variable (PRISMA_PYTHON, or LIBTORCH) instead of being downloaded
// again; npm reuses its own cache. Then the same tarballs as a library dependency of a scratch
// project, and the package alone (no platform package), whose addon is built from source on first
// use. Slow (packs, installs three times, runs the demo, compiles the two workspace crates): each
// step's time goes to the log.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { loadModel } from '../../src/model.js';
import { readRecord, TORCH_VERSION } from '../../src/setup/libtorch.js';
import { FIXTURES, ROOT, requireBuilt } from '../helpers/cli.js';

interface Packed {
  name: string;
  version: string;
  file: string;
  size: number;
  unpackedSize: number;
  entryCount: number;
}

let tmp: string;
let main: Packed;
let platform: Packed;
/**
 * This machine's npm settings: its download cache (reused, so dependencies are not fetched again)
 * and its config files (registry, certificates), which a new HOME and a new prefix would otherwise hide.
 */
let npmConfig: Record<string, string>;
/** How the installed package is told where torch is: the variable the README documents. */
let torchVariable: Record<string, string>;
let torchLib: string;

function log(step: string, started: number): void {
  process.stdout.write(`[install test] ${step}: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
}

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 600_000, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, lines: r.stderr.split('\n').filter((l) => l.length > 0) };
}

/** A new HOME (so a new default cache), node on PATH, and nothing else of this machine's set-up. */
function userEnv(home: string): NodeJS.ProcessEnv {
  return { HOME: home, PATH: [dirname(process.execPath), process.env.PATH].join(delimiter), NO_COLOR: '1', ...torchVariable };
}

function npmInstall(args: string[], cwd: string, home: string, tarballs = [main.file, platform.file]) {
  const started = Date.now();
  // npm itself keeps the machine's network environment (proxies, certificates); prisma runs without it.
  const network = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(LIBTORCH|PRISMA_|LD_LIBRARY_PATH|CARGO_)/.test(k)));
  const env = { ...network, ...userEnv(home), ...npmConfig };
  const r = sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', ...args, ...tarballs], cwd, env);
  expect(r.code, r.stderr).toBe(0);
  log(`npm install ${args.join(' ')} (${tarballs.length} tarballs)`, started);
}

beforeAll(() => {
  requireBuilt();
  tmp = mkdtempSync(join(tmpdir(), 'prisma-install-'));
  const started = Date.now();
  const packed = sh(process.execPath, [join(ROOT, 'scripts', 'pack.mjs'), '--out', join(tmp, 'pack')], ROOT, process.env);
  expect(packed.code, packed.stderr).toBe(0);
  const both = JSON.parse(packed.stdout) as Packed[];
  main = both.find((p) => p.name === 'vit-prisma')!;
  platform = both.find((p) => p.name !== 'vit-prisma')!;
  log(`npm run pack: ${main.name} ${main.size} B packed / ${main.entryCount} files, ${platform.name} ${platform.size} B`, started);
  const npmGet = (key: string) => sh('npm', ['config', 'get', key], ROOT, process.env).stdout.trim();
  npmConfig = {
    npm_config_cache: npmGet('cache'),
    npm_config_userconfig: npmGet('userconfig'),
    npm_config_globalconfig: npmGet('globalconfig'),
  };
  torchLib = (JSON.parse(readFileSync(join(ROOT, 'native', 'prisma.build.json'), 'utf8')) as { libtorchLib: string }).libtorchLib;
  const record = readRecord(process.env);
  torchVariable =
    record?.source.kind === 'python' && record.lib === torchLib ? { PRISMA_PYTHON: record.source.python } : { LIBTORCH: dirname(torchLib) };
}, 600_000);

function tarList(file: string): string[] {
  return sh('tar', ['-tzf', file], tmp, process.env)
    .stdout.split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.replace(/^package\//, ''));
}

describe('what is packed', () => {
  it('vit-prisma: the CLI, library, models, demo inputs and Rust sources; no build outputs, caches, tests or fixtures', () => {
    const files = tarList(main.file);
    expect(files).toHaveLength(main.entryCount);
    for (const f of files) {
      expect(f).not.toMatch(/^(native|fixtures|test|target|bench|node_modules|pack|npm|scripts|\.ci)\//);
      expect(f).not.toMatch(/\.(map|tsbuildinfo|node|tgz)$|\.build-|(^|\/)tests\//);
    }
    for (const needed of [
      'bin/prisma.js',
      'dist/cli/main.js',
      'dist/index.d.ts',
      'dist/setup/load.js',
      'models/clevr-vit/model.safetensors',
      'demo-data/fashion-mnist/labels.jsonl',
      'schemas/patch.schema.json',
      'Cargo.lock',
      'crates/prisma-node/src/lib.rs',
      'crates/prisma-core/cpp/onednn_linear.cpp',
    ]) {
      expect(files).toContain(needed);
    }
    // Every compiled file comes from a source that exists (no leftovers of deleted modules).
    for (const f of files.filter((p) => p.startsWith('dist/') && p.endsWith('.js'))) {
      expect(existsSync(join(ROOT, 'src', f.slice('dist/'.length).replace(/\.js$/, '.ts'))), f).toBe(true);
    }
    const pkg = JSON.parse(sh('tar', ['-xzOf', main.file, 'package/package.json'], tmp, process.env).stdout) as {
      optionalDependencies: Record<string, string>;
    };
    expect(pkg.optionalDependencies).toEqual({ [platform.name]: main.version });
  });

  it('the platform package: the addon with no path to libtorch in it, and its build record', () => {
    expect(tarList(platform.file).sort()).toEqual(['README.md', 'package.json', 'prisma.build.json', 'prisma.linux-x64-gnu.node']);
    const out = join(tmp, 'platform');
    mkdirSync(out);
    expect(sh('tar', ['-xzf', platform.file, '-C', out], tmp, process.env).code).toBe(0);
    const build = JSON.parse(readFileSync(join(out, 'package', 'prisma.build.json'), 'utf8')) as Record<string, string>;
    expect(build).toEqual({ version: main.version, target: 'x86_64-unknown-linux-gnu', libtorch: expect.stringMatching(/^2\.11\.0/) });
    const dynamic = sh('readelf', ['-d', join(out, 'package', 'prisma.linux-x64-gnu.node')], tmp, process.env);
    expect(dynamic.code, dynamic.stderr).toBe(0);
    expect(dynamic.stdout).toContain('Shared library: [libtorch_cpu.so]');
    expect(dynamic.stdout).not.toMatch(/RUNPATH|RPATH/);
  });
});

describe('npm install -g, then prisma from a new HOME, cache and working directory', () => {
  it('doctor, inspect and demo run', () => {
    const home = mkdtempSync(join(tmp, 'home-'));
    const prefix = join(tmp, 'prefix');
    const work = mkdtempSync(join(tmp, 'work-'));
    npmInstall(['-g', '--prefix', prefix], work, home);
    const prisma = join(prefix, 'bin', 'prisma');
    const installed = join(prefix, 'lib', 'node_modules', 'vit-prisma');
    const record = join(home, '.cache', 'vit-prisma', `libtorch-${TORCH_VERSION}.json`);
    const env = userEnv(home);

    let started = Date.now();
    const doctor = sh(prisma, ['doctor'], work, env);
    log('prisma doctor', started);
    expect(doctor.code, doctor.stderr + doctor.stdout).toBe(0);
    expect(doctor.stdout).toMatch(
      new RegExp(
        `^ {2}addon +${join(prefix, 'lib', 'node_modules', platform.name, 'prisma.linux-x64-gnu.node')} \\(prebuilt, ${platform.name}; `,
        'm',
      ),
    );
    expect(doctor.stdout).toMatch(
      new RegExp(`^ {2}libtorch +2\\.11\\.0\\S* in ${torchLib} \\(.*found now, recorded on first use\\)$`, 'm'),
    );
    expect(doctor.stdout).toContain(`cache     ${join(home, '.cache', 'vit-prisma')} (writable)`);
    expect(doctor.stdout).toMatch(/^ {2}loads +yes/m);

    started = Date.now();
    const inspect = sh(prisma, ['inspect', join(installed, 'models', 'clevr-vit')], work, env);
    log('prisma inspect (first use: sets up libtorch)', started);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.lines).toEqual([expect.stringMatching(/^\[setup\] libtorch: /)]);
    expect(inspect.stdout).toContain('ViTForImageClassification');
    expect(JSON.parse(readFileSync(record, 'utf8'))).toMatchObject({ lib: torchLib });

    started = Date.now();
    const demo = sh(prisma, ['demo', '--out', 'report'], work, env);
    log('prisma demo', started);
    expect(demo.code, demo.stderr).toBe(0);
    expect(demo.stderr).not.toContain('[setup]');
    expect(demo.stdout).toContain(`report: ${join(work, 'report', 'index.html')}`);
    expect(readFileSync(join(work, 'report', 'index.html'), 'utf8')).toContain('Logit lens (Fashion-MNIST)');
  }, 900_000);
});

describe('as a library dependency of a scratch project', () => {
  it("import { loadModel } from 'vit-prisma' gives the clone's logits", async () => {
    const home = mkdtempSync(join(tmp, 'home-'));
    const project = mkdtempSync(join(tmp, 'project-'));
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
    npmInstall([], project, home);
    const image = join(FIXTURES, 'images', 'chelsea.jpg');
    writeFileSync(
      join(project, 'use.mjs'),
      `import { loadModel } from 'vit-prisma';
const dir = new URL('./node_modules/vit-prisma/models/clevr-vit', import.meta.url).pathname;
const model = await loadModel(dir);
const { output } = await model.run([${JSON.stringify(image)}]);
console.log(JSON.stringify({ layers: model.info.nLayers, logits: Array.from(output.data) }));
`,
    );
    const started = Date.now();
    const r = sh(process.execPath, ['use.mjs'], project, userEnv(home));
    log('node use.mjs (loadModel + run)', started);
    expect(r.code, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout) as { layers: number; logits: number[] };

    const config = JSON.parse(readFileSync(join(ROOT, 'models', 'clevr-vit', 'config.json'), 'utf8')) as { num_hidden_layers: number };
    expect(got.layers).toBe(config.num_hidden_layers);
    const clone = await loadModel(join(ROOT, 'models', 'clevr-vit'));
    const want = Array.from((await clone.run([image])).output.data);
    expect(got.logits).toHaveLength(want.length);
    for (const [i, v] of got.logits.entries()) expect(v).toBeCloseTo(want[i]!, 5);
  }, 600_000);
});

describe('no prebuilt addon for the platform (installed without optional dependencies)', () => {
  it('prisma setup builds it from the Rust sources in the package into the cache; inspect then runs', () => {
    const home = mkdtempSync(join(tmp, 'home-'));
    const work = mkdtempSync(join(tmp, 'work-'));
    // Cargo reuses this clone's compiled dependencies (same target folder and libtorch environment),
    // so only the two workspace crates compile. The prefix has a fixed path: Cargo's hashes of the
    // workspace crates include their path, and a new one each run would pile up in the target folder.
    const buildEnv = JSON.parse(readFileSync(join(ROOT, 'native', '.build-env.json'), 'utf8')) as { CARGO_TARGET_DIR: string };
    const prefix = join(buildEnv.CARGO_TARGET_DIR, 'prisma-install-test');
    rmSync(prefix, { recursive: true, force: true });
    npmInstall(['-g', '--prefix', prefix, '--omit=optional'], work, home, [main.file]);
    const prisma = join(prefix, 'bin', 'prisma');
    const env = {
      ...userEnv(home),
      CARGO_TARGET_DIR: buildEnv.CARGO_TARGET_DIR,
      // rustup finds its toolchains under the user's HOME unless told; the new HOME has none.
      RUSTUP_HOME: process.env.RUSTUP_HOME ?? join(homedir(), '.rustup'),
      CARGO_HOME: process.env.CARGO_HOME ?? join(homedir(), '.cargo'),
    };
    const built = join(home, '.cache', 'vit-prisma', 'addon', `${main.version}-linux-x64-gnu`, 'prisma.node');

    const doctor = sh(prisma, ['doctor'], work, env);
    expect(doctor.code).toBe(1);
    expect(doctor.lines.at(-1)).toBe('hint: run `prisma setup` (or any command that needs it) to build it from source (Rust found)');

    let started = Date.now();
    const setup = sh(prisma, ['setup'], work, env);
    log('prisma setup (source build of the addon)', started);
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stderr).toContain(
      `[setup] native addon: no prebuilt addon for linux-x64-gnu; building it from source into ${dirname(built)}`,
    );
    expect(setup.stdout).toContain(`addon     ${built} (built from source into the cache; `);
    expect(sh('readelf', ['-d', built], tmp, process.env).stdout).not.toMatch(/RUNPATH|RPATH/);

    started = Date.now();
    const inspect = sh(prisma, ['inspect', join(prefix, 'lib', 'node_modules', 'vit-prisma', 'models', 'clevr-vit')], work, env);
    log('prisma inspect (the source-built addon)', started);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stderr).toBe('');
    expect(inspect.stdout).toContain('ViTForImageClassification');
  }, 1_800_000);
});
