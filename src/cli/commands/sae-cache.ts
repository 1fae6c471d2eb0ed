/**
 * `prisma sae cache MODEL DATA --hook HOOK --tokens all|cls|patches --out DIR`: a model's
 * activations over a folder, written to memory-mappable shards that `prisma sae train --cache`
 * reads; `prisma sae cache-merge --out DIR CACHE...` joins caches made with `--shard k/n`.
 */
import { Option, type Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { parsePositiveInt } from '../../options.js';
import { cacheActivations, mergeCaches, type CacheDtype, type CacheMeta, type CacheTokens } from '../../sae/cache.js';
import { parseShard } from '../../shard.js';
import { startProgress } from '../ui/progress.js';
import { argParser, expandOptions, jsonOption, openModel, recursiveOption, type ModelOptions, withModelOptions } from './common.js';

export interface SaeCacheOptions extends ModelOptions {
  hook: string[];
  tokens: string;
  out: string;
  /** The cache's storage dtype (the model runs in float32). */
  dtype: string;
  shard?: string;
  imagesPerShard?: number;
  batchSize?: number;
  recursive?: boolean;
  json?: boolean;
}

export interface SaeCacheSummary {
  out: string;
  hooks: string[];
  tokens: string;
  dtype: string;
  images: number;
  rows: number;
  shards: number;
  /** Images already cached by an interrupted run, kept. */
  resumed: number;
}

const TOKENS: readonly CacheTokens[] = ['all', 'cls', 'patches'];
const DTYPES: Record<string, CacheDtype> = { f32: 'f32', float32: 'f32', f16: 'f16', float16: 'f16', bf16: 'bf16', bfloat16: 'bf16' };

function summary(out: string, meta: CacheMeta, resumed: number): SaeCacheSummary {
  return {
    out,
    hooks: meta.identity.hooks,
    tokens: meta.identity.tokens,
    dtype: meta.identity.dtype,
    images: meta.images,
    rows: meta.rows,
    shards: meta.shards,
    resumed,
  };
}

export async function saeCacheCommand(
  model: string,
  data: string[],
  options: SaeCacheOptions,
  ctx: CommandContext,
): Promise<SaeCacheSummary> {
  const tokens = options.tokens as CacheTokens;
  if (!TOKENS.includes(tokens)) throw usageError(`--tokens must be all, cls or patches, got '${options.tokens}'`);
  const dtype = DTYPES[options.dtype.toLowerCase()];
  if (!dtype) throw usageError(`--dtype must be f32, f16 or bf16, got '${options.dtype}'`);
  const shard = options.shard === undefined ? undefined : parseShard(options.shard);
  const hooks = options.hook.flatMap((h) => h.split(',')).filter((h) => h.trim() !== '');
  const opened = await openModel(model, { ...options, dtype: 'f32' }, ctx);
  let progress: ReturnType<typeof startProgress> | undefined;
  const result = await cacheActivations(opened, data, options.out, {
    hooks,
    tokens,
    dtype,
    ...(shard ? { shard } : {}),
    ...(options.imagesPerShard === undefined ? {} : { imagesPerShard: options.imagesPerShard }),
    ...(options.batchSize === undefined ? {} : { batchSize: options.batchSize }),
    expand: expandOptions(options, ctx),
    info: { command: ['prisma', 'sae', 'cache', model, ...data].join(' ') },
    onProgress: (done, total, skipped) => {
      if (!progress) {
        if (skipped > 0 && !ctx.json)
          ctx.io.stderr.write(`prisma: resuming ${options.out}: ${skipped} of ${total} images already cached\n`);
        progress = startProgress(ctx, total, 'caching');
      }
      progress.update(done);
    },
  });
  progress?.stop();
  return summary(options.out, result.meta, result.resumed);
}

export function registerSaeCache(sae: Command, ctx: CommandContext): void {
  const cmd = sae
    .command('cache')
    .description("write a model's activations over a folder into shards for `prisma sae train --cache` (resumable)")
    .argument('<MODEL_DIR>', 'model folder (or hub ID)')
    .argument('<DATA...>', 'folders of images (a `prisma dataset` folder reads its images/), image files or pixel tensors')
    .addOption(
      new Option('--hook <name>', 'hook to cache, e.g. blocks.1.hook_resid_post (repeatable or comma-separated)')
        .makeOptionMandatory()
        .argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]),
    )
    .addOption(new Option('--tokens <which>', 'tokens of each image: all, cls (class token) or patches').default('all'))
    .addOption(new Option('--out <dir>', 'cache folder (an interrupted run resumes into it)').makeOptionMandatory())
    .addOption(new Option('--dtype <dtype>', 'stored as f32, f16 or bf16 (the model runs in float32)').default('f32'))
    .addOption(new Option('--shard <k/n>', 'cache only part k of n of the inputs (merge the parts with `prisma sae cache-merge`)'))
    .addOption(
      new Option('--images-per-shard <n>', 'images per shard file (default: about 256 MiB each)').argParser(
        argParser((v) => parsePositiveInt(v, '--images-per-shard')),
      ),
    )
    .addOption(
      new Option('--batch-size <n>', 'images per forward (default: as many as fit in about 1 GB)').argParser(
        argParser((v) => parsePositiveInt(v, '--batch-size')),
      ),
    )
    .addOption(recursiveOption());
  // --dtype here is the cache's, and the model runs without SAEs.
  withModelOptions(cmd, { dtype: false, saes: false })
    .addOption(jsonOption())
    .action(async (model: string, data: string[], options: SaeCacheOptions) => {
      printJson(ctx, await saeCacheCommand(model, data, options, ctx));
    });
  sae
    .command('cache-merge')
    .description('merge finished caches of the same activations (e.g. --shard parts from several machines) into a new one')
    .argument('<CACHE...>', 'cache folders')
    .addOption(new Option('--out <dir>', 'new cache folder').makeOptionMandatory())
    .addOption(jsonOption())
    .action((caches: string[], options: { out: string }) => {
      printJson(ctx, summary(options.out, mergeCaches(options.out, caches), 0));
    });
}
