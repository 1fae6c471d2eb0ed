/**
 * `prisma train --clip`: a tiny CLIP trained from scratch on the image-caption pairs of a
 * clevr-lite folder, written as a Hugging Face CLIPModel folder (config.json, model.safetensors,
 * the tokenizer files, preprocessor_config.json) plus training.json and MODEL_CARD.md.
 *
 * Images are preprocessed by the same code `prisma classify` runs on this folder's
 * preprocessor_config.json (src/image/preprocess.ts), so training and inference see identical
 * pixels. Held-out evaluation is zero-shot: each held-out image's largest object (clevr-lite's tie
 * rule) is classified by colour (6 prompts) and by shape (3 prompts) with one prompt template, as
 * `prisma classify --labels ... --template ...` would.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';

import { COLOURS, largestObject, SHAPES } from '../dataset/clevr.js';
import { mapPool } from '../dataset/io.js';
import { usageError } from '../errors.js';
import { parsePreprocessorConfig, preprocessImage } from '../image/preprocess.js';
import { clevrCommand, readClevrFolder, splitHeldOut } from './data.js';
import { runLoop } from './loop.js';
import {
  Trainer,
  type CaptionedImages,
  type ClipEvalReport,
  type ClipStepReport,
  type ClipTrainConfig,
  type ZeroShotTask,
} from './trainer.js';

/** The prompt template of the held-out zero-shot questions: captions say "a large red circle". */
export const DEFAULT_ZERO_SHOT_TEMPLATE = 'a large {}';

export interface CaptionData {
  train: CaptionedImages;
  evaluation: CaptionedImages;
  tasks: ZeroShotTask[];
  imageSize: number;
  description: Record<string, unknown>;
  /** How to remake the data folder. */
  dataCommand: string;
  template: string;
}

export interface CaptionDataRequest {
  dir: string;
  limit?: number | undefined;
  evalFraction: number;
  template: string;
}

/** The CLIPImageProcessor config of a model trained at `size` px: resize (a no-op on the training
 * images), centre crop, mean/std 0.5, the normalisation training used. */
export function clipPreprocessorConfig(size: number): Record<string, unknown> {
  return {
    image_processor_type: 'CLIPImageProcessor',
    processor_class: 'CLIPProcessor',
    do_resize: true,
    size: { shortest_edge: size },
    resample: 3,
    do_center_crop: true,
    crop_size: { height: size, width: size },
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: [0.5, 0.5, 0.5],
    image_std: [0.5, 0.5, 0.5],
    do_convert_rgb: true,
  };
}

function fill(template: string, label: string): string {
  return template.split('{}').join(label);
}

/** Captioned images of a clevr-lite folder, its held-out split and the zero-shot questions on it. */
export async function loadCaptionData(req: CaptionDataRequest): Promise<CaptionData> {
  const { meta, records } = readClevrFolder(req.dir);
  if (!req.template.includes('{}')) throw usageError(`--template '${req.template}' has no '{}' for the label`);
  const all = records.slice(0, req.limit ?? records.length);
  const split = splitHeldOut(all, req.evalFraction, req.dir);
  const size = meta.size;
  const spec = parsePreprocessorConfig(clipPreprocessorConfig(size), [size, size], 'prisma train --clip');
  const load = async (subset: typeof all): Promise<CaptionedImages> => {
    const plane = 3 * size * size;
    const pixels = new Float32Array(subset.length * plane);
    await mapPool(subset.length, 4, async (i) => {
      const r = subset[i]!;
      const img = await preprocessImage(join(req.dir, r.image), spec);
      if (img.height !== size || img.width !== size) throw usageError(`${r.image} is not ${size}x${size}`);
      pixels.set(img.data, i * plane);
    });
    return { pixels, shape: [subset.length, 3, size, size], captions: subset.map((r) => r.caption) };
  };
  const largest = split.heldOut.map((r) => r.objects[largestObject(r)]!);
  const tasks: ZeroShotTask[] = [
    {
      name: 'largest_colour',
      classes: [...COLOURS],
      prompts: COLOURS.map((c) => fill(req.template, c)),
      labels: largest.map((o) => COLOURS.indexOf(o.colour)),
    },
    {
      name: 'largest_shape',
      classes: [...SHAPES],
      prompts: SHAPES.map((s) => fill(req.template, s)),
      labels: largest.map((o) => SHAPES.indexOf(o.shape)),
    },
  ];
  const nEval = split.heldOut.length;
  return {
    train: await load(split.train),
    evaluation: await load(split.heldOut),
    tasks,
    imageSize: size,
    description: {
      source: 'clevr-lite captions',
      dir: req.dir,
      seed: meta.seed,
      train: split.train.length,
      heldOut: nEval,
      heldOutRule: `last ${nEval} images`,
    },
    dataCommand: clevrCommand(req.dir, meta),
    template: req.template,
  };
}

export interface ClipTrainRun {
  outDir: string;
  config: ClipTrainConfig;
  data: CaptionData;
  resume: boolean;
  checkpointEvery: number;
  /** The command line, recorded verbatim in the model card. */
  command: string;
  onProgress?: (report: ClipStepReport, total: number) => void;
  stopAfterSteps?: number;
}

export interface ClipTrainSummary {
  outDir: string;
  steps: number;
  resumedFromStep: number | null;
  seconds: number;
  evaluation: ClipEvalReport;
  finished: boolean;
}

export async function trainClip(run: ClipTrainRun): Promise<ClipTrainSummary> {
  const { outDir, config, data } = run;
  const r = await runLoop({
    ...run,
    totalSteps: config.totalSteps,
    create: () => Trainer.createClip(config, data.train, data.evaluation, data.tasks),
    files: (r) => {
      const record: ClipRecord = {
        outDir,
        command: run.command,
        dataCommand: data.dataCommand,
        config,
        data: data.description,
        template: data.template,
        steps: r.steps,
        resumedFromStep: r.resumedFromStep,
        trainSeconds: r.seconds,
        threads: cpus().length,
        heldOut: { zeroShot: r.evaluation.zeroShot, captionMatching: r.evaluation.accuracy, loss: r.evaluation.loss, n: r.evaluation.n },
      };
      return {
        'preprocessor_config.json': `${JSON.stringify(clipPreprocessorConfig(data.imageSize), null, 2)}\n`,
        'training.json': `${JSON.stringify(record, null, 2)}\n`,
        'MODEL_CARD.md': clipModelCard(record),
      };
    },
  });
  return { outDir, ...r };
}

interface ClipRecord {
  outDir: string;
  command: string;
  dataCommand: string;
  config: ClipTrainConfig;
  data: Record<string, unknown>;
  template: string;
  steps: number;
  resumedFromStep: number | null;
  trainSeconds: number;
  threads: number;
  heldOut: { zeroShot: ClipEvalReport['zeroShot']; captionMatching: number; loss: number; n: number };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const count = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

function clipModelCard(record: ClipRecord): string {
  const c = record.config;
  const rows = record.heldOut.zeroShot
    .map((z) => `| ${z.name} | ${z.classes.join(', ')} | **${pct(z.accuracy)}** | ${pct(z.chance)} | ${pct(z.majority)} |`)
    .join('\n');
  const classify = record.heldOut.zeroShot
    .map((z) => `prisma classify ${record.outDir} IMAGE... --labels ${z.classes.join(',')} --template "${record.template}"`)
    .join('\n');
  return `# Model card

A tiny CLIP (vision + text towers) trained from scratch by \`prisma train --clip\` (vit-prisma) on
clevr-lite image-caption pairs. Hugging Face \`CLIPModel\` format with its tokenizer: every prisma
command (\`prisma classify\` for zero-shot labels) and transformers' \`CLIPModel\` load this folder.

## How it was trained

\`\`\`sh
${record.dataCommand}   # the data (deterministic)
${record.command}
\`\`\`

- Data: ${Object.entries(record.data)
    .map(([k, v]) => `${k} = ${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('; ')}
- Tokenizer: the tokenizer.json of \`${c.tokenizer}\` (CLIP-style byte-level BPE, copied here); text context ${c.contextLength} tokens
- Vision tower: image ${c.imageSize}px, patch ${c.patchSize}, d_model ${c.dModel}, ${count(c.nLayers, 'layer')}, ${count(c.nHeads, 'head')}, d_mlp ${c.dMlp}, ${c.activation}; pre-layernorm, class-token pooling, post-layernorm, projection to ${c.projectionDim}
- Text tower: d_model ${c.textDModel}, ${count(c.textLayers, 'layer')}, ${count(c.textHeads, 'head')}, d_mlp ${c.textDMlp}, ${c.activation}; causal attention with padding masked, pooled at <|endoftext|>, projection to ${c.projectionDim}
- Loss: symmetric contrastive (image→text and text→image cross-entropy over the batch) with a learned temperature (initialised to 1/0.07, clamped at 100); pairs with an identical caption share the target
- Optimiser: AdamW (lr ${c.lr}, weight decay ${c.weightDecay} on matrices), ${c.warmupSteps} warm-up steps then cosine decay; batch ${c.batchSize}; ${record.steps} steps; seed ${c.seed}
- Training time: ${record.trainSeconds} s on this machine (${record.threads} CPU threads)

## Held-out result

Zero-shot classification of the ${record.heldOut.n} held-out images' largest object, with one prompt
per class from the template \`${record.template}\` (no training on these labels):

| question | classes | accuracy | chance (1/classes) | majority class |
|---|---|---|---|---|
${rows}

Caption matching (each held-out image against the captions of its batch of ${c.batchSize}): ${pct(record.heldOut.captionMatching)}; contrastive loss ${record.heldOut.loss.toFixed(4)}.

The same questions from the command line:

\`\`\`sh
${classify}
\`\`\`

Training is deterministic for a given command on a given libtorch build and thread count; rerunning
the commands above reproduces the weights.
`;
}
