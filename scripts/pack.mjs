#!/usr/bin/env node
// Packs what `npm publish` would publish, from a built clone (run `node scripts/setup.mjs` first):
//   node scripts/pack.mjs [--out DIR]
//     -> DIR/vit-prisma-<version>.tgz and DIR/vit-prisma-<platform>-<version>.tgz (napi-rs's
//        platform package, from npm/<platform>/, holding the addon this clone built)
// and prints what it packed as JSON (file names, sizes, file counts). Both are packed from a staging
// copy: dist/ is compiled afresh there (no outputs of deleted sources, no source maps);
// package.json gains the optional dependency on the platform package (what `napi pre-publish` adds
// at publish time); the addon's prisma.build.json loses the builder's libtorch path.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { parseTriple } from '@napi-rs/cli';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outIndex = process.argv.indexOf('--out');
const out = resolve(outIndex > 0 ? process.argv[outIndex + 1] : join(root, 'pack'));

function fail(message) {
  process.stderr.write(`[pack] ${message}\n`);
  process.exit(1);
}
function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} failed`);
  return r.stdout;
}
const readJsonFile = (path) => JSON.parse(readFileSync(path, 'utf8'));
/** `npm pack` in `dir`; its JSON summary (name, filename, size, unpackedSize, entryCount, files). */
function npmPack(dir, extra = []) {
  return JSON.parse(run('npm', ['pack', '--json', '--pack-destination', out, ...extra], dir))[0];
}

const pkg = readJsonFile(join(root, 'package.json'));
const addon = join(root, 'native', 'prisma.node');
const buildInfo = join(root, 'native', 'prisma.build.json');
if (!existsSync(addon) || !existsSync(buildInfo)) fail('no native/prisma.node and prisma.build.json: run `node scripts/setup.mjs` first');
const build = readJsonFile(buildInfo);
const platform = parseTriple(build.target).platformArchABI;
const platformDir = join(root, 'npm', platform);
if (!existsSync(join(platformDir, 'package.json')))
  fail(`no npm/${platform}/package.json: add ${build.target} to napi.targets and run \`napi create-npm-dirs\``);

mkdirSync(out, { recursive: true });
const stage = mkdtempSync(join(tmpdir(), 'prisma-pack-'));
try {
  // The main package: the files npm would pack from this clone, with dist/ compiled afresh.
  const main = join(stage, 'main');
  const listed = JSON.parse(run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], root))[0].files.map((f) => f.path);
  for (const path of listed.filter((p) => !p.startsWith('dist/'))) {
    mkdirSync(dirname(join(main, path)), { recursive: true });
    copyFileSync(join(root, path), join(main, path));
  }
  run(
    join(root, 'node_modules', '.bin', 'tsc'),
    ['-p', join(root, 'tsconfig.json'), '--outDir', join(main, 'dist'), '--sourceMap', 'false'],
    root,
  );
  const platformPackages = Object.fromEntries(pkg.napi.targets.map((t) => [`${pkg.name}-${parseTriple(t).platformArchABI}`, pkg.version]));
  writeFileSync(join(main, 'package.json'), `${JSON.stringify({ ...pkg, optionalDependencies: platformPackages }, null, 2)}\n`);

  // The platform package: npm/<platform>/ plus the addon and its build record.
  const native = join(stage, platform);
  mkdirSync(native);
  const platformPkg = readJsonFile(join(platformDir, 'package.json'));
  if (platformPkg.version !== pkg.version)
    fail(`npm/${platform} is version ${platformPkg.version}, the package ${pkg.version}: run \`napi version\``);
  for (const f of ['package.json', 'README.md']) copyFileSync(join(platformDir, f), join(native, f));
  copyFileSync(addon, join(native, platformPkg.main));
  const { libtorchLib: _builderPath, ...published } = build;
  writeFileSync(join(native, 'prisma.build.json'), `${JSON.stringify(published, null, 2)}\n`);

  const packed = [npmPack(main, ['--ignore-scripts']), npmPack(native)].map(
    ({ name, version, filename, size, unpackedSize, entryCount }) => ({
      name,
      version,
      file: join(out, filename),
      size,
      unpackedSize,
      entryCount,
    }),
  );
  process.stdout.write(`${JSON.stringify(packed, null, 2)}\n`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}
