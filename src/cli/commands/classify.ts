/**
 * `prisma classify MODEL_DIR INPUT... --labels LABELS [--template T]...`: zero-shot classification with
 * a CLIP-style model. Each label becomes the prompt `template` with `{}` replaced; the probabilities
 * are softmax(logit_scale · cos(image embedding, prompt embedding)) over the labels, as CLIP's
 * `logits_per_image.softmax(-1)`. Several templates are ensembled: a label's direction is the
 * renormalised mean of its prompts' unit embeddings (open_clip's `build_zero_shot_classifier`).
 */
import { Option, type Command } from 'commander';

import { rowsPerBatch } from '../../batching.js';
import { printJson, type CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { classPrompts, type Model } from '../../model.js';
import { topK, type Prediction } from '../../tensor.js';
import { parsePositiveInt } from '../../options.js';
import { startProgress } from '../ui/progress.js';
import { bold, useColor } from '../ui/style.js';
import {
  allowNonfiniteOption,
  argParser,
  DEFAULT_TEMPLATE,
  deviceOption,
  dtypeOption,
  expandOptions,
  imageSizeOption,
  jsonOption,
  labelsOption,
  type ModelOptions,
  openModel,
  recursiveOption,
  saeErrorTermOption,
  saeOption,
  templateOption,
} from './common.js';
import { collectInputList, collectInputs, prepareOut } from './analysis.js';
import {
  allFailed,
  checkFolderFlags,
  claimOutFolder,
  finishFolderJob,
  jsonlOption,
  LineSink,
  selectInputs,
  shardManifest,
  shardOption,
} from '../folder-job.js';
import { runForwardJob } from '../forward-job.js';
import type { ClassifyFixed } from '../../report/layouts.js';
import { formatShard, type Shard } from '../../shard.js';
import { isVideoModel } from '../../image/preprocess.js';

export interface ClassifyCommandOptions extends ModelOptions {
  recursive?: boolean;
  out?: string;
  resume?: boolean;
  shard?: Shard;
  jsonl?: boolean;
  topK?: number;
  inputKey?: string;
  json?: boolean;
}

export interface ClassifyReport {
  ok: true;
  schemaVersion: 1;
  model: string;
  /** The first template (all of them in `templates`). */
  template: string;
  templates: string[];
  labels: string[];
  /** Label-major: every template of the first label, then of the next. */
  prompts: string[];
  /** Per input, every label (or the top k) by probability. */
  results: { input: string; predictions: Prediction[] }[];
  /** Folder jobs (--out DIR, --shard, --jsonl): inputs that failed; the others stop at the first. */
  errors?: { input: string; code: string; message: string }[];
}

export async function classifyCommand(
  modelDir: string,
  inputs: string[],
  options: ClassifyCommandOptions,
  ctx: CommandContext,
): Promise<ClassifyReport | undefined> {
  if (options.labels === undefined) throw usageError('classify needs --labels (comma-separated, or a file with one label per line)');
  const folderJob = options.out !== undefined || options.shard !== undefined || options.jsonl === true;
  if (folderJob) checkFolderFlags(options);
  const out = folderJob ? prepareOut(options.out, options.resume) : undefined;
  if (!folderJob && options.resume) throw usageError('--resume needs --out DIR');
  const templates = options.template ?? [DEFAULT_TEMPLATE];
  const model = await openModel(modelDir, { ...options, template: templates }, ctx);
  const labels = model.info.labels;
  if (folderJob) return classifyFolderJob(modelDir, inputs, { ...options, ...(out === undefined ? {} : { out }) }, templates, model, ctx);
  // A batch at a time, like `prisma run`: a folder of any size fits in memory.
  const files = await collectInputs(inputs, ctx.io, isVideoModel(model.info), expandOptions(options, ctx));
  const plan = await model.planInputs(files, rowsPerBatch(model, []), options.inputKey === undefined ? {} : { inputKey: options.inputKey });
  const top: Prediction[][] = [];
  const progress = startProgress(ctx, plan.total, 'classifying');
  try {
    for await (const batch of plan.batches()) {
      top.push(...topK((await model.run(batch)).output, options.topK ?? labels.length, labels));
      progress.update(top.length, batch.labels.at(-1));
    }
  } finally {
    progress.stop();
  }
  return { ...reportHead(modelDir, templates, labels), results: plan.labels.map((input, i) => ({ input, predictions: top[i] ?? [] })) };
}

/** What a classify report holds besides its results. */
function reportHead(modelDir: string, templates: string[], labels: string[]): Omit<ClassifyReport, 'results' | 'errors'> {
  return {
    ok: true,
    schemaVersion: 1,
    model: modelDir,
    template: templates[0]!,
    templates,
    labels,
    prompts: classPrompts(labels, templates),
  };
}

/**
 * classify as a folder job (--out DIR, --shard, --jsonl): a failed input is an error line and the
 * job goes on; DIR gets report.json (the report classify prints, with `errors`) and results.jsonl.
 */
async function classifyFolderJob(
  modelDir: string,
  inputs: string[],
  options: ClassifyCommandOptions,
  templates: string[],
  model: Model,
  ctx: CommandContext,
): Promise<ClassifyReport | undefined> {
  const labels = model.info.labels;
  const list = await collectInputList(inputs, ctx.io, isVideoModel(model.info), expandOptions(options, ctx));
  const entries = selectInputs(list, options.shard);
  const fixed: ClassifyFixed = {
    head: reportHead(modelDir, templates, labels),
  };
  const k = options.topK ?? labels.length;
  // Rows per forward change a row's last bits (forward-job.ts): shards must all use the same.
  const maxRows = rowsPerBatch(model, []);
  const key = { templates, labels, topK: k, inputKey: options.inputKey ?? null, maxRows };
  const manifest =
    options.shard &&
    shardManifest({
      command: 'classify',
      shard: options.shard,
      files: list.files,
      inShard: entries.length,
      model,
      key,
      layout: 'classify',
      fixed,
    });
  const out = options.out;
  if (out !== undefined && (await claimOutFolder(out, options.shard, manifest || undefined, options.resume === true))) {
    ctx.io.stdout.write(`classify shard ${formatShard(options.shard!)}: already finished in ${out}\n`);
    return undefined;
  }
  const sink = new LineSink(out, options.jsonl ? ctx.io.stdout : undefined, !options.jsonl && !options.shard);
  try {
    await sink.open();
    await runForwardJob({
      model,
      entries,
      maxRows,
      ...(options.inputKey === undefined ? {} : { inputKey: options.inputKey }),
      sink,
      ctx,
      title: 'classifying',
      forward: async (batch, keep) =>
        topK((await model.run(batch)).output, k, labels)
          .slice(0, keep)
          .map((predictions) => ({ predictions })),
    });
  } catch (err) {
    await sink.abort();
    throw err;
  }
  const done = await finishFolderJob({
    command: 'classify',
    layout: 'classify',
    fixed,
    sink,
    flags: options,
    ctx,
    ...(manifest ? { manifest } : {}),
  });
  const failed = allFailed(done.digest, options);
  if (failed) throw failed;
  if (done.digest.errors.length > 0 && !options.json && done.report !== undefined) {
    for (const e of done.digest.errors) ctx.io.stderr.write(`failed: ${e.input}: ${e.code}: ${e.message}\n`);
  }
  return done.report as ClassifyReport | undefined;
}

export function formatClassify(r: ClassifyReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(bold(res.input, color));
    for (const p of res.predictions) lines.push(`  ${(100 * p.prob).toFixed(1).padStart(5)}%  ${p.label}`);
  }
  return `${lines.join('\n')}\n`;
}

export function registerClassify(program: Command, ctx: CommandContext): void {
  program
    .command('classify')
    .description('zero-shot classification with a CLIP-style model: probabilities over text labels')
    .argument('<MODEL_DIR>', 'CLIPModel or open_clip folder')
    .argument('<INPUT...>', "image files, folders of images, pre-processed .npy/.safetensors pixel tensors, or '-' for paths on stdin")
    .addOption(recursiveOption())
    .addOption(
      new Option('--out <dir>', 'a folder job: write report.json and results.jsonl to this folder; a failed input does not stop the run'),
    )
    .addOption(new Option('--resume', 'with --shard and --out DIR: a shard that already finished is not run again'))
    .addOption(shardOption())
    .addOption(jsonlOption())
    .addOption(
      new Option('--top-k <k>', 'labels to list per input (default: all)').argParser(argParser((v) => parsePositiveInt(v, '--top-k'))),
    )
    .addOption(new Option('--input-key <name>', "tensor to use from .safetensors inputs holding several (default 'pixel_values')"))
    .addOption(labelsOption())
    .addOption(templateOption())
    .addOption(imageSizeOption())
    .addOption(deviceOption())
    .addOption(dtypeOption())
    .addOption(allowNonfiniteOption())
    .addOption(saeOption())
    .addOption(saeErrorTermOption())
    .addOption(jsonOption())
    .action(async (modelDir: string, inputs: string[], options: ClassifyCommandOptions) => {
      const report = await classifyCommand(modelDir, inputs, options, ctx);
      if (report === undefined) return;
      if (options.json) printJson(ctx, report);
      else ctx.io.stdout.write(formatClassify(report, useColor(ctx.io.stdout, ctx.io.env)));
    });
}
