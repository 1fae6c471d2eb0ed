/**
 * `prisma heads MODEL INPUT...`: attention-head statistics from `blocks.*.attn.hook_pattern`,
 * per-head overlays of the chosen query's attention, a layer × head grid of thumbnails, and a
 * self-contained HTML viewer.
 */
import { Option, type Command } from 'commander';

import { checkLayers } from '../../analysis/common.js';
import { heads, parseHeadsQuery, resolveQuery, type HeadsQuery } from '../../analysis/heads.js';
import type { CommandContext } from '../context.js';
import { headsFigures } from '../../report/figures/heads.js';
import { headsSummary } from '../summaries/heads.js';
import type { HeadsReport } from '../summaries/heads.js';
import { batchCommand, layersOption, openBatch, runBatchCommand, type BatchCommandOptions } from './analysis.js';
import { argParser } from './common.js';

export type { HeadsReport };

export interface HeadsCommandOptions extends BatchCommandOptions {
  query?: HeadsQuery;
  layers?: number[];
  allHeads?: boolean;
}

export async function headsCommand(
  modelDir: string,
  inputArgs: string[],
  options: HeadsCommandOptions,
  ctx: CommandContext,
): Promise<HeadsReport | undefined> {
  const defaultQuery = (hasClassToken: boolean): HeadsQuery => options.query ?? (hasClassToken ? 'cls' : 0);
  const batch = await openBatch(modelDir, inputArgs, options, ctx, {
    check: (model) => {
      if (options.layers) checkLayers(options.layers, model.info.nLayers);
      resolveQuery(model, defaultQuery(model.info.hasClassToken));
    },
  });
  const { model } = batch;
  const query = defaultQuery(model.info.hasClassToken);
  const reportOptions = { query, layers: options.layers ?? null };
  return runBatchCommand({
    command: 'heads',
    modelDir,
    batch,
    options,
    ctx,
    key: reportOptions,
    reportOptions,
    process: async (item, w) => {
      const r = await heads(model, item.batch, { query, ...(options.layers ? { layers: options.layers } : {}) });
      const { patterns: _p, ...analysis } = r;
      return { result: analysis, figures: w ? await headsFigures(model.info, item, r, w, options.allHeads === true) : [] };
    },
    summary: headsSummary,
  });
}

export function registerHeads(program: Command, ctx: CommandContext): void {
  batchCommand(program, {
    name: 'heads',
    description: 'attention heads: entropy, attention to the class token, distance, self-attention; overlays and an HTML viewer',
    model: 'Hugging Face model folder',
    options: [
      new Option(
        '--query <token>',
        "query token: 'cls', a patch as reports name it (r2c3), or a patch index (0-based, row-major) (default: cls; patch 0 without a class token)",
      ).argParser(argParser(parseHeadsQuery)),
      layersOption(),
      new Option(
        '--all-heads',
        'also one PNG per head and the full heads.html (every query; 146 files and 38 MB per image on ViT-B); default: the grid and a compact heads.html',
      ),
    ],
    outFiles:
      'DIR/report.json and, per input, DIR/heads/<name>/{heads-grid.png, heads.html} (with --all-heads also L<l>H<h>.png and the full heads.html)',
  }).action(async (modelDir: string, inputs: string[], options: HeadsCommandOptions) => {
    await headsCommand(modelDir, inputs, options, ctx);
  });
}
