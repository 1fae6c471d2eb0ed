/**
 * `prisma dla MODEL INPUT...`: direct logit attribution per image: every component's direct
 * contribution to the target logit (difference), and the check sumOfComponents + constant == logit.
 */
import { Option, type Command } from 'commander';

import { dla, dlaCheck } from '../../analysis/dla.js';
import type { CommandContext } from '../context.js';
import { dlaFigures } from '../../report/figures/dla.js';
import { dlaSummary } from '../summaries/dla.js';
import type { DlaItem, DlaReport } from '../summaries/dla.js';
import { baselineOption, batchCommand, openBatch, runBatchCommand, targetOption, type BatchCommandOptions } from './analysis.js';

export type { DlaItem, DlaReport };

export interface DlaCommandOptions extends BatchCommandOptions {
  perPosition?: boolean;
}

export async function dlaCommand(
  modelDir: string,
  inputArgs: string[],
  options: DlaCommandOptions,
  ctx: CommandContext,
): Promise<DlaReport | undefined> {
  const batch = await openBatch(modelDir, inputArgs, options, ctx, {
    head: 'direct logit attribution',
    noSplices: 'direct logit attribution',
  });
  const perPosition = options.perPosition ?? false;
  const reportOptions = { target: options.target ?? null, baseline: options.baseline ?? null, perPosition };
  return runBatchCommand({
    command: 'dla',
    modelDir,
    batch,
    options,
    ctx,
    key: reportOptions,
    reportOptions,
    process: async (item, w) => {
      const a = await dla(batch.model, item.batch, {
        perPosition,
        ...(options.target === undefined ? {} : { target: options.target }),
        ...(options.baseline === undefined ? {} : { baseline: options.baseline }),
      });
      return { result: { ...a, check: dlaCheck(a) }, figures: w ? await dlaFigures(batch.model.info, item, a, w) : [] };
    },
    summary: dlaSummary,
  });
}

export function registerDla(program: Command, ctx: CommandContext): void {
  batchCommand(program, {
    name: 'dla',
    description: "direct logit attribution: each head, MLP, bias and embedding's direct contribution to the target logit",
    options: [
      targetOption(),
      baselineOption(),
      new Option('--per-position', "also split each head by source position; figure of the top 4 heads' source patches"),
    ],
    outFiles: 'DIR/report.json, dla-<name>-components.png, dla-<name>-heads.png (+ dla-<name>-top-heads.png), DIR/items/*.json',
  }).action(async (modelDir: string, inputs: string[], options: DlaCommandOptions) => {
    await dlaCommand(modelDir, inputs, options, ctx);
  });
}
