/** `prisma sae inspect SAE`: what an SAE is (format, architecture, sizes, hook, tokens, normalisation). */
import type { Command } from 'commander';

import { loadSae, type SaeInfo } from '../../../sae/index.js';
import { printJson, type CommandContext } from '../../context.js';
import { bold, useColor } from '../../ui/style.js';
import { jsonOption } from '../common.js';
import { saeLoadFlagOptions, saeLoadOptions, type SaeLoadFlags } from './options.js';

export interface SaeInspectOptions extends SaeLoadFlags {
  json?: boolean;
}

export interface SaeInspectReport {
  ok: true;
  schemaVersion: 1;
  sae: SaeInfo;
}

const TOKENS: Record<SaeInfo['tokens'], string> = {
  all: 'every token',
  cls: 'the class token only (spliced there only)',
  patches: 'the patch tokens only (spliced there only)',
};

export async function saeInspectCommand(path: string, options: SaeInspectOptions, ctx: CommandContext): Promise<SaeInspectReport> {
  const sae = await loadSae(path, saeLoadOptions(options));
  const report: SaeInspectReport = { ok: true, schemaVersion: 1, sae: sae.info };
  if (options.json) {
    printJson(ctx, report);
    return report;
  }
  const i = sae.info;
  const color = useColor(ctx.io.stdout, ctx.io.env);
  const rows: [string, string][] = [
    ['format', i.format],
    ['architecture', `${i.architecture}${i.k === null ? '' : ` (k = ${i.k})`}`],
    ['size', `d_in ${i.dIn} -> d_sae ${i.dSae} features (x${Number((i.dSae / i.dIn).toFixed(2))})`],
    ['dtype', i.dtype],
    ['hook', i.hookName ?? 'none in its config: give one (--hook, or --sae DIR@HOOK)'],
    ['tokens', TOKENS[i.tokens]],
    ['b_dec on input', i.applyBDecToInput ? 'subtracted before encoding' : 'no'],
    ['normalisation', i.normalizeActivations],
  ];
  const text = rows.map(([k, v]) => `  ${k.padEnd(15)}${v}`).join('\n');
  ctx.io.stdout.write(
    `${bold(path, color)}\n${text}\nsub-hooks when spliced: ${i.hookName ?? 'HOOK'}.hook_sae_{input,acts_pre,acts_post,recons,error,output}\n`,
  );
  return report;
}

export function registerSaeInspect(group: Command, ctx: CommandContext): void {
  const cmd = group
    .command('inspect')
    .description('describe an SAE: format, architecture, sizes, hook, tokens, normalisation')
    .argument('<SAE>', 'a SAELens folder, a ViT-Prisma .pt / .pkl.gz file or folder, or a saev sae.pt');
  for (const option of saeLoadFlagOptions()) cmd.addOption(option);
  cmd.addOption(jsonOption()).action(async (path: string, options: SaeInspectOptions) => {
    await saeInspectCommand(path, options, ctx);
  });
}
