#!/usr/bin/env node
// Forward benchmark through the public library API (what users call): a hooked forward that caches
// every hook point (and copies them all to JS typed arrays) vs a plain forward, same model, same
// process, reported as a ratio. Usage:
//   node bench/forward.mjs [MODEL_DIR ...]        (default: the vit-tiny-cls fixture and, if present,
//                                                   the random ViT-B/16 from bench/python/make_random_vit.py)
// Run `npm run setup` first. Timings are medians of several runs after a warm-up.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../dist/index.js';

const defaults = ['fixtures/models/vit-tiny-cls', join(homedir(), '.cache/vit-prisma/bench/vit-b16')].filter((d) => existsSync(d));
const dirs = process.argv.slice(2).length ? process.argv.slice(2) : defaults;

async function median(fn, iters) {
  await fn();
  const times = [];
  for (let i = 0; i < iters; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const rows = [];
for (const dir of dirs) {
  const model = await loadModel(dir);
  const { imageSize, numChannels, nLayers, dModel } = model.info;
  const big = dModel >= 512;
  for (const batch of big ? [1, 8] : [1, 32]) {
    const shape = [batch, numChannels, imageSize[0], imageSize[1]];
    const data = new Float32Array(shape.reduce((a, b) => a * b));
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 12.9898) * 0.5;
    const pixels = { data, shape };
    const iters = big ? 5 : 50;
    const plain = await median(() => model.run(pixels), iters);
    const all = await median(() => model.run(pixels, { cache: ['*'] }), iters);
    rows.push({
      model: dir,
      layers: nLayers,
      dModel,
      batch,
      plainMs: +plain.toFixed(2),
      cacheAllMs: +all.toFixed(2),
      ratio: +(all / plain).toFixed(2),
    });
  }
}
console.table(rows);
console.log(JSON.stringify(rows));
