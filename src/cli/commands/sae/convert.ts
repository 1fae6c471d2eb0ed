/**
 * `prisma sae convert SRC DST`: any supported SAE (SAELens folder, ViT-Prisma `.pt` / `.pkl.gz` /
 * `weights.pt` + `config.json`, saev `sae.pt`) written as a SAELens folder. Pickles are read as
 * data and never run (E_UNSAFE_PICKLE for one that would run code). Nothing is written unless the
 * whole SAE was read; each file is written atomically, and a DST made here is removed on failure.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';

import { Option, type Command } from 'commander';

import { PrismaError } from '../../../errors.js';
import { convertSae, type SaeInfo, type SaeLoadOptions } from '../../../sae/index.js';
import { printJson, type CommandContext } from '../../context.js';
import { jsonOption } from '../common.js';
import { saeLoadFlagOptions, saeLoadOptions, type SaeLoadFlags } from './options.js';

export interface SaeConvertOptions extends SaeLoadFlags {
  force?: boolean;
  json?: boolean;
}

export interface SaeConvertSummary {
  ok: true;
  schemaVersion: 1;
  src: string;
  dst: string;
  sae: Omit<SaeInfo, 'config' | 'path'>;
  written: string[];
}

/** DST must be new or an empty folder (or --force): converting over another SAE would mix files. */
function checkDst(dst: string, force: boolean): boolean {
  if (!existsSync(dst)) return false;
  if (!statSync(dst).isDirectory()) throw new PrismaError('E_IO', `${dst} exists and is not a folder`);
  if (!force && readdirSync(dst).length > 0) {
    throw new PrismaError('E_IO', `${dst} already exists and is not empty`, {
      hint: 'choose a new folder, or pass --force to replace its cfg.json and sae_weights.safetensors',
    });
  }
  return true;
}

export async function saeConvertCommand(
  src: string,
  dst: string,
  options: SaeConvertOptions,
  ctx: CommandContext,
): Promise<SaeConvertSummary> {
  const existed = checkDst(dst, options.force ?? false);
  const load: SaeLoadOptions = saeLoadOptions(options);
  let info: SaeInfo;
  try {
    info = await convertSae(src, dst, load);
  } catch (err) {
    if (!existed) rmSync(dst, { recursive: true, force: true });
    throw err;
  }
  const { config: _c, path: _p, ...sae } = info;
  const summary: SaeConvertSummary = { ok: true, schemaVersion: 1, src, dst, sae, written: ['cfg.json', 'sae_weights.safetensors'] };
  if (options.json) printJson(ctx, summary);
  else
    ctx.io.stdout.write(
      `converted ${src} (${info.format}, ${info.architecture}${info.k === null ? '' : ` k=${info.k}`}, d_in ${info.dIn}, d_sae ${info.dSae}, ${info.dtype}, hook ${info.hookName ?? 'none'}, tokens ${info.tokens}) to the SAELens folder ${dst}\n`,
    );
  return summary;
}

export function registerSaeConvert(group: Command, ctx: CommandContext): void {
  const cmd = group
    .command('convert')
    .description('write any supported SAE (SAELens, ViT-Prisma .pt/.pkl.gz, saev sae.pt) as a SAELens folder')
    .argument('<SRC>', 'a SAELens folder, a ViT-Prisma .pt / .pkl.gz file or weights.pt + config.json folder, or a saev sae.pt')
    .argument('<DST>', 'the SAELens folder to write (cfg.json + sae_weights.safetensors)');
  for (const option of saeLoadFlagOptions()) cmd.addOption(option);
  cmd
    .addOption(new Option('--force', 'write into DST even if it holds files (cfg.json and sae_weights.safetensors are replaced)'))
    .addOption(jsonOption())
    .action(async (src: string, dst: string, options: SaeConvertOptions) => {
      await saeConvertCommand(src, dst, options, ctx);
    });
}
