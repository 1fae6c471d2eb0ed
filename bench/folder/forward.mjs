#!/usr/bin/env node
// The floor under `prisma run MODEL PHOTOS`: the same photos preprocessed first (not timed), then
// only the forwards, in batches of the rows a folder job uses (rowsPerBatch), through the library.
// Prints one JSON line. Usage: node bench/folder/forward.mjs MODEL_DIR PHOTO_DIR
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

import { rowsPerBatch } from '../../dist/batching.js';
import { loadModel } from '../../dist/index.js';
import { batchRows, concatBatches } from '../../dist/tensor.js';

const [modelDir, photoDir] = process.argv.slice(2);
const model = await loadModel(modelDir);
const files = readdirSync(photoDir)
  .filter((f) => f.endsWith('.jpg'))
  .sort()
  .map((f) => join(photoDir, f));
const rows = rowsPerBatch(model, []);
const parts = [];
for (const f of files) parts.push(await model.loadInputs([f]));
const all = concatBatches(parts);
const t = performance.now();
for (let start = 0; start < all.shape[0]; start += rows) {
  let b = batchRows(all, start, Math.min(all.shape[0], start + rows));
  // As the folder job does: every forward has `rows` rows.
  if (b.shape[0] < rows) b = batchRows(concatBatches(Array.from({ length: Math.ceil(rows / b.shape[0]) }, () => b)), 0, rows);
  await model.run(b);
}
const seconds = (performance.now() - t) / 1000;
console.log(
  JSON.stringify({
    photos: files.length,
    rowsPerForward: rows,
    forwardSeconds: +seconds.toFixed(2),
    imagesPerSecond: +(files.length / seconds).toFixed(2),
  }),
);
