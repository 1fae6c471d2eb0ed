/**
 * Ablation: replace parts of hooks (`blocks.3.attn.hook_z[head=5]`) with zeros, their mean over
 * reference images, or their value on one reference image (resampling, seeded choice), and
 * measure the target logit (difference) before and after. `ablateSweep` ablates every head in
 * turn (batched in the addon).
 */
import { rowsPerBatch } from '../batching.js';
import { PrismaError, optionError, usageError } from '../errors.js';
import { planBatch, type InputPlan } from '../image/preprocess.js';
import type { Model } from '../model.js';
import { softmax } from '../tensor.js';
import type { Intervention, TensorLike } from '../interventions.js';
import type { AblationMode, MetricValue } from '../native.js';
import { batchRows, concatBatches, type PixelBatch } from '../tensor.js';
import { formatAblateSpec, parseAblateSpec, type AblateSpec } from './ablate-spec.js';
import { argmax, classInfo, oneImage, requireHead, resolveClass, seededRandom, type ClassInfo, type ClassRef } from './common.js';

export type { AblationMode };
export const ABLATION_MODES: readonly AblationMode[] = ['zero', 'mean', 'resample'];

export function parseAblationMode(value: string): AblationMode {
  const v = value.trim().toLowerCase();
  if ((ABLATION_MODES as readonly string[]).includes(v)) return v as AblationMode;
  throw usageError(`unknown --mode '${value}'`, 'use zero, mean or resample');
}

export interface AblateCommon {
  /** Default 'zero'. */
  mode?: AblationMode;
  /** Images for mean / resample (paths, folders, or a batch). */
  references?: readonly string[] | PixelBatch;
  /** Seed for the resampling choice (default 0). */
  seed?: number;
  /** Default: the image's own top-1. */
  target?: ClassRef;
  baseline?: ClassRef | null;
  /** Head sweeps only: linear layers on oneDNN, as `PatchOptions.fastLinear`. */
  fastLinear?: boolean;
}

export interface AblateOptions extends AblateCommon {
  /** Specs as text (`HOOK[head=1|2,pos=0-3]`) or parsed. */
  ablate: readonly (string | AblateSpec)[];
}

export interface ResampleChoice {
  seed: number;
  /** Index into the reference images. */
  index: number;
  reference: string;
}

interface Metric {
  target: ClassInfo;
  targetSource: 'given' | 'top1';
  baseline: ClassInfo | null;
  metric: 'logit' | 'logit_diff';
}

export interface AblateAnalysis extends Metric {
  input: string;
  mode: AblationMode;
  ablations: { spec: string; hooks: string[]; select: AblateSpec['select'] }[];
  before: MetricValue;
  after: MetricValue;
  /** after.value - before.value */
  effect: number;
  references: number;
  resample?: ResampleChoice;
}

export interface AblateSweepAnalysis extends Metric {
  input: string;
  mode: AblationMode;
  what: 'head_z';
  /** [nLayers, nHeads] */
  dims: number[];
  before: MetricValue;
  /** Metric with each head ablated, [nLayers, nHeads] row-major. */
  value: number[];
  prob: number[];
  /** value - before.value, [nLayers, nHeads] row-major. */
  effects: number[];
  references: number;
  resample?: ResampleChoice;
  batchedForwards: number;
}

function metricOf(logits: ArrayLike<number>, target: number, baseline: number | null): MetricValue {
  const probs = softmax(logits);
  return { value: logits[target]! - (baseline === null ? 0 : logits[baseline]!), prob: probs[target]! };
}

/** Every reference as one batch, for the sweep in the addon (which averages them 16 at a time). */
async function loadReferences(model: Model, refs: AblateCommon['references'], mode: AblationMode): Promise<PixelBatch | undefined> {
  const plan = await referencePlan(model, refs, mode, []);
  if (!plan) return undefined;
  const parts: PixelBatch[] = [];
  for await (const batch of plan.batches()) parts.push(batch);
  return concatBatches(parts);
}

function resampleChoice(labels: readonly string[], seed: number): ResampleChoice {
  const index = Math.floor(seededRandom(seed)() * labels.length);
  return { seed, index, reference: labels[index] ?? `[${index}]` };
}

/** Reference inputs for mean / resample, listed now and read a batch at a time. */
async function referencePlan(
  model: Model,
  refs: AblateCommon['references'],
  mode: AblationMode,
  hooks: readonly string[],
): Promise<InputPlan | undefined> {
  if (mode === 'zero') return undefined;
  if (refs === undefined || (Array.isArray(refs) && refs.length === 0)) {
    throw optionError(
      'references',
      `mode '${mode}' needs reference images`,
      'pass --reference DIR (a folder of images); library: references',
    );
  }
  const rows = rowsPerBatch(model, hooks);
  const plan = Array.isArray(refs) ? await model.planInputs(refs as readonly string[], rows) : planBatch(refs as PixelBatch, rows);
  if (plan.total === 0) throw optionError('references', 'no reference images');
  return plan;
}

/**
 * The reference values the ablation puts in, per hook, as [1, ...]: their mean over every reference
 * (summed in float64 a batch at a time, so a large folder never runs as one forward), or the chosen
 * reference's own (only that image is run).
 */
async function referenceValues(
  model: Model,
  plan: InputPlan,
  mode: 'mean' | 'resample',
  hooks: string[],
  index: number,
): Promise<Map<string, TensorLike>> {
  const sums = new Map<string, { shape: number[]; sum: Float64Array }>();
  let row = 0;
  for await (const batch of plan.batches()) {
    const first = row;
    row += batch.shape[0];
    let rows = batch;
    if (mode === 'resample') {
      if (index < first || index >= row) continue;
      rows = batchRows(batch, index - first, index - first + 1);
    }
    const { cache } = await model.run(rows, { cache: hooks });
    for (const [name, t] of cache) {
      const per = t.data.length / t.shape[0]!;
      const entry = sums.get(name) ?? { shape: [1, ...t.shape.slice(1)], sum: new Float64Array(per) };
      for (let r = 0; r < t.shape[0]!; r++) for (let i = 0; i < per; i++) entry.sum[i]! += t.data[r * per + i];
      sums.set(name, entry);
    }
  }
  const count = mode === 'mean' ? plan.total : 1;
  return new Map([...sums].map(([name, { shape, sum }]) => [name, { shape, data: Float32Array.from(sum, (v) => v / count) }]));
}

async function resolveMetric(
  model: Model,
  options: AblateCommon,
  logits: Float32Array,
): Promise<{ m: Metric; target: number; baseline: number | null }> {
  const info = model.info;
  const given = options.target === undefined ? undefined : resolveClass(options.target, info, 'target');
  const baseline = options.baseline === undefined || options.baseline === null ? null : resolveClass(options.baseline, info, 'baseline');
  const target = given ?? argmax(logits);
  if (baseline !== null && baseline === target) {
    throw new PrismaError(
      'E_ARGUMENT',
      `--baseline is the target class (${classInfo(info, target).label}); the logit difference would be 0`,
    );
  }
  return {
    target,
    baseline,
    m: {
      target: classInfo(info, target),
      targetSource: given === undefined ? 'top1' : 'given',
      baseline: baseline === null ? null : classInfo(info, baseline),
      metric: baseline === null ? 'logit' : 'logit_diff',
    },
  };
}

/** Parse specs and resolve their hooks (globs expand; unknown hooks are E_UNKNOWN_HOOK). */
export function resolveAblations(model: Model, specs: readonly (string | AblateSpec)[]): { spec: AblateSpec; hooks: string[] }[] {
  if (specs.length === 0) throw optionError('ablate', 'no ablation spec given');
  return specs.map((s) => {
    const spec = typeof s === 'string' ? parseAblateSpec(s) : s;
    return { spec, hooks: model.matchHooks([spec.hook]) };
  });
}

/** Ablate the given hook selections together on one image. */
export async function ablate(model: Model, input: string | PixelBatch, options: AblateOptions): Promise<AblateAnalysis> {
  requireHead(model, 'ablation');
  const mode = options.mode === undefined ? 'zero' : parseAblationMode(options.mode);
  const resolved = resolveAblations(model, options.ablate);
  const batch = await oneImage(model, input, 'ablation');
  const hooks = [...new Set(resolved.flatMap((r) => r.hooks))];
  const refs = await referencePlan(model, options.references, mode, hooks);
  const seed = options.seed ?? 0;

  const before = await model.run(batch);
  const { m, target, baseline } = await resolveMetric(model, options, before.output.data);

  const resample = refs && mode === 'resample' ? resampleChoice(refs.labels, seed) : undefined;
  const cache =
    refs && mode !== 'zero' ? await referenceValues(model, refs, mode, hooks, resample?.index ?? 0) : new Map<string, TensorLike>();
  const interventions: Intervention[] = [];
  const tensors: Record<string, TensorLike> = {};
  for (const { spec, hooks: names } of resolved) {
    for (const hook of names) {
      const select = Object.keys(spec.select).length > 0 ? { select: spec.select } : {};
      if (mode === 'zero') {
        interventions.push({ hook, action: 'zero', ...select });
        continue;
      }
      const t = cache.get(hook);
      if (!t) throw new PrismaError('E_INTERNAL', `reference run did not record ${hook}`);
      // [1, ...hook shape without batch]: the references' mean, or the chosen reference's values.
      tensors[`${mode}:${hook}`] ??= t;
      interventions.push({ hook, action: 'set', tensor: `${mode}:${hook}`, ...select });
    }
  }
  const after = await model.run(batch, { interventions, tensors });
  const b = metricOf(before.output.data, target, baseline);
  const a = metricOf(after.output.data, target, baseline);
  const out: AblateAnalysis = {
    input: batch.labels[0]!,
    mode,
    ...m,
    ablations: resolved.map(({ spec, hooks: names }) => ({ spec: formatAblateSpec(spec), hooks: names, select: spec.select })),
    before: b,
    after: a,
    effect: a.value - b.value,
    references: refs?.total ?? 0,
  };
  if (resample) out.resample = resample;
  return out;
}

/** Ablate every head (hook_z, one at a time) on one image; batched in the addon. */
export async function ablateSweep(model: Model, input: string | PixelBatch, options: AblateCommon = {}): Promise<AblateSweepAnalysis> {
  requireHead(model, 'ablation');
  const mode = options.mode === undefined ? 'zero' : parseAblationMode(options.mode);
  const batch = await oneImage(model, input, 'ablation');
  const refs = await loadReferences(model, options.references, mode);
  const seed = options.seed ?? 0;
  const before = await model.run(batch);
  const { m, target, baseline } = await resolveMetric(model, options, before.output.data);
  const resample = refs && mode === 'resample' ? resampleChoice(refs.labels, seed) : undefined;
  const r = await model.native.ablate(
    batch.data,
    [...batch.shape],
    {
      mode,
      what: 'head_z',
      by: 'layer_head',
      target,
      ...(baseline === null ? {} : { baseline }),
      ...(resample ? { resampleIndex: resample.index } : {}),
      ...(options.fastLinear ? { fastLinear: true } : {}),
    },
    refs ? { data: refs.data, shape: [...refs.shape] } : undefined,
  );
  const out: AblateSweepAnalysis = {
    input: batch.labels[0]!,
    mode,
    ...m,
    what: 'head_z',
    dims: r.dims,
    before: r.clean,
    value: r.value,
    prob: r.prob,
    effects: r.value.map((v) => v - r.clean.value),
    references: refs?.shape[0] ?? 0,
    batchedForwards: r.batchedForwards,
  };
  if (resample) out.resample = resample;
  return out;
}
