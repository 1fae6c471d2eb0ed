#!/usr/bin/env node
// Activation-cache writing (prisma sae cache's library call) against a plain forward stopped after
// the same block, both reading and preprocessing the same image folder in the same batches, in one
// process, alternated; and the process's resident memory while caching a large folder (is it flat?).
// Run `npm run setup` first. Usage:
//   node bench/sae/cache.mjs rate [MODEL_DIR] [IMAGES] [ROUNDS] [HOOK]   (default: the random ViT-B/16
//        from bench/python/make_random_vit.py, 32 images, 2 rounds, blocks.9.hook_resid_post)
//   node bench/sae/cache.mjs memory [MODEL_DIR] [IMAGES]                 (default: vit-tiny-cls, 5000)
// One JSON line per measurement on stdout.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../dist/index.js';
import { cacheActivations } from '../../dist/sae/cache.js';

const [mode = 'rate', modelArg, imagesArg, roundsArg, hookArg] = process.argv.slice(2);
const vitb = join(homedir(), '.cache/vit-prisma/bench/vit-b16');
const modelDir = modelArg || (mode === 'rate' && existsSync(vitb) ? vitb : 'fixtures/models/vit-tiny-cls');
const n = Number(imagesArg ?? (mode === 'rate' ? 32 : 5000));
const tmp = mkdtempSync(join(tmpdir(), 'prisma-cache-bench-'));
const folder = join(tmp, 'images');
mkdirSync(folder);
const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((f) => join('fixtures', 'images', f));
for (let i = 0; i < n; i++) copyFileSync(sources[i % 3], join(folder, `img-${String(i).padStart(5, '0')}${sources[i % 3].slice(-4)}`));
const load = () => loadavg().map((x) => +x.toFixed(1));

const model = await loadModel(modelDir);
const hook = hookArg ?? `blocks.${Math.min(9, model.info.nLayers - 1)}.hook_resid_post`;
const layer = Number(hook.split('.')[1]);
const batch = 8;

async function plain() {
  const t = performance.now();
  const plan = await model.planInputs([folder], batch);
  for await (const b of plan.batches()) await model.run(b, { stopAtLayer: layer + 1 });
  return (performance.now() - t) / 1000;
}

async function cache(out) {
  const t = performance.now();
  await cacheActivations(model, [folder], out, { hooks: [hook], batchSize: batch });
  return (performance.now() - t) / 1000;
}

try {
  if (mode === 'rate') {
    await plain(); // warm-up (first forward, file cache)
    for (let round = 1; round <= Number(roundsArg ?? 2); round++) {
      const out = join(tmp, `cache-${round}`);
      const before = load();
      const p = await plain();
      const c = await cache(out);
      rmSync(out, { recursive: true, force: true });
      const line = {
        bench: 'sae-cache-rate',
        model: modelDir,
        hook,
        images: n,
        batch,
        round,
        plainImagesPerS: +(n / p).toFixed(2),
        cacheImagesPerS: +(n / c).toFixed(2),
        ratio: +(p / c).toFixed(3),
        load: [before, load()],
      };
      console.log(JSON.stringify(line));
    }
  } else {
    const out = join(tmp, 'cache');
    const samples = [];
    let peak = 0;
    const t = performance.now();
    await cacheActivations(model, [folder], out, {
      hooks: [hook],
      batchSize: batch,
      onProgress: (done) => {
        const rss = process.memoryUsage().rss;
        peak = Math.max(peak, rss);
        if (done % 500 === 0 || done === n) samples.push({ images: done, rssMiB: +(rss / 2 ** 20).toFixed(1) });
      },
    });
    console.log(
      JSON.stringify({
        bench: 'sae-cache-memory',
        model: modelDir,
        hook,
        images: n,
        seconds: +((performance.now() - t) / 1000).toFixed(1),
        peakRssMiB: +(peak / 2 ** 20).toFixed(1),
        samples,
        load: load(),
      }),
    );
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
