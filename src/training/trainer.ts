/**
 * Typed wrapper over the addon's NativeTrainer (a ViT classifier trainer, or a CLIP trainer on
 * image-caption pairs). The training loop itself lives in ./loop.ts; this module only converts
 * arguments, results and errors.
 */
import { PrismaError } from '../errors.js';
import { guard, guardAsync, rawBinding } from '../native.js';

/** The vision tower's sizes, the same fields in both trainers' configs. */
export interface VisionSizes {
  imageSize: number;
  patchSize: number;
  numChannels: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  dMlp: number;
  activation: string;
}

/** AdamW, schedule and seed, the same fields in both trainers' configs. */
export interface OptimiserSettings {
  batchSize: number;
  totalSteps: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  seed: number;
}

/** Mirrors prisma-core's TrainConfig (camelCase JSON). */
export interface TrainConfig extends VisionSizes, OptimiserSettings {
  labels: string[];
}

export interface StepReport {
  step: number;
  loss: number;
  accuracy: number;
  lr: number;
}

export interface EvalReport {
  step: number;
  loss: number;
  accuracy: number;
  n: number;
}

/** Mirrors prisma-core's ClipTrainConfig (camelCase JSON). */
export interface ClipTrainConfig extends VisionSizes, OptimiserSettings {
  textDModel: number;
  textLayers: number;
  textHeads: number;
  textDMlp: number;
  contextLength: number;
  projectionDim: number;
  /** Folder holding the tokenizer.json captions are encoded with. */
  tokenizer: string;
}

export interface ClipStepReport extends StepReport {
  /** exp(logit_scale), the learned temperature. */
  logitScale: number;
}

/** A zero-shot question on the held-out images: image i's answer is classes[labels[i]]. */
export interface ZeroShotTask {
  name: string;
  classes: string[];
  prompts: string[];
  labels: number[];
}

export interface ZeroShotResult {
  name: string;
  accuracy: number;
  /** 1 / classes. */
  chance: number;
  /** Accuracy of always answering the most common class. */
  majority: number;
  n: number;
  classes: string[];
  prompts: string[];
}

export interface ClipEvalReport extends EvalReport {
  zeroShot: ZeroShotResult[];
}

/** Images as [N, C, H, W] float32 (already normalised) and one caption each. */
export interface CaptionedImages {
  pixels: Float32Array;
  shape: [number, number, number, number];
  captions: string[];
}

/** Images as [N, C, H, W] float32 (already normalised) and their class indices. */
export interface LabelledImages {
  pixels: Float32Array;
  shape: [number, number, number, number];
  labels: Int32Array;
}

interface RawTrainer {
  trainSteps(n: number): Promise<string>;
  evaluate(): Promise<string>;
  saveModel(dir: string): Promise<string>;
  saveCheckpoint(path: string): Promise<string>;
  loadCheckpoint(path: string): Promise<string>;
  step(): number;
}

interface TrainerBinding {
  NativeTrainer: {
    create(
      configJson: string,
      trainPixels: Float32Array,
      trainShape: number[],
      trainLabels: Int32Array,
      evalPixels: Float32Array,
      evalShape: number[],
      evalLabels: Int32Array,
    ): RawTrainer;
    createClip(
      configJson: string,
      trainPixels: Float32Array,
      trainShape: number[],
      trainCaptions: string[],
      evalPixels: Float32Array,
      evalShape: number[],
      evalCaptions: string[],
      tasksJson: string,
    ): RawTrainer;
  };
}

function binding(factory: 'create' | 'createClip'): TrainerBinding {
  const b = rawBinding() as unknown as TrainerBinding;
  if (typeof b.NativeTrainer?.[factory] !== 'function') {
    throw new PrismaError('E_NATIVE_LOAD', `this build of the native addon has no ${factory === 'create' ? '' : 'CLIP '}trainer`, {
      hint: 'run `npm run setup`',
    });
  }
  return b;
}

export class Trainer<S extends StepReport = StepReport, E extends EvalReport = EvalReport> {
  private constructor(private readonly raw: RawTrainer) {}

  static create(config: TrainConfig, train: LabelledImages, evaluation: LabelledImages): Trainer {
    const b = binding('create');
    const raw = guard(() =>
      b.NativeTrainer.create(
        JSON.stringify(config),
        train.pixels,
        train.shape,
        train.labels,
        evaluation.pixels,
        evaluation.shape,
        evaluation.labels,
      ),
    );
    return new Trainer(raw);
  }

  /** A CLIP trainer; `tasks` are zero-shot questions over the evaluation images. */
  static createClip(
    config: ClipTrainConfig,
    train: CaptionedImages,
    evaluation: CaptionedImages,
    tasks: ZeroShotTask[],
  ): Trainer<ClipStepReport, ClipEvalReport> {
    const b = binding('createClip');
    const raw = guard(() =>
      b.NativeTrainer.createClip(
        JSON.stringify(config),
        train.pixels,
        train.shape,
        train.captions,
        evaluation.pixels,
        evaluation.shape,
        evaluation.captions,
        JSON.stringify(tasks),
      ),
    );
    return new Trainer<ClipStepReport, ClipEvalReport>(raw);
  }

  get step(): number {
    return this.raw.step();
  }

  async trainSteps(n: number): Promise<S> {
    return JSON.parse(await guardAsync(() => this.raw.trainSteps(n))) as S;
  }

  async evaluate(): Promise<E> {
    return JSON.parse(await guardAsync(() => this.raw.evaluate())) as E;
  }

  async saveModel(dir: string): Promise<void> {
    await guardAsync(() => this.raw.saveModel(dir));
  }

  async saveCheckpoint(path: string): Promise<void> {
    await guardAsync(() => this.raw.saveCheckpoint(path));
  }

  /** Restores weights, optimiser state and step; returns the step. */
  async loadCheckpoint(path: string): Promise<number> {
    return Number(await guardAsync(() => this.raw.loadCheckpoint(path)));
  }
}
