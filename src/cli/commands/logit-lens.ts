/**
 * `prisma logit-lens MODEL INPUT...`: per image and layer, the residual stream read through the
 * final layer norm and head: top-k at the class token, the target's logit / prob / rank, and the
 * target logit at every patch.
 */
import { Option, type Command } from 'commander';

import { checkPatchLabels, logitLens, parseLensSite, scorePatches } from '../../analysis/lens.js';
import type { CommandContext } from '../context.js';
import { findPatchLabels, loadPatchLabels } from '../../dataset/patch-labels.js';
import type { LensSite } from '../../native.js';
import { parsePositiveInt } from '../../options.js';
import { lensFigures } from '../../report/figures/logit-lens.js';
import { logitLensSummary } from '../summaries/logit-lens.js';
import type { LogitLensItem, LogitLensReport } from '../summaries/logit-lens.js';
import { batchCommand, collect, openBatch, runBatchCommand, targetOption, type BatchCommandOptions } from './analysis.js';
import { argParser } from './common.js';

export type { LogitLensItem, LogitLensReport };

export interface LogitLensCommandOptions extends BatchCommandOptions {
  site: LensSite[];
  patchLabels?: string;
  topK: number;
}

export async function logitLensCommand(
  modelDir: string,
  inputArgs: string[],
  options: LogitLensCommandOptions,
  ctx: CommandContext,
): Promise<LogitLensReport | undefined> {
  const sites: LensSite[] = options.site.length > 0 ? [...new Set(options.site)] : ['resid_post'];
  const batch = await openBatch(modelDir, inputArgs, options, ctx, { head: 'the logit lens', noSplices: 'the logit lens' });
  const { model } = batch;
  const topK = options.topK;
  const patchFile = options.patchLabels === undefined ? undefined : await loadPatchLabels(options.patchLabels);
  if (patchFile) checkPatchLabels(patchFile, model.info, modelDir);
  return runBatchCommand({
    command: 'logit-lens',
    modelDir,
    batch,
    options,
    ctx,
    key: {
      sites,
      target: options.target ?? null,
      topK,
      ...(options.patchLabels === undefined ? {} : { patchLabels: options.patchLabels }),
    },
    reportOptions: { sites, target: options.target ?? null, topK, ...(patchFile ? { patchLabels: options.patchLabels ?? null } : {}) },
    process: async (item, w) => {
      const [r] = await logitLens(model, item.batch, { sites, topK, ...(options.target === undefined ? {} : { target: options.target }) });
      const entry = patchFile ? findPatchLabels(patchFile, item.input) : undefined;
      const patchLabels = entry ? scorePatches(r!, entry, model.info) : patchFile ? null : undefined;
      return {
        result: { ...r!, ...(patchLabels === undefined ? {} : { patchLabels }) },
        figures: w ? await lensFigures(model.info, item, r!, sites, w) : [],
      };
    },
    summary: logitLensSummary,
    // Per layer, correct and labelled patches summed over every image (report/layouts.ts).
    aggregates: patchFile ? ['patchLabelAccuracy'] : [],
  });
}

export function registerLogitLens(program: Command, ctx: CommandContext): void {
  batchCommand(program, {
    name: 'logit-lens',
    description: "read every layer's residual stream through the head: target prob / rank per layer and per patch",
    options: [
      new Option('--site <site>', 'resid_pre, resid_mid or resid_post (repeatable or comma-separated; default resid_post)')
        .default([] as LensSite[], 'resid_post')
        .argParser(collect(parseLensSite)),
      targetOption(),
      new Option('--patch-labels <file>', 'score per-patch lens accuracy layer by layer against `prisma dataset patch-labels` output'),
      new Option('--top-k <k>', 'classes listed per layer').default(5).argParser(argParser((v) => parsePositiveInt(v, '--top-k'))),
    ],
    outFiles: 'DIR/report.json, DIR/lens-<name>-prob.png, DIR/lens-<name>-patches.png, DIR/items/*.json',
    exitNote: ' (listed in the report)',
  }).action(async (modelDir: string, inputs: string[], options: LogitLensCommandOptions) => {
    await logitLensCommand(modelDir, inputs, options, ctx);
  });
}
