#!/usr/bin/env node
// Activation-patching benchmark (issue: `bench/patch`). For a resid layer x pos sweep and a
// layer x head sweep, on the vit-tiny-cls fixture and on a random-init ViT-B/16, times in one run:
//   ours          batched engine (starts at the patched layer / site, class-token-only last block)
//   ours naive    one full forward per patch through our own run API with an intervention
//   python TL way one HF forward with PyTorch hooks per patch   (bench/python/patch_tl_way.py)
//   python best   batched patches, skipping unchanged layers     (bench/python/patch_best.py)
//   attribution   gradient estimate over all (layer, pos), reported in forward-equivalents
// and checks every implementation's values against ours (max |diff| <= 1e-4).
// Usage: node bench/patch.mjs [--skip-vitb] [--skip-tiny] [--vitb DIR] [--fast-linear] [--tl-sample K] [--rounds R] [--python-results DIR]   (after `npm run setup`; needs the
// fixtures venv with transformers, see fixtures/README.md, and bench/python/make_random_vit.py).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

// The addon has no rpath: the library's loader puts libtorch in place first (src/setup/load.ts).
const native = (await import('../dist/setup/load.js')).loadNative();
const args = process.argv.slice(2);
const skipVitB = args.includes('--skip-vitb');
const skipTiny = args.includes('--skip-tiny');
// Our sweeps with their linear layers on oneDNN (PatchOptions.fastLinear); rows are labelled so.
const fastLinear = args.includes('--fast-linear');
const tlSample = Number(args[args.indexOf('--tl-sample') + 1]) || 48;
// Alternating Python/ours rounds on the small model (see below).
const pairs = args.includes('--rounds') ? Number(args[args.indexOf('--rounds') + 1]) : 7;
// ViT-B's head sweep (~1 min a round with both Python peers) is alternated too; its resid sweep
// (~10 min a round) runs once.
const bigHeadRounds = args.includes('--vitb-head-rounds') ? Number(args[args.indexOf('--vitb-head-rounds') + 1]) : 3;
const sweeps = args.includes('--sweeps') ? args[args.indexOf('--sweeps') + 1].split(',') : ['resid', 'head'];
// Reuse Python results measured earlier on this machine (bench/python/run_all.sh writes them):
// ViT-B's best-Python resid sweep alone takes ~5 minutes.
const reuse = args.includes('--python-results') ? args[args.indexOf('--python-results') + 1] : null;
const python = process.env.PRISMA_PYTHON ?? join(homedir(), '.cache/vit-prisma/torch-2.11.0/bin/python');
// --vitb DIR: another ViT-B/16 folder (e.g. make_random_vit.py DIR 0.02), its rows named after it.
const vitbArg = args.includes('--vitb') ? args[args.indexOf('--vitb') + 1] : null;
const vitb = vitbArg ?? join(homedir(), '.cache/vit-prisma/bench/vit-b16');
const work = join(tmpdir(), `prisma-bench-${process.pid}`);
mkdirSync(work, { recursive: true });

function py(script, extra) {
  const out = join(work, `${script}-${Date.now()}.json`);
  execFileSync(python, [join('bench/python', script), ...extra, '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  return JSON.parse(readFileSync(out, 'utf8'));
}
const secs = (t) => (performance.now() - t) / 1000;
const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
function maxDiff(a, b) {
  let m = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    if (b[i] === null || b[i] === undefined || a[i] === null) continue;
    m = Math.max(m, Math.abs(a[i] - b[i]));
    n++;
  }
  return { max: m, compared: n };
}

async function naive(model, clean, corrupt, shape, sweep, info, target, baseline, sample) {
  // One full forward per patch, written only with the public run API.
  const hook = (l) => (sweep === 'resid' ? `blocks.${l}.hook_resid_pre` : `blocks.${l}.attn.hook_z`);
  const items = [];
  for (let l = 0; l < info.nLayers; l++) for (let i = 0; i < (sweep === 'resid' ? info.nPos : info.nHeads); i++) items.push([l, i]);
  const chosen = sample ? items.filter((_, k) => k % Math.ceil(items.length / sample) === 0) : items;
  const cleanCache = await model.run(clean, shape, { cache: [sweep === 'resid' ? 'blocks.*.hook_resid_pre' : 'blocks.*.attn.hook_z'] });
  const values = new Array(items.length).fill(null);
  const t = performance.now();
  for (const [l, i] of chosen) {
    const src = cleanCache.cache.find((c) => c.name === hook(l));
    const select = sweep === 'resid' ? { pos: [i] } : { head: [i] };
    const out = await model.run(corrupt, shape, {
      interventions: JSON.stringify([{ hook: hook(l), select, action: 'patch', tensor: 'src' }]),
      tensors: [{ name: 'src', shape: src.shape, data: src.data }],
    });
    const logits = out.output.data;
    values[l * (sweep === 'resid' ? info.nPos : info.nHeads) + i] = logits[target] - logits[baseline];
  }
  const measured = secs(t);
  return { values, seconds: (measured * items.length) / chosen.length, sampled: chosen.length < items.length, measured: chosen.length };
}

const rows = [];
const cases = skipTiny
  ? []
  : [{ name: 'vit-tiny-cls', key: 'tiny', dir: 'fixtures/models/vit-tiny-cls', pixels: 'fixtures/reference/vit-tiny-cls.safetensors' }];
if (!skipVitB && existsSync(join(vitb, 'model.safetensors'))) {
  const pixels =
    reuse && existsSync(join(reuse, 'vitb-pixels.safetensors'))
      ? join(reuse, 'vitb-pixels.safetensors')
      : join(work, 'vitb-pixels.safetensors');
  cases.push({
    name: vitbArg ? `ViT-B/16 (random, ${vitbArg.split('/').filter(Boolean).at(-1)})` : 'ViT-B/16 (random)',
    key: 'vitb',
    dir: vitb,
    pixels,
    random: !pixels.startsWith(reuse ?? '\0'),
  });
}
/** Python result: reused from --python-results when present, else run now. */
function pyResult(key, sweep, impl, runArgs) {
  const names =
    impl === 'best' ? [`${key}-${sweep}-best.json`] : [`${key}-${sweep}-tl_way.json`, `${key}-${sweep}-tl_way-sample${tlSample}.json`];
  for (const n of names) if (reuse && existsSync(join(reuse, n))) return JSON.parse(readFileSync(join(reuse, n), 'utf8'));
  return py(impl === 'best' ? 'patch_best.py' : 'patch_tl_way.py', runArgs);
}
/** Total time of a Python run: the sweep (extrapolated when sampled) plus caching the clean/corrupt runs. */
const pyTotal = (r) => (r.seconds_extrapolated ?? r.seconds) + (r.seconds_cache ?? 0);

for (const c of cases) {
  if (c.random)
    py('patch_best.py', ['--model', c.dir, '--sweep', 'head', '--random-224', '0', '--save-pixels', c.pixels, '--max-layers', '1']);
  const model = await native.NativeModel.load(c.dir);
  const info = model.info();
  const px = native.readTensorFile(c.pixels).find((t) => t.name === 'pixel_values');
  const one = px.data.length / px.shape[0];
  const shape = [1, ...px.shape.slice(1)];
  const clean = px.data.slice(0, one);
  const corrupt = px.data.slice(one, 2 * one);
  // Plain forward time (batch 1), the unit of "forward-equivalents".
  await model.run(clean, shape, {});
  let t = performance.now();
  const reps = info.dModel >= 512 ? 5 : 50;
  for (let i = 0; i < reps; i++) await model.run(clean, shape, {});
  const forward = secs(t) / reps;
  for (const sweep of sweeps) {
    const what = sweep === 'resid' ? 'resid_pre' : 'head_z';
    const by = sweep === 'resid' ? 'layer_pos' : 'layer_head';
    const big = info.dModel >= 512;
    const bestArgs = ['--model', c.dir, '--sweep', sweep, '--pixels', c.pixels, '--repeat', big ? '1' : '5'];
    // This host's speed drifts by tens of percent within minutes, so on the small model (seconds per
    // round) Python and ours are measured in alternating rounds and each round gives one ratio.
    const rounds = big ? (sweep === 'head' ? bigHeadRounds : 1) : pairs;
    const fresh = rounds > 1;
    const measured = [];
    let ours;
    let best;
    let tl;
    for (let round = 0; round < rounds; round++) {
      best = fresh ? py('patch_best.py', bestArgs) : pyResult(c.key, sweep, 'best', bestArgs);
      const tlArgs = [
        '--model',
        c.dir,
        '--sweep',
        sweep,
        '--pixels',
        c.pixels,
        '--target',
        String(best.target),
        '--baseline',
        String(best.baseline),
        '--repeat',
        big ? '1' : '5',
      ];
      const sampled = big && sweep === 'resid' ? [...tlArgs, '--sample', String(tlSample)] : tlArgs;
      tl = fresh ? py('patch_tl_way.py', sampled) : pyResult(c.key, sweep, 'tl', sampled);
      const sweepOptions = { what, by, target: best.target, baseline: best.baseline, ...(fastLinear ? { fastLinear } : {}) };
      const opts = JSON.stringify(sweepOptions);
      // Warm-up on the last layer only; then the median of several full sweeps (one for ViT-B).
      await model.patch(clean, corrupt, shape, JSON.stringify({ ...sweepOptions, layers: [info.nLayers - 1] }), false);
      const times = [];
      for (let rep = 0; rep < (big ? 1 : 50); rep++) {
        t = performance.now();
        ours = JSON.parse(await model.patch(clean, corrupt, shape, opts, false));
        times.push(secs(t));
      }
      measured.push({ ours: median(times), tl: pyTotal(tl), best: pyTotal(best) });
    }
    const oursSeconds = median(measured.map((m) => m.ours));
    const vsTl = measured.map((m) => m.tl / m.ours);
    const vsBest = measured.map((m) => m.best / m.ours);
    const nv = await naive(model, clean, corrupt, shape, sweep, info, best.target, best.baseline, big && sweep === 'resid' ? 24 : 0);
    let attribution = null;
    if (sweep === 'resid') {
      // Alternate plain forwards and attribution sweeps; the ratio of medians, in forward-equivalents.
      const opts = JSON.stringify({ what, by, target: best.target, baseline: best.baseline });
      const [fwd, attr] = [[], []];
      for (let i = 0; i < (big ? 5 : 50); i++) {
        t = performance.now();
        await model.run(clean, shape, {});
        fwd.push(secs(t));
        t = performance.now();
        JSON.parse(await model.patch(clean, corrupt, shape, opts, true));
        attr.push(secs(t));
      }
      attribution = { forwardEquivalents: median(attr) / median(fwd) };
    }
    const range = (xs) => (xs.length > 1 ? `${Math.min(...xs).toFixed(1)}-${Math.max(...xs).toFixed(1)}` : '');
    rows.push({
      model: c.name,
      sweep: `${sweep} (${ours.dims.join('x')})${fastLinear ? ' fast-linear' : ''}`,
      oursS: +oursSeconds.toFixed(4),
      oursNaiveS: +nv.seconds.toFixed(3) + (nv.sampled ? '*' : ''),
      tlWayS: +median(measured.map((m) => m.tl)).toFixed(3) + (tl.sampled ? '*' : ''),
      bestPythonS: +median(measured.map((m) => m.best)).toFixed(4),
      vsTlWay: +median(vsTl).toFixed(2),
      vsTlWayRange: range(vsTl),
      vsBestPython: +median(vsBest).toFixed(2),
      rounds,
      maxDiffBest: maxDiff(ours.value, best.values).max.toExponential(1),
      maxDiffTl: maxDiff(ours.value, tl.values).max.toExponential(1),
      maxDiffNaive: maxDiff(ours.value, nv.values).max.toExponential(1),
      forwardS: +forward.toFixed(4),
      floorS: +((forward * (sweep === 'resid' ? info.nPos : info.nHeads) * (info.nLayers + 1)) / 2).toFixed(3),
      attributionFwdEq: attribution ? +attribution.forwardEquivalents.toFixed(2) : '',
      // Each alternated round's times (s), so that a wide range can be traced to one side.
      ...(rounds > 1
        ? { perRound: measured.map((m) => ({ ours: +m.ours.toPrecision(3), tl: +m.tl.toPrecision(3), best: +m.best.toPrecision(3) })) }
        : {}),
    });
    console.error(JSON.stringify(rows.at(-1)));
  }
}
console.table(rows);
console.log(
  '* sampled and extrapolated. All times include caching the clean/corrupt runs. floorS = sum of the partial forwards the sweep needs, at our batch-1 forward speed.',
);
mkdirSync('bench/results', { recursive: true });
// Rows measured now replace the same (model, sweep) rows of the previous results; the others stay.
const resultsFile = join('bench/results', 'patch-latest.json');
const last = existsSync(resultsFile) ? JSON.parse(readFileSync(resultsFile, 'utf8')) : { rows: [] };
const previous = last.rows.map((r) => ({ date: last.date, ...r }));
const date = new Date().toISOString();
const key = (r) => `${r.model} ${r.sweep}`;
const fresh = new Map(rows.map((r) => [key(r), { ...r, date }]));
const merged = previous.map((r) => fresh.get(key(r)) ?? r);
for (const r of fresh.values()) if (!previous.some((p) => key(p) === key(r))) merged.push(r);
writeFileSync(resultsFile, `${JSON.stringify({ date, rows: merged }, null, 2)}\n`);
