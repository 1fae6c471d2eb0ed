/**
 * `prisma patch MODEL --clean A --corrupt B --what SITE --by AXES`: activation patching of the
 * clean run into the corrupted run, exact and/or by attribution, with figures over the clean
 * image's patch grid and as matrices.
 */
import { Option, type Command } from 'commander';

import { checkLayers, requireHead, resolveClass } from '../../analysis/common.js';
import {
  checkWhatBy,
  parsePatchBy,
  parsePatchMethod,
  parsePatchWhat,
  patch,
  type PatchMethod,
  type PatchOptions,
} from '../../analysis/patch.js';
import type { CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import type { PatchBy, PatchWhat } from '../../native.js';
import type { Figure } from '../../report/figures.js';
import { FigureWriter } from '../../report/figures.js';
import { patchFigureNotes, patchFigures } from '../../report/figures/patch.js';
import { patchPairsSummary, patchSummary } from '../summaries/patch.js';
import type { PatchPairsReport, PatchReport } from '../summaries/patch.js';
import { isFolder, pairsFromFolders, pairsFromJsonl, patchPairs, type PatchPairsAnalysis } from '../../analysis/patch-pairs.js';
import { startProgress } from '../ui/progress.js';
import { baselineOption, finishReport, layersOption, outOption, prepareOut, reportBase } from './analysis.js';
import { argParser, jsonOption, openModel, refuseSplices, withModelOptions, type ModelOptions } from './common.js';

export type { PatchPairsReport, PatchReport };

export interface PatchCommandOptions extends ModelOptions {
  clean?: string;
  corrupt?: string;
  pairs?: string;
  target?: string;
  baseline?: string;
  what: PatchWhat;
  by: PatchBy;
  method: PatchMethod;
  layers?: number[];
  fastLinear?: boolean;
  out?: string;
  json?: boolean;
}

/** Over many pairs: --pairs FILE, or --clean and --corrupt naming folders (pairs by file name). */
/** `--baseline none`: no contrast class (the library's `baseline: null`). */
function noBaseline(options: PatchCommandOptions): boolean {
  return options.baseline !== undefined && options.baseline.toLowerCase() === 'none';
}

/** The library's options from the flags a single pair and many pairs share. */
function patchOptions(options: PatchCommandOptions): PatchOptions {
  return {
    what: options.what,
    by: options.by,
    method: options.method,
    ...(options.target === undefined ? {} : { target: options.target }),
    ...(options.baseline === undefined ? {} : { baseline: noBaseline(options) ? null : options.baseline }),
    ...(options.layers === undefined ? {} : { layers: options.layers }),
    ...(options.fastLinear ? { fastLinear: true } : {}),
  };
}

function isPairsRun(options: PatchCommandOptions): boolean {
  return options.pairs !== undefined || (options.clean !== undefined && isFolder(options.clean));
}

export async function patchCommand(modelDir: string, options: PatchCommandOptions, ctx: CommandContext): Promise<PatchReport> {
  if (options.pairs === undefined && (options.clean === undefined || options.corrupt === undefined)) {
    throw usageError('patch needs --clean and --corrupt (images, or folders of pairs matched by name), or --pairs FILE');
  }
  if (options.pairs !== undefined && (options.clean !== undefined || options.corrupt !== undefined)) {
    throw usageError('give --pairs FILE or --clean/--corrupt, not both');
  }
  if (isPairsRun(options)) throw usageError('patchCommand takes one pair; use patchPairsCommand for folders or --pairs');
  const cleanInput = options.clean!;
  const corruptInput = options.corrupt!;
  checkWhatBy(options.what, options.by);
  const out = prepareOut(options.out, false);
  const model = await openModel(modelDir, options, ctx);
  requireHead(model, 'activation patching');
  refuseSplices(model, 'activation patching');
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  if (options.baseline !== undefined && !noBaseline(options)) resolveClass(options.baseline, model.info, 'baseline');
  if (options.layers) checkLayers(options.layers, model.info.nLayers);
  const clean = await model.loadInputs([cleanInput]);
  const corrupt = await model.loadInputs([corruptInput]);
  if (clean.shape[0] !== 1 || corrupt.shape[0] !== 1) throw usageError('--clean and --corrupt must each be one image');
  const analysis = await patch(model, clean, corrupt, patchOptions(options));
  // On stderr as well as in the report (with --json, the JSON's result.warnings carries them alone):
  // a pair the model treats alike makes every number below fragile.
  if (!ctx.json) for (const w of analysis.warnings) ctx.io.stderr.write(`prisma: warning: ${w}\n`);
  let figures: Figure[] = [];
  let notes = patchFigureNotes(options.by, options.method);
  if (out !== undefined) {
    const cleanPath = /\.(npy|safetensors)$/i.test(cleanInput) ? undefined : cleanInput;
    ({ figures, notes } = await patchFigures(model, analysis, { clean, cleanPath }, new FigureWriter(out)));
  }
  const report: PatchReport = {
    ...reportBase('patch', model, modelDir),
    command: 'patch',
    inputs: [cleanInput, corruptInput],
    options: {
      clean: cleanInput,
      corrupt: corruptInput,
      pairs: null,
      what: options.what,
      by: options.by,
      method: options.method,
      target: options.target ?? null,
      baseline: options.baseline ?? null,
      layers: options.layers ?? null,
      fastLinear: options.fastLinear ?? false,
    },
    result: { ...analysis, figureNotes: notes },
    errors: [],
    resumed: 0,
    computed: 1,
    figures,
  };
  await finishReport(report, options, ctx, patchSummary);
  return report;
}

/** `prisma patch` over many pairs: each through the single-pair engine, then mean and spread per effect. */
export async function patchPairsCommand(modelDir: string, options: PatchCommandOptions, ctx: CommandContext): Promise<PatchPairsReport> {
  checkWhatBy(options.what, options.by);
  const out = prepareOut(options.out, false);
  const model = await openModel(modelDir, options, ctx);
  requireHead(model, 'activation patching');
  refuseSplices(model, 'activation patching');
  if (options.layers) checkLayers(options.layers, model.info.nLayers);
  const pairs =
    options.pairs !== undefined
      ? pairsFromJsonl(options.pairs, model.info.labels)
      : await pairsFromFolders(options.clean!, options.corrupt!);
  const progress = startProgress(ctx, pairs.length, 'patching pairs');
  let analysis: PatchPairsAnalysis;
  try {
    analysis = await patchPairs(model, pairs, patchOptions(options), (done) => progress.update(done));
  } finally {
    progress.stop();
  }
  const left = analysis.pairs.filter((p) => !p.included).length;
  if (!ctx.json && left > 0) {
    ctx.io.stderr.write(
      `prisma: warning: ${left} of ${analysis.pairs.length} pairs left out of the mean: clean and corrupt differ little (see result.pairs)\n`,
    );
  }
  void out; // figures of the mean: not drawn yet (the report holds mean and std per effect)
  const report: PatchPairsReport = {
    ...reportBase('patch', model, modelDir),
    command: 'patch',
    inputs: analysis.pairs.flatMap((p) => [p.clean, p.corrupt]),
    options: {
      clean: options.clean ?? null,
      corrupt: options.corrupt ?? null,
      pairs: options.pairs ?? null,
      what: options.what,
      by: options.by,
      method: options.method,
      target: options.target ?? null,
      baseline: options.baseline ?? null,
      layers: options.layers ?? null,
      fastLinear: options.fastLinear ?? false,
    },
    result: { ...analysis, figureNotes: [] },
    errors: [],
    resumed: 0,
    computed: analysis.pairs.length,
    figures: [],
  };
  await finishReport(report, options, ctx, patchPairsSummary);
  return report;
}

export function registerPatch(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('patch')
      .description('activation patching: patch clean activations into the corrupted run, per layer and position / head')
      .argument('<MODEL_DIR>', 'Hugging Face model folder with a classification head')
      .option('--clean <image>', 'the clean image (its activations are patched in), or a folder of them (required unless --pairs)')
      .option(
        '--corrupt <image>',
        'the corrupted image (the run that is patched), or a folder with the same file names (required unless --pairs)',
      )
      .option(
        '--pairs <file>',
        "many pairs: `prisma dataset clevr-lite --edit`'s edits.jsonl (target / baseline: each edit's colours), or {clean, corrupt} JSON lines; reports mean and spread per effect",
      )
      .addOption(new Option('--target <class>', "class index or label (default: the clean image's top-1)"))
      .addOption(baselineOption("the corrupt image's top-1 when it differs from the target; 'none' for no baseline"))
      .addOption(
        new Option('--what <site>', 'resid_pre|resid_mid|resid_post|attn_out|mlp_out|head_z|head_q|head_k|head_v|head_pattern')
          .makeOptionMandatory()
          .argParser(argParser(parsePatchWhat)),
      )
      .addOption(
        new Option('--by <axes>', 'layer,pos | layer,head | layer,pos,head').makeOptionMandatory().argParser(argParser(parsePatchBy)),
      )
      .addOption(
        new Option('--method <method>', 'exact, attribution (one gradient) or both')
          .default('exact')
          .argParser(argParser(parsePatchMethod)),
      )
      .addOption(layersOption())
      .addOption(
        new Option(
          '--fast-linear',
          "compute the sweep's linear layers with oneDNN (f32 CPU models): faster on large models, equal to the default only to float rounding",
        ),
      )
      .addOption(outOption()),
  )
    .addOption(jsonOption())
    .addHelpText('after', '\nWith --out DIR: DIR/report.json and patch-*.png figures (see docs/commands.md).')
    .action(async (modelDir: string, options: PatchCommandOptions) => {
      if (isPairsRun(options)) await patchPairsCommand(modelDir, options, ctx);
      else await patchCommand(modelDir, options, ctx);
    });
}
