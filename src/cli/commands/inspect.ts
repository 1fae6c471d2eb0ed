/** `prisma inspect MODEL_DIR`: architecture, config summary, parameter count and every hook with its shape. */
import type { Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { errorJson, toPrismaError, type ErrorJson } from '../../errors.js';
import type { PreprocessSpec } from '../../image/preprocess.js';
import type { HookShape, ModelInfo } from '../../native.js';
import { formatShape } from '../../tensor.js';
import { bold, useColor } from '../ui/style.js';
import { jsonOption, openModel, withModelOptions, type ModelOptions } from './common.js';

export interface InspectOptions extends ModelOptions {
  json?: boolean;
}

export interface InspectReport {
  ok: true;
  schemaVersion: 1;
  model: Omit<ModelInfo, 'configJson' | 'unexpectedTensors'> & { unexpectedTensors?: string[] };
  /** The image preprocessing, or why preprocessor_config.json cannot be used (tensor inputs still work). */
  preprocess: PreprocessSpec | { error: ErrorJson };
  hooks: HookShape[];
}

export async function inspect(modelDir: string, options: InspectOptions, ctx?: CommandContext): Promise<InspectReport> {
  const model = await openModel(modelDir, options, ctx);
  const { configJson: _config, ...info } = model.info;
  return {
    ok: true,
    schemaVersion: 1,
    model: info,
    preprocess: await model.preprocessSpec().catch((err: unknown) => ({ error: errorJson(toPrismaError(err)) })),
    hooks: model.hookShapes(1),
  };
}

function thousands(n: number): string {
  return n.toLocaleString('en-US');
}

function compact(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

function describePreprocess(p: InspectReport['preprocess']): string {
  if ('error' in p) return `unusable: ${p.error.message}`;
  const parts: string[] = [];
  if (p.resize) {
    parts.push(
      p.resize.mode === 'exact'
        ? `resize ${p.resize.height}x${p.resize.width} ${p.resample}`
        : `resize shortest edge ${p.resize.shortestEdge} ${p.resample}`,
    );
  }
  if (p.centerCrop) parts.push(`crop ${p.centerCrop.height}x${p.centerCrop.width}`);
  if (p.rescaleFactor !== null) parts.push(`x${Number(p.rescaleFactor.toPrecision(6))}`);
  if (p.normalize) parts.push(`mean [${p.normalize.mean.join(', ')}] std [${p.normalize.std.join(', ')}]`);
  const from = p.source === 'default' ? 'defaults, no preprocessor_config.json' : (p.source.split(/[\\/]/).pop() ?? p.source);
  return `${parts.join(', ')} (${from})`;
}

function imageRow(m: InspectReport['model'], h: number, w: number): string {
  const prefix = [m.hasClassToken ? 'class token' : '', m.nRegisters ? `${m.nRegisters} registers` : ''].filter(Boolean).join(' + ');
  const frames = m.numFrames ? `${m.numFrames} frames (tubelets of ${m.tubeletSize}) of ` : '';
  return `${frames}${h}x${w}, ${m.numChannels} channels, patch ${m.patchSize} -> ${m.nPatches} patches${prefix ? ` + ${prefix}` : ''} = ${m.nPos} positions`;
}

export function formatInspect(r: InspectReport, color: boolean): string {
  const m = r.model;
  const [h, w] = m.imageSize;
  const labels = m.labels.length > 0 ? ` (${m.labels.slice(0, 8).join(', ')}${m.labels.length > 8 ? ', …' : ''})` : '';
  const rows: [string, string][] = [
    ['family', m.family],
    ['architecture', m.architecture],
    ['source format', m.sourceFormat],
    [m.numFrames ? 'video' : 'image', imageRow(m, h!, w!)],
    ['layers', String(m.nLayers)],
    ['heads', `${m.nHeads} (d_head ${m.dHead})`],
    ['d_model', String(m.dModel)],
    ['d_mlp', String(m.dMlp)],
    ['activation', m.activation],
    [
      'classes',
      m.nClasses > 0
        ? `${m.nClasses}${labels}`
        : m.hasTextTower
          ? 'text prompts: pass --labels (and --template)'
          : 'none (no classification head)',
    ],
    ['parameters', `${compact(m.nParams)} (${thousands(m.nParams)})`],
    ['device', `${m.device}, ${m.dtype}`],
    ['preprocess', describePreprocess(r.preprocess)],
  ];
  if (m.hasTextTower) rows.splice(3, 0, ['text tower', 'yes: text.* hooks; logits = logit_scale x cos(image, prompt)']);
  if (m.unexpectedTensors && m.unexpectedTensors.length > 0) {
    rows.push([
      'unused weights',
      `${m.unexpectedTensors.length} (${m.unexpectedTensors.slice(0, 3).join(', ')}${m.unexpectedTensors.length > 3 ? ', …' : ''})`,
    ]);
  }
  const kw = Math.max(...rows.map(([k]) => k.length));
  const lines = [bold(m.modelDir, color), ...rows.map(([k, v]) => `  ${k.padEnd(kw)}  ${v}`), ''];
  // A video model's batch entry is a clip; a CLIP model's text hooks have one row per prompt, and
  // there are no prompts until --labels gives some (their batch is then P, not 0).
  const unit = m.numFrames ? `1 clip of ${m.numFrames} frames` : '1 image';
  const prompts = m.hasTextTower
    ? m.nClasses > 0
      ? `; text.* hooks: ${r.hooks.find((x) => x.name.startsWith('text.'))?.shape[0] ?? 0} prompts (--labels x --template)`
      : '; text.* hooks: P = the number of prompts, none until --labels'
    : '';
  lines.push(bold(`hooks (${r.hooks.length}, shapes for ${unit}${prompts})`, color));
  const nw = Math.max(...r.hooks.map((x) => x.name.length));
  for (const hook of r.hooks) {
    const perPrompt = hook.name.startsWith('text.') || hook.name === 'hook_text_embeds';
    const shape = m.hasTextTower && m.nClasses === 0 && perPrompt ? `[P, ${hook.shape.slice(1).join(', ')}]` : formatShape(hook.shape);
    lines.push(`  ${hook.name.padEnd(nw)}  ${shape}`);
  }
  return `${lines.join('\n')}\n`;
}

export function registerInspect(program: Command, ctx: CommandContext): void {
  withModelOptions(
    program
      .command('inspect')
      .description("show a model's architecture, config, parameter count and hook points with shapes")
      .argument('<MODEL_DIR>', 'model folder: Hugging Face, timm or open_clip (docs/models.md)'),
  )
    .addOption(jsonOption())
    .action(async (modelDir: string, options: InspectOptions) => {
      const report = await inspect(modelDir, options, ctx);
      if (options.json) printJson(ctx, report);
      else ctx.io.stdout.write(formatInspect(report, useColor(ctx.io.stdout, ctx.io.env)));
    });
}
