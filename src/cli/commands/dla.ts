/**
 * `prisma dla MODEL INPUT...`: direct logit attribution per image: every component's direct
 * contribution to the target logit (difference), and the check sumOfComponents + constant == logit.
 */
import { Option, type Command } from 'commander';

import { firstPatchToken, requireHead, resolveClass, slicePanels } from '../../analysis/common.js';
import { dla, type DlaAnalysis } from '../../analysis/dla.js';
import type { CommandContext } from '../context.js';
import type { Model } from '../../model.js';
import { runBatch, type BatchItem } from '../batch.js';
import { barChartSvg } from '../../report/chart.js';
import { scaleFor } from '../../report/colormap.js';
import type { Figure, FigureWriter } from '../../report/figures.js';
import { matrixSvg } from '../../report/heatmap.js';
import { displayImage, overlaySvg } from '../../report/overlay.js';
import { fmt } from '../../report/svg.js';
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
import { jsonOption, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface DlaCommandOptions extends ModelOptions {
  target?: string;
  baseline?: string;
  perPosition?: boolean;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export interface DlaCheck {
  sumOfComponents: number;
  constant: number;
  sumPlusConstant: number;
  logit: number;
  /** |sumPlusConstant - logit| <= tolerance */
  ok: boolean;
  tolerance: number;
}

export type DlaItem = DlaAnalysis & { check: DlaCheck };

export interface DlaReport extends ReportBase {
  command: 'dla';
  options: { target: string | null; baseline: string | null; perPosition: boolean };
  results: (DlaItem & { name: string; figures: string[] })[];
}

export const KIND_COLORS: Record<string, string> = {
  embed: '#7f7f7f',
  pos_embed: '#bcbd22',
  attn_bias: '#9467bd',
  head: '#1f77b4',
  mlp: '#ff7f0e',
};

export function dlaCheck(a: DlaAnalysis): DlaCheck {
  const sumPlusConstant = a.sumOfComponents + a.constant;
  const tolerance = 1e-4 * Math.max(1, Math.abs(a.logit));
  return {
    sumOfComponents: a.sumOfComponents,
    constant: a.constant,
    sumPlusConstant,
    logit: a.logit,
    ok: Math.abs(sumPlusConstant - a.logit) <= tolerance,
    tolerance,
  };
}

async function dlaFigures(model: Model, item: BatchItem, a: DlaAnalysis, w: FigureWriter): Promise<Figure[]> {
  const info = model.info;
  const metric = a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit difference`;
  const sub = `target ${metric} = ${fmt(a.logit)} = sum of components ${fmt(a.sumOfComponents)} + constant ${fmt(a.constant)}`;
  const comps = a.components;
  const groups: { label: string; start: number; end: number }[] = [];
  comps.forEach((c, i) => {
    const label = c.layer === null ? 'emb' : `L${c.layer}`;
    const last = groups[groups.length - 1];
    if (last && last.label === label) last.end = i + 1;
    else groups.push({ label, start: i, end: i + 1 });
  });
  const kinds = [...new Set(comps.map((c) => c.kind))];
  const figures = [
    await w.png(
      `dla-${item.name}-components.png`,
      'dla-components',
      barChartSvg({
        title: `Direct logit attribution: ${item.name}`,
        subtitle: sub,
        yLabel: `contribution to ${metric}`,
        bars: comps.map((c) => ({ label: c.name, value: c.value, color: KIND_COLORS[c.kind] ?? '#333' })),
        legend: kinds.map((k) => ({ name: k, color: KIND_COLORS[k] ?? '#333' })),
        groups,
      }),
    ),
    await w.png(
      `dla-${item.name}-heads.png`,
      'dla-heads',
      matrixSvg({
        title: `Direct logit attribution per head: ${item.name}`,
        subtitle: sub,
        panels: [{ rows: info.nLayers, cols: info.nHeads, values: a.heads }],
        rowLabel: 'layer',
        colLabel: 'head',
        scale: scaleFor(a.heads, true),
        colorbarLabel: `contribution to ${a.target.label}`,
      }),
    ),
  ];
  if (a.headPositions) {
    const nPos = a.headPositions.length / (info.nLayers * info.nHeads);
    const first = firstPatchToken(info);
    const gh = Math.floor(info.imageSize[0]! / info.patchSize);
    const gw = Math.floor(info.imageSize[1]! / info.patchSize);
    const top = a.heads
      .map((v, i) => ({ v, i }))
      .sort((x, y) => Math.abs(y.v) - Math.abs(x.v))
      .slice(0, 4);
    const panels = top.flatMap(({ v, i }) => {
      const l = Math.floor(i / info.nHeads);
      const h = i % info.nHeads;
      const row = a.headPositions!.slice(i * nPos, (i + 1) * nPos);
      return slicePanels(info, row, `L${l}H${h} total ${fmt(v, 2)}${first ? `, cls ${fmt(row[0]!, 2)}` : ''}`);
    });
    figures.push(
      await w.png(
        `dla-${item.name}-top-heads.png`,
        'dla-top-heads',
        overlaySvg({
          title: `Top heads by |DLA|, split by source patch: ${item.name}`,
          subtitle: `each head's contribution to ${metric} through the value of each source patch (class token in the title)`,
          image: await displayImage(item.display, 224),
          grid: [gh, gw],
          panels,
          scale: scaleFor(
            panels.flatMap((p) => p.values),
            true,
          ),
          colorbarLabel: 'contribution',
          columns: 4,
          panelSize: 200,
        }),
      ),
    );
  }
  return figures;
}

function summary(r: DlaReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    const top = [...res.components].sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, 5);
    lines.push(
      `${bold(res.input, color)}  ${res.metric === 'logit' ? `logit[${res.target.label}]` : `logit[${res.target.label}] - logit[${res.baseline!.label}]`} = ${fmt(res.logit)}`,
    );
    lines.push(
      `  sum of components ${fmt(res.sumOfComponents)} + constant ${fmt(res.constant)} = ${fmt(res.check.sumPlusConstant)} (${res.check.ok ? 'ok' : 'MISMATCH'})`,
    );
    lines.push(`  largest: ${top.map((c) => `${c.name} ${fmt(c.value)}`).join(', ')}`);
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}

export async function dlaCommand(
  modelDir: string,
  inputArgs: string[],
  options: DlaCommandOptions,
  ctx: CommandContext,
): Promise<DlaReport> {
  const out = prepareOut(options.out, options.resume);
  const model = await openModel(modelDir, options);
  requireHead(model, 'direct logit attribution');
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  if (options.baseline !== undefined) resolveClass(options.baseline, model.info, 'baseline');
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0);
  const perPosition = options.perPosition ?? false;
  const outcome = await runBatch<DlaItem>({
    command: 'dla',
    model,
    files,
    ...(out === undefined ? {} : { outDir: out }),
    resume: options.resume ?? false,
    key: { target: options.target ?? null, baseline: options.baseline ?? null, perPosition },
    ctx,
    process: async (item, w) => {
      const a = await dla(model, item.batch, {
        perPosition,
        ...(options.target === undefined ? {} : { target: options.target }),
        ...(options.baseline === undefined ? {} : { baseline: options.baseline }),
      });
      const result = { ...a, check: dlaCheck(a) };
      return { result, figures: w ? await dlaFigures(model, item, a, w) : [] };
    },
  });
  const report: DlaReport = {
    ...reportBase('dla', model, modelDir),
    command: 'dla',
    inputs: files,
    options: { target: options.target ?? null, baseline: options.baseline ?? null, perPosition },
    ...batchReportFields(outcome),
  };
  await finishBatch(report, options, ctx, summary);
  return report;
}

export function registerDla(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('dla')
      .description("direct logit attribution: each head, MLP, bias and embedding's direct contribution to the target logit")
      .argument('<MODEL_DIR>', 'Hugging Face model folder with a classification head')
      .argument('<INPUT...>', "images, folders of images, .npy/.safetensors tensors, or '-' for paths on stdin")
      .addOption(targetOption())
      .addOption(baselineOption())
      .addOption(new Option('--per-position', "also split each head by source position; figure of the top 4 heads' source patches"))
      .addOption(outOption())
      .addOption(resumeOption()),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nWith --out DIR: DIR/report.json, dla-<name>-components.png, dla-<name>-heads.png (+ dla-<name>-top-heads.png), DIR/items/*.json.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed.',
    )
    .action(async (modelDir: string, inputs: string[], options: DlaCommandOptions) => {
      await dlaCommand(modelDir, inputs, options, ctx);
    });
}
