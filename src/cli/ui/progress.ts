/** Progress bar on stderr, only when stderr is a TTY and JSON output is off; otherwise a no-op. */
import cliProgress from 'cli-progress';

import type { CommandContext } from '../context.js';

export interface Progress {
  update(done: number, label?: string): void;
  stop(): void;
}

const NOOP: Progress = { update: () => {}, stop: () => {} };

export function startProgress(ctx: CommandContext, total: number, title: string): Progress {
  if (ctx.json || total < 2 || ctx.io.stderr !== process.stderr || !process.stderr.isTTY) return NOOP;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${title} [{bar}] {value}/{total} {label}`,
      hideCursor: true,
      clearOnComplete: true,
      barsize: 24,
    },
    cliProgress.Presets.legacy,
  );
  bar.start(total, 0, { label: '' });
  return {
    update: (done, label = '') => bar.update(done, { label }),
    stop: () => bar.stop(),
  };
}
