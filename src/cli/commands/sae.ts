/**
 * `prisma sae ...`: the sparse-autoencoder commands, one file each (convert, inspect and eval in
 * ./sae/; cache and train in ./sae-cache.ts and ./sae-train.ts). `--sae DIR[@HOOK]` on the model
 * commands splices one in (./common.ts).
 */
import type { Command } from 'commander';

import type { CommandContext } from '../context.js';
import { registerSaeConvert } from './sae/convert.js';
import { registerSaeEval } from './sae/eval.js';
import { registerSaeInspect } from './sae/inspect.js';
import { registerSaeCache } from './sae-cache.js';
import { registerSaeTrain } from './sae-train.js';

export function registerSae(program: Command, ctx: CommandContext): void {
  const sae = program
    .command('sae')
    .description(
      'sparse autoencoders: cache activations, train, convert to SAELens folders, inspect, evaluate (splice one into any command with --sae DIR)',
    );
  // Subcommands copy these settings when created; src/cli/main.ts only configures first-level commands.
  sae.exitOverride().configureOutput({
    writeOut: (s) => ctx.io.stdout.write(s),
    writeErr: (s) => ctx.io.stderr.write(s),
    outputError: () => {},
  });
  registerSaeCache(sae, ctx);
  registerSaeTrain(sae, ctx);
  registerSaeConvert(sae, ctx);
  registerSaeInspect(sae, ctx);
  registerSaeEval(sae, ctx);
}
