// writeJsonStream: the same bytes as formatJson of the document held in memory, whatever is streamed.
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { Later, StreamedArray, writeJsonStream, writeJsonStreamAtomic } from '../../src/report/json-stream.js';
import { formatJson } from '../../src/report/json.js';

/** A small deterministic generator (mulberry32), so a failure can be replayed. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomValue(r: () => number, depth: number): unknown {
  const pick = Math.floor(r() * (depth > 3 ? 5 : 8));
  switch (pick) {
    case 0:
      return null;
    case 1:
      return r() * 100 - 50;
    case 2:
      return `s${Math.floor(r() * 1000)} "quoted"\n`;
    case 3:
      return r() < 0.5;
    case 4:
      return r() < 0.3 ? undefined : Math.floor(r() * 10);
    case 5:
      return Array.from({ length: Math.floor(r() * 4) }, () => Math.floor(r() * 9));
    case 6:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomObject(r, depth + 1));
    default:
      return randomObject(r, depth + 1);
  }
}

function randomObject(r: () => number, depth: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const n = Math.floor(r() * 5);
  for (let i = 0; i < n; i++) out[`k${i}`] = randomValue(r, depth);
  return out;
}

async function* yieldAll<T>(items: T[]): AsyncGenerator<T> {
  for (const x of items) yield x;
}

/** The document with every array of objects replaced by a StreamedArray and some fields by Later. */
function streamed(value: unknown, r: () => number): unknown {
  if (Array.isArray(value)) {
    const inner = value.map((v) => streamed(v, r));
    const objects = value.length > 0 && value.every((v) => v !== null && typeof v === 'object' && !Array.isArray(v));
    return objects && r() < 0.7 ? new StreamedArray(() => yieldAll(inner as object[])) : inner;
  }
  if (value === null || typeof value !== 'object') return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    const s = streamed(v, r);
    out[k] = r() < 0.2 ? new Later(() => s) : s;
  }
  return out;
}

async function text(value: unknown): Promise<string> {
  let out = '';
  await writeJsonStream(value, (chunk) => {
    out += chunk;
  });
  return out;
}

describe('writeJsonStream', () => {
  it('writes formatJson bytes for 300 random documents with streamed arrays and late fields', async () => {
    for (let seed = 1; seed <= 300; seed++) {
      const doc = randomObject(rng(seed), 0);
      doc.results = Array.from({ length: seed % 4 }, () => randomObject(rng(seed + 1000), 1));
      expect(await text(streamed(doc, rng(seed + 7))), `seed ${seed}`).toBe(formatJson(doc));
    }
  });

  it('writes an empty streamed array as [] and drops a late undefined field', async () => {
    const doc = { a: 1, results: new StreamedArray(() => yieldAll<object>([])), gone: new Later(() => undefined), z: [1, 2] };
    expect(await text(doc)).toBe(formatJson({ a: 1, results: [], z: [1, 2] }));
  });

  it('computes a late field after the arrays before it were streamed (a running total)', async () => {
    let total = 0;
    const doc = {
      results: new StreamedArray(async function* () {
        for (const v of [1, 2, 3]) {
          total += v;
          yield { v };
        }
      }),
      total: new Later(() => total),
    };
    expect(await text(doc)).toBe(formatJson({ results: [{ v: 1 }, { v: 2 }, { v: 3 }], total: 6 }));
  });

  it('writes a file atomically: the final name holds the whole text plus a newline, no temporary left', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-jsonstream-'));
    const items = Array.from({ length: 2000 }, (_, i) => ({ i, values: [i, i + 1], label: `item ${i}` }));
    await writeJsonStreamAtomic(join(dir, 'report.json'), { n: 2000, results: new StreamedArray(() => yieldAll(items)) });
    expect(readFileSync(join(dir, 'report.json'), 'utf8')).toBe(`${formatJson({ n: 2000, results: items })}\n`);
    expect(readdirSync(dir)).toEqual(['report.json']);
  });

  it('leaves nothing behind when a streamed array fails midway', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'prisma-jsonstream-'));
    const doc = {
      results: new StreamedArray(async function* () {
        yield { a: 1 };
        throw new Error('disk gone');
      }),
    };
    await expect(writeJsonStreamAtomic(join(dir, 'report.json'), doc)).rejects.toThrow(/disk gone/);
    expect(readdirSync(dir)).toEqual([]);
  });
});
