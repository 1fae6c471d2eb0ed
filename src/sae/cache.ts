/**
 * The SAE activation cache (`prisma sae cache`): images are read and preprocessed here, a batch at
 * a time, and the core runs the model up to the last hooked block and writes the chosen tokens into
 * fixed-size safetensors shards with a metadata.json (crates/prisma-core/src/sae/cache.rs). Memory is
 * one batch whatever the folder holds; a killed run resumes at its first unfinished shard; caches
 * of separate `--shard k/n` parts merge into one (`mergeCaches`).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { usageError } from '../errors.js';
import { expandInputs, type ExpandOptions } from '../image/preprocess.js';
import type { Model } from '../model.js';
import { NativeSaeCacheHandle, saeCacheInfo, saeCacheMerge } from '../native.js';
import { hashJson, inputsFingerprint } from '../shard-manifest.js';
import { formatShard, inputKeys, selectShard, type Shard } from '../shard.js';
import { rowsPerBatch } from '../batching.js';
import type { CacheIdentity } from '../generated/contract/CacheIdentity.js';
import type { CacheMeta } from '../generated/contract/CacheMeta.js';
import type { CachePart } from '../generated/contract/CachePart.js';
import type { CacheRequest } from '../generated/contract/CacheRequest.js';
import type { PixelBatch } from '../tensor.js';

export type CacheTokens = 'all' | 'cls' | 'patches';
export type CacheDtype = 'f32' | 'f16' | 'bf16';

export type { CacheIdentity, CacheMeta, CachePart };

export interface CacheOptions {
  hooks: readonly string[];
  tokens?: CacheTokens;
  dtype?: CacheDtype;
  /** Images per shard file (default: about 256 MiB of activations per shard). */
  imagesPerShard?: number;
  /** Only this part of the inputs (src/shard.ts's stable partition). */
  shard?: Shard;
  /** Images per forward (default: what fits the batch memory budget; lowered to divide imagesPerShard). */
  batchSize?: number;
  expand?: ExpandOptions;
  /** After each batch: images written so far (this run's part), of `total`; `skipped` were already there. */
  onProgress?: (done: number, total: number, skipped: number) => void;
  /** Recorded in metadata.json (e.g. the command line). */
  info?: Record<string, unknown>;
}

export interface CacheResult {
  meta: CacheMeta;
  /** Images found in complete shards from an earlier, interrupted run. */
  resumed: number;
}

const SHARD_BYTES = 256 * 2 ** 20;

/**
 * The folder's images: a `prisma dataset` folder's images/ (it has dataset.json), else the folder
 * (or files) as given.
 */
export async function dataInputs(data: readonly string[], expand: ExpandOptions = {}): Promise<{ files: string[]; roots: string[] }> {
  const roots: string[] = [];
  for (const d of data) {
    const isDataset = await stat(join(d, 'dataset.json')).then(
      (s) => s.isFile(),
      () => false,
    );
    roots.push(isDataset ? join(d, 'images') : d);
  }
  return { files: await expandInputs(roots, expand), roots };
}

/**
 * SHA-256 over the model folder's files (names and bytes, in name order) plus the dtype and input
 * size it runs at: the same model copied to another machine has the same fingerprint.
 */
export async function modelFingerprint(model: Model): Promise<string> {
  const dir = model.info.modelDir;
  const hash = createHash('sha256');
  const names = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isFile() || e.isSymbolicLink())
    .map((e) => e.name)
    .sort();
  for (const name of names) {
    const path = join(dir, name);
    if (!(await stat(path)).isFile()) continue;
    hash.update(`${name}\0`);
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    hash.update('\0');
  }
  hash.update(JSON.stringify({ dtype: model.info.dtype, imageSize: model.info.imageSize, labels: model.info.labels }));
  return hash.digest('hex');
}

function rowsOf(batch: PixelBatch, start: number, end: number): PixelBatch {
  const per = batch.data.length / batch.shape[0];
  const shape = [end - start, ...batch.shape.slice(1)] as PixelBatch['shape'];
  return { data: batch.data.subarray(start * per, end * per), shape, labels: batch.labels.slice(start, end) };
}

/**
 * Writes (or finishes) a cache of `model`'s activations at `options.hooks` over `data` into `out`.
 * Refuses a folder holding a cache of other activations or inputs (E_CACHE_MISMATCH).
 */
export async function cacheActivations(model: Model, data: readonly string[], out: string, options: CacheOptions): Promise<CacheResult> {
  if (options.hooks.length === 0) throw usageError('give at least one --hook');
  const hooks = model.matchHooks([...options.hooks]);
  const { files, roots } = await dataInputs(data, options.expand);
  const keys = inputKeys(files, roots);
  const chosen = options.shard ? selectShard(files, keys, options.shard).map((e) => e.position) : files.map((_, i) => i);
  const partFiles = chosen.map((i) => files[i]!);
  const partKeys = chosen.map((i) => keys[i]!);
  const plan = await model.planInputs(partFiles, 1);
  const total = plan.total;
  if (total === 0) throw usageError(`shard ${options.shard ? formatShard(options.shard) : ''} holds no inputs`);
  const dtype = options.dtype ?? 'f32';
  const shapes = new Map(model.hookShapes(1).map((h) => [h.name, h.shape]));
  const tokens = options.tokens ?? 'all';
  const perImageValues = hooks.reduce((sum, h) => {
    const s = shapes.get(h) ?? [1, 1, 1];
    const t = tokens === 'cls' ? 1 : (s[1] ?? 1);
    return sum + t * (s[2] ?? 1);
  }, 0);
  const bytes = dtype === 'f32' ? 4 : 2;
  // Forwards never straddle shards, so a resumed run (from a shard's first image) forwards the same
  // batches as an uninterrupted one and writes the same bytes (a product over other rows may round
  // differently): shards hold a whole number of batches.
  let batchSize = options.batchSize ?? rowsPerBatch(model, hooks);
  let imagesPerShard = options.imagesPerShard ?? Math.max(1, Math.floor(SHARD_BYTES / (perImageValues * bytes)));
  if (options.imagesPerShard === undefined) imagesPerShard = Math.max(batchSize, imagesPerShard - (imagesPerShard % batchSize));
  while (imagesPerShard % batchSize !== 0) batchSize -= 1;
  const spec: CacheRequest = {
    hooks,
    tokens,
    dtype,
    imagesPerShard,
    modelFingerprint: await modelFingerprint(model),
    preprocessing: hashJson(await model.preprocessSpec()),
    shard: options.shard ? formatShard(options.shard) : null,
    images: total,
    inputs: inputsFingerprint(partKeys),
    info: {
      model: resolve(model.info.modelDir),
      architecture: model.info.architecture,
      data: data.map((d) => resolve(d)),
      ...options.info,
    },
  };
  const cache = await NativeSaeCacheHandle.open(model.native, out, spec);
  const resumed = cache.imagesDone();
  let done = resumed;
  options.onProgress?.(done, total, resumed);
  if (done < total) {
    // One row per file: skip the files already cached. Tensor files may hold several rows: then
    // skip rows, not files, to where the last run stopped.
    const oneEach = total === partFiles.length;
    const rest = await model.planInputs(oneEach ? partFiles.slice(done) : partFiles, batchSize);
    let offset = oneEach ? done : 0;
    for await (const batch of rest.batches()) {
      const n = batch.shape[0];
      const from = Math.max(0, done - offset);
      offset += n;
      if (from >= n) continue;
      const part = from > 0 ? rowsOf(batch, from, n) : batch;
      await cache.append(model.native, part.data, [...part.shape]);
      done += part.shape[0];
      options.onProgress?.(done, total, resumed);
    }
  }
  const meta = cache.finish();
  return { meta, resumed };
}

/** A finished cache's metadata, every shard checked (E_CACHE_CORRUPT, E_CACHE_MISMATCH). */
export function readCache(dir: string): CacheMeta {
  return saeCacheInfo(dir);
}

/** Merges finished caches of the same activations (e.g. `--shard k/n` parts) into a new folder. */
export function mergeCaches(out: string, caches: readonly string[]): CacheMeta {
  if (caches.length === 0) throw usageError('give the cache folders to merge');
  return saeCacheMerge(out, [...caches]);
}
