/**
 * The training loop behind `prisma train`: drives the native trainer in short bursts so progress
 * can be shown, checkpoints atomically every few steps, and finishes by writing a Hugging Face
 * folder (config.json, model.safetensors, preprocessor_config.json) plus training.json and a
 * MODEL_CARD.md that records the exact command, data, timing and held-out accuracy. `runLoop` is
 * shared with the CLIP trainer (./clip.ts); `train` is the ViT classifier's run.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';

import { PrismaError } from '../errors.js';
import { makeDirSync, writeFileAtomic } from '../report/write.js';
import { Trainer, type EvalReport, type LabelledImages, type StepReport, type TrainConfig } from './trainer.js';

export interface TrainingData {
  train: LabelledImages;
  evaluation: LabelledImages;
  classes: string[];
  /** Human description of the data (source, split, seed, question). */
  description: Record<string, unknown>;
  /** Normalisation applied to pixels in [0, 1]: (x - mean) / std per channel. */
  mean: number[];
  std: number[];
}

export interface TrainRun {
  outDir: string;
  config: TrainConfig;
  data: TrainingData;
  resume: boolean;
  checkpointEvery: number;
  /** The command line, recorded verbatim in the model card. */
  command: string;
  onProgress?: (report: StepReport, total: number) => void;
  /** For tests of resumption: stop (as if killed) after this many steps of this run. */
  stopAfterSteps?: number;
}

export interface TrainSummary {
  outDir: string;
  steps: number;
  resumedFromStep: number | null;
  seconds: number;
  evaluation: EvalReport;
  chance: number;
  finished: boolean;
}

const CHECKPOINT = 'checkpoint.safetensors';
const STATE = 'training-state.json';

/** What the loop needs of a trainer (both kinds of `Trainer` satisfy it). */
export interface LoopTrainer<S extends StepReport, E> {
  readonly step: number;
  trainSteps(n: number): Promise<S>;
  evaluate(): Promise<E>;
  saveModel(dir: string): Promise<void>;
  saveCheckpoint(path: string): Promise<void>;
  loadCheckpoint(path: string): Promise<number>;
}

export interface LoopRun<S extends StepReport, E> {
  outDir: string;
  totalSteps: number;
  resume: boolean;
  checkpointEvery: number;
  create(): LoopTrainer<S, E>;
  onProgress?: ((report: S, total: number) => void) | undefined;
  /** For tests of resumption: stop (as if killed) after this many steps of this run. */
  stopAfterSteps?: number | undefined;
  /** The files a finished run writes beside the model (name -> text), before the checkpoint is removed. */
  files(result: LoopResult<E>): Record<string, string>;
}

export interface LoopResult<E> {
  steps: number;
  resumedFromStep: number | null;
  seconds: number;
  evaluation: E;
  finished: boolean;
}

/**
 * Trains in bursts of 10 steps (progress after each), checkpointing every `checkpointEvery` steps;
 * `--resume` continues from the checkpoint. A finished run has its model and `run.files` written,
 * then its checkpoint removed; an unfinished one leaves a checkpoint.
 */
export async function runLoop<S extends StepReport, E>(run: LoopRun<S, E>): Promise<LoopResult<E>> {
  const { outDir, totalSteps } = run;
  makeDirSync(outDir);
  const checkpoint = join(outDir, CHECKPOINT);
  const statePath = join(outDir, STATE);
  if (existsSync(checkpoint) && !run.resume) {
    throw new PrismaError('E_USAGE', `${outDir} holds an unfinished training run`, {
      hint: 'rerun with --resume to continue it, or choose another --out',
    });
  }
  const trainer = run.create();
  let resumedFromStep: number | null = null;
  let elapsedBefore = 0;
  if (run.resume && existsSync(checkpoint)) {
    resumedFromStep = await trainer.loadCheckpoint(checkpoint);
    try {
      elapsedBefore = (JSON.parse(readFileSync(statePath, 'utf8')) as { seconds?: number }).seconds ?? 0;
    } catch {
      elapsedBefore = 0;
    }
  }
  const started = performance.now();
  const seconds = () => elapsedBefore + (performance.now() - started) / 1000;
  // The checkpoint and the state file that --resume reads (its step and the time spent so far).
  const saveProgress = async () => {
    await trainer.saveCheckpoint(checkpoint);
    await writeFileAtomic(statePath, JSON.stringify({ step: trainer.step, seconds: seconds() }));
  };
  const burst = 10;
  let stepsThisRun = 0;
  let sinceCheckpoint = 0;
  while (trainer.step < totalSteps) {
    let n = Math.min(burst, totalSteps - trainer.step);
    if (run.stopAfterSteps !== undefined) n = Math.min(n, run.stopAfterSteps - stepsThisRun);
    if (n <= 0) break;
    const report = await trainer.trainSteps(n);
    stepsThisRun += n;
    sinceCheckpoint += n;
    run.onProgress?.(report, totalSteps);
    if (sinceCheckpoint >= run.checkpointEvery && trainer.step < totalSteps) {
      await saveProgress();
      sinceCheckpoint = 0;
    }
  }
  const finished = trainer.step >= totalSteps;
  const evaluation = await trainer.evaluate();
  const result = { steps: trainer.step, resumedFromStep, seconds: Math.round(seconds() * 10) / 10, evaluation, finished };
  if (!finished) {
    await saveProgress();
    return result;
  }
  await trainer.saveModel(outDir);
  for (const [name, text] of Object.entries(run.files(result))) await writeFileAtomic(join(outDir, name), text);
  rmSync(checkpoint, { force: true });
  rmSync(statePath, { force: true });
  return result;
}

export async function train(run: TrainRun): Promise<TrainSummary> {
  const { outDir, config, data } = run;
  const chance = 1 / data.classes.length;
  const r = await runLoop({
    ...run,
    totalSteps: config.totalSteps,
    create: () => Trainer.create(config, data.train, data.evaluation),
    files: (r) => {
      const record = {
        command: run.command,
        config,
        data: data.description,
        steps: r.steps,
        resumedFromStep: r.resumedFromStep,
        trainSeconds: r.seconds,
        threads: cpus().length,
        heldOut: { accuracy: r.evaluation.accuracy, loss: r.evaluation.loss, n: r.evaluation.n, chance },
      };
      return {
        'preprocessor_config.json': `${JSON.stringify(preprocessorConfig(config, data), null, 2)}\n`,
        'training.json': `${JSON.stringify(record, null, 2)}\n`,
        'MODEL_CARD.md': modelCard(record, data.classes),
      };
    },
  });
  return { outDir, ...r, chance };
}

/** A ViTImageProcessor config reproducing the training normalisation for every other command. */
function preprocessorConfig(config: TrainConfig, data: TrainingData): Record<string, unknown> {
  return {
    image_processor_type: 'ViTImageProcessor',
    do_resize: true,
    size: { height: config.imageSize, width: config.imageSize },
    resample: 2,
    do_rescale: true,
    rescale_factor: 1 / 255,
    do_normalize: true,
    image_mean: data.mean,
    image_std: data.std,
    do_convert_rgb: true,
  };
}

function modelCard(
  record: {
    command: string;
    config: TrainConfig;
    data: Record<string, unknown>;
    steps: number;
    trainSeconds: number;
    threads: number;
    heldOut: { accuracy: number; loss: number; n: number; chance: number };
  },
  classes: string[],
): string {
  const c = record.config;
  return `# Model card

A small vision transformer trained from scratch by \`prisma train\` (vit-prisma). Hugging Face
\`ViTForImageClassification\` format: every prisma command, and transformers itself, loads this folder.

## How it was trained

\`\`\`sh
${record.command}
\`\`\`

- Data: ${Object.entries(record.data)
    .map(([k, v]) => `${k} = ${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('; ')}
- Classes (${classes.length}): ${classes.join(', ')}
- Architecture: image ${c.imageSize}px, patch ${c.patchSize}, d_model ${c.dModel}, ${c.nLayers} layers, ${c.nHeads} heads, d_mlp ${c.dMlp}, ${c.activation}
- Optimiser: AdamW (lr ${c.lr}, weight decay ${c.weightDecay}), ${c.warmupSteps} warm-up steps then cosine decay; batch ${c.batchSize}; ${record.steps} steps; seed ${c.seed}
- Training time: ${record.trainSeconds} s on this machine (${record.threads} CPU threads)

## Held-out result

- Accuracy: **${(record.heldOut.accuracy * 100).toFixed(1)}%** on ${record.heldOut.n} held-out images (chance: ${(record.heldOut.chance * 100).toFixed(1)}%)
- Loss: ${record.heldOut.loss.toFixed(4)}

Training is deterministic for a given command on a given libtorch build and thread count; rerunning
the command above reproduces the held-out accuracy.
`;
}
