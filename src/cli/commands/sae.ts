/** `prisma sae ...`: the sparse-autoencoder commands, one file each. */
import type { Command } from 'commander';

import type { CommandContext } from '../context.js';
import { registerSaeCache } from './sae-cache.js';
import { registerSaeTrain } from './sae-train.js';

export function registerSae(program: Command, ctx: CommandContext): void {
  const sae = program.command('sae').description('sparse autoencoders: cache activations, train');
  // Subcommands copy these settings when created; src/cli/main.ts only configures first-level commands.
  sae.exitOverride().configureOutput({
    writeOut: (s) => ctx.io.stdout.write(s),
    writeErr: (s) => ctx.io.stderr.write(s),
    outputError: () => {},
  });
  registerSaeCache(sae, ctx);
  registerSaeTrain(sae, ctx);
}
