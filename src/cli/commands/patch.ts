/**
 * `prisma patch MODEL --clean A --corrupt B --what SITE --by AXES`: activation patching of the
 * clean run into the corrupted run, exact and/or by attribution, with figures over the clean
 * image's patch grid and as matrices.
 */
import { Option, type Command } from 'commander';

import { firstPatchToken, requireHead, resolveClass, slicePanels, timeSlices } from '../../analysis/common.js';
import {
  checkWhatBy,
  parsePatchBy,
  parsePatchMethod,
  parsePatchWhat,
  patch,
  type PatchAnalysis,
  type PatchMatrix,
  type PatchMethod,
} from '../../analysis/patch.js';
import { checkLayers } from '../../analysis/common.js';
import type { CommandContext } from '../context.js';
import { usageError } from '../../errors.js';
import type { Model } from '../../model.js';
import type { PatchBy, PatchWhat } from '../../native.js';
import type { PixelBatch } from '../../tensor.js';
import { scatterSvg } from '../../report/chart.js';
import { scaleFor } from '../../report/colormap.js';
import { FigureWriter, type Figure } from '../../report/figures.js';
import { matrixSvg } from '../../report/heatmap.js';
import { displayImage, overlaySvg } from '../../report/overlay.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';
import { baselineOption, finishReport, layersOption, outOption, prepareOut, reportBase, type ReportBase } from './analysis.js';
import { argParser, jsonOption, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface PatchCommandOptions extends ModelOptions {
  clean: string;
  corrupt: string;
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

export interface PatchReport extends ReportBase {
  command: 'patch';
  options: {
    clean: string;
    corrupt: string;
    what: PatchWhat;
    by: PatchBy;
    method: PatchMethod;
    target: string | null;
    baseline: string | null;
    layers: number[] | null;
    fastLinear: boolean;
  };
  result: PatchAnalysis & { figureNotes: string[] };
}

const NOTES: Record<PatchBy, string> = {
  layer_pos:
    'patch-<method>-overlay.png: normalised effect per layer over the clean image (class token value in each panel title); patch-<method>-matrix.png: layer x position (position 0 = class token)',
  layer_head: 'patch-<method>-heads.png: layer x head matrix of the normalised effect',
  layer_pos_head:
    'patch-<method>-matrix.png: one layer x position panel per head; patch-<method>-overlay.png: per layer, the normalised effect summed over heads, over the clean image',
};

async function matrixFigures(
  model: Model,
  a: PatchAnalysis,
  m: PatchMatrix,
  clean: PixelBatch,
  cleanPath: string | undefined,
  w: FigureWriter,
): Promise<Figure[]> {
  const info = model.info;
  const metric = a.metric === 'logit' ? `${a.target.label} logit` : `${a.target.label} - ${a.baseline!.label} logit diff`;
  const sub = `${m.method} patching of ${a.what} (clean -> corrupt); metric: ${metric}; 0 = corrupt (${fmt(a.corrupt.metric.value)}), 1 = clean (${fmt(a.clean.metric.value)})`;
  const rowNames = m.layers.map(String);
  const scale = scaleFor(m.normalised, true);
  const figures: Figure[] = [];
  const name = `patch-${m.method}`;
  const nL = m.layers.length;
  const first = firstPatchToken(info);
  const gh = Math.floor(info.imageSize[0]! / info.patchSize);
  const gw = Math.floor(info.imageSize[1]! / info.patchSize);
  const overlay = async (perLayer: number[][], title: string, clsValues: number[] | null) => {
    const image = await displayImage(
      {
        ...(cleanPath ? { path: cleanPath } : {}),
        pixels: clean.data,
        imageSize: info.imageSize,
        spec: await model.preprocessSpec().catch(() => undefined),
      },
      224,
    );
    const s = scaleFor(perLayer.flat(), true);
    return w.png(
      `${name}-overlay.png`,
      'patch-overlay',
      overlaySvg({
        title,
        subtitle: sub,
        image,
        grid: [gh, gw],
        panels: perLayer.flatMap((vals, i) =>
          slicePanels(info, vals, `L${m.layers[i]}${clsValues ? ` cls=${fmt(clsValues[i]!, 2)}` : ''}`),
        ),
        scale: s,
        colorbarLabel: 'normalised effect',
        columns: Math.min(nL * timeSlices(info), 6),
        panelSize: nL <= 4 ? 200 : 150,
      }),
    );
  };
  if (a.by === 'layer_pos') {
    const nPos = m.dims[1]!;
    const rows = m.layers.map((_, i) => m.normalised.slice(i * nPos, (i + 1) * nPos));
    figures.push(await overlay(rows, `Patching ${a.what} by layer and position (${m.method})`, first ? rows.map((r) => r[0]!) : null));
    figures.push(
      await w.png(
        `${name}-matrix.png`,
        'patch-matrix',
        matrixSvg({
          title: `Patching ${a.what}: layer x position (${m.method})`,
          subtitle: sub,
          panels: [{ rows: nL, cols: nPos, values: m.normalised }],
          rowLabel: 'layer',
          colLabel: first ? 'position (0 = class token, then patches row-major)' : 'position (patches, row-major)',
          rowNames,
          scale,
          colorbarLabel: 'normalised effect',
        }),
      ),
    );
  } else if (a.by === 'layer_head') {
    const nH = m.dims[1]!;
    figures.push(
      await w.png(
        `${name}-heads.png`,
        'patch-heads',
        matrixSvg({
          title: `Patching ${a.what}: layer x head (${m.method})`,
          subtitle: sub,
          panels: [{ rows: nL, cols: nH, values: m.normalised }],
          rowLabel: 'layer',
          colLabel: 'head',
          rowNames,
          scale,
          colorbarLabel: 'normalised effect',
        }),
      ),
    );
  } else {
    const [, nPos, nH] = m.dims as [number, number, number];
    const panels = Array.from({ length: nH }, (_, h) => {
      const values = new Float64Array(nL * nPos);
      for (let l = 0; l < nL; l++) for (let p = 0; p < nPos; p++) values[l * nPos + p] = m.normalised[(l * nPos + p) * nH + h]!;
      return { title: `head ${h}`, rows: nL, cols: nPos, values };
    });
    figures.push(
      await w.png(
        `${name}-matrix.png`,
        'patch-matrix',
        matrixSvg({
          title: `Patching ${a.what}: layer x position, one panel per head (${m.method})`,
          subtitle: sub,
          panels,
          rowLabel: 'layer',
          colLabel: 'position (0 = class token)',
          rowNames,
          scale,
          colorbarLabel: 'normalised effect',
          columns: Math.min(nH, nPos > 60 ? 2 : 4),
        }),
      ),
    );
    const summed = m.layers.map((_, l) =>
      Array.from({ length: nPos }, (_, p) => {
        let s = 0;
        for (let h = 0; h < nH; h++) s += m.normalised[(l * nPos + p) * nH + h]!;
        return s;
      }),
    );
    figures.push(
      await overlay(
        summed,
        `Patching ${a.what} by layer, position and head, summed over heads (${m.method})`,
        first ? summed.map((r) => r[0]!) : null,
      ),
    );
  }
  return figures;
}

function summary(r: PatchReport, color: boolean): string {
  const a = r.result;
  const metric = a.metric === 'logit' ? `logit[${a.target.label}]` : `logit[${a.target.label}] - logit[${a.baseline!.label}]`;
  const lines = [
    bold(`patch ${a.what} by ${a.by.replace(/_/g, ',')} (${a.method})`, color),
    `  metric ${metric}: clean ${fmt(a.clean.metric.value)} (top-1 ${a.clean.top1.label}), corrupt ${fmt(a.corrupt.metric.value)} (top-1 ${a.corrupt.top1.label})`,
  ];
  for (const m of [a.exact, a.attribution]) {
    if (!m) continue;
    let best = 0;
    m.normalised.forEach((v, i) => {
      if (Math.abs(v) > Math.abs(m.normalised[best]!)) best = i;
    });
    const idx: number[] = [];
    let rest = best;
    for (let d = m.dims.length - 1; d >= 0; d--) {
      idx.unshift(rest % m.dims[d]!);
      rest = Math.floor(rest / m.dims[d]!);
    }
    idx[0] = m.layers[idx[0]!]!;
    const where = m.axes.map((ax, i) => `${ax} ${idx[i]}`).join(', ');
    lines.push(
      `  ${m.method}: ${m.patchedRuns} patched runs in ${m.batchedForwards} batched forwards; largest effect ${fmt(m.normalised[best]!)} at ${where}`,
    );
  }
  if (a.correlation !== undefined)
    lines.push(`  correlation exact vs attribution (normalised): ${a.correlation === null ? 'undefined' : fmt(a.correlation)}`);
  if (r.figures.length > 0) lines.push(`  wrote report.json and ${r.figures.length} figures`);
  return `${lines.join('\n')}\n`;
}

export async function patchCommand(modelDir: string, options: PatchCommandOptions, ctx: CommandContext): Promise<PatchReport> {
  checkWhatBy(options.what, options.by);
  const out = prepareOut(options.out, false);
  const model = await openModel(modelDir, options);
  requireHead(model, 'activation patching');
  if (options.target !== undefined) resolveClass(options.target, model.info, 'target');
  const baselineNone = options.baseline !== undefined && options.baseline.toLowerCase() === 'none';
  if (options.baseline !== undefined && !baselineNone) resolveClass(options.baseline, model.info, 'baseline');
  if (options.layers) checkLayers(options.layers, model.info.nLayers);
  const clean = await model.loadInputs([options.clean]);
  const corrupt = await model.loadInputs([options.corrupt]);
  if (clean.shape[0] !== 1 || corrupt.shape[0] !== 1) throw usageError('--clean and --corrupt must each be one image');
  const analysis = await patch(model, clean, corrupt, {
    what: options.what,
    by: options.by,
    method: options.method,
    ...(options.target === undefined ? {} : { target: options.target }),
    ...(options.baseline === undefined ? {} : { baseline: baselineNone ? null : options.baseline }),
    ...(options.layers === undefined ? {} : { layers: options.layers }),
    ...(options.fastLinear ? { fastLinear: true } : {}),
  });
  const figures: Figure[] = [];
  const notes = [NOTES[options.by].replace(/<method>/g, options.method === 'both' ? '{exact,attribution}' : options.method)];
  if (out !== undefined) {
    const w = new FigureWriter(out);
    const cleanPath = /\.(npy|safetensors)$/i.test(options.clean) ? undefined : options.clean;
    for (const m of [analysis.exact, analysis.attribution])
      if (m) figures.push(...(await matrixFigures(model, analysis, m, clean, cleanPath, w)));
    if (analysis.exact && analysis.attribution) {
      const pts = analysis.exact.normalised.map((v, i) => [v, analysis.attribution!.normalised[i]!] as [number, number]);
      figures.push(
        await w.png(
          'patch-scatter.png',
          'patch-scatter',
          scatterSvg({
            title: `Exact vs attribution patching (${analysis.what})`,
            subtitle: `normalised effects, one point per ${analysis.by.replace(/_/g, ' x ')}; Pearson r = ${analysis.correlation === null || analysis.correlation === undefined ? 'undefined' : fmt(analysis.correlation)}`,
            xLabel: 'exact (normalised)',
            yLabel: 'attribution (normalised)',
            points: pts,
            diagonal: true,
          }),
        ),
      );
      notes.push('patch-scatter.png: exact vs attribution normalised effects, with y = x');
    }
  }
  const report: PatchReport = {
    ...reportBase('patch', model, modelDir),
    command: 'patch',
    inputs: [options.clean, options.corrupt],
    options: {
      clean: options.clean,
      corrupt: options.corrupt,
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
  await finishReport(report, options, ctx, summary);
  return report;
}

export function registerPatch(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('patch')
      .description('activation patching: patch clean activations into the corrupted run, per layer and position / head')
      .argument('<MODEL_DIR>', 'Hugging Face model folder with a classification head')
      .requiredOption('--clean <image>', 'the clean image (its activations are patched in)')
      .requiredOption('--corrupt <image>', 'the corrupted image (the run that is patched)')
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
      await patchCommand(modelDir, options, ctx);
    });
}
