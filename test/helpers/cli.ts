/** Spawn the built CLI (bin/prisma.js -> dist/cli/main.js) and capture its output. */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const FIXTURES = join(ROOT, 'fixtures');
export const BIN = join(ROOT, 'bin', 'prisma.js');
export const ADDON = join(ROOT, 'native', 'prisma.node');
export const DIST_CLI = join(ROOT, 'dist', 'cli', 'main.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Throws a readable error when the prerequisites of spawned CLI tests are missing. */
export function requireBuilt(): void {
  const missing = [ADDON, DIST_CLI].filter((p) => !existsSync(p));
  if (missing.length > 0) throw new Error(`missing ${missing.join(', ')}: run \`npm run setup\` first`);
}

export function prisma(args: string[], env: NodeJS.ProcessEnv = {}, cwd: string = ROOT, timeoutMs = 120_000): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', ...env },
    timeout: timeoutMs,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Non-empty stderr lines. */
export function stderrLines(r: CliResult): string[] {
  return r.stderr.split('\n').filter((l) => l.length > 0);
}

/**
 * Spawn the CLI and kill it hard (SIGKILL, no clean-up; or `signal`) as soon as `ready()` holds,
 * polled every `pollMs`. Resolves once the process has exited (also when it finished on its own
 * first) with how it ended; rejects when `ready()` has not held within `timeoutMs`.
 */
export async function spawnAndKillWhen(
  args: string[],
  ready: () => boolean,
  what: string,
  pollMs = 5,
  timeoutMs = 60_000,
  signal: NodeJS.Signals = 'SIGKILL',
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' }, stdio: 'ignore' });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, sig) => resolve({ code, signal: sig })),
  );
  await new Promise<void>((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer);
        child.kill(signal);
        resolve();
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        child.kill('SIGKILL');
        reject(new Error(`${what} within ${timeoutMs / 1000} s`));
      }
    }, pollMs);
    void exited.then(() => {
      clearInterval(timer);
      resolve();
    });
  });
  return exited;
}
