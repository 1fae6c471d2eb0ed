/**
 * `prisma logit-lens MODEL INPUT...`: per image and layer, the residual stream read through the
 * final layer norm and head: top-k at the class token, the target's logit / prob / rank, and the
 * target logit at every patch.
 */
import { Option, type Command } from 'commander';

import { logitLens, parseLensSite, type LogitLensResult } from '../../analysis/lens.js';
import { firstPatchToken, patchGrid, requireHead, resolveClass, slicePanels } from '../../analysis/common.js';
import type { CommandContext } from '../context.js';
import { findPatchLabels, loadPatchLabels, type PatchLabelsEntry } from '../../dataset/patch-labels.js';
import { PrismaError } from '../../errors.js';
import type { Model } from '../../model.js';
import type { LensSite } from '../../native.js';
import { parsePositiveInt } from '../../options.js';
import { runBatch, type BatchItem } from '../batch.js';
import { lineChartSvg, PALETTE } from '../../report/chart.js';
import { scaleFor } from '../../report/colormap.js';
import type { Figure, FigureWriter } from '../../report/figures.js';
import { displayImage, overlaySvg } from '../../report/overlay.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';
import {
  batchReportFields,
  collect,
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

export interface LogitLensCommandOptions extends ModelOptions {
  site: LensSite[];
  patchLabels?: string;
  target?: string;
  topK: number;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export interface LogitLensReport extends ReportBase {
  command: 'logit-lens';
  options: { sites: LensSite[]; target: string | null; topK: number; patchLabels?: string | null };
  results: (Omit<LogitLensResult, 'input'> & { input: string; name: string; figures: string[]; patchLabels?: PatchScore[] | null })[];
  /** With --patch-labels: per layer, over every labelled patch of every image. */
  patchLabelAccuracy?: PatchScore[] | null;
}

const SITE_OFFSET: Record<LensSite, number> = { resid_pre: 0, resid_mid: 0.5, resid_post: 1 };

async function lensFigures(model: Model, item: BatchItem, r: LogitLensResult, sites: LensSite[], w: FigureWriter): Promise<Figure[]> {
  const info = model.info;
  const t = `${r.target.label} (${r.target.index})`;
  const series = (pick: (l: LogitLensResult['layers'][number]) => number) =>
    sites.map((site, k) => ({
      name: site,
      color: PALETTE[k]!,
      points: r.layers.filter((l) => l.site === site).map((l) => [l.layer + SITE_OFFSET[site], pick(l)] as [number, number]),
    }));
  const chart = lineChartSvg({
    title: `Logit lens: ${item.name}`,
    subtitle: `target ${t}${r.targetSource === 'top1' ? ", the model's top-1" : ''}; x = depth (resid_pre of layer l at l, resid_mid at l+0.5, resid_post at l+1)`,
    xLabel: 'depth (layer boundary)',
    xDomain: [0, info.nLayers],
    xTicks: Array.from({ length: info.nLayers + 1 }, (_, i) => ({ value: i, label: String(i) })),
    panels: [
      { title: 'target probability', yLabel: 'probability', yDomain: [0, 1], series: series((l) => l.targetProb) },
      {
        title: 'target rank (0 = top)',
        yLabel: 'rank',
        invertY: true,
        integerY: true,
        yDomain: [0, Math.max(1, info.nClasses - 1)],
        series: series((l) => l.targetRank),
      },
    ],
  });
  const figures = [await w.png(`lens-${item.name}-prob.png`, 'lens-prob', chart)];

  const image = await displayImage(item.display, 224);
  const gh = Math.floor(info.imageSize[0]! / info.patchSize);
  const gw = Math.floor(info.imageSize[1]! / info.patchSize);
  const panels = sites.flatMap((site) =>
    r.layers.filter((l) => l.site === site).flatMap((l) => slicePanels(info, l.posTargetLogit, `L${l.layer} p=${fmt(l.targetProb, 2)}`)),
  );
  const scale = scaleFor(
    panels.flatMap((p) => p.values),
    true,
  );
  const overlay = overlaySvg({
    title: `Logit lens per patch: ${item.name}`,
    subtitle: `target ${t} logit at each patch (class token excluded); rows: ${sites.join(', ')}; columns: layers`,
    image,
    grid: [gh, gw],
    panels,
    scale,
    colorbarLabel: `${r.target.label} logit`,
    columns: info.nLayers,
    panelSize: info.nLayers <= 4 ? 180 : info.nLayers <= 8 ? 132 : 104,
    rowNames: sites.length > 1 ? sites.map((s) => s.replace('resid_', '')) : undefined,
  });
  figures.push(await w.png(`lens-${item.name}-patches.png`, 'lens-patches', overlay));
  return figures;
}

function summary(r: LogitLensReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(
      `${bold(`${res.input}`, color)}  target ${res.target.label} (${res.target.index})${res.targetSource === 'top1' ? ', own top-1' : ''}`,
    );
    for (const site of r.options.sites) {
      const ls = res.layers.filter((l) => l.site === site);
      lines.push(
        `  ${site.padEnd(10)} p: ${ls.map((l) => fmt(l.targetProb, 2)).join(' ')}   rank: ${ls.map((l) => l.targetRank).join(' ')}`,
      );
    }
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}

export interface PatchScore {
  layer: number;
  site: LensSite;
  correct: number;
  labelled: number;
  accuracy: number | null;
}

/**
 * Per-patch lens accuracy: at each layer, a labelled patch counts as correct when the lens's top-1
 * class at that patch's token is the patch's label (compared with the model's id2label by name).
 */
export function scorePatches(
  r: LogitLensResult,
  entry: PatchLabelsEntry,
  labels: readonly string[],
  firstPatchToken: number,
): PatchScore[] {
  return r.layers.map((l) => {
    let correct = 0;
    let labelled = 0;
    entry.labels.forEach((label, p) => {
      if (label === null) return;
      labelled++;
      if (labels[l.posTop1[firstPatchToken + p]!] === label) correct++;
    });
    return { layer: l.layer, site: l.site, correct, labelled, accuracy: labelled ? correct / labelled : null };
  });
}

function sumScores(all: PatchScore[][]): PatchScore[] | null {
  if (all.length === 0) return null;
  return all[0]!.map((s, i) => {
    const correct = all.reduce((a, x) => a + x[i]!.correct, 0);
    const labelled = all.reduce((a, x) => a + x[i]!.labelled, 0);
    return { layer: s.layer, site: s.site, correct, labelled, accuracy: labelled ? correct / labelled : null };
  });
}

export async function logitLensCommand(
  modelDir: string,
  inputArgs: string[],
  options: LogitLensCommandOptions,
  ctx: CommandContext,
): Promise<LogitLensReport> {
  const out = prepareOut(options.out, options.resume);
  const sites: LensSite[] = options.site.length > 0 ? [...new Set(options.site)] : ['resid_post'];
  const model = await openModel(modelDir, options);
  requireHead(model, 'the logit lens');
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0);
  const topK = options.topK;
  const patchFile = options.patchLabels === undefined ? undefined : await loadPatchLabels(options.patchLabels);
  if (patchFile) {
    const [gh, gw] = patchGrid(model.info);
    const bad = patchFile.images.find((e) => e.grid[0] !== gh || e.grid[1] !== gw);
    if (bad) {
      throw new PrismaError('E_SHAPE', `patch labels for ${bad.image} use a ${bad.grid.join('x')} grid; this model's is ${gh}x${gw}`, {
        hint: `make them with \`prisma dataset patch-labels --annotations XML_DIR --model ${modelDir} --out FILE\``,
      });
    }
    if (!patchFile.classes.some((c) => model.info.labels.includes(c))) {
      throw new PrismaError(
        'E_ARGUMENT',
        `none of the patch labels (${patchFile.classes.slice(0, 3).join(', ')}...) is a class of this model`,
        {
          hint: "patch labels are compared with the model's id2label names",
        },
      );
    }
  }
  const outcome = await runBatch({
    command: 'logit-lens',
    model,
    files,
    ...(out === undefined ? {} : { outDir: out }),
    resume: options.resume ?? false,
    key: {
      sites,
      target: options.target ?? null,
      topK,
      ...(options.patchLabels === undefined ? {} : { patchLabels: options.patchLabels }),
    },
    ctx,
    process: async (item, w) => {
      const [r] = await logitLens(model, item.batch, { sites, topK, ...(options.target === undefined ? {} : { target: options.target }) });
      const entry = patchFile ? findPatchLabels(patchFile, item.input) : undefined;
      const patchLabels = entry ? scorePatches(r!, entry, model.info.labels, firstPatchToken(model.info)) : patchFile ? null : undefined;
      return {
        result: { ...r!, ...(patchLabels === undefined ? {} : { patchLabels }) },
        figures: w ? await lensFigures(model, item, r!, sites, w) : [],
      };
    },
  });
  const report: LogitLensReport = {
    ...reportBase('logit-lens', model, modelDir),
    command: 'logit-lens',
    inputs: files,
    options: { sites, target: options.target ?? null, topK, ...(patchFile ? { patchLabels: options.patchLabels ?? null } : {}) },
    ...batchReportFields(outcome),
    ...(patchFile
      ? { patchLabelAccuracy: sumScores(outcome.items.map((i) => i.result.patchLabels).filter((x): x is PatchScore[] => Array.isArray(x))) }
      : {}),
  };
  await finishBatch(report, options, ctx, summary);
  return report;
}

export function registerLogitLens(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('logit-lens')
      .description("read every layer's residual stream through the head: target prob / rank per layer and per patch")
      .argument('<MODEL_DIR>', 'Hugging Face model folder with a classification head')
      .argument('<INPUT...>', "images, folders of images, .npy/.safetensors tensors, or '-' for paths on stdin")
      .addOption(
        new Option('--site <site>', 'resid_pre, resid_mid or resid_post (repeatable or comma-separated; default resid_post)')
          .default([] as LensSite[], 'resid_post')
          .argParser(collect(parseLensSite)),
      )
      .addOption(targetOption())
      .addOption(
        new Option('--patch-labels <file>', 'score per-patch lens accuracy layer by layer against `prisma dataset patch-labels` output'),
      )
      .addOption(
        new Option('--top-k <k>', 'classes listed per layer').default(5).argParser(argParser((v) => parsePositiveInt(v, '--top-k'))),
      )
      .addOption(outOption())
      .addOption(resumeOption()),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nWith --out DIR: DIR/report.json, DIR/lens-<name>-prob.png, DIR/lens-<name>-patches.png, DIR/items/*.json.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed (listed in the report).',
    )
    .action(async (modelDir: string, inputs: string[], options: LogitLensCommandOptions) => {
      await logitLensCommand(modelDir, inputs, options, ctx);
    });
}
