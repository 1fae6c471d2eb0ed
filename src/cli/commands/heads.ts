/**
 * `prisma heads MODEL INPUT...`: attention-head statistics from `blocks.*.attn.hook_pattern`,
 * per-head overlays of the chosen query's attention, a layer × head grid of thumbnails, and a
 * self-contained HTML viewer.
 */
import { Option, type Command } from 'commander';

import { checkLayers, firstPatchToken, slicePanels, sumOverSlices, timeSlices } from '../../analysis/common.js';
import { heads, parseHeadsQuery, resolveQuery, type HeadsAnalysis, type HeadsQuery, type HeadsResult } from '../../analysis/heads.js';
import type { CommandContext } from '../context.js';
import { PrismaError } from '../../errors.js';
import type { Model } from '../../model.js';
import type { ModelInfo } from '../../native.js';
import { runBatch, type BatchItem } from '../batch.js';
import type { ColorScale } from '../../report/colormap.js';
import type { Figure, FigureWriter } from '../../report/figures.js';
import { headsHtml } from '../../report/heads-html.js';
import { displayImage, overlaySvg, type DisplaySource } from '../../report/overlay.js';
import { fmt } from '../../report/svg.js';
import { bold } from '../ui/style.js';
import {
  batchReportFields,
  collectInputs,
  finishBatch,
  layersOption,
  outOption,
  prepareOut,
  reportBase,
  resumeOption,
  type ReportBase,
} from './analysis.js';
import { argParser, jsonOption, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface HeadsCommandOptions extends ModelOptions {
  query?: HeadsQuery;
  layers?: number[];
  out?: string;
  resume?: boolean;
  json?: boolean;
}

export interface HeadsReport extends ReportBase {
  command: 'heads';
  options: { query: HeadsQuery; layers: number[] | null };
  results: (HeadsAnalysis & { name: string; figures: string[] })[];
}

/** Video: the first frame of each time slice at the viewer's size (none for images). */
async function sliceFrames(info: ModelInfo, display: DisplaySource): Promise<string[]> {
  const slices = timeSlices(info);
  if (slices < 2) return [];
  const [h, w] = display.imageSize as [number, number];
  const frame = 3 * h * w;
  const tubelet = Math.max(1, info.tubeletSize ?? 1);
  // The file shows the whole input; a slice's frame comes from the pixels.
  const { path: _whole, ...pixelsOnly } = display;
  const frames: string[] = [];
  for (let t = 0; t < slices; t++) {
    frames.push(
      (await displayImage({ ...pixelsOnly, pixels: display.pixels.subarray(t * tubelet * frame, (t * tubelet + 1) * frame) }, 448)).dataUrl,
    );
  }
  return frames;
}

async function headsFigures(model: Model, item: BatchItem, r: HeadsResult, w: FigureWriter): Promise<Figure[]> {
  const info = model.info;
  const first = firstPatchToken(info);
  const dir = `heads/${item.name}`;
  const image = await displayImage(item.display, 224);
  const mark = r.query.patch ?? undefined;
  const qname = r.query.kind === 'cls' ? 'the class token' : `patch ${r.query.patch}`;
  const figures: Figure[] = [];
  for (const s of r.heads) {
    const panels = slicePanels(info, s.queryAttention, '');
    const max = Math.max(...panels.flatMap((p) => p.values), 1e-6);
    const scale: ColorScale = { kind: 'sequential', min: 0, max };
    figures.push(
      await w.png(
        `${dir}/L${s.layer}H${s.head}.png`,
        'heads-head',
        overlaySvg({
          title: `Layer ${s.layer} head ${s.head}: attention from ${qname}`,
          subtitle: `entropy ${fmt(s.entropy)} nats (mean ${fmt(s.meanEntropy)}); to class token ${s.clsAttention === null ? '-' : fmt(s.clsAttention)}; distance ${fmt(s.meanDistance)}; self ${fmt(s.selfShare)}`,
          image,
          grid: r.grid,
          panels: panels.map((p) => ({
            ...(p.title ? { title: p.title.trim() } : {}),
            values: p.values,
            ...(mark === undefined ? {} : { mark }),
          })),
          scale,
          colorbarLabel: 'attention',
          columns: panels.length,
          panelSize: 320,
        }),
      ),
    );
  }
  // Grid: each thumbnail scaled to its own maximum, so heads with diffuse attention stay readable.
  const nL = r.layers.length;
  const nH = info.nHeads;
  const panelSize = Math.max(56, Math.min(120, Math.floor(1200 / nH)));
  const small = await displayImage(item.display, panelSize * 2);
  figures.push(
    await w.png(
      `${dir}/heads-grid.png`,
      'heads-grid',
      overlaySvg({
        title: `Attention from ${qname}, every layer and head: ${item.name}`,
        subtitle: `each thumbnail scaled to its own maximum ("max" above it; "cls": attention to the class token); class token not drawn`,
        image: small,
        grid: r.grid,
        panels: r.heads.map((s) => {
          // Video: attention summed over time slices, per spatial patch.
          const values = sumOverSlices(info, s.queryAttention);
          const max = Math.max(...values, 1e-9);
          return {
            title: `max ${fmt(max, 2)}${s.clsAttention === null ? '' : ` cls ${fmt(s.queryAttention[0]!, 2)}`}`,
            values: values.map((v) => v / max),
            ...(mark === undefined ? {} : { mark }),
          };
        }),
        scale: { kind: 'sequential', min: 0, max: 1 },
        colorbarLabel: 'attention / thumbnail max',
        columns: nH,
        panelSize,
        rowNames: r.layers.map((l) => `L${l}`),
        colNames: Array.from({ length: nH }, (_, h) => `H${h}`),
      }),
    ),
  );
  if (nL === 0) throw new PrismaError('E_INTERNAL', 'no layers analysed');
  figures.push(
    await w.html(
      `${dir}/heads.html`,
      'heads-html',
      headsHtml({
        title: `Attention heads: ${item.input}`,
        imageDataUrl: (await displayImage(item.display, 448)).dataUrl,
        sliceImageDataUrls: await sliceFrames(info, item.display),
        grid: r.grid,
        nPos: r.nPos,
        firstPatch: first,
        defaultQuery: r.query.token,
        layers: r.layers,
        nHeads: nH,
        patterns: r.patterns.map((p) => p.data),
        stats: r.heads,
      }),
    ),
  );
  return figures;
}

function summary(r: HeadsReport, color: boolean): string {
  const lines: string[] = [];
  for (const res of r.results) {
    lines.push(`${bold(res.input, color)}  query ${res.query.kind === 'cls' ? 'class token' : `patch ${res.query.patch}`}`);
    lines.push('  head     entropy  mean-ent  to-cls  distance  self');
    for (const h of res.heads) {
      lines.push(
        `  L${h.layer}H${h.head}`.padEnd(10) +
          `${fmt(h.entropy).padStart(7)}  ${fmt(h.meanEntropy).padStart(8)}  ${(h.clsAttention === null ? '-' : fmt(h.clsAttention)).padStart(6)}  ${fmt(h.meanDistance).padStart(8)}  ${fmt(h.selfShare).padStart(5)}`,
      );
    }
  }
  lines.push(`${r.results.length} done (${r.computed} computed, ${r.resumed} resumed), ${r.errors.length} failed`);
  return `${lines.join('\n')}\n`;
}

export async function headsCommand(
  modelDir: string,
  inputArgs: string[],
  options: HeadsCommandOptions,
  ctx: CommandContext,
): Promise<HeadsReport> {
  const out = prepareOut(options.out, options.resume);
  const model = await openModel(modelDir, options);
  if (options.layers) checkLayers(options.layers, model.info.nLayers);
  const query: HeadsQuery = options.query ?? (model.info.hasClassToken ? 'cls' : 0);
  resolveQuery(model, query);
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0);
  const outcome = await runBatch<HeadsAnalysis>({
    command: 'heads',
    model,
    files,
    ...(out === undefined ? {} : { outDir: out }),
    resume: options.resume ?? false,
    key: { query, layers: options.layers ?? null },
    ctx,
    process: async (item, w) => {
      const r = await heads(model, item.batch, { query, ...(options.layers ? { layers: options.layers } : {}) });
      const { patterns: _p, ...analysis } = r;
      return { result: analysis, figures: w ? await headsFigures(model, item, r, w) : [] };
    },
  });
  const report: HeadsReport = {
    ...reportBase('heads', model, modelDir),
    command: 'heads',
    inputs: files,
    options: { query, layers: options.layers ?? null },
    ...batchReportFields(outcome),
  };
  await finishBatch(report, options, ctx, summary);
  return report;
}

export function registerHeads(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('heads')
      .description('attention heads: entropy, attention to the class token, distance, self-attention; overlays and an HTML viewer')
      .argument('<MODEL_DIR>', 'Hugging Face model folder')
      .argument('<INPUT...>', "images, folders of images, .npy/.safetensors tensors, or '-' for paths on stdin")
      .addOption(
        new Option('--query <token>', "query token: 'cls' or a patch index (0-based, row-major)").argParser(argParser(parseHeadsQuery)),
      )
      .addOption(layersOption())
      .addOption(outOption())
      .addOption(resumeOption()),
  )
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nWith --out DIR: DIR/report.json and, per input, DIR/heads/<name>/{L<l>H<h>.png, heads-grid.png, heads.html}.\nExit codes: 0 ok, 1 failure, 2 usage, 3 some inputs failed.',
    )
    .action(async (modelDir: string, inputs: string[], options: HeadsCommandOptions) => {
      await headsCommand(modelDir, inputs, options, ctx);
    });
}
