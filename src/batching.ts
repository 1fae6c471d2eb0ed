/** How many inputs one forward takes when a command runs a folder of them (run, classify, ablation references). */
import { totalmem } from 'node:os';

import type { Model } from './model.js';
import { numel } from './tensor.js';

/** Bytes one batch may hold: its recorded activations (in the core and copied to JS) and its forward's own. */
const BATCH_BYTES = Math.min(2 ** 30, totalmem() / 8);
/** Entries a batch takes at most: enough for the products to run at full speed. */
const MAX_ROWS = 64;

/**
 * Inputs per forward so that a batch stays within `BATCH_BYTES`: a folder of any size runs in
 * batches, and what it records streams to the output file, instead of every image's activations
 * being held at once (ViT-B with `--cache '*'` records ~270 MB an image). Every row of a forward is
 * computed on its own, so the batch size changes values by float rounding at most (a product with
 * fewer rows may take another kernel).
 */
export function rowsPerBatch(model: Model, recorded: readonly string[]): number {
  const wanted = new Set(recorded);
  const perInput = perInputHooks(model);
  const recordedValues = model.hookShapes(1).reduce((sum, h) => sum + (wanted.has(h.name) && perInput.has(h.name) ? numel(h.shape) : 0), 0);
  const { nPos, dModel, dMlp } = model.info;
  // A block's forward holds about 9·d_model + 2·d_mlp values a position (as the core estimates).
  const perRow = 4 * (numel(model.inputShape()) + 2 * recordedValues + nPos * (9 * dModel + 2 * dMlp));
  return Math.max(1, Math.min(MAX_ROWS, Math.floor(BATCH_BYTES / perRow)));
}

/**
 * Hooks with a row per input. The others (a CLIP model's text tower, run on its prompts) are the
 * same for every batch: the file gets them once, from the first.
 */
export function perInputHooks(model: Model): Set<string> {
  const two = new Map(model.hookShapes(2).map((h) => [h.name, h.shape[0]]));
  return new Set(
    model
      .hookShapes(1)
      .filter((h) => two.get(h.name) !== h.shape[0])
      .map((h) => h.name),
  );
}
