/**
 * `prisma ablate MODEL INPUT... --ablate 'blocks.3.attn.hook_z[head=5]'`: knock out hook
 * selections (zero, mean over reference images, or one reference image's value) and report the
 * target metric before and after; without --ablate (or with --sweep heads), ablate every head in
 * turn and draw the layer × head effect.
 */
import { Option, type Command } from 'commander';

import { ablate, ablateSweep, parseAblationMode, resolveAblations, type AblationMode } from '../../analysis/ablate.js';
import { parseAblateSpec, type AblateSpec } from '../../analysis/ablate-spec.js';
import type { CommandContext } from '../context.js';
import type { Figure } from '../../report/figures.js';
import { usageError } from '../../errors.js';
import { ablateFigures, ablateSweepFigures } from '../../report/figures/ablate.js';
import type { PixelBatch } from '../../tensor.js';
import { ablateSummary } from '../summaries/ablate.js';
import type { AblateItem, AblateReport } from '../summaries/ablate.js';
import { baselineOption, batchCommand, openBatch, runBatchCommand, targetOption, type BatchCommandOptions } from './analysis.js';
import { argParser, refuseSplices } from './common.js';

export type { AblateItem, AblateReport };

export interface AblateCommandOptions extends BatchCommandOptions {
  ablate: AblateSpec[];
  mode: AblationMode;
  reference?: string;
  seed: number;
  sweep?: string;
  fastLinear?: boolean;
}

export async function ablateCommand(
  modelDir: string,
  inputArgs: string[],
  options: AblateCommandOptions,
  ctx: CommandContext,
): Promise<AblateReport | undefined> {
  const specs = options.ablate;
  if (options.sweep !== undefined && options.sweep !== 'heads') throw usageError(`unknown --sweep '${options.sweep}'`, 'use --sweep heads');
  if (options.sweep !== undefined && specs.length > 0) throw usageError('give either --ablate specs or --sweep heads, not both');
  const sweep = specs.length === 0;
  if (options.fastLinear && !sweep) throw usageError('--fast-linear applies to head sweeps (--sweep heads), not to --ablate specs');
  if (options.mode !== 'zero' && options.reference === undefined) {
    throw usageError(
      `--mode ${options.mode} needs --reference DIR (images to take the ${options.mode === 'mean' ? 'mean' : 'values'} from)`,
    );
  }
  const batch = await openBatch(modelDir, inputArgs, options, ctx, {
    head: 'ablation',
    check: (model) => {
      if (sweep) refuseSplices(model, 'an ablation sweep');
      else resolveAblations(model, specs); // unknown hooks fail before any input is read
    },
  });
  const { model } = batch;
  let references: PixelBatch | undefined;
  if (options.mode !== 'zero') references = await model.loadInputs([options.reference!]);

  const common = {
    mode: options.mode,
    seed: options.seed,
    ...(references ? { references } : {}),
    ...(options.target === undefined ? {} : { target: options.target }),
    ...(options.baseline === undefined ? {} : { baseline: options.baseline }),
    ...(options.fastLinear ? { fastLinear: true } : {}),
  };
  return runBatchCommand({
    command: 'ablate',
    modelDir,
    batch,
    options,
    ctx,
    key: {
      specs: specs.map((s) => s.text),
      sweep,
      mode: options.mode,
      reference: options.reference ?? null,
      seed: options.seed,
      target: options.target ?? null,
      baseline: options.baseline ?? null,
      ...(options.fastLinear ? { fastLinear: true } : {}),
    },
    reportOptions: {
      ablate: specs.map((s) => s.text),
      sweep: sweep ? 'heads' : null,
      mode: options.mode,
      reference: options.reference ?? null,
      seed: options.seed,
      target: options.target ?? null,
      baseline: options.baseline ?? null,
      fastLinear: options.fastLinear ?? false,
    },
    process: async (item, w): Promise<{ result: AblateItem; figures: Figure[] }> => {
      if (sweep) {
        const a = await ablateSweep(model, item.batch, common);
        const { input: _i, ...rest } = a;
        return { result: { kind: 'sweep' as const, ...rest }, figures: w ? await ablateSweepFigures(item, a, w) : [] };
      }
      const a = await ablate(model, item.batch, { ...common, ablate: specs });
      const { input: _i, ...rest } = a;
      return { result: { kind: 'specs' as const, ...rest }, figures: w ? await ablateFigures(item, a, w) : [] };
    },
    summary: ablateSummary,
  });
}

export function registerAblate(program: Command, ctx: CommandContext): void {
  batchCommand(program, {
    name: 'ablate',
    description: 'ablate hook selections (zero / mean / resample) and measure the target metric, or sweep every head',
    options: [
      new Option(
        '--ablate <spec>',
        "HOOK or HOOK[head=1|2,pos=0-3,batch=0], e.g. 'blocks.1.attn.hook_z[head=2]' (repeatable; ablated together)",
      )
        .default([] as AblateSpec[], 'none: sweep every head')
        .argParser((value: string, previous: AblateSpec[]) => [...previous, argParser(parseAblateSpec)(value)]),
      new Option('--mode <mode>', 'zero, mean (over --reference images) or resample (one --reference image, seeded)')
        .default('zero')
        .argParser(argParser(parseAblationMode)),
      new Option('--reference <dir>', 'reference images for --mode mean / resample (a folder, an image or a tensor file)'),
      new Option('--seed <n>', 'seed for choosing the resampling reference').default(0).argParser(
        argParser((v) => {
          if (!/^\d+$/.test(v)) throw usageError(`--seed must be a non-negative integer, got '${v}'`);
          return Number.parseInt(v, 10);
        }),
      ),
      targetOption(),
      baselineOption(),
      new Option('--sweep <what>', "'heads': ablate every head in turn (the default without --ablate)"),
      new Option(
        '--fast-linear',
        "compute a head sweep's linear layers with oneDNN (f32 CPU models): faster on large models, equal to the default only to float rounding",
      ),
    ],
    outFiles: 'DIR/report.json, ablate-<name>-heads.png (sweep) or ablate-<name>-effect.png, DIR/items/*.json',
  }).action(async (modelDir: string, inputs: string[], options: AblateCommandOptions) => {
    await ablateCommand(modelDir, inputs, options, ctx);
  });
}
