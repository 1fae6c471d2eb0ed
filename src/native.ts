/**
 * The only module that calls the native addon (built from crates/prisma-node; src/setup/load.ts
 * finds and loads it). See docs/native-api.md for the contract. Every call goes through
 * `guard`/`guardAsync`, which re-type native errors (a JS Error with `code`, `hint`, `data`) as PrismaError. The addon is
 * loaded lazily, on first use, so pure parts of the library (preprocessing, argument parsing) work
 * without it.
 */
import { PrismaError, toPrismaError } from './errors.js';
import { loadNative } from './setup/load.js';

// ---------------------------------------------------------------------------------------------
// Contract types. The addon's own surface is typed by src/generated/binding.ts, the declarations
// napi-rs generates from crates/prisma-node (committed; scripts/contract.mjs fails `npm test`
// when they drift from the build).

import type * as Binding from './generated/binding.js';

export type HookShape = Binding.HookShape;
export type ModelInfo = Binding.ModelInfo;
export type TensorData = Binding.TensorData;
export type TensorInput = Binding.TensorInput;
export type NativeRunOptions = Binding.RunOptions;
export type NativeRunOutput = Binding.RunOutput;
export type NativeLoadOptions = Binding.LoadOptions;

// Analysis results (docs/native-api.md, "Analysis methods"): the addon returns JSON strings.

export type LensSite = 'resid_pre' | 'resid_mid' | 'resid_post';
export type PatchWhat =
  | 'resid_pre'
  | 'resid_mid'
  | 'resid_post'
  | 'attn_out'
  | 'mlp_out'
  | 'head_z'
  | 'head_q'
  | 'head_k'
  | 'head_v'
  | 'head_pattern';
export type PatchBy = 'layer_pos' | 'layer_head' | 'layer_pos_head';
export type AblationMode = 'zero' | 'mean' | 'resample';

export interface NativeLensOptions {
  target?: number;
  sites?: LensSite[];
  topK?: number;
}
export interface NativePatchOptions {
  what: PatchWhat;
  by: PatchBy;
  target: number;
  baseline?: number;
  chunk?: number;
  layers?: number[];
  /** Compute the sweep's linear layers with oneDNN (f32 CPU models): faster on large models, equal to the default kernels only to float rounding. */
  fastLinear?: boolean;
}
export interface NativeDlaOptions {
  target: number;
  baseline?: number;
  perPosition?: boolean;
}
export interface NativeAblateOptions {
  mode: AblationMode;
  what?: PatchWhat;
  by?: PatchBy;
  target: number;
  baseline?: number;
  resampleIndex?: number;
  chunk?: number;
  /** Compute the sweep's linear layers with oneDNN (f32 CPU models): faster on large models, equal to the default kernels only to float rounding. */
  fastLinear?: boolean;
}

export interface Ranked {
  index: number;
  logit: number;
  prob: number;
}
export interface LensLayer {
  layer: number;
  site: LensSite;
  hook: string;
  topK: Ranked[];
  targetLogit: number;
  targetProb: number;
  /** 0 = top. */
  targetRank: number;
  /** Per token, class token first. */
  posTargetLogit: number[];
  posTargetProb: number[];
  posTargetRank: number[];
  posTop1: number[];
}
export interface LensImage {
  target: number;
  logitsTopK: Ranked[];
  /** Layer-major, sites in the order asked. */
  layers: LensLayer[];
}
export interface MetricValue {
  value: number;
  prob: number;
}
export interface PatchResult {
  what: PatchWhat;
  by: PatchBy;
  axes: string[];
  dims: number[];
  layers: number[];
  clean: MetricValue;
  corrupt: MetricValue;
  /** Row-major over `dims`: the metric after patching. */
  value: number[];
  /** [] for attribution. */
  prob: number[];
  /** corrupt = 0, clean = 1. */
  normalised: number[];
  batchedForwards: number;
  patchedRuns: number;
}
export interface DlaComponent {
  name: string;
  kind: 'embed' | 'pos_embed' | 'head' | 'attn_bias' | 'mlp';
  layer: number | null;
  head: number | null;
  value: number;
}
export interface DlaResult {
  target: number;
  baseline: number | null;
  components: DlaComponent[];
  /** [L, H] row-major. */
  heads: number[];
  /** [L, H, pos] row-major, or null. */
  headPositions: number[] | null;
  constant: number;
  sumOfComponents: number;
  logit: number;
}

type RawNativeModel = Binding.NativeModel;
type RawBinding = typeof Binding;

// ---------------------------------------------------------------------------------------------
// Loading (src/setup/load.ts: finds libtorch and the addon, setting them up on first use)

let binding: RawBinding | undefined;

function load(): RawBinding {
  binding ??= loadNative() as RawBinding;
  return binding;
}

// ---------------------------------------------------------------------------------------------
// Error conversion

/**
 * Convert an error thrown by the addon into a PrismaError. The addon's errors are data: a JS Error
 * whose `code`, `hint` and `data` the core set (crates/prisma-node/src/convert.rs); nothing is
 * parsed out of the message. Anything else (napi refusing an argument) is E_INTERNAL.
 */
export function fromNativeError(err: unknown): PrismaError {
  return toPrismaError(err);
}

/** Runs a native call, turning its errors into PrismaError (for wrappers in other modules too). */
export function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNativeError(err);
  }
}

export async function guardAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fromNativeError(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Typed wrappers

/** A loaded native model; every method converts native errors into PrismaError. */
export class NativeModelHandle {
  private constructor(private readonly raw: RawNativeModel) {}

  static async load(dir: string, options: NativeLoadOptions = {}): Promise<NativeModelHandle> {
    const b = load();
    const raw = await guardAsync(() => b.NativeModel.load(dir, options));
    return new NativeModelHandle(raw);
  }

  info(): ModelInfo {
    return guard(() => this.raw.info());
  }

  hookShapes(batch: number): HookShape[] {
    return guard(() => this.raw.hookShapes(batch));
  }

  matchHooks(patterns: string[]): string[] {
    return guard(() => this.raw.matchHooks(patterns));
  }

  run(pixels: Float32Array, shape: number[], options: NativeRunOptions = {}): Promise<NativeRunOutput> {
    return guardAsync(() => this.raw.run(pixels, shape, options));
  }

  /** CLIP-style models: classify against these prompts from now on (`labels[i]` ↔ `prompts[i]`). */
  setClassPrompts(labels: string[], prompts: string[]): Promise<void> {
    return guardAsync(() => this.raw.setClassPrompts(labels, prompts));
  }

  /** Headless models: read logits through a linear probe (`weight` [C, d], `bias` [C]) from a tensor file. */
  setLinearProbe(path: string, labels?: string[]): void {
    guard(() => this.raw.setLinearProbe(path, labels));
  }

  /** Logit lens over a batch; `targets[b]` < 0 means that image's own top-1 class. */
  async logitLens(pixels: Float32Array, shape: number[], options: NativeLensOptions, targets?: number[]): Promise<LensImage[]> {
    const json = JSON.stringify(options);
    return parseResult<LensImage[]>(await guardAsync(() => this.raw.logitLens(pixels, shape, json, targets)), 'logitLens');
  }

  /** Activation patching of one clean image into one corrupted image (`shape` = [1, C, H, W]). */
  async patch(
    clean: Float32Array,
    corrupt: Float32Array,
    shape: number[],
    options: NativePatchOptions,
    attribution = false,
  ): Promise<PatchResult> {
    const json = JSON.stringify(options);
    return parseResult<PatchResult>(await guardAsync(() => this.raw.patch(clean, corrupt, shape, json, attribution)), 'patch');
  }

  /** Direct logit attribution for one image. */
  async dla(pixels: Float32Array, shape: number[], options: NativeDlaOptions): Promise<DlaResult> {
    const json = JSON.stringify(options);
    return parseResult<DlaResult>(await guardAsync(() => this.raw.dla(pixels, shape, json)), 'dla');
  }

  /** Ablation sweep for one image; `references` ([N, C, H, W]) for mean and resample. */
  async ablate(
    pixels: Float32Array,
    shape: number[],
    options: NativeAblateOptions,
    references?: { data: Float32Array; shape: number[] },
  ): Promise<PatchResult> {
    const json = JSON.stringify(options);
    const text = await guardAsync(() =>
      references ? this.raw.ablate(pixels, shape, json, references.data, references.shape) : this.raw.ablate(pixels, shape, json),
    );
    return parseResult<PatchResult>(text, 'ablate');
  }
}

function parseResult<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new PrismaError('E_INTERNAL', `the addon's ${what} result is not valid JSON: ${(err as Error).message}`);
  }
}

export function readTensorFile(path: string): TensorData[] {
  const b = load();
  return guard(() => b.readTensorFile(path));
}

export function saveSafetensors(path: string, tensors: TensorInput[], metadata: Record<string, string> = {}): Promise<void> {
  const b = load();
  return guardAsync(() => b.saveSafetensors(path, tensors, metadata));
}

export function cudaAvailable(): boolean {
  const b = load();
  return guard(() => b.cudaAvailable());
}

export function libtorchVersion(): string {
  const b = load();
  return guard(() => b.libtorchVersion());
}

/** The loaded binding object, for wrappers kept in their own modules (src/training/trainer.ts). */
export function rawBinding(): unknown {
  return load();
}
