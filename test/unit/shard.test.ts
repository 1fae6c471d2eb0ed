// --shard k/n: parsing, and the partition's promises (every input in exactly one shard; an input's
// shard does not depend on what else the folder holds; the documented formula, checked against
// coreutils' sha256sum).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { inputKeys, parseShard, selectShard, shardOf } from '../../src/shard.js';

const names = (n: number, prefix = 'img') => Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(5, '0')}.jpg`);

describe('parseShard', () => {
  it('reads k/n with k from 0 to n-1', () => {
    expect(parseShard('0/1')).toEqual({ index: 0, count: 1 });
    expect(parseShard('3/8')).toEqual({ index: 3, count: 8 });
    expect(parseShard(' 7 / 8 ')).toEqual({ index: 7, count: 8 });
  });

  it.each(['8/8', '9/8', '0/0', '-1/4', '1', '1/', 'a/b', '1/2/3', '1.5/4', ''])('refuses %j as one E_USAGE line', (text) => {
    let err: { code?: string; message?: string } | undefined;
    try {
      parseShard(text);
    } catch (e) {
      err = e as typeof err;
    }
    expect(err?.code).toBe('E_USAGE');
    expect(err?.message).toMatch(/--shard/);
    expect(err?.message).not.toContain('\n');
  });

  it('says where k counts from when k is out of range', () => {
    expect(() => parseShard('4/4')).toThrow(/k must be from 0 to 3/);
  });
});

describe('the partition', () => {
  it('puts every input in exactly one shard, for several n', () => {
    const files = names(1000);
    for (const n of [1, 2, 3, 7, 16]) {
      const seen = new Map<number, number>();
      for (let k = 0; k < n; k++) {
        for (const e of selectShard(files, files, { index: k, count: n })) {
          expect(seen.has(e.position), `${files[e.position]} in two shards`).toBe(false);
          seen.set(e.position, k);
          expect(files[e.position]).toBe(e.item);
        }
      }
      expect(seen.size).toBe(files.length);
    }
  });

  it('spreads inputs evenly enough (no shard empty or twice its share over 1000 inputs)', () => {
    const files = names(1000);
    for (let k = 0; k < 8; k++) {
      const size = selectShard(files, files, { index: k, count: 8 }).length;
      expect(size).toBeGreaterThan(1000 / 8 / 2);
      expect(size).toBeLessThan((2 * 1000) / 8);
    }
  });

  it('keeps a shard in input order, with positions in the whole list', () => {
    const files = names(200);
    const shard = selectShard(files, files, { index: 1, count: 3 });
    const positions = shard.map((e) => e.position);
    expect(positions).toEqual([...positions].sort((a, b) => a - b));
  });

  it('does not move a file when others are added to or removed from the folder', () => {
    const before = names(300);
    const kept = before.filter((_, i) => i % 5 !== 0);
    const after = [...kept, ...names(400, 'new')].sort();
    for (let k = 0; k < 7; k++) {
      const was = new Set(selectShard(before, before, { index: k, count: 7 }).map((e) => e.item));
      const now = new Set(selectShard(after, after, { index: k, count: 7 }).map((e) => e.item));
      for (const f of kept) expect(now.has(f), f).toBe(was.has(f));
    }
  });

  it("keys a folder's files relative to the folder, so the mount point does not matter", () => {
    const a = inputKeys(['/mnt/a/imgs/x/1.jpg', '/mnt/a/imgs/2.jpg', 'loose.png'], ['/mnt/a/imgs']);
    const b = inputKeys(['/data/imgs/x/1.jpg', '/data/imgs/2.jpg', './loose.png'], ['/data/imgs/']);
    expect(a).toEqual(['x/1.jpg', '2.jpg', 'loose.png']);
    expect(b).toEqual(a);
    // The deepest folder argument wins.
    expect(inputKeys([join('top', 'sub', 'f.jpg')], ['top', join('top', 'sub')])).toEqual(['f.jpg']);
  });

  it('is uint64(first 8 bytes of sha256(key)) mod n, as sha256sum computes it', () => {
    for (const key of ['a.jpg', 'sub dir/ümlaut.png', 'x/y/z.webp', '']) {
      const r = spawnSync('sha256sum', [], { input: key, encoding: 'utf8' });
      expect(r.status).toBe(0);
      const first8 = BigInt(`0x${r.stdout.slice(0, 16)}`);
      for (const n of [1, 2, 5, 1000, 999_983]) expect(shardOf(key, n)).toBe(Number(first8 % BigInt(n)));
    }
  });
});
