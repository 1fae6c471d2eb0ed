/**
 * A loaded model: the library's handle on the native HookedViT (load, hooks, preprocessing, run).
 * The addon handle stays private to the library (`nativeHandle`), so callers go through this class
 * or the typed analysis functions in src/analysis/.
 */
import { PrismaError, optionError, toPrismaError, usageError } from './errors.js';
import { withHookSuggestions } from './hook-suggest.js';
import { resolveModelSource, type HubOptions } from './hub/index.js';
import {
  loadInputs,
  planInputs,
  readPreprocessSpec,
  withImageSize,
  type InputPlan,
  type LoadInputsOptions,
  type PreprocessSpec,
} from './image/preprocess.js';
import { serializeInterventions, type Intervention, type TensorLike } from './interventions.js';
import { NativeModelHandle, cudaAvailable, type HookShape, type ModelInfo, type NativeRunOptions } from './native.js';
import { normalizeDevice, normalizeDtype } from './options.js';
import { saeHandle, type Sae } from './sae/index.js';
import { checkFinite, checkTensor, formatShape, type PixelBatch, type Tensor, type TensorInput } from './tensor.js';

export interface LoadOptions {
  /** 'cpu' (default), 'cuda', 'cuda:N', 'mps' or 'auto'. */
  device?: string;
  /** 'f32' (default), 'f16', 'bf16' (or float32 / float16 / bfloat16). */
  dtype?: string;
  /** Run at this input size instead of the model's own: a side length or [height, width]. */
  imageSize?: number | readonly [number, number];
  /** Load weights holding NaN or infinities (refused by default with E_WEIGHTS_NONFINITE naming the tensor). */
  allowNonfinite?: boolean;
  /** For a hub ID (`ORG/NAME[@REVISION]`): environment (HF_*), download progress. */
  hub?: HubOptions;
}

export interface RunOptions {
  /** Hook names or glob patterns to record ('blocks.*.hook_resid_post', '*'). */
  cache?: string[];
  /** Run blocks [0, stopAtLayer) only; the output is then blocks.{stopAtLayer}.hook_resid_pre. */
  stopAtLayer?: number;
  /** Start at this block from `startResid` (that block's hook_resid_pre); inputs are then ignored. */
  startAtLayer?: number;
  startResid?: TensorLike;
  interventions?: Intervention[];
  /** Named tensors referenced by interventions. */
  tensors?: TensorLike[] | Record<string, TensorLike>;
  /** Tensor to use from `.safetensors` inputs holding several (default `pixel_values`). */
  inputKey?: string;
  /**
   * SAEs spliced into this run only (after those of `Model.splice`), each at its hook over its
   * tokens; their sub-hooks (`HOOK.hook_sae_acts_post`, ...) can be cached and edited.
   */
  saes?: readonly Sae[];
  /** Keep the error term of `saes`: the output is unchanged unless a sub-hook is edited. */
  saeErrorTerm?: boolean;
}

/** An SAE spliced into every run of a model (`Model.splice`). */
export interface SplicedSae {
  sae: Sae;
  /** The hook it reads and replaces. */
  hook: string;
  errorTerm: boolean;
}

export interface RunResult {
  /** 'hook_logits' with a head, else 'ln_final.hook_normalized', or the residual when stopping early. */
  output: Tensor;
  /** Recorded hooks, in forward order, keyed by hook name. */
  cache: Map<string, Tensor>;
  /** One label per batch entry (image path, or `file[i]`). */
  inputs: string[];
}

export class Model {
  private currentInfo: ModelInfo;
  private spliced: SplicedSae[] = [];
  /** Loaded with LoadOptions.imageSize (preprocessing then targets that size). */
  private loadedAtSize = false;
  private spec: Promise<PreprocessSpec> | undefined;

  private constructor(private readonly handle: NativeModelHandle) {
    this.currentInfo = handle.info();
  }

  /** What the model is (family, sizes, classes); classes change after `setClassPrompts`. */
  get info(): ModelInfo {
    return this.currentInfo;
  }

  /**
   * Headless models (a DINOv2 backbone): classify with a linear probe on the pooled, normalised
   * output, read from a .safetensors file holding `weight` [classes, dModel] and `bias` [classes].
   */
  setLinearProbe(path: string, labels?: readonly string[]): void {
    this.handle.setLinearProbe(path, labels === undefined ? undefined : [...labels]);
    this.currentInfo = this.handle.info();
  }

  /**
   * CLIP-style models: classify against text prompts. Each label fills every template (`{}` = the
   * label); with several templates a label's direction is the renormalised mean of its prompts'
   * unit embeddings (CLIP's prompt ensembling). Logits = logit_scale · cos(image, direction) in
   * every technique from then on.
   */
  async setClassPrompts(labels: readonly string[], templates: string | readonly string[] = '{}'): Promise<void> {
    if (labels.length === 0) throw usageError('no class labels given');
    const list = typeof templates === 'string' ? [templates] : [...templates];
    if (list.length === 0) throw usageError('no prompt template given');
    for (const t of list)
      if (!t.includes('{}')) throw optionError('templates', `a template must contain {} where the label goes, got '${t}'`);
    await this.handle.setClassPrompts([...labels], classPrompts(labels, list));
    this.currentInfo = this.handle.info();
  }

  /**
   * Load a model folder (Hugging Face, timm or open_clip layout), or a hub ID `ORG/NAME[@REVISION]`
   * from the Hugging Face cache, downloaded into it first when online (see src/hub/).
   */
  static async load(source: string, options: LoadOptions = {}): Promise<Model> {
    const dir = await resolveModelSource(source, options.hub);
    const nativeOptions: { device?: string; dtype?: string; imageSize?: number[]; allowNonfinite?: boolean } = {};
    if (options.allowNonfinite) nativeOptions.allowNonfinite = true;
    if (options.imageSize !== undefined) {
      const size = typeof options.imageSize === 'number' ? [options.imageSize, options.imageSize] : [...options.imageSize];
      if (size.length !== 2 || !size.every((n) => Number.isInteger(n) && n > 0)) {
        throw usageError(`image size must be a positive integer or [height, width], got ${JSON.stringify(options.imageSize)}`);
      }
      nativeOptions.imageSize = size;
    }
    if (options.device !== undefined) {
      const device = normalizeDevice(options.device);
      nativeOptions.device = device === 'auto' ? (cudaAvailable() ? 'cuda:0' : 'cpu') : device;
    }
    if (options.dtype !== undefined) nativeOptions.dtype = normalizeDtype(options.dtype);
    const model = new Model(await NativeModelHandle.load(dir, nativeOptions));
    model.loadedAtSize = nativeOptions.imageSize !== undefined;
    return model;
  }

  /**
   * The addon's analysis entry points (logit lens, patching, DLA, ablation sweeps) on preprocessed
   * pixels; the typed functions in `src/analysis/` are the intended API.
   */
  get native(): NativeModelHandle {
    return this.handle;
  }

  /**
   * Splices `sae` into every later run, at its hook (its config's, or the one it was loaded with)
   * over its tokens (all, or the class token / the patches for an SAE trained on those). Its
   * sub-hooks (`HOOK.hook_sae_input`, `_acts_pre`, `_acts_post`, `_recons`, `_error` with the
   * error term, `_output`) join the hook points. With `errorTerm` the model's output is unchanged
   * unless a sub-hook is edited. Analyses that run their own forwards (logit lens, patching, DLA,
   * ablation sweeps) refuse a spliced model with E_UNSUPPORTED.
   */
  splice(sae: Sae, options: { errorTerm?: boolean } = {}): void {
    const errorTerm = options.errorTerm ?? false;
    this.handle.splice(saeHandle(sae), errorTerm);
    this.spliced.push({ sae, hook: sae.info.hookName ?? '', errorTerm });
  }

  /** Removes every spliced SAE. */
  clearSplices(): void {
    this.handle.clearSplices();
    this.spliced = [];
  }

  /** The SAEs spliced into every run, in the order spliced. */
  get splices(): readonly SplicedSae[] {
    return this.spliced;
  }

  /** Every hook point in forward order, with its shape for `batch` inputs. */
  hookShapes(batch = 1): HookShape[] {
    return this.handle.hookShapes(batch);
  }

  hookNames(): string[] {
    return this.hookShapes(1).map((h) => h.name);
  }

  /** Resolve hook names / glob patterns; E_UNKNOWN_HOOK when a pattern matches nothing. */
  matchHooks(patterns: string[]): string[] {
    try {
      return this.handle.matchHooks(patterns);
    } catch (err) {
      throw withHookSuggestions(toPrismaError(err), patterns, this.hookNames());
    }
  }

  /** The preprocessing used for images (preprocessor_config.json, or the defaults). */
  preprocessSpec(): Promise<PreprocessSpec> {
    // A model loaded at another --image-size: retarget the folder's preprocessing to it.
    const size = this.info.imageSize as [number, number];
    this.spec ??= readPreprocessSpec(this.info.modelDir, size).then((s) => (this.loadedAtSize ? withImageSize(s, size) : s));
    return this.spec;
  }

  /** Images, folders and tensor files -> one `[B, C, H, W]` batch for this model. */
  loadInputs(paths: readonly string[], options: Omit<LoadInputsOptions, 'preprocess'> = {}): Promise<PixelBatch> {
    return loadInputs(paths, this, { ...options, preprocess: () => this.preprocessSpec() });
  }

  /** The same inputs as `loadInputs`, listed now and preprocessed `maxRows` at a time (see `planInputs`). */
  planInputs(
    paths: readonly string[],
    maxRows: number,
    options: Omit<LoadInputsOptions, 'preprocess' | 'onProgress'> = {},
  ): Promise<InputPlan> {
    return planInputs(paths, this, maxRows, { ...options, preprocess: () => this.preprocessSpec() });
  }

  /** Validate `stopAtLayer` / `startAtLayer` against the model (E_LAYER_RANGE). */
  checkLayer(value: number, what: string): void {
    const n = this.info.nLayers;
    if (!Number.isInteger(value) || value < 0 || value > n) {
      throw new PrismaError('E_LAYER_RANGE', `${what} ${value} is out of range: the model has ${n} layers (use 0..${n})`, {
        hint: 'run `prisma inspect MODEL_DIR` to see the number of layers',
      });
    }
  }

  async run(inputs: readonly string[] | PixelBatch, options: RunOptions = {}): Promise<RunResult> {
    const native: NativeRunOptions = {};
    if (options.cache !== undefined && options.cache.length > 0) native.cache = [...options.cache];
    if (options.stopAtLayer !== undefined) {
      this.checkLayer(options.stopAtLayer, 'stop-at-layer');
      native.stopAtLayer = options.stopAtLayer;
    }
    const resuming = options.startAtLayer !== undefined;
    if (resuming) {
      this.checkLayer(options.startAtLayer!, 'start-at-layer');
      if (!options.startResid) throw usageError("startAtLayer needs startResid (that block's hook_resid_pre)");
      const resid: TensorInput = {
        name: options.startResid.name ?? 'start_resid',
        shape: [...options.startResid.shape],
        data: options.startResid.data,
      };
      checkTensor(resid);
      native.startAtLayer = options.startAtLayer!;
      native.startResid = resid;
    } else if (options.startResid) {
      throw usageError('startResid is only used with startAtLayer');
    }
    const saes = (options.saes ?? []).map(saeHandle);
    if (options.saeErrorTerm) native.saeErrorTerm = true;
    if ((options.interventions && options.interventions.length > 0) || options.tensors) {
      const { json, tensors } = serializeInterventions(options.interventions ?? [], options.tensors ?? []);
      native.interventions = json;
      if (tensors.length > 0) native.tensors = tensors;
    }

    let batch: PixelBatch;
    if (isPixelBatch(inputs)) {
      batch = inputs;
      this.checkBatch(batch);
    } else if (resuming && inputs.length === 0) {
      batch = { data: new Float32Array(0), shape: [0, ...this.inputShape()] as PixelBatch['shape'], labels: [] };
    } else {
      // Unknown hooks fail before images are decoded (a run's own SAEs' sub-hooks exist only in the run).
      if (native.cache && saes.length === 0) this.matchHooks(native.cache);
      batch = await this.loadInputs(inputs, options.inputKey === undefined ? {} : { inputKey: options.inputKey });
    }

    const pixels = resuming ? new Float32Array(0) : batch.data;
    const out = await this.handle.run(pixels, [...batch.shape], native, saes);
    const labels =
      resuming && batch.labels.length === 0
        ? Array.from({ length: options.startResid!.shape[0] ?? 0 }, (_, i) => `resid[${i}]`)
        : batch.labels;
    return { output: out.output, cache: new Map(out.cache.map((t) => [t.name, t])), inputs: labels };
  }

  /** The shape of one input (image [C, H, W], or video clip [T, C, H, W]). */
  inputShape(): number[] {
    const [h, w] = this.info.imageSize;
    const frames = this.info.numFrames;
    return frames > 0 ? [frames, this.info.numChannels, h!, w!] : [this.info.numChannels, h!, w!];
  }

  private checkBatch(batch: PixelBatch): void {
    const want = this.inputShape();
    const item = batch.shape.slice(1);
    if (item.length !== want.length || item.some((d, i) => d !== want[i])) {
      throw new PrismaError('E_SHAPE', `pixel batch has shape ${formatShape(batch.shape)}, the model needs [B, ${want.join(', ')}]`);
    }
    checkTensor({ name: 'pixels', shape: batch.shape, data: batch.data });
    checkFinite(batch.data, 'pixel batch');
  }
}

function isPixelBatch(x: readonly string[] | PixelBatch): x is PixelBatch {
  return !Array.isArray(x);
}

/** The prompts for `labels` × `templates`, label-major (every template of a label together). */
export function classPrompts(labels: readonly string[], templates: readonly string[]): string[] {
  return labels.flatMap((l) => templates.map((t) => t.split('{}').join(l)));
}

/** Load a model folder or hub ID; see `Model.load`. */
export function loadModel(source: string, options: LoadOptions = {}): Promise<Model> {
  return Model.load(source, options);
}
