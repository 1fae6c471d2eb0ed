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
import { classPrompts } from '../../model.js';
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
  templateOption,
} from './common.js';
import { collectInputs } from './analysis.js';
import { isVideoModel } from '../../image/preprocess.js';

export interface ClassifyCommandOptions extends ModelOptions {
  recursive?: boolean;
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
}

export async function classifyCommand(
  modelDir: string,
  inputs: string[],
  options: ClassifyCommandOptions,
  ctx: CommandContext,
): Promise<ClassifyReport> {
  if (options.labels === undefined) throw usageError('classify needs --labels (comma-separated, or a file with one label per line)');
  const templates = options.template ?? [DEFAULT_TEMPLATE];
  const model = await openModel(modelDir, { ...options, template: templates }, ctx);
  const labels = model.info.labels;
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
  return {
    ok: true,
    schemaVersion: 1,
    model: modelDir,
    template: templates[0]!,
    templates,
    labels,
    prompts: classPrompts(labels, templates),
    results: plan.labels.map((input, i) => ({ input, predictions: top[i] ?? [] })),
  };
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
      new Option('--top-k <k>', 'labels to list per input (default: all)').argParser(argParser((v) => parsePositiveInt(v, '--top-k'))),
    )
    .addOption(new Option('--input-key <name>', "tensor to use from .safetensors inputs holding several (default 'pixel_values')"))
    .addOption(labelsOption())
    .addOption(templateOption())
    .addOption(imageSizeOption())
    .addOption(deviceOption())
    .addOption(dtypeOption())
    .addOption(allowNonfiniteOption())
    .addOption(jsonOption())
    .action(async (modelDir: string, inputs: string[], options: ClassifyCommandOptions) => {
      const report = await classifyCommand(modelDir, inputs, options, ctx);
      if (options.json) printJson(ctx, report);
      else ctx.io.stdout.write(formatClassify(report, useColor(ctx.io.stdout, ctx.io.env)));
    });
}
