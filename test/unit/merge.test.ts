// prisma merge's library side on shard folders made here (no model): lines merged back into input
// order, the report laid out as one process lays it, and shards that do not belong together, or a
// missing one, refused with one line naming it.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { mergeShards } from '../../src/merge.js';
import { writeJsonStream } from '../../src/report/json-stream.js';
import { DigestBuilder, layoutReport, type AnalysisFixed } from '../../src/report/layouts.js';
import { formatLine, mergeByPosition, type ResultLine } from '../../src/report/lines.js';
import { hashJson, inputsFingerprint, PARTITION, type ShardManifest } from '../../src/shard-manifest.js';
import { inputKeys, selectShard } from '../../src/shard.js';

const FILES = Array.from({ length: 23 }, (_, i) => `imgs/p${String(i).padStart(2, '0')}.${i === 7 ? 'npy' : 'jpg'}`);

/** The lines one process would write: file 7 is a tensor of three rows, files 4 and 15 fail. */
function allLines(): ResultLine[] {
  return FILES.flatMap((file, position): ResultLine[] => {
    if (position === 4 || position === 15) {
      return [{ position, file, input: file, ok: false, error: { code: 'E_IMAGE_DECODE', message: `cannot decode image '${file}'` } }];
    }
    const rows = position === 7 ? 3 : 1;
    return Array.from({ length: rows }, (_, r): ResultLine => {
      const input = rows > 1 ? `${file}[${r}]` : file;
      const name = `p${position}${rows > 1 ? `-${r}` : ''}`;
      return {
        position,
        file,
        input,
        ok: true,
        name,
        result: {
          score: position + r / 10,
          patchLabels: [{ layer: 0, site: 'resid_post', correct: position % 3, labelled: 3, accuracy: null }],
        },
        figures: [{ path: `fig-${name}.png`, kind: 'lens-prob', format: 'png', width: 10, height: 10 }],
      };
    });
  });
}

const FIXED: AnalysisFixed = {
  base: { schemaVersion: 1, ok: true, command: 'logit-lens', generator: 'vit-prisma test', model: { dir: 'm' } },
  options: { sites: ['resid_post'] },
  aggregates: ['patchLabelAccuracy'],
};

async function* iterate(lines: ResultLine[]) {
  yield* lines;
}

async function reportText(lines: ResultLine[]): Promise<string> {
  const digest = new DigestBuilder();
  for (const l of lines) digest.add(l);
  let text = '';
  await writeJsonStream(
    layoutReport('analysis', FIXED, digest.digest, () => iterate(lines)),
    (c) => {
      text += c;
    },
  );
  return `${text}\n`;
}

function manifest(index: number, count: number, shardFiles: number, patch: Partial<ShardManifest> = {}): ShardManifest {
  return {
    schemaVersion: 1,
    kind: 'vit-prisma shard',
    generator: 'vit-prisma test',
    command: 'logit-lens',
    shard: { index, count },
    partition: PARTITION,
    fingerprint: { model: hashJson({ m: 1 }), options: hashJson(FIXED.options), inputs: inputsFingerprint(FILES) },
    inputs: { total: FILES.length, shard: shardFiles },
    report: { layout: 'analysis', fixed: FIXED },
    outputs: [],
    ...patch,
  };
}

/** Shard folders as `--shard k/n --out` would leave them (lines, figures, items, shard.json). */
function writeShards(root: string, n: number): string[] {
  const lines = allLines();
  const keys = inputKeys(FILES, ['imgs']);
  return Array.from({ length: n }, (_, k) => {
    const dir = join(root, `shard-${k}`);
    mkdirSync(join(dir, 'items'), { recursive: true });
    const positions = new Set(selectShard(FILES, keys, { index: k, count: n }).map((e) => e.position));
    const mine = lines.filter((l) => positions.has(l.position));
    writeFileSync(join(dir, 'results.jsonl'), mine.map((l) => `${formatLine(l)}\n`).join(''));
    for (const l of mine) {
      if (!l.ok) continue;
      for (const f of l.figures ?? []) writeFileSync(join(dir, f.path), `png of ${l.input}`);
      writeFileSync(join(dir, 'items', `${l.name}.json`), `{"input":"${l.input}"}\n`);
    }
    writeFileSync(join(dir, 'shard.json'), JSON.stringify(manifest(k, n, positions.size)));
    return dir;
  });
}

const errorOf = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (err) {
    return err as { code: string; message: string };
  }
  throw new Error('expected an error');
};

describe('mergeByPosition', () => {
  it('interleaves position-ordered sources back into one order, rows of a file together', async () => {
    const lines = allLines();
    const wrapped = [0, 1, 2].map((k) =>
      (async function* () {
        for (const line of lines.filter((l) => l.position % 3 === k)) yield { line };
      })(),
    );
    const out: ResultLine[] = [];
    for await (const { line } of mergeByPosition(wrapped, () => new Error('disorder'))) out.push(line);
    expect(out).toEqual(lines);
  });

  it('refuses a position held by two sources', async () => {
    const twice = [
      (async function* () {
        yield { line: allLines()[0]! };
      })(),
      (async function* () {
        yield { line: allLines()[0]! };
      })(),
    ];
    await expect(
      (async () => {
        for await (const _ of mergeByPosition(twice, (s, p) => new Error(`disorder ${s} ${p}`))) {
          // drain
        }
      })(),
    ).rejects.toThrow(/disorder 1 0/);
  });
});

describe('mergeShards', () => {
  it('gives the one-process results.jsonl and report.json byte for byte, and every figure and item', async () => {
    for (const n of [1, 2, 5]) {
      const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
      const dirs = writeShards(root, n);
      const out = join(root, 'merged');
      const merged = await mergeShards(out, [...dirs].reverse());
      expect(merged.digest.errors.map((e) => e.input)).toEqual([FILES[4], FILES[15]]);
      const lines = allLines();
      expect(readFileSync(join(out, 'results.jsonl'), 'utf8')).toBe(lines.map((l) => `${formatLine(l)}\n`).join(''));
      expect(readFileSync(join(out, 'report.json'), 'utf8')).toBe(await reportText(lines));
      const figures = lines.flatMap((l) => (l.ok ? (l.figures ?? []).map((f) => f.path) : []));
      expect(
        readdirSync(out)
          .filter((f) => f.endsWith('.png'))
          .sort(),
      ).toEqual([...figures].sort());
      expect(readdirSync(join(out, 'items'))).toHaveLength(lines.filter((l) => l.ok).length);
      expect(readdirSync(out)).not.toContain('shard.json');
    }
  });

  it('sums the per-image patch scores over every shard', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    await mergeShards(join(root, 'merged'), writeShards(root, 3));
    const report = JSON.parse(readFileSync(join(root, 'merged', 'report.json'), 'utf8')) as {
      patchLabelAccuracy: { correct: number; labelled: number; accuracy: number }[];
    };
    const ok = allLines().filter((l) => l.ok);
    const correct = ok.reduce((s, l) => s + (l.position % 3), 0);
    expect(report.patchLabelAccuracy[0]).toMatchObject({ correct, labelled: 3 * ok.length, accuracy: correct / (3 * ok.length) });
  });

  it('names a missing shard', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    const dirs = writeShards(root, 4);
    const err = await errorOf(mergeShards(join(root, 'merged'), [dirs[0]!, dirs[1]!, dirs[3]!]));
    expect(err.code).toBe('E_SHARD_MISSING');
    expect(err.message).toBe('missing shard 2/4');
  });

  it('names a shard folder that did not finish (no shard.json)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    const dirs = writeShards(root, 3);
    rmSync(join(dirs[1]!, 'shard.json'));
    const err = await errorOf(mergeShards(join(root, 'merged'), dirs));
    expect(err.code).toBe('E_SHARD_MISSING');
    expect(err.message).toContain(dirs[1]!);
  });

  it.each([
    ['n', { shard: { index: 1, count: 5 } }, /shards disagree on n: .* is shard 0\/4, .* is shard 1\/5/],
    ['model', { fingerprint: { model: 'other', options: hashJson(FIXED.options), inputs: inputsFingerprint(FILES) } }, /another model/],
    ['options', { fingerprint: { model: hashJson({ m: 1 }), options: 'other', inputs: inputsFingerprint(FILES) } }, /other options/],
    ['inputs', { fingerprint: { model: hashJson({ m: 1 }), options: hashJson(FIXED.options), inputs: 'other' } }, /listed other inputs/],
    ['partition', { partition: 'something else' }, /another partition/],
    ['command', { command: 'dla' }, /is a dla shard/],
  ] as const)('refuses shards with another %s (one line, E_SHARD_MISMATCH)', async (_what, patch, message) => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    const dirs = writeShards(root, 4);
    const doc = JSON.parse(readFileSync(join(dirs[1]!, 'shard.json'), 'utf8')) as ShardManifest;
    writeFileSync(join(dirs[1]!, 'shard.json'), JSON.stringify({ ...doc, ...patch }));
    const err = await errorOf(mergeShards(join(root, 'merged'), dirs));
    expect(err.code).toBe('E_SHARD_MISMATCH');
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain('\n');
    expect(readdirSync(root)).not.toContain('merged');
  });

  it('refuses the same shard twice, and an output inside a shard folder', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    const dirs = writeShards(root, 2);
    expect((await errorOf(mergeShards(join(root, 'merged'), [dirs[0]!, dirs[0]!, dirs[1]!]))).message).toMatch(/given twice/);
    expect((await errorOf(mergeShards(join(dirs[0]!, 'merged'), dirs))).code).toBe('E_USAGE');
  });

  it('refuses shards whose lines do not cover the input list', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prisma-merge-'));
    const dirs = writeShards(root, 2);
    const text = readFileSync(join(dirs[0]!, 'results.jsonl'), 'utf8').split('\n');
    writeFileSync(join(dirs[0]!, 'results.jsonl'), text.slice(1).join('\n'));
    const err = await errorOf(mergeShards(join(root, 'merged'), dirs));
    expect(err.code).toBe('E_SHARD_MISSING');
    expect(err.message).toMatch(/no shard holds input \d+ of 23/);
    expect(readdirSync(join(root, 'merged')).filter((f) => f === 'results.jsonl' || f === 'report.json')).toEqual([]);
  });
});
