/**
 * Splitting a folder job over n processes or machines (`--shard k/n`): Slurm array tasks,
 * Kubernetes Indexed Job completions, CI matrix entries. Shard k of n takes every input whose key
 * hashes to k, so the partition is stable: an input lands in the same shard whatever else the folder
 * holds, and every input lands in exactly one shard.
 *
 * The key of an input is its path relative to the folder argument it was found in ('/'-separated),
 * or, for a file named directly (an argument or a line of stdin), the path as given with '/'
 * separators and any leading './' removed. Its shard is
 *
 *     uint64(first 8 bytes of SHA-256(key as UTF-8), big-endian) mod n
 *
 * (`printf %s KEY | sha256sum` gives the same digest). A tensor file with several rows is one input:
 * all its rows go to the same shard.
 */
import { createHash } from 'node:crypto';
import { isAbsolute, relative, resolve, sep } from 'node:path';

import { usageError } from './errors.js';

/** Shard `index` of `count`: index counts from 0 to count - 1. */
export interface Shard {
  index: number;
  count: number;
}

/** Shard counts above this are refused: a typo more likely than a job of a million machines. */
export const MAX_SHARDS = 1_000_000;

/** `k/n` (k from 0 to n - 1, as Slurm array and Kubernetes completion indexes count). */
export function parseShard(text: string, flag = '--shard'): Shard {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  if (!m) throw usageError(`${flag} must be k/n with k from 0 to n-1 (e.g. 0/4), got '${text}'`);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || count > MAX_SHARDS) throw usageError(`${flag} ${text}: n must be from 1 to ${MAX_SHARDS}`);
  if (index >= count) {
    throw usageError(
      `${flag} ${text}: k must be from 0 to ${count - 1} (k counts from 0, as Slurm array and Kubernetes completion indexes do)`,
    );
  }
  return { index, count };
}

export function formatShard(shard: Shard): string {
  return `${shard.index}/${shard.count}`;
}

/** '/'-separated, without a leading './'. */
function slashed(path: string): string {
  return path
    .split(sep)
    .join('/')
    .replace(/^(\.\/)+/, '');
}

/**
 * The shard key of `path`: relative to `root` (the folder argument it was found in) when given and
 * `path` lies inside it, else the path as given.
 */
export function shardKey(path: string, root?: string): string {
  if (root !== undefined) {
    const rel = relative(resolve(root), resolve(path));
    if (rel !== '' && !rel.startsWith('..') && !isAbsolute(rel)) return slashed(rel);
  }
  return slashed(path);
}

/** Which of `count` shards the input with key `key` belongs to (see the module comment). */
export function shardOf(key: string, count: number): number {
  const digest = createHash('sha256').update(key, 'utf8').digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(count));
}

/**
 * Keys of expanded input files: each file found in one of the folder arguments `roots` is keyed
 * relative to it (the deepest such folder), any other file by its path as given.
 */
export function inputKeys(files: readonly string[], roots: readonly string[]): string[] {
  const absRoots = [...new Set(roots.map((r) => resolve(r)))].sort((a, b) => b.length - a.length);
  return files.map((file) => {
    const abs = resolve(file);
    const root = absRoots.find((r) => abs.startsWith(r.endsWith(sep) ? r : r + sep));
    return shardKey(file, root);
  });
}

/** One input of a shard: the item and its position in the whole, unsharded list. */
export interface ShardEntry<T> {
  item: T;
  position: number;
}

/** The entries of `items` that belong to `shard`, in their order, each with its position in `items`. */
export function selectShard<T>(items: readonly T[], keys: readonly string[], shard: Shard): ShardEntry<T>[] {
  const out: ShardEntry<T>[] = [];
  items.forEach((item, position) => {
    if (shardOf(keys[position]!, shard.count) === shard.index) out.push({ item, position });
  });
  return out;
}
