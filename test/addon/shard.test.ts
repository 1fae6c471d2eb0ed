// --shard k/n on every command that takes a folder (run, classify, logit-lens, dla, ablate, heads):
// the folder run as n separate processes and merged with `prisma merge` is byte for byte the
// folder one process writes (report.json, results.jsonl, figures, item records, activations);
// a killed shard resumes; merge refuses shards of another model, options or n, and names a
// missing one; a shard index out of range is one usage line. Needs the built addon and CLI.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';

import { FIXTURES, prisma, requireBuilt, spawnAndKillWhen, stderrLines } from '../helpers/cli.js';
import { fileTree } from '../helpers/files.js';

const CLS = join(FIXTURES, 'models', 'vit-tiny-cls');
const CLIP = join(FIXTURES, 'models', 'clip-tiny');
const N = 3;

let root = '';
let images = '';

/** Photos of several sizes (some flipped) plus an unreadable-as-image and a truncated file. */
async function makeImages(dir: string, count: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
  for (let i = 0; i < count; i++) {
    let img = sharp(sources[i % 3]!).resize(64 + 8 * i, 80 + 4 * i, { fit: 'cover' });
    if (i % 2 === 1) img = img.flop();
    await (i % 3 === 1 ? img.jpeg({ quality: 90 }) : img.png()).toFile(
      join(dir, `img-${String(i).padStart(2, '0')}.${i % 3 === 1 ? 'jpg' : 'png'}`),
    );
  }
  copyFileSync(join(FIXTURES, 'bad', 'not-an-image.jpg'), join(dir, 'not-an-image.jpg'));
  copyFileSync(join(FIXTURES, 'bad', 'truncated.png'), join(dir, 'truncated.png'));
}

function expectSameTree(actual: string, expected: string): void {
  const a = fileTree(actual);
  const e = fileTree(expected);
  expect([...a.keys()]).toEqual([...e.keys()]);
  for (const [name, bytes] of e) expect(a.get(name)?.equals(bytes), `${name} differs`).toBe(true);
}

const COMMANDS: [string, string[], string[]][] = [
  ['run', ['run', CLS], ['--cache', 'blocks.*.hook_resid_post,hook_embed']],
  ['classify', ['classify', CLIP], ['--labels', 'cat,dog,a rocket']],
  ['logit-lens', ['logit-lens', CLS], ['--site', 'resid_pre,resid_post', '--top-k', '2']],
  ['dla', ['dla', CLS], ['--per-position']],
  ['ablate', ['ablate', CLS], ['--ablate', 'blocks.0.attn.hook_z[head=0]']],
  ['heads', ['heads', CLS], []],
];

beforeAll(async () => {
  requireBuilt();
  root = mkdtempSync(join(tmpdir(), 'prisma-shard-'));
  images = join(root, 'images');
  await makeImages(images, 8);
});

// Each test spawns several processes that each load libtorch: minutes on a loaded machine.
describe('--shard k/n, then prisma merge', { timeout: 600_000 }, () => {
  it.each(COMMANDS)('%s: n shard processes merged are byte for byte one process', (name, head, tail) => {
    const dir = join(root, name);
    const one = prisma([...head, images, ...tail, '--out', join(dir, 'one')]);
    // The two bad files are error lines, not a stopped job: exit 3 (some inputs failed).
    expect(one.code, one.stderr).toBe(3);
    const shards = Array.from({ length: N }, (_, k) => join(dir, `shard-${k}`));
    const seen: string[] = [];
    for (const [k, out] of shards.entries()) {
      const r = prisma([...head, images, ...tail, '--shard', `${k}/${N}`, '--out', out]);
      expect([0, 3], r.stderr).toContain(r.code);
      expect(r.stdout).toMatch(new RegExp(`^${name} shard ${k}/${N}: \\d+ inputs`));
      expect(readdirSync(out)).toContain('shard.json');
      seen.push(
        ...readFileSync(join(out, 'results.jsonl'), 'utf8')
          .split('\n')
          .filter((l) => l.length > 0)
          .map((l) => (JSON.parse(l) as { file: string }).file),
      );
    }
    // Every input in exactly one shard.
    expect([...new Set(seen)].sort()).toEqual(seen.sort());
    expect(seen).toHaveLength(readdirSync(images).length);
    const merged = prisma(['merge', join(dir, 'merged'), ...[...shards].reverse()]);
    expect(merged.code, merged.stderr).toBe(0);
    expectSameTree(join(dir, 'merged'), join(dir, 'one'));
    const report = JSON.parse(readFileSync(join(dir, 'one', 'report.json'), 'utf8')) as { errors: { code: string }[] };
    expect(report.errors.map((e) => e.code)).toEqual(['E_IMAGE_DECODE', 'E_IMAGE_DECODE']);
  });

  it('a shard of a single input gives the rows a batch of several would (run)', () => {
    // Shard 0/8 of the 10 files is small; its lone rows must equal the one-process batch's.
    const dir = join(root, 'run-many');
    const tail = ['--cache', 'blocks.1.hook_resid_post'];
    expect(prisma(['run', CLS, images, ...tail, '--out', join(dir, 'one')]).code).toBe(3);
    const shards = Array.from({ length: 8 }, (_, k) => join(dir, `s${k}`));
    for (const [k, out] of shards.entries()) prisma(['run', CLS, images, ...tail, '--shard', `${k}/8`, '--out', out]);
    const sizes = shards.map((s) => readFileSync(join(s, 'results.jsonl'), 'utf8').split('\n').filter(Boolean).length);
    expect(sizes).toContain(1);
    expect(prisma(['merge', join(dir, 'merged'), ...shards]).code).toBe(0);
    expectSameTree(join(dir, 'merged'), join(dir, 'one'));
  });
});

describe('a killed shard', { timeout: 600_000 }, () => {
  it('resumes with --resume and merges into the one-process result', async () => {
    const dir = join(root, 'resume');
    const many = join(root, 'many');
    await makeImages(many, 24);
    const args = ['logit-lens', CLS, many, '--site', 'resid_pre,resid_mid,resid_post'];
    expect(prisma([...args, '--out', join(dir, 'one')]).code).toBe(3);
    const s0 = join(dir, 's0');
    const s1 = join(dir, 's1');
    const items = join(s1, 'items');
    const count = () => {
      try {
        return readdirSync(items).filter((n) => n.endsWith('.json')).length;
      } catch {
        return 0;
      }
    };
    await spawnAndKillWhen([...args, '--shard', '1/2', '--out', s1], () => count() >= 2, 'no items written');
    const killedAt = count();
    expect(killedAt).toBeGreaterThanOrEqual(2);
    // Not finished: no shard.json (nor results.jsonl), so merge names it.
    expect(readdirSync(s1)).not.toContain('shard.json');
    expect([0, 3]).toContain(prisma([...args, '--shard', '0/2', '--out', s0]).code);
    const early = prisma(['merge', join(dir, 'early'), s0, s1]);
    expect(early.code).toBe(1);
    expect(stderrLines(early)[0]).toBe(`prisma: E_SHARD_MISSING: ${s1} holds no finished shard (no shard.json)`);

    const resumed = prisma([...args, '--shard', '1/2', '--out', s1, '--resume', '--json']);
    expect([0, 3]).toContain(resumed.code);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ ok: true, command: 'logit-lens', shard: '1/2' });
    expect(prisma(['merge', join(dir, 'merged'), s0, s1]).code).toBe(0);

    // The same results; only the counts of resumed inputs (and their lines' mark) differ.
    type Report = { resumed: number; computed: number };
    const merged = JSON.parse(readFileSync(join(dir, 'merged', 'report.json'), 'utf8')) as Report;
    const one = JSON.parse(readFileSync(join(dir, 'one', 'report.json'), 'utf8')) as Report;
    expect(merged.resumed).toBe(killedAt);
    expect(merged.resumed + merged.computed).toBe(one.computed);
    expect({ ...merged, resumed: 0, computed: 0 }).toEqual({ ...one, resumed: 0, computed: 0 });
    const lines = (d: string) =>
      readFileSync(join(d, 'results.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const { resumed: _r, ...rest } = JSON.parse(l) as { resumed?: boolean };
          return rest;
        });
    expect(lines(join(dir, 'merged'))).toEqual(lines(join(dir, 'one')));
    const t = fileTree(join(dir, 'one'));
    const m = fileTree(join(dir, 'merged'));
    for (const [name, bytes] of t) {
      if (name === 'report.json' || name === 'results.jsonl') continue;
      expect(m.get(name)?.equals(bytes), name).toBe(true);
    }
  });

  it('a finished run shard is not run again with --resume', () => {
    const out = join(root, 'run-done');
    const args = ['run', CLS, images, '--cache', 'hook_embed', '--shard', '0/2', '--out', out];
    expect([0, 3]).toContain(prisma(args).code);
    const before = statSync(join(out, 'activations.safetensors')).mtimeMs;
    const again = prisma([...args, '--resume']);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe(`run shard 0/2: already finished in ${out}\n`);
    expect(statSync(join(out, 'activations.safetensors')).mtimeMs).toBe(before);
  });
});

describe('merge refuses shards that do not belong together', { timeout: 600_000 }, () => {
  const shardOf = (out: string, k: number, n: number, extra: string[] = [], model = CLS) =>
    prisma(['run', model, images, '--cache', 'blocks.0.hook_resid_post', ...extra, '--shard', `${k}/${n}`, '--out', out]);

  it('another model, other options, another n, a missing shard: one line each', () => {
    const dir = join(root, 'refuse');
    const s = (name: string) => join(dir, name);
    shardOf(s('a0'), 0, 2);
    shardOf(s('a1'), 1, 2);
    shardOf(s('topk'), 1, 2, ['--top-k', '2']);
    shardOf(s('model'), 1, 2, [], join(FIXTURES, 'models', 'vit-tiny-base'));
    shardOf(s('n3'), 1, 3);
    const cases: [string[], string, RegExp][] = [
      [[s('a0'), s('topk')], 'E_SHARD_MISMATCH', /was run with other options than/],
      [[s('a0'), s('model')], 'E_SHARD_MISMATCH', /was run with another model than/],
      [[s('a0'), s('n3')], 'E_SHARD_MISMATCH', /shards disagree on n: .* is shard 0\/2, .* is shard 1\/3/],
      [[s('a0')], 'E_SHARD_MISSING', /^missing shard 1\/2$/],
    ];
    for (const [dirs, code, message] of cases) {
      const r = prisma(['merge', s('out'), ...dirs]);
      expect(r.code).toBe(1);
      const [first] = stderrLines(r);
      expect(first).toMatch(new RegExp(`^prisma: ${code}: `));
      expect(first!.replace(`prisma: ${code}: `, '')).toMatch(message);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    expect(prisma(['merge', s('out'), s('a0'), s('a1')]).code).toBe(0);
  });

  it('a shard index out of range, or a folder holding a shard of another n, is one error line', () => {
    const out = join(root, 'range');
    const r = shardOf(out, 2, 2);
    expect(r.code).toBe(2);
    expect(stderrLines(r)[0]).toBe(
      'prisma: E_USAGE: --shard 2/2: k must be from 0 to 1 (k counts from 0, as Slurm array and Kubernetes completion indexes do)',
    );
    expect(shardOf(out, 0, 2).code).toBe(0);
    const other = shardOf(out, 0, 3);
    expect(other.code).toBe(1);
    expect(stderrLines(other)[0]).toBe(`prisma: E_SHARD_MISMATCH: ${out} holds shard 0/2; this run is shard 0/3`);
    for (const bad of ['1', '-1/2', '1/0']) {
      const x = prisma(['logit-lens', CLS, images, '--shard', bad, '--out', join(root, 'range-x')]);
      expect(x.code).toBe(2);
      expect(stderrLines(x)[0]).toMatch(/^prisma: E_USAGE: --shard (must be k\/n|1\/0: n must be)/);
    }
  });
});
