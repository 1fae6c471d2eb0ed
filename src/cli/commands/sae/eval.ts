/**
 * `prisma sae eval MODEL SAE DATA... --out DIR`: how well an SAE reconstructs its hook and how much
 * of the model's behaviour survives splicing it in, over a dataset, streamed in batches (two
 * passes: the hook's mean for mean-ablation, then the metrics). Writes DIR/report.json
 * (schemas/sae-eval.schema.json) and DIR/log-density.png, prints a summary (or the report with
 * --json). For CLIP models the logits are logit_scale · cos(image, prompt) (--labels/--template).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { Option, type Command } from 'commander';

import { resolveClass } from '../../../analysis/common.js';
import { PrismaError, usageError } from '../../../errors.js';
import { rowsPerBatch } from '../../../batching.js';
import type { Model } from '../../../model.js';
import { parsePositiveInt } from '../../../options.js';
import { barChartSvg, PALETTE } from '../../../report/chart.js';
import { FigureWriter, type Figure } from '../../../report/figures.js';
import { validateReport } from '../../../report/schema.js';
import { makeDirSync, writeJsonAtomic } from '../../../report/write.js';
import { evaluateSae, type SaeEvaluation } from '../../../sae/eval.js';
import { loadSae, parseSaeSpec, type SaeInfo } from '../../../sae/index.js';
import { VERSION } from '../../../version.js';
import { printJson, type CommandContext } from '../../context.js';
import { startProgress } from '../../ui/progress.js';
import { collectInputs } from '../analysis.js';
import { argParser, expandOptions, jsonOption, openModel, recursiveOption, type ModelOptions, withModelOptions } from '../common.js';

export interface SaeEvalCommandOptions extends ModelOptions {
  out: string;
  targets?: string;
  batchSize?: number;
  meanAblation: boolean;
  recursive?: boolean;
  json?: boolean;
}

export interface SaeEvalReport {
  schemaVersion: 1;
  ok: true;
  command: 'sae eval';
  generator: string;
  model: { dir: string; architecture: string; family: string; nClasses: number; labels: string[] };
  sae: Omit<SaeInfo, 'config'>;
  inputs: string[];
  options: { targets: number[] | null; meanAblation: boolean; batchSize: number };
  metrics: SaeEvaluation;
  figures: Figure[];
}

/** `--targets 0,1,2`, `--targets red,blue`, or a file with one per line: one class per input. */
export function parseTargets(value: string, model: Model): number[] {
  const items =
    existsSync(value) && statSync(value).isFile()
      ? readFileSync(value, 'utf8')
          .split(/\r?\n/)
          .map((l) => l.trim())
          .filter((l) => l.length > 0 && !l.startsWith('#'))
      : value.split(',').map((l) => l.trim());
  return items.map((t) => resolveClass(t, model.info, 'targets'));
}

function pct(x: number | null): string {
  return x === null ? 'n/a' : `${(100 * x).toFixed(1)}%`;
}

function num(x: number | null, digits = 4): string {
  return x === null ? 'n/a' : Number(x.toPrecision(digits)).toString();
}

export function saeEvalSummary(r: SaeEvalReport): string {
  const m = r.metrics.reconstruction;
  const s = r.sae;
  const where = s.tokens === 'all' ? 'every token' : s.tokens === 'cls' ? 'the class token only' : 'the patch tokens only';
  const lines = [
    `SAE ${s.path} (${s.architecture}${s.k === null ? '' : ` k=${s.k}`}, ${s.dSae} features) at ${r.metrics.hook}, over ${where}: ${m.images} images, ${m.tokens} tokens`,
    `  L0                ${num(m.l0PerToken)} per token${m.l0ClassToken === null ? '' : `, ${num(m.l0ClassToken)} at the class token`}, ${num(m.l0PerImage)} distinct per image`,
    `  reconstruction    explained variance ${num(m.explainedVariance)} (FVU ${num(m.fvu)}), cosine ${num(m.cosineSimilarity)}, MSE ${num(m.mse)}`,
    `  features          ${m.dead} dead, ${m.almostDead} almost dead, ${m.dense} dense, of ${s.dSae}`,
  ];
  const d = r.metrics.downstream;
  if (d === null) lines.push('  downstream        none: the model has no head (give --probe, or --labels for a CLIP model)');
  else {
    lines.push(
      `  downstream        KL(clean||spliced) ${num(d.klSpliced)}, CE against ${d.ceTarget} ${num(d.ceClean)} clean -> ${num(d.ceSpliced)} spliced (zero-ablated ${num(d.ceZeroAblation)}, mean-ablated ${num(d.ceMeanAblation)}), top-1 agreement ${pct(d.top1Agreement)}`,
      `  recovered         CE ${pct(d.ceRecoveredZero)} vs zero-, ${pct(d.ceRecoveredMean)} vs mean-ablation; KL ${pct(d.klRecoveredZero)} vs zero-, ${pct(d.klRecoveredMean)} vs mean-ablation`,
    );
    if (d.accuracyClean !== null) lines.push(`  accuracy          ${pct(d.accuracyClean)} clean, ${pct(d.accuracySpliced)} spliced`);
  }
  return `${lines.join('\n')}\n`;
}

async function densityFigure(w: FigureWriter, r: SaeEvaluation, sae: SaeInfo): Promise<Figure> {
  const m = r.reconstruction;
  const e = m.logDensityEdges;
  const label = (i: number) => (i === 0 ? `<1e${e[0]}` : i === e.length ? `>=1e${e[e.length - 1]}` : `1e${e[i - 1]}..1e${e[i]}`);
  const bars = [
    { label: 'dead', value: m.dead, color: PALETTE[1]! },
    ...m.logDensityCounts.map((c, i) => ({ label: label(i), value: c, color: PALETTE[0]! })),
  ];
  return w.png(
    'log-density.png',
    'sae-log-density',
    barChartSvg({
      title: `Feature density: ${sae.dSae} features at ${r.hook}`,
      subtitle: `fraction of ${m.tokens} tokens where each feature fires, log10 bins; ${m.dead} dead, ${m.almostDead} almost dead, ${m.dense} dense`,
      yLabel: 'features',
      bars,
      legend: [
        { name: 'dead (never fired)', color: PALETTE[1]! },
        { name: 'fired', color: PALETTE[0]! },
      ],
    }),
  );
}

export async function saeEvalCommand(
  modelDir: string,
  saeArg: string,
  inputArgs: string[],
  options: SaeEvalCommandOptions,
  ctx: CommandContext,
): Promise<SaeEvalReport> {
  const outDir = options.out;
  if (existsSync(outDir) && !statSync(outDir).isDirectory()) throw new PrismaError('E_IO', `--out ${outDir} exists and is not a folder`);
  const model = await openModel(modelDir, options, ctx);
  const spec = parseSaeSpec(saeArg);
  const sae = await loadSae(spec.path, { ...(spec.hook === undefined ? {} : { hook: spec.hook }), device: model.info.device });
  const targets = options.targets === undefined ? undefined : parseTargets(options.targets, model);
  const files = await collectInputs(inputArgs, ctx.io, (model.info.numFrames ?? 0) > 0, expandOptions(options, ctx));
  const batchSize = options.batchSize ?? Math.min(64, rowsPerBatch(model, [sae.info.hookName ?? '']));
  const plan = await model.planInputs(files, batchSize);
  if (plan.total === 0) throw new PrismaError('E_INPUT', 'no inputs given');
  if (targets !== undefined && targets.length !== plan.total)
    throw usageError(`--targets gives ${targets.length} classes for ${plan.total} inputs: give one per input, in order`);
  const passes = options.meanAblation ? 2 : 1;
  const progress = startProgress(ctx, plan.total * passes, 'evaluating');
  let metrics: SaeEvaluation;
  try {
    metrics = await evaluateSae(model, sae, plan, {
      ...(targets === undefined ? {} : { labels: targets }),
      meanAblation: options.meanAblation,
      onProgress: (pass, done) => progress.update((pass === 'metrics' && passes === 2 ? plan.total : 0) + done, pass),
    });
  } finally {
    progress.stop();
  }
  makeDirSync(outDir);
  const figures = [await densityFigure(new FigureWriter(outDir), metrics, sae.info)];
  const { config: _c, ...saeInfo } = sae.info;
  const report: SaeEvalReport = {
    schemaVersion: 1,
    ok: true,
    command: 'sae eval',
    generator: `vit-prisma ${VERSION}`,
    model: {
      dir: modelDir,
      architecture: model.info.architecture,
      family: model.info.family,
      nClasses: model.info.nClasses,
      labels: model.info.labels,
    },
    sae: saeInfo,
    inputs: plan.labels,
    options: { targets: targets ?? null, meanAblation: options.meanAblation, batchSize },
    metrics,
    figures,
  };
  validateReport('sae-eval', report);
  await writeJsonAtomic(join(outDir, 'report.json'), report);
  if (options.json) printJson(ctx, report);
  else ctx.io.stdout.write(saeEvalSummary(report));
  return report;
}

export function registerSaeEval(group: Command, ctx: CommandContext): void {
  const cmd = group
    .command('eval')
    .description('evaluate an SAE in its model over a dataset: sparsity, reconstruction, feature density, downstream KL / CE')
    .argument('<MODEL_DIR>', 'the model the SAE reads')
    .argument('<SAE>', 'the SAE (a SAELens folder, a ViT-Prisma .pt / .pkl.gz, a saev sae.pt), or SAE@HOOK')
    .argument('<INPUT...>', "images, folders of images, .npy/.safetensors pixel tensors, or '-' for paths on stdin")
    .addOption(new Option('--out <dir>', 'folder for report.json and log-density.png').makeOptionMandatory())
    .addOption(
      new Option(
        '--targets <classes>',
        'the class of every input, in order (indices or labels, comma-separated, or a file with one per line): cross-entropy against them; default: against the clean prediction',
      ),
    )
    .addOption(new Option('--no-mean-ablation', 'skip the pass for the hook mean (mean-ablation baseline)'))
    .addOption(
      new Option('--batch-size <n>', 'inputs per forward (default: what fits in about 1 GB, at most 64)').argParser(
        argParser((v) => parsePositiveInt(v, '--batch-size')),
      ),
    )
    .addOption(recursiveOption());
  // The SAE under evaluation is an argument, not a splice.
  withModelOptions(cmd, { saes: false })
    .addOption(jsonOption())
    .action(async (modelDir: string, saeArg: string, inputs: string[], options: SaeEvalCommandOptions) => {
      await saeEvalCommand(modelDir, saeArg, inputs, options, ctx);
    });
}
