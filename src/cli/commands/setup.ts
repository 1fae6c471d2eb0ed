/**
 * `prisma setup`: sets up now what the first command would (finds or pip-installs libtorch 2.11.0,
 * records it in the cache, builds the addon from source where no prebuilt one fits), then reports
 * like `prisma doctor`. For images and CI jobs that prepare everything before use.
 */
import type { Command } from 'commander';

import type { CommandContext } from '../context.js';
import { setUp } from '../../setup/doctor.js';
import { jsonOption } from './common.js';
import { printDoctorReport } from './doctor.js';

export function registerSetup(program: Command, ctx: CommandContext): void {
  program
    .command('setup')
    .description('find or install libtorch 2.11.0 and the native addon now (otherwise done on first use)')
    .addOption(jsonOption())
    .action(() => printDoctorReport(setUp({ env: ctx.io.env }), ctx));
}
