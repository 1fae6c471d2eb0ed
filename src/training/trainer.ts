/**
 * Typed wrapper over the addon's NativeTrainer. The training loop itself lives in ./loop.ts; this
 * module only converts arguments, results and errors.
 */
import { PrismaError } from '../errors.js';
import { guard, guardAsync, rawBinding } from '../native.js';

/** Mirrors prisma-core's TrainConfig (camelCase JSON). */
export interface TrainConfig {
  imageSize: number;
  patchSize: number;
  numChannels: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
  dMlp: number;
  activation: string;
  labels: string[];
  batchSize: number;
  totalSteps: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  seed: number;
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
  };
}

export class Trainer {
  private constructor(private readonly raw: RawTrainer) {}

  static create(config: TrainConfig, train: LabelledImages, evaluation: LabelledImages): Trainer {
    const binding = rawBinding() as unknown as TrainerBinding;
    if (typeof binding.NativeTrainer?.create !== 'function') {
      throw new PrismaError('E_NATIVE_LOAD', 'this build of the native addon has no trainer', { hint: 'run `npm run setup`' });
    }
    const raw = guard(() =>
      binding.NativeTrainer.create(
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

  get step(): number {
    return this.raw.step();
  }

  async trainSteps(n: number): Promise<StepReport> {
    return JSON.parse(await guardAsync(() => this.raw.trainSteps(n))) as StepReport;
  }

  async evaluate(): Promise<EvalReport> {
    return JSON.parse(await guardAsync(() => this.raw.evaluate())) as EvalReport;
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
