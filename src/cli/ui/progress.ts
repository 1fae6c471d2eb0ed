/**
 * Progress on stderr, off with --json: on a terminal, a bar with inputs per second and the time
 * left; otherwise (a Slurm or Kubernetes log, a CI job) one plain line every
 * PRISMA_PROGRESS_INTERVAL seconds (default 30; 0 turns it off), so a long job's log says how far
 * it got. Short runs print nothing.
 */
import cliProgress from 'cli-progress';

import type { CommandContext } from '../context.js';

export interface Progress {
  update(done: number, label?: string): void;
  stop(): void;
}

const NOOP: Progress = { update: () => {}, stop: () => {} };

/** Inputs per second over the run so far (after the first input: the first includes warm-up). */
export class Rate {
  private readonly started = Date.now();
  private first: { at: number; done: number } | undefined;

  constructor(readonly total: number) {}

  /** Per second and seconds left, once two updates are known; undefined before. */
  measure(done: number, now = Date.now()): { perSecond: number; secondsLeft: number } | undefined {
    if (done <= 0) return undefined;
    if (!this.first) {
      this.first = { at: now, done };
      return undefined;
    }
    const seconds = (now - this.first.at) / 1000;
    if (seconds <= 0 || done <= this.first.done) return undefined;
    const perSecond = (done - this.first.done) / seconds;
    return { perSecond, secondsLeft: (this.total - done) / perSecond };
  }

  elapsed(now = Date.now()): number {
    return (now - this.started) / 1000;
  }
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function formatRate(perSecond: number): string {
  return perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toFixed(perSecond >= 1 ? 1 : 2);
}

function logInterval(env: NodeJS.ProcessEnv): number {
  const raw = env.PRISMA_PROGRESS_INTERVAL;
  const value = raw === undefined ? 30 : Number(raw);
  return Number.isFinite(value) && value >= 0 ? value : 30;
}

/** One plain line every `interval` seconds (the first after `interval`). */
function lineProgress(ctx: CommandContext, total: number, title: string, interval: number): Progress {
  const rate = new Rate(total);
  let done = 0;
  const timer = setInterval(() => {
    const r = rate.measure(done);
    const pct = total > 0 ? ` (${Math.floor((100 * done) / total)}%)` : '';
    const speed = r ? `, ${formatRate(r.perSecond)} inputs/s, ${formatDuration(r.secondsLeft)} left` : '';
    ctx.io.stderr.write(`${title}: ${done}/${total}${pct}${speed}, ${formatDuration(rate.elapsed())} elapsed\n`);
  }, interval * 1000);
  timer.unref();
  return {
    update: (n) => {
      done = n;
      rate.measure(n);
    },
    stop: () => clearInterval(timer),
  };
}

export function startProgress(ctx: CommandContext, total: number, title: string): Progress {
  // In-process callers (tests, the library) pass their own streams: no progress there.
  if (ctx.json || total < 2 || ctx.io.stderr !== process.stderr) return NOOP;
  if (!process.stderr.isTTY) {
    const interval = logInterval(ctx.io.env);
    return interval > 0 ? lineProgress(ctx, total, title, interval) : NOOP;
  }
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${title} [{bar}] {value}/{total} {speed} {label}`,
      hideCursor: true,
      clearOnComplete: true,
      barsize: 24,
    },
    cliProgress.Presets.legacy,
  );
  const rate = new Rate(total);
  bar.start(total, 0, { label: '', speed: '' });
  return {
    update: (done, label = '') => {
      const r = rate.measure(done);
      bar.update(done, { label, speed: r ? `${formatRate(r.perSecond)}/s, ${formatDuration(r.secondsLeft)} left` : '' });
    },
    stop: () => bar.stop(),
  };
}

/** Sizes for people: 1.2 MB, 330 MB. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n / 1000;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/**
 * Hub downloads on stderr: a byte bar per file on a TTY; otherwise one line when a file starts and
 * one when it is done (nothing with --json).
 */
export function downloadReporter(ctx: CommandContext): (p: { repoId: string; file: string; received: number; total: number }) => void {
  if (ctx.json) return () => {};
  const tty = ctx.io.stderr === process.stderr && process.stderr.isTTY;
  let current: string | undefined;
  let bar: cliProgress.SingleBar | undefined;
  return (p) => {
    const name = `${p.repoId}/${p.file}`;
    if (name !== current) {
      bar?.stop();
      current = name;
      if (tty) {
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `downloading ${name} [{bar}] {percentage}%`,
            hideCursor: true,
            clearOnComplete: true,
            barsize: 24,
          },
          cliProgress.Presets.legacy,
        );
        bar.start(Math.max(1, p.total), p.received);
      } else {
        const resumed = p.received > 0 && p.received < p.total ? `, resuming at ${formatBytes(p.received)}` : '';
        ctx.io.stderr.write(`prisma: downloading ${name} (${formatBytes(p.total)}${resumed})\n`);
      }
    }
    bar?.update(p.received);
    if (p.received >= p.total) {
      bar?.stop();
      bar = undefined;
      if (!tty) ctx.io.stderr.write(`prisma: downloaded ${name}\n`);
      current = undefined;
    }
  };
}
