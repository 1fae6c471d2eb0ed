/**
 * Sparse autoencoders in the library: load any supported format (a SAELens folder, a ViT-Prisma
 * `.pt` / `.pkl.gz` / folder, a saev `sae.pt`; pickles are read as data, never run), describe,
 * save or convert to a SAELens folder, and splice into a model (`Model.splice`, or
 * `RunOptions.saes` for one run).
 *
 *   const sae = await loadSae('saes/layer1', { hook: 'blocks.1.hook_resid_post' });
 *   model.splice(sae, { errorTerm: true });
 *   const { cache } = await model.run(['cat.png'], { cache: ['blocks.1.hook_resid_post.hook_sae_acts_post'] });
 */
import { PrismaError, usageError } from '../errors.js';
import { convertNativeSae, loadNativeSae, type NativeSaeInfo, type NativeSaeLoadOptions, type RawNativeSae } from '../native.js';
import { normalizeDevice, normalizeDtype } from '../options.js';

export type SaeTokens = 'all' | 'cls' | 'patches';
export const SAE_TOKENS: readonly SaeTokens[] = ['all', 'cls', 'patches'];

export interface SaeLoadOptions {
  /** The hook it reads, overriding its config (`blocks.1.hook_resid_post`). */
  hook?: string;
  /** The tokens it applies to, overriding its config. */
  tokens?: SaeTokens;
  /** SAELens `expected_average_only_in`: the dataset scaling factor, folded into the weights. */
  scalingFactor?: number;
  /** Cast the weights: 'f32', 'f16', 'bf16'. */
  dtype?: string;
  /** Where the weights live ('cpu', 'cuda', 'cuda:N'); a spliced SAE must be on its model's device. */
  device?: string;
}

export interface SaeInfo {
  path: string;
  /** The format it was read from. */
  format: 'saelens' | 'vit-prisma' | 'saev';
  architecture: 'standard' | 'gated' | 'topk' | 'jumprelu';
  dIn: number;
  dSae: number;
  /** TopK only. */
  k: number | null;
  dtype: string;
  device: string;
  /** The hook it reads (config, or the override); null when the config names none. */
  hookName: string | null;
  /** The tokens it was trained on and is applied to. */
  tokens: SaeTokens;
  applyBDecToInput: boolean;
  normalizeActivations: string;
  /** The config as a SAELens cfg.json holds it. */
  config: Record<string, unknown>;
}

const HANDLES = new WeakMap<Sae, RawNativeSae>();

/** A loaded sparse autoencoder. */
export class Sae {
  readonly info: SaeInfo;

  private constructor(raw: RawNativeSae) {
    HANDLES.set(this, raw);
    this.info = toInfo(raw.info());
  }

  static async load(path: string, options: SaeLoadOptions = {}): Promise<Sae> {
    const raw = await withSaeHint(loadNativeSae(path, nativeOptions(options)));
    return new Sae(raw);
  }

  /** Writes it as a SAELens folder (cfg.json + sae_weights.safetensors, each written atomically). */
  save(dir: string): Promise<void> {
    return saeHandle(this).save(dir);
  }
}

/** The addon's handle (for src/model.ts). */
export function saeHandle(sae: Sae): RawNativeSae {
  const raw = HANDLES.get(sae);
  if (raw === undefined) throw new PrismaError('E_ARGUMENT', 'not an SAE loaded with loadSae');
  return raw;
}

export function loadSae(path: string, options: SaeLoadOptions = {}): Promise<Sae> {
  return Sae.load(path, options);
}

/** Reads any supported SAE and writes it as a SAELens folder at `dst`; resolves to what was read. */
export async function convertSae(src: string, dst: string, options: SaeLoadOptions = {}): Promise<SaeInfo> {
  return toInfo(await withSaeHint(convertNativeSae(src, dst, nativeOptions(options))));
}

/** `DIR` or `DIR@HOOK` (the CLI's --sae): the path and the hook override. */
export function parseSaeSpec(text: string): { path: string; hook?: string } {
  const at = text.lastIndexOf('@');
  // A hook name starts with a letter and holds no path separator; anything else is part of the path.
  if (at > 0) {
    const hook = text.slice(at + 1);
    if (/^[A-Za-z_][\w.]*$/.test(hook)) return { path: text.slice(0, at), hook };
  }
  if (text.trim().length === 0) throw usageError('--sae needs a path (DIR or DIR@HOOK)');
  return { path: text };
}

export function parseSaeTokens(value: string): SaeTokens {
  const v = value.trim().toLowerCase();
  if ((SAE_TOKENS as readonly string[]).includes(v)) return v as SaeTokens;
  throw usageError(`unknown token selection '${value}'`, 'use all, cls or patches');
}

function nativeOptions(options: SaeLoadOptions): NativeSaeLoadOptions {
  const out: NativeSaeLoadOptions = {};
  if (options.hook !== undefined) out.hook = options.hook;
  if (options.tokens !== undefined) out.tokens = parseSaeTokens(options.tokens);
  if (options.scalingFactor !== undefined) {
    if (!(Number.isFinite(options.scalingFactor) && options.scalingFactor > 0))
      throw usageError(`scaling factor must be a positive number, got ${options.scalingFactor}`);
    out.scalingFactor = options.scalingFactor;
  }
  if (options.dtype !== undefined) out.dtype = normalizeDtype(options.dtype);
  if (options.device !== undefined) {
    const device = normalizeDevice(options.device);
    if (device === 'auto') throw usageError("an SAE's device must be named ('cpu', 'cuda', 'cuda:N'), not 'auto'");
    out.device = device;
  }
  return out;
}

function toInfo(n: NativeSaeInfo): SaeInfo {
  let config: Record<string, unknown> = {};
  try {
    config = JSON.parse(n.configJson) as Record<string, unknown>;
  } catch {
    config = {};
  }
  return {
    path: n.path,
    format: n.format as SaeInfo['format'],
    architecture: n.architecture as SaeInfo['architecture'],
    dIn: n.dIn,
    dSae: n.dSae,
    k: n.k ?? null,
    dtype: n.dtype,
    device: n.device,
    hookName: n.hookName ?? null,
    tokens: n.tokens as SaeTokens,
    applyBDecToInput: n.applyBDecToInput,
    normalizeActivations: n.normalizeActivations,
    config,
  };
}

const SAE_LAYOUTS =
  'an SAE is a SAELens folder (cfg.json + sae_weights.safetensors), a ViT-Prisma .pt / .pkl.gz (or weights.pt + config.json), or a saev sae.pt';

/** The model-folder hints of load errors do not fit an SAE: say what an SAE looks like instead. */
async function withSaeHint<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof PrismaError && ['E_CONFIG', 'E_WEIGHTS_MISSING', 'E_WEIGHTS_FORMAT', 'E_WEIGHTS_SHAPE', 'E_IO'].includes(err.code)) {
      throw new PrismaError(err.code, err.message, { hint: SAE_LAYOUTS, cause: err });
    }
    throw err;
  }
}
