/**
 * `prisma ablate MODEL INPUT... --ablate 'blocks.3.attn.hook_z[head=5]'`: knock out hook
 * selections (zero, mean over reference images, or one reference image's value) and report the
 * target metric before and after; without --ablate (or with --sweep heads), ablate every head in
 * turn and draw the layer × head effect.
 */
import { Option, type Command } from 'commander';

import {
  ablate,
  ablateSweep,
  parseAblationMode,
  resolveAblations,
  type AblateAnalysis,
  type AblateSweepAnalysis,
  type AblationMode,
} from '../../analysis/ablate.js';
import { parseAblateSpec, type AblateSpec } from '../../analysis/ablate-spec.js';
import { requireHead, resolveClass } from '../../analysis/common.js';
import type { CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import { runBatch, type BatchItem } from '../batch.js';
import { barChartSvg } from '../../report/chart.js';
import { scaleFor } from '../../report/colormap.js';
import type { Figure, FigureWriter } from '../../report/figures.js';
import { matrixSvg } from '../../report/heatmap.js';
import { fmt } from '../../report/svg.js';
import type { PixelBatch } from '../../tensor.js';
import { bold } from '../ui/style.js';
import {
  batchReportFields,
  baselineOption,
  collectInputs,
  finishBatch,
  outOption,
  prepareOut,
  reportBase,
  resumeOption,
  targetOption,
  type ReportBase,
} from './analysis.js';
import { argParser, jsonOption, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface AblateCommandOptions extends ModelOptions {
  ablate: AblateSpec[];
  mode: AblationMode;
  reference?: string;
  seed: number;
  target?: string;
  baseline?: string;
  sweep?: string;
  fastLinear?: boolean;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export type AblateItem = (Omit<AblateAnalysis, 'input'> & { kind: 'specs' }) | (Omit<AblateSweepAnalysis, 'input'> & { kind: 'sweep' });

export interface AblateReport extends ReportBase {
  command: 'ablate';
  options: {
    ablate: string[];
    sweep: string | null;
    mode: AblationMode;
    reference: string | null;
    seed: number;
    target: string | null;
    baseline: string | null;
    fastLinear: boolean;
  };
  results: (AblateItem & { input: string; name: string; figures: string[] })[];
}

function metricName(a: { metric: string; target: { label: string }; baseline: { label: string } | null }): string {
  return a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit diff`;
}

async function sweepFigures(item: BatchItem, a: AblateSweepAnalysis, w: FigureWriter): Promise<Figure[]> {
  const [nL, nH] = a.dims as [number, number];
  return [
    await w.png(
      `ablate-${item.name}-heads.png`,
      'ablate-heads',
      matrixSvg({
        title: `Ablating each head (${a.mode}): ${item.name}`,
        subtitle: `change of the ${metricName(a)} (before: ${fmt(a.before.value)}) when hook_z of that head is ${a.mode === 'zero' ? 'zeroed' : a.mode === 'mean' ? 'replaced by its reference mean' : `taken from ${a.resample?.reference ?? 'a reference image'}`}`,
        panels: [{ rows: nL, cols: nH, values: a.effects }],
        rowLabel: 'layer',
        colLabel: 'head',
        scale: scaleFor(a.effects, true),
        colorbarLabel: 'effect (after - before)',
      }),
    ),
  ];
}

async function specFigures(item: BatchItem, a: AblateAnalysis, w: FigureWriter): Promise<Figure[]> {
  return [
    await w.png(
      `ablate-${item.name}-effect.png`,
      'ablate-effect',
      barChartSvg({
        title: `Ablation (${a.mode}): ${item.name}`,
        subtitle: `${a.ablations.map((x) => x.spec).join('; ')}: effect ${fmt(a.effect)}`,
        yLabel: metricName(a),
        bars: [
          { label: 'before', value: a.before.value, color: '#1f77b4' },
          { label: 'after', value: a.after.value, color: '#d62728' },
        ],
        legend: [
          { name: `before (p=${fmt(a.before.prob, 2)})`, color: '#1f77b4' },
          { name: `after (p=${fmt(a.after.prob, 2)})`, color: '#d62728' },
        ],
      }),
    ),
  ];
}

function summary(r: AblateReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(`${bold(res.input, color)}  ${metricName(res)} before ${fmt(res.before.value)} (p=${fmt(res.before.prob, 2)})`);
    if (res.kind === 'specs') {
      lines.push(
        `  ${res.mode} ${res.ablations.map((x) => x.spec).join(', ')}: after ${fmt(res.after.value)} (p=${fmt(res.after.prob, 2)}), effect ${fmt(res.effect)}`,
      );
    } else {
      const nH = res.dims[1]!;
      const order = res.effects.map((v, i) => ({ v, i })).sort((a, b) => a.v - b.v);
      const name = (i: number) => `L${Math.floor(i / nH)}H${i % nH}`;
      lines.push(
        `  ${res.mode} sweep over ${res.effects.length} heads; most negative: ${order
          .slice(0, 3)
          .map((o) => `${name(o.i)} ${fmt(o.v)}`)
          .join(', ')}`,
      );
    }
    if (res.resample) lines.push(`  resampled from ${res.resample.reference} (seed ${res.resample.seed})`);
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}

export async function ablateCommand(
  modelDir: string,
  inputArgs: string[],
  options: AblateCommandOptions,
  ctx: CommandContext,
): Promise<AblateReport> {
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
  const out = prepareOut(options.out, options.resume);
  const model = await openModel(modelDir, options);
  requireHead(model, 'ablation');
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  if (options.baseline !== undefined) resolveClass(options.baseline, model.info, 'baseline');
  if (!sweep) resolveAblations(model, specs); // unknown hooks fail before any input is read
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0);
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
  const outcome = await runBatch<AblateItem>({
    command: 'ablate',
    model,
    files,
    ...(out === undefined ? {} : { outDir: out }),
    resume: options.resume ?? false,
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
    ctx,
    process: async (item, w) => {
      if (sweep) {
        const a = await ablateSweep(model, item.batch, common);
        const { input: _i, ...rest } = a;
        return { result: { kind: 'sweep' as const, ...rest }, figures: w ? await sweepFigures(item, a, w) : [] };
      }
      const a = await ablate(model, item.batch, { ...common, ablate: specs });
      const { input: _i, ...rest } = a;
      return { result: { kind: 'specs' as const, ...rest }, figures: w ? await specFigures(item, a, w) : [] };
    },
  });
  const report: AblateReport = {
    ...reportBase('ablate', model, modelDir),
    command: 'ablate',
    inputs: files,
    options: {
      ablate: specs.map((s) => s.text),
      sweep: sweep ? 'heads' : null,
      mode: options.mode,
      reference: options.reference ?? null,
      seed: options.seed,
      target: options.target ?? null,
      baseline: options.baseline ?? null,
      fastLinear: options.fastLinear ?? false,
    },
    ...batchReportFields(outcome),
  };
  await finishBatch(report, options, ctx, summary);
  return report;
}

export function registerAblate(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('ablate')
      .description('ablate hook selections (zero / mean / resample) and measure the target metric, or sweep every head')
      .argument('<MODEL_DIR>', 'Hugging Face model folder with a classification head')
      .argument('<INPUT...>', "images, folders of images, .npy/.safetensors tensors, or '-' for paths on stdin")
      .addOption(
        new Option(
          '--ablate <spec>',
          "HOOK or HOOK[head=1|2,pos=0-3,batch=0], e.g. 'blocks.1.attn.hook_z[head=2]' (repeatable; ablated together)",
        )
          .default([] as AblateSpec[], 'none: sweep every head')
          .argParser((value: string, previous: AblateSpec[]) => [...previous, argParser(parseAblateSpec)(value)]),
      )
      .addOption(
        new Option('--mode <mode>', 'zero, mean (over --reference images) or resample (one --reference image, seeded)')
          .default('zero')
          .argParser(argParser(parseAblationMode)),
      )
      .addOption(new Option('--reference <dir>', 'reference images for --mode mean / resample (a folder, an image or a tensor file)'))
      .addOption(
        new Option('--seed <n>', 'seed for choosing the resampling reference').default(0).argParser(
          argParser((v) => {
            if (!/^\d+$/.test(v)) throw usageError(`--seed must be a non-negative integer, got '${v}'`);
            return Number.parseInt(v, 10);
          }),
        ),
      )
      .addOption(targetOption())
      .addOption(baselineOption())
      .addOption(new Option('--sweep <what>', "'heads': ablate every head in turn (the default without --ablate)"))
      .addOption(
        new Option(
          '--fast-linear',
          "compute a head sweep's linear layers with oneDNN (f32 CPU models): faster on large models, equal to the default only to float rounding",
        ),
      )
      .addOption(outOption())
      .addOption(resumeOption()),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nWith --out DIR: DIR/report.json, ablate-<name>-heads.png (sweep) or ablate-<name>-effect.png, DIR/items/*.json.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed.',
    )
    .action(async (modelDir: string, inputs: string[], options: AblateCommandOptions) => {
      await ablateCommand(modelDir, inputs, options, ctx);
    });
}
