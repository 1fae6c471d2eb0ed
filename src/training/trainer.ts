/**
 * Typed wrapper over the addon's NativeTrainer (a ViT classifier trainer, or a CLIP trainer on
 * image-caption pairs). The training loop itself lives in ./loop.ts; this module only converts
 * arguments, results and errors.
 */
import { PrismaError } from '../errors.js';
import type { ClipEvalReport } from '../generated/contract/ClipEvalReport.js';
import type { ClipStepReport } from '../generated/contract/ClipStepReport.js';
import type { ClipTrainConfig as WireClipTrainConfig } from '../generated/contract/ClipTrainConfig.js';
import type { EvalReport } from '../generated/contract/EvalReport.js';
import type { StepReport } from '../generated/contract/StepReport.js';
import type { TrainConfig as WireTrainConfig } from '../generated/contract/TrainConfig.js';
import type { ZeroShotResult } from '../generated/contract/ZeroShotResult.js';
import type { ZeroShotTask } from '../generated/contract/ZeroShotTask.js';
import type { NativeTrainer } from '../generated/binding.js';
import { guard, guardAsync, rawBinding } from '../native.js';

/** The JSON the core parses: the compiler checks these configs against the generated contract. */
function wire<T extends WireTrainConfig | WireClipTrainConfig>(config: T): string {
  return JSON.stringify(config);
}

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

/** prisma-core's TrainConfig with every field given (sent through `wire`, typed by the generated contract). */
export interface TrainConfig extends VisionSizes, OptimiserSettings {
  labels: string[];
}

/** prisma-core's ClipTrainConfig with every field given (sent through `wire`). */
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

/** What one call to trainSteps / evaluate reports, as the core serialises it (src/generated/contract/). */
export type { ClipEvalReport, ClipStepReport, EvalReport, StepReport, ZeroShotResult, ZeroShotTask };

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

type RawTrainer = NativeTrainer;

interface TrainerBinding {
  NativeTrainer: typeof NativeTrainer;
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
        wire<WireTrainConfig>(config),
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
        wire<WireClipTrainConfig>(config),
        train.pixels,
        train.shape,
        train.captions,
        evaluation.pixels,
        evaluation.shape,
        evaluation.captions,
        JSON.stringify(tasks satisfies ZeroShotTask[]),
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
