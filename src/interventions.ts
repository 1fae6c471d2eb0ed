/**
 * Typed interventions, serialised to the JSON the addon takes (InterventionSpec, generated from the
 * core's serde type; docs/native-api.md).
 * A `tensor` may be the name of an entry in `tensors`, or an inline tensor, which is given a
 * generated name and added to the tensors sent to the addon.
 */
import { PrismaError } from './errors.js';
import type { InterventionSpec } from './generated/contract/InterventionSpec.js';
import { checkTensor, type TensorInput } from './tensor.js';

/** Which entries of the hook to edit; every key optional (omitted = all). */
export interface Select {
  batch?: number[];
  /** Position axis (the query axis for hook_attn_scores / hook_pattern). */
  pos?: number[];
  head?: number[];
  /** Features of a spliced SAE, at its `hook_sae_acts_pre` / `hook_sae_acts_post` (the last axis). */
  feature?: number[];
}

/** A tensor passed by value. */
export interface TensorLike {
  name?: string;
  shape: number[];
  data: Float32Array;
}

/** Name of an entry in `tensors`, or an inline tensor. */
export type TensorRef = string | TensorLike;

interface Base {
  hook: string;
  select?: Select;
}

export type Intervention =
  | (Base & { action: 'zero' })
  | (Base & { action: 'scale'; factor: number })
  /** x + coeff * direction; the direction is broadcast on the last axis. */
  | (Base & { action: 'add'; tensor: TensorRef; coeff?: number })
  /** set: broadcast to the hook shape; patch: same shape as the hook; mean: [runs, ...hook shape without batch]. */
  | (Base & { action: 'set' | 'patch' | 'mean'; tensor: TensorRef });

export type InterventionAction = Intervention['action'];
export const INTERVENTION_ACTIONS: readonly InterventionAction[] = ['zero', 'scale', 'add', 'set', 'patch', 'mean'];

/** The addon's form, as the core parses it (src/generated/contract/InterventionSpec.ts). */
type WireIntervention = InterventionSpec;

function bad(i: number, message: string): PrismaError {
  return new PrismaError('E_INTERVENTION', `intervention ${i}: ${message}`);
}

function checkIndices(i: number, key: string, v: unknown): number[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x) && x >= 0)) {
    throw bad(i, `select.${key} must be a list of non-negative integers`);
  }
  return v as number[];
}

/**
 * Validate interventions and build the addon's JSON plus the list of named tensors.
 * `tensors` may be a list (each with a name) or a record keyed by name.
 */
export function serializeInterventions(
  interventions: readonly Intervention[],
  tensors: readonly TensorLike[] | Readonly<Record<string, TensorLike>> = [],
): { json: string; tensors: TensorInput[] } {
  const named = new Map<string, TensorInput>();
  const add = (name: string, t: TensorLike): void => {
    if (named.has(name)) throw new PrismaError('E_INTERVENTION', `tensor '${name}' is given twice`);
    const input = { name, shape: [...t.shape], data: t.data };
    checkTensor(input);
    named.set(name, input);
  };
  if (Array.isArray(tensors)) {
    (tensors as readonly TensorLike[]).forEach((t, i) => {
      if (!t.name) throw new PrismaError('E_INTERVENTION', `tensors[${i}] has no name`);
      add(t.name, t);
    });
  } else {
    for (const [name, t] of Object.entries(tensors as Record<string, TensorLike>)) add(name, t);
  }

  const wire: WireIntervention[] = interventions.map((iv, i) => {
    if (!iv || typeof iv !== 'object') throw bad(i, 'expected an object');
    if (typeof iv.hook !== 'string' || iv.hook.length === 0) throw bad(i, `'hook' must be a hook name`);
    if (!INTERVENTION_ACTIONS.includes(iv.action)) {
      throw bad(i, `unknown action ${JSON.stringify((iv as { action: unknown }).action)} (expected ${INTERVENTION_ACTIONS.join(', ')})`);
    }
    const out: WireIntervention = { hook: iv.hook, action: iv.action };
    if (iv.select !== undefined) {
      const select: Select = {};
      const batch = checkIndices(i, 'batch', iv.select.batch);
      const pos = checkIndices(i, 'pos', iv.select.pos);
      const head = checkIndices(i, 'head', iv.select.head);
      const feature = checkIndices(i, 'feature', iv.select.feature);
      if (batch) select.batch = batch;
      if (pos) select.pos = pos;
      if (head) select.head = head;
      if (feature) select.feature = feature;
      out.select = select;
    }
    switch (iv.action) {
      case 'zero':
        break;
      case 'scale':
        if (typeof iv.factor !== 'number' || !Number.isFinite(iv.factor)) throw bad(i, `'scale' needs a finite 'factor'`);
        out.factor = iv.factor;
        break;
      case 'add':
      case 'set':
      case 'patch':
      case 'mean': {
        const ref = iv.tensor;
        if (typeof ref === 'string') {
          if (!named.has(ref)) throw bad(i, `tensor '${ref}' is not among the tensors given`);
          out.tensor = ref;
        } else if (ref && typeof ref === 'object') {
          const name = ref.name ?? `__intervention_${i}`;
          add(name, ref);
          out.tensor = name;
        } else {
          throw bad(i, `'${iv.action}' needs a 'tensor'`);
        }
        if (iv.action === 'add' && iv.coeff !== undefined) {
          if (typeof iv.coeff !== 'number' || !Number.isFinite(iv.coeff)) throw bad(i, `'coeff' must be a finite number`);
          out.coeff = iv.coeff;
        }
        break;
      }
    }
    return out;
  });
  return { json: JSON.stringify(wire), tensors: [...named.values()] };
}
