/** Shared checks of `prisma train` runs: a run killed at its first checkpoint resumes to the weights of an uninterrupted one. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { expect } from 'vitest';

import { readTensorFile } from '../../src/native.js';
import { prisma, spawnAndKillWhen } from './cli.js';

function weights(dir: string): Map<string, Float32Array> {
  return new Map(readTensorFile(join(dir, 'model.safetensors')).map((t) => [t.name, t.data]));
}

/**
 * Kills `prisma <args> --out out` hard once a checkpoint exists, checks that a rerun without --resume is refused,
 * resumes it, and requires the resumed weights to equal those in `straight` (a run of the same command to the end).
 * Returns the resumed run's --json summary.
 */
export async function expectKilledRunResumes(
  args: string[],
  out: string,
  straight: string,
  totalSteps: number,
  settleSeconds: number,
): Promise<unknown> {
  await spawnAndKillWhen([...args, '--out', out], () => existsSync(join(out, 'training-state.json')), 'no checkpoint', settleSeconds);
  expect(existsSync(join(out, 'model.safetensors'))).toBe(false);
  const state = JSON.parse(readFileSync(join(out, 'training-state.json'), 'utf8')) as { step: number };
  expect(state.step).toBeGreaterThan(0);
  expect(state.step).toBeLessThan(totalSteps);

  const refused = prisma([...args, '--out', out]);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toContain('--resume');

  const resumed = prisma([...args, '--out', out, '--resume', '--json']);
  expect(resumed.code, resumed.stderr).toBe(0);
  const summary = JSON.parse(resumed.stdout) as { resumedFromStep: number; steps: number };
  expect(summary.resumedFromStep).toBeGreaterThanOrEqual(state.step);
  expect(summary.steps).toBe(totalSteps);

  const a = weights(straight);
  const b = weights(out);
  expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
  for (const [name, values] of a) expect(b.get(name), name).toEqual(values);
  return summary;
}
