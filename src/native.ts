/**
 * The only module that loads the native addon (`native/prisma.node`, built from crates/prisma-node).
 * See docs/native-api.md for the contract. Every call goes through `guard`/`guardAsync`, which turn
 * native errors (`E_CODE: message`) into PrismaError. The addon is loaded lazily, on first use, so
 * pure parts of the library (preprocessing, argument parsing) work without it.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { PrismaError, hintFor, oneLine, parseCodedMessage } from './errors.js';

// ---------------------------------------------------------------------------------------------
// Contract types (docs/native-api.md)

export interface TensorData {
  name: string;
  shape: number[];
  dtype: string;
  data: Float32Array;
}

export interface TensorInput {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface ModelInfo {
  family: string;
  architecture: string;
  sourceFormat: string;
  modelDir: string;
  configJson: string;
  nParams: number;
  imageSize: number[];
  patchSize: number;
  numChannels: number;
  nLayers: number;
  nHeads: number;
  dModel: number;
  dHead: number;
  dMlp: number;
  nPos: number;
  nPatches: number;
  hasClassToken: boolean;
  nClasses: number;
  labels: string[];
  activation: string;
  device: string;
  dtype: string;
  /** Checkpoint tensors the loader did not use (present in newer addon builds). */
  unexpectedTensors?: string[];
}

export interface HookShape {
  name: string;
  shape: number[];
}

export interface NativeRunOptions {
  cache?: string[];
  stopAtLayer?: number;
  startAtLayer?: number;
  startResid?: TensorInput;
  interventions?: string;
  tensors?: TensorInput[];
}

export interface NativeRunOutput {
  output: TensorData;
  cache: TensorData[];
}

export interface NativeLoadOptions {
  device?: string;
  dtype?: string;
}

interface RawNativeModel {
  info(): ModelInfo;
  hookShapes(batch: number): HookShape[];
  matchHooks(patterns: string[]): string[];
  run(pixels: Float32Array, shape: number[], options?: NativeRunOptions): Promise<NativeRunOutput>;
}

interface RawBinding {
  NativeModel: { load(dir: string, options?: NativeLoadOptions): Promise<RawNativeModel> };
  readTensorFile(path: string): TensorData[];
  saveSafetensors(path: string, tensors: TensorInput[], metadata?: Record<string, string>): Promise<void>;
  cudaAvailable(): boolean;
  libtorchVersion(): string;
}

// ---------------------------------------------------------------------------------------------
// Loading

const ADDON_URL = new URL('../native/prisma.node', import.meta.url);

/** Absolute path where the addon is expected (package root / native / prisma.node). */
export const addonPath: string = fileURLToPath(ADDON_URL);

let binding: RawBinding | undefined;

/** True when the addon file exists (it may still fail to load). */
export function nativeAvailable(): boolean {
  return existsSync(addonPath);
}

function load(): RawBinding {
  if (binding) return binding;
  if (!existsSync(addonPath)) {
    throw new PrismaError('E_NATIVE_MISSING', `native addon not found at ${addonPath}`, {
      hint: 'run `npm run setup`',
    });
  }
  const require = createRequire(import.meta.url);
  try {
    binding = require('../native/prisma.node') as RawBinding;
  } catch (err) {
    const detail = err instanceof Error ? oneLine(err.message) : String(err);
    throw new PrismaError('E_NATIVE_LOAD', `native addon failed to load: ${detail}`, {
      hint: 'run `npm run setup` (it rebuilds the addon against the local libtorch)',
      cause: err,
    });
  }
  return binding;
}

// ---------------------------------------------------------------------------------------------
// Error conversion

/** Convert an error thrown by the addon into a PrismaError (`E_CODE: message` -> code + message). */
export function fromNativeError(err: unknown): PrismaError {
  if (err instanceof PrismaError) return err;
  if (!(err instanceof Error)) return new PrismaError('E_INTERNAL', String(err));
  const withFields = err as Error & { code?: unknown; data?: unknown };
  const parsed = parseCodedMessage(err.message);
  const ownCode = typeof withFields.code === 'string' && withFields.code.startsWith('E_') ? withFields.code : undefined;
  const code = ownCode ?? parsed?.code ?? 'E_INTERNAL';
  const message = oneLine(parsed?.message ?? err.message) || code;
  const hint = hintFor(code);
  const options: { hint?: string; data?: unknown; cause: unknown } = { cause: err };
  if (hint !== undefined) options.hint = hint;
  if (withFields.data !== undefined) options.data = withFields.data;
  return new PrismaError(code, message, options);
}

function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNativeError(err);
  }
}

async function guardAsync<T>(fn: () => Promise<T>): Promise<T> {
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
}

export function readTensorFile(path: string): TensorData[] {
  const b = load();
  return guard(() => b.readTensorFile(path));
}

export function saveSafetensors(
  path: string,
  tensors: TensorInput[],
  metadata: Record<string, string> = {},
): Promise<void> {
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
