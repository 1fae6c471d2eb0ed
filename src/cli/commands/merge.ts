/**
 * `prisma merge OUT SHARD_DIR...`: combine the output folders of a job run as n shards
 * (`--shard k/n --out SHARD_DIR`) into the folder one process would have written (src/merge.ts).
 */
import type { Command } from 'commander';

import { mergeShards } from '../../merge.js';
import { reportChecks } from '../../report/schema.js';
import { printJson, type CommandContext } from '../context.js';
import { jsonOption } from './common.js';

export interface MergeSummary {
  ok: true;
  command: string;
  out: string;
  shards: number;
  inputs: number;
  results: number;
  errors: number;
}

export async function mergeCommand(out: string, dirs: string[], options: { json?: boolean }, ctx: CommandContext): Promise<MergeSummary> {
  const merged = await mergeShards(out, dirs, { checks: reportChecks });
  const summary: MergeSummary = {
    ok: true,
    command: merged.command,
    out,
    shards: merged.shards,
    inputs: merged.inputs,
    results: merged.digest.okInputs.length,
    errors: merged.digest.errors.length,
  };
  if (options.json) printJson(ctx, summary);
  else
    ctx.io.stdout.write(
      `merged ${summary.shards} ${summary.command} shard${summary.shards > 1 ? 's' : ''} into ${out}: ${summary.inputs} inputs, ${summary.results} results, ${summary.errors} failed\n`,
    );
  return summary;
}

export function registerMerge(program: Command, ctx: CommandContext): void {
  program
    .command('merge')
    .description('combine the output folders of a job run with --shard k/n into what one process would have written')
    .argument('<OUT>', 'folder to write (created if needed; not one of the shard folders)')
    .argument('<SHARD_DIR...>', 'the --out folder of every shard, k = 0 to n-1, in any order')
    .addOption(jsonOption())
    .addHelpText(
      'after',
      '\nThe shards must come from one job: the same command, model, options and input list, run with --shard k/n for every k.\nA missing or unfinished shard, or shards that do not belong together, is one error line naming it (exit 1).\ndocs/scale-out.md has Slurm, Kubernetes and CI recipes.',
    )
    .action(async (out: string, dirs: string[], options: { json?: boolean }) => {
      await mergeCommand(out, dirs, options, ctx);
    });
}
