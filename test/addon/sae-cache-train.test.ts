// `prisma sae cache` and `prisma sae train` (issue 16, items 3 and 4) on a fixture model: the cache
// read back equals what `prisma run --cache` records for the same inputs (exact in f32); a cache run
// killed mid-way resumes to the same bytes; --shard parts merge to the whole; foreign and corrupt
// caches are one error line; training from the cache writes a SAELens folder, a log and a model card
// per SAE, prints plain progress lines off a terminal, and a killed run resumed with --resume ends
// with the same weights, byte for byte, as an uninterrupted one.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { FIXTURES, prisma, requireBuilt, spawnAndKillWhen, stderrLines } from '../helpers/cli.js';
import { readSafetensors } from '../helpers/safetensors.js';

const tmp = mkdtempSync(join(tmpdir(), 'prisma-sae-cache-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const MODEL = join(FIXTURES, 'models', 'vit-tiny-cls');
const HOOK = 'blocks.0.hook_resid_post';
const folder = join(tmp, 'images');
const N = 24;

beforeAll(() => {
  requireBuilt();
  mkdirSync(folder);
  const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
  for (let i = 0; i < N; i++) copyFileSync(sources[i % 3]!, join(folder, `img-${String(i).padStart(2, '0')}${sources[i % 3]!.slice(-4)}`));
});

/** Rows of `hook` over a cache's shards, in order. */
function cacheRows(dir: string, hook: string): Float32Array[] {
  const shards = readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort();
  return shards.map((s) => readSafetensors(join(dir, s)).tensors.get(hook)!.data);
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function filesOf(dir: string): Map<string, Buffer> {
  return new Map(
    readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .sort()
      .map((f) => [f, readFileSync(join(dir, f))]),
  );
}

describe('prisma sae cache', () => {
  const cache = join(tmp, 'cache');
  it('reads back what prisma run --cache records, exactly', () => {
    const r = prisma([
      'sae',
      'cache',
      MODEL,
      folder,
      '--hook',
      HOOK,
      '--tokens',
      'all',
      '--out',
      cache,
      '--images-per-shard',
      '8',
      '--batch-size',
      '1',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as { images: number; shards: number; rows: number };
    expect(summary.images).toBe(N);
    expect(summary.shards).toBe(3);
    const ran = join(tmp, 'run.safetensors');
    // The same batches (a product over other rows may round differently).
    const run = prisma(['run', MODEL, folder, '--cache', HOOK, '--out', ran, '--batch-size', '1']);
    expect(run.code, run.stderr).toBe(0);
    const want = readSafetensors(ran).tensors.get(HOOK)!;
    const got = concat(cacheRows(cache, HOOK));
    expect(summary.rows * want.shape[2]!).toBe(want.data.length);
    expect(got).toEqual(want.data);
    const meta = JSON.parse(readFileSync(join(cache, 'metadata.json'), 'utf8')) as { complete: boolean; identity: { hooks: string[] } };
    expect(meta.complete).toBe(true);
    expect(meta.identity.hooks).toEqual([HOOK]);
  });

  it('resumes after a kill to the same bytes', async () => {
    const cut = join(tmp, 'cache-cut');
    const args = ['sae', 'cache', MODEL, folder, '--hook', HOOK, '--out', cut, '--images-per-shard', '8', '--batch-size', '1'];
    await spawnAndKillWhen(args, () => existsSync(join(cut, 'shard-00000.safetensors')), 'a first shard');
    const meta = JSON.parse(readFileSync(join(cut, 'metadata.json'), 'utf8')) as { complete: boolean };
    expect(meta.complete, 'killed before it finished').toBe(false);
    const r = prisma(args);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { resumed: number }).resumed).toBeGreaterThanOrEqual(8);
    expect(filesOf(cut)).toEqual(filesOf(join(tmp, 'cache')));
  });

  it('merges --shard parts into one cache holding every image', () => {
    const parts = [0, 1].map((k) => join(tmp, `part-${k}`));
    for (const [k, dir] of parts.entries()) {
      const r = prisma(['sae', 'cache', MODEL, folder, '--hook', HOOK, '--out', dir, '--shard', `${k}/2`]);
      expect(r.code, r.stderr).toBe(0);
    }
    const merged = join(tmp, 'merged');
    const r = prisma(['sae', 'cache-merge', ...parts, '--out', merged]);
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { images: number }).images).toBe(N);
    const again = prisma(['sae', 'cache-merge', parts[0]!, parts[0]!, '--out', join(tmp, 'twice')]);
    expect(again.code).toBe(1);
    expect(stderrLines(again)[0]).toMatch(/^prisma: E_CACHE_MISMATCH: /);
  });

  it('refuses a folder cached for another hook, and a corrupt shard, in one line', () => {
    const other = prisma([
      'sae',
      'cache',
      MODEL,
      folder,
      '--hook',
      'blocks.1.hook_resid_post',
      '--out',
      join(tmp, 'cache'),
      '--images-per-shard',
      '8',
    ]);
    expect(other.code).toBe(1);
    expect(stderrLines(other)[0]).toMatch(
      /^prisma: E_CACHE_MISMATCH: .*hooks blocks\.0\.hook_resid_post instead of blocks\.1\.hook_resid_post/,
    );
    const broken = join(tmp, 'broken');
    const r = prisma(['sae', 'cache', MODEL, folder, '--hook', HOOK, '--out', broken, '--images-per-shard', '10']);
    expect(r.code, r.stderr).toBe(0);
    const shard = join(broken, 'shard-00001.safetensors');
    writeFileSync(shard, readFileSync(shard).subarray(0, 100));
    const train = prisma(['sae', 'train', '--cache', broken, '--out', join(tmp, 'never'), '--arch', 'topk', '--k', '4']);
    expect(train.code).toBe(1);
    expect(stderrLines(train)).toHaveLength(2); // the error and its hint
    expect(stderrLines(train)[0]).toMatch(/^prisma: E_CACHE_CORRUPT: .*shard-00001\.safetensors: /);
    expect(existsSync(join(tmp, 'never', 'cfg.json'))).toBe(false);
  });
});

describe('prisma sae train', () => {
  const args = (out: string) => [
    'sae',
    'train',
    '--cache',
    join(tmp, 'cache'),
    '--out',
    out,
    '--arch',
    'topk',
    '--k',
    '2,4',
    '--expansion',
    '2',
    '--batch-size',
    '8',
    '--steps',
    '40',
    '--checkpoint-every',
    '5',
    '--log-every',
    '10',
    '--seed',
    '3',
  ];

  it('writes a SAELens folder, a training log and a model card per SAE, with plain progress lines', () => {
    const out = join(tmp, 'saes');
    const r = prisma(args(out), { CI: '1' });
    expect(r.code, r.stderr).toBe(0);
    for (const k of [2, 4]) {
      const dir = join(out, `topk-64-k${k}`);
      const cfg = JSON.parse(readFileSync(join(dir, 'cfg.json'), 'utf8')) as { architecture: string; d_sae: number; k: number };
      expect(cfg).toMatchObject({ architecture: 'topk', d_sae: 64, k });
      const log = readFileSync(join(dir, 'training_log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { step: number; l0: number });
      expect(log.map((l) => l.step)).toEqual(Array.from({ length: 40 }, (_, i) => i));
      expect(log.every((l) => l.l0 <= k)).toBe(true);
      const card = readFileSync(join(dir, 'README.md'), 'utf8');
      expect(card).toContain('prisma sae train --cache');
      expect(card).toMatch(/explained variance/);
    }
    const lines = stderrLines(r).filter((l) => / step \d+\/40: /.test(l));
    // Steps 10, 20, 30, 40 for each SAE.
    expect(lines).toHaveLength(8);
    expect(lines[0]).toMatch(/^topk-64-k2 step 10\/40: loss [\d.e+-]+, mse [\d.e+-]+, L0 [\d.]+, explained variance -?[\d.]+%, dead \d+/);
  });

  it('resumes a killed run to the same weights, byte for byte', async () => {
    const out = join(tmp, 'saes-cut');
    await spawnAndKillWhen(args(out), () => existsSync(join(out, '.checkpoint', 'checkpoint.safetensors')), 'a checkpoint', 1);
    const refused = prisma(args(out));
    expect(refused.code).toBe(2);
    expect(stderrLines(refused)[0]).toMatch(/unfinished training run/);
    const r = prisma([...args(out), '--resume']);
    expect(r.code, r.stderr).toBe(0);
    for (const k of [2, 4]) {
      const name = `topk-64-k${k}`;
      const a = readFileSync(join(out, name, 'sae_weights.safetensors'));
      const b = readFileSync(join(tmp, 'saes', name, 'sae_weights.safetensors'));
      expect(a.equals(b), name).toBe(true);
      const steps = readFileSync(join(out, name, 'training_log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { step: number }).step);
      expect(steps).toEqual(Array.from({ length: 40 }, (_, i) => i));
    }
  });

  it('trains straight from MODEL DATA, caching the images first into OUT/activations', () => {
    const out = join(tmp, 'direct');
    const r = prisma([
      'sae',
      'train',
      MODEL,
      folder,
      '--hook',
      HOOK,
      '--tokens',
      'cls',
      '--out',
      out,
      '--arch',
      'standard',
      '--l1',
      '1',
      '--expansion',
      '2',
      '--batch-size',
      '8',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const meta = JSON.parse(readFileSync(join(out, 'activations', 'metadata.json'), 'utf8')) as {
      complete: boolean;
      rows: number;
      identity: { tokens: string; hooks: string[] };
    };
    expect(meta).toMatchObject({ complete: true, rows: N, identity: { tokens: 'cls', hooks: [HOOK] } });
    const cfg = JSON.parse(readFileSync(join(out, 'cfg.json'), 'utf8')) as { architecture: string; d_sae: number };
    expect(cfg).toMatchObject({ architecture: 'standard', d_sae: 64 });
    // One pass over the 24 class-token vectors in batches of 8.
    const steps = readFileSync(join(out, 'training_log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { step: number }).step);
    expect(steps).toEqual([0, 1, 2]);
  });

  it('refuses a hook the cache lacks and an unknown architecture', () => {
    const hook = prisma(['sae', 'train', '--cache', join(tmp, 'cache'), '--hook', 'blocks.1.hook_mlp_out', '--out', join(tmp, 'x')]);
    expect(hook.code).toBe(1);
    expect(stderrLines(hook)[0]).toMatch(/^prisma: E_CACHE_MISMATCH: .*holds no activations at 'blocks\.1\.hook_mlp_out'/);
    const steps = prisma(['sae', 'train', '--cache', join(tmp, 'cache'), '--batch-size', '8', '--steps', '52', '--out', join(tmp, 'z')]);
    expect(steps.code).toBe(2);
    expect(stderrLines(steps)[0]).toMatch(/--steps 52 needs 416 vectors; the cache holds 408 \(51 steps of 8\)/);
    const arch = prisma(['sae', 'train', '--cache', join(tmp, 'cache'), '--arch', 'matryoshka', '--out', join(tmp, 'y')]);
    expect(arch.code).toBe(2);
    expect(stderrLines(arch)[0]).toMatch(/unknown --arch 'matryoshka'/);
  });
});
