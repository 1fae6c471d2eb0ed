// Ctrl-C says what happened (issue 21, item 10): a batch command with --out ends its progress line
// and prints "interrupted: N of M inputs saved in DIR; rerun the same command with --resume", N
// being the items really on disk; `prisma run --out` says its file was not written. (Plain progress
// lines when stderr is not a terminal are scale's, tested with its PRISMA_PROGRESS_INTERVAL.)
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BIN, FIXTURES, ROOT, requireBuilt } from '../helpers/cli.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-interrupt-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const folder = join(tmp, 'images');

beforeAll(() => {
  requireBuilt();
  mkdirSync(folder);
  const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
  for (let i = 0; i < 40; i++) copyFileSync(sources[i % 3]!, join(folder, `img-${String(i).padStart(2, '0')}${sources[i % 3]!.slice(-4)}`));
});

/** Spawn the CLI, send SIGINT once `ready()` holds; resolves with stderr and how it ended. */
function interruptWhen(
  args: string[],
  ready: () => boolean,
): Promise<{ stderr: string; code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer);
        child.kill('SIGINT');
      }
    }, 5);
    const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearInterval(timer);
      clearTimeout(guard);
      resolve({ stderr, code, signal });
    });
  });
}

describe('Ctrl-C', () => {
  it('a batch command with --out: N of M saved, --resume named, N = the items on disk', async () => {
    const out = join(tmp, 'heads');
    const items = join(out, 'items');
    const r = await interruptWhen(
      ['heads', MODEL, folder, '--out', out],
      () => existsSync(items) && readdirSync(items).filter((f) => f.endsWith('.json')).length >= 2,
    );
    expect(r.signal === 'SIGINT' || r.code === 130).toBe(true);
    const saved = readdirSync(items).filter((f) => f.endsWith('.json')).length;
    expect(saved).toBeLessThan(40);
    expect(r.stderr).toContain(
      `prisma: interrupted: ${saved} of 40 inputs saved in ${out}; rerun the same command with --resume to finish\n`,
    );
  });

  it('prisma run --out: the file was not written, and that is said', async () => {
    const out = join(tmp, 'acts.safetensors');
    const r = await interruptWhen(['run', MODEL, folder, '--cache', '*', '--batch-size', '1', '--out', out], () =>
      readdirSync(tmp).some((f) => f.startsWith('.prisma-tmp-acts.safetensors')),
    );
    expect(r.signal === 'SIGINT' || r.code === 130).toBe(true);
    expect(r.stderr).toMatch(
      new RegExp(`prisma: interrupted after \\d+ of 40 inputs; ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} was not written`),
    );
    expect(existsSync(out)).toBe(false);
  });
});
