/** `prisma doctor`: what the tool runs on, and a non-zero exit with a hint when something is missing. */
import type { Command } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { PrismaError } from '../../errors.js';
import { DOCTOR_HINT } from '../../setup/cache.js';
import { type DoctorReport, doctor } from '../../setup/doctor.js';
import { jsonOption } from './common.js';

/** The report as aligned lines; the first problem is thrown (one error line and a hint). */
export function printDoctorReport(report: DoctorReport, ctx: CommandContext): void {
  if (ctx.json) {
    if (report.ok) printJson(ctx, { schemaVersion: 1, ...report });
  } else {
    const width = Math.max(...report.items.map((i) => i.name.length));
    for (const item of report.items) ctx.io.stdout.write(`${item.ok ? ' ' : '!'} ${item.name.padEnd(width)}  ${item.detail}\n`);
  }
  if (report.error) {
    // The set-up's hints end by pointing here; doctor itself leaves that out.
    const { code, message, hint } = report.error;
    const own = hint?.replace(`; ${DOCTOR_HINT}`, '');
    throw new PrismaError(code, message, own === undefined ? {} : { hint: own });
  }
}

export function registerDoctor(program: Command, ctx: CommandContext): void {
  program
    .command('doctor')
    .description('show what prisma runs on (addon, libtorch, CUDA, cache, Node) and what is missing')
    .addOption(jsonOption())
    .action(() => printDoctorReport(doctor({ env: ctx.io.env }), ctx));
}
