/** Flag definitions and parsers shared by several commands. */
import { InvalidArgumentError, Option, type Command } from 'commander';

import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';

import { isPrismaError, PrismaError, usageError } from '../../errors.js';
import { loadModel, type Model } from '../../model.js';
import { loadSae, parseSaeSpec } from '../../sae/index.js';
import { normalizeDevice, normalizeDtype } from '../../options.js';
import type { ExpandOptions, SkippedEntry } from '../../image/preprocess.js';
import type { CommandContext } from '../context.js';
import { downloadReporter } from '../ui/progress.js';

/**
 * Adapt one of our option parsers to commander. Our parsers' errors already name the flag and the
 * value and carry a hint with the valid choices, so they go to the CLI's error report as they are
 * (with their own code and exit status); wrapped in commander's InvalidArgumentError they would
 * repeat the value ("argument 'x' is invalid. unknown --what 'x'") and lose the hint.
 */
export function argParser<T>(parse: (value: string) => T): (value: string) => T {
  return (value: string) => {
    try {
      return parse(value);
    } catch (err) {
      throw asOptionError(err);
    }
  };
}

/** A parser's error as the CLI reports it: ours unchanged, anything else as commander's usage error. */
export function asOptionError(err: unknown): Error {
  return isPrismaError(err) ? err : new InvalidArgumentError(String(err));
}

/** The heading the shared model options are listed under in --help, after the command's own. */
export const MODEL_OPTIONS = 'Model options:';

export function deviceOption(): Option {
  return new Option('--device <device>', 'cpu, cuda, cuda:N, mps or auto')
    .default('cpu')
    .argParser(argParser(normalizeDevice))
    .helpGroup(MODEL_OPTIONS);
}

export function dtypeOption(): Option {
  return new Option('--dtype <dtype>', 'f32, f16 or bf16')
    .default('float32', 'f32')
    .argParser(argParser(normalizeDtype))
    .helpGroup(MODEL_OPTIONS);
}

export function jsonOption(): Option {
  return new Option('--json', 'machine-readable output (errors as {"ok":false,"error":{...}} on stdout)');
}

// ---------------------------------------------------------------------------------------------
// Options every model-loading command takes: resolution and, for CLIP-style models, text classes.

/** `--image-size 48` or `--image-size 48x64` (height x width). */
export function parseImageSize(value: string): [number, number] {
  const m = /^\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*$/i.exec(value);
  if (!m) throw usageError(`--image-size must be N or HxW, got '${value}'`);
  const h = Number(m[1]);
  const w = m[2] === undefined ? h : Number(m[2]);
  if (h <= 0 || w <= 0) throw usageError(`--image-size must be positive, got '${value}'`);
  return [h, w];
}

/** `--labels FILE` (one label per line, # comments) or `--labels "cat,dog,a red car"`. */
export function parseLabels(value: string): string[] {
  let labels: string[];
  if (existsSync(value) && statSync(value).isFile()) {
    labels = readFileSync(value, 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l.length > 0 && !l.startsWith('#'));
  } else {
    // A mistyped file name must not become a single label scoring 100%.
    if (!value.includes(',') && /^(\.{0,2}\/|~)|\.(txt|csv|tsv|lst|labels)$/i.test(value.trim())) {
      throw new PrismaError('E_INPUT', `labels file not found: ${value}`, {
        hint: 'give --labels as comma-separated labels, or the path of a file with one label per line',
      });
    }
    labels = value
      .split(',')
      .map((l) => l.trim())
      .filter((l) => l.length > 0);
  }
  if (labels.length === 0) throw usageError(`--labels gave no labels ('${value}')`);
  return labels;
}

export interface ModelOptions {
  device: string;
  dtype: string;
  imageSize?: [number, number];
  labels?: string[];
  /** Prompt templates (several: averaged per label); default [DEFAULT_TEMPLATE]. */
  template?: string[];
  probe?: string;
  allowNonfinite?: boolean;
  /** --sae DIR[@HOOK], repeatable: SAEs spliced into every forward. */
  sae?: SaeSpec[];
  saeErrorTerm?: boolean;
}

export interface SaeSpec {
  path: string;
  hook?: string;
}

export const DEFAULT_TEMPLATE = 'a photo of a {}.';

export function imageSizeOption(): Option {
  return new Option(
    '--image-size <size>',
    'run at this input size (N or HxW); position embeddings are interpolated like the reference library',
  )
    .argParser(argParser(parseImageSize))
    .helpGroup(MODEL_OPTIONS);
}

export function labelsOption(): Option {
  return new Option('--labels <labels>', 'CLIP-style models: class labels, comma-separated or a file with one per line')
    .argParser(argParser(parseLabels))
    .helpGroup(MODEL_OPTIONS);
}

export function probeOption(): Option {
  return new Option(
    '--probe <file>',
    'headless models (e.g. DINOv2): a linear probe .safetensors (weight [classes, d_model], bias [classes]) read as the head; --labels names its classes',
  ).helpGroup(MODEL_OPTIONS);
}

export function templateOption(): Option {
  return new Option(
    '--template <text>',
    `CLIP-style models: prompt for each label, {} = the label (default '${DEFAULT_TEMPLATE}'); repeat to average several prompts per label (prompt ensembling)`,
  )
    .argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value])
    .helpGroup(MODEL_OPTIONS);
}

/** `--recursive`: images in subfolders too (class-per-folder layouts). */
export function recursiveOption(): Option {
  return new Option('-r, --recursive', 'read images in subfolders too, depth first in name order (class-per-folder layouts)');
}

/**
 * How the CLI reads input folders: `--recursive`, and one stderr line per folder naming what it
 * held that is not read (other files, subfolders without --recursive, broken links), so nothing is
 * skipped silently. Not with --json, whose contract is an empty stderr (the JSON is the whole answer).
 */
export function expandOptions(options: { recursive?: boolean }, ctx: CommandContext): ExpandOptions {
  return {
    ...(options.recursive ? { recursive: true } : {}),
    onSkip: (folder, skipped) => {
      if (ctx.json) return;
      const what = (s: SkippedEntry) =>
        s.why === 'a folder' ? `${basename(s.path)}/ (a folder: --recursive reads it)` : `${basename(s.path)} (${s.why})`;
      const shown = skipped.slice(0, 5).map(what).join(', ');
      const more = skipped.length > 5 ? ` and ${skipped.length - 5} more` : '';
      ctx.io.stderr.write(`prisma: skipped in ${folder}: ${shown}${more}\n`);
    },
  };
}

/** `--allow-nonfinite`: load a checkpoint holding NaN / infinite weights (refused by default). */
export function allowNonfiniteOption(): Option {
  return new Option(
    '--allow-nonfinite',
    'load weights holding NaN or infinities (refused by default, naming the tensor): to look at a broken model',
  ).helpGroup(MODEL_OPTIONS);
}

/** `--sae DIR[@HOOK]` (repeatable). */
export function saeOption(): Option {
  return new Option(
    '--sae <dir[@hook]>',
    'splice a sparse autoencoder in at its hook (or @HOOK) over the tokens it was trained on; repeatable; its features are hooks (HOOK.hook_sae_acts_post) to --cache or edit',
  )
    .argParser((value: string, previous: SaeSpec[] | undefined) => [...(previous ?? []), argParser(parseSaeSpec)(value)])
    .helpGroup(MODEL_OPTIONS);
}

export function saeErrorTermOption(): Option {
  return new Option(
    '--sae-error-term',
    "keep each SAE's error term (x - reconstruction): the model's output is unchanged unless a feature is edited",
  ).helpGroup(MODEL_OPTIONS);
}

/** For analyses that run their own forwards in the core, which do not apply spliced SAEs. */
export function refuseSplices(model: Model, what: string): void {
  const first = model.splices[0];
  if (first === undefined) return;
  throw new PrismaError('E_UNSUPPORTED', `${what} does not support spliced SAEs yet (--sae at '${first.hook}'); run it without --sae`, {
    hint: 'prisma run, classify, heads and ablate --ablate take --sae; record features with `prisma run --sae DIR --cache HOOK.hook_sae_acts_post`',
  });
}

/**
 * Adds the options every model-loading command takes (device, dtype, size, CLIP labels, probe, SAEs).
 * `dtype: false` where the command's own --dtype means something else; `saes: false` where it takes an SAE otherwise.
 */
export function withModelOptions(cmd: Command, include: { dtype?: boolean; saes?: boolean } = {}): Command {
  for (const option of [
    deviceOption(),
    ...(include.dtype === false ? [] : [dtypeOption()]),
    imageSizeOption(),
    labelsOption(),
    templateOption(),
    probeOption(),
    allowNonfiniteOption(),
    ...(include.saes === false ? [] : [saeOption(), saeErrorTermOption()]),
  ])
    cmd.addOption(option);
  return cmd;
}

/**
 * Loads a model (a folder, or a hub ID with downloads shown on stderr) with the shared options:
 * size, device, dtype, and text classes where given.
 */
export async function openModel(dir: string, options: ModelOptions, ctx?: CommandContext): Promise<Model> {
  const model = await loadModel(dir, {
    device: options.device,
    dtype: options.dtype,
    ...(options.imageSize === undefined ? {} : { imageSize: options.imageSize }),
    ...(options.allowNonfinite ? { allowNonfinite: true } : {}),
    hub: { env: ctx?.io.env ?? process.env, ...(ctx ? { onProgress: downloadReporter(ctx) } : {}) },
  });
  if (options.probe !== undefined) {
    model.setLinearProbe(options.probe, options.labels);
  } else if (options.labels !== undefined) {
    if (!model.info.hasTextTower) {
      throw usageError(`--labels is for CLIP-style models; ${dir} (${model.info.family}) has its own classes`);
    }
    await model.setClassPrompts(options.labels, options.template ?? [DEFAULT_TEMPLATE]);
  }
  if (options.saeErrorTerm && (options.sae ?? []).length === 0) throw usageError('--sae-error-term needs --sae DIR');
  for (const spec of options.sae ?? []) {
    const sae = await loadSae(spec.path, { ...(spec.hook === undefined ? {} : { hook: spec.hook }), device: model.info.device });
    model.splice(sae, { errorTerm: options.saeErrorTerm ?? false });
    // An SAE trained on some tokens only is applied to those only: say so, as reports do.
    if (sae.info.tokens !== 'all' && ctx && !ctx.json) {
      const where = sae.info.tokens === 'cls' ? 'the class token' : 'the patch tokens';
      ctx.io.stderr.write(`prisma: note: the SAE ${spec.path} was trained on ${where} only and is spliced there only\n`);
    }
  }
  return model;
}
