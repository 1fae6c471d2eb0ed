/**
 * `shard.json`: what a shard's output folder says about itself, so that `prisma merge` can check
 * that its shards belong together (same command, model, options, input list and partition) and that
 * none is missing, before combining them. A shard writes it last: a folder without one holds a
 * shard that did not finish.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { PrismaError } from './errors.js';
import { writeJsonAtomic } from './report/write.js';
import { formatShard, type Shard } from './shard.js';

export const MANIFEST_FILE = 'shard.json';
export const MANIFEST_KIND = 'vit-prisma shard';
/** The partition the shards were cut with (src/shard.ts); shards cut another way cannot be merged. */
export const PARTITION = 'sha256(key) mod n, key = path relative to its folder argument';

export interface ShardFingerprint {
  /** SHA-256 (hex) of the model's identity (folder, architecture, device, dtype, classes). */
  model: string;
  /** SHA-256 of everything in the options that changes the results. */
  options: string;
  /** SHA-256 of the whole input list, in order: every shard must have listed the same inputs. */
  inputs: string;
}

export interface ShardManifest {
  schemaVersion: 1;
  kind: typeof MANIFEST_KIND;
  generator: string;
  command: string;
  shard: Shard;
  partition: string;
  fingerprint: ShardFingerprint;
  /** Inputs (files) in the whole list and in this shard. */
  inputs: { total: number; shard: number };
  /** The report's fields that do not depend on the inputs (identical in every shard), by layout. */
  report: { layout: string; fixed: unknown };
  /** Files written beside report.json and results.jsonl that the merge combines (e.g. activations). */
  outputs: string[];
}

export function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** A stable hash of a JSON value (object keys sorted at every level). */
export function hashJson(value: unknown): string {
  const sorted = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sorted);
    if (v === null || typeof v !== 'object') return v;
    return Object.fromEntries(
      Object.entries(v as Record<string, unknown>)
        .filter(([, x]) => x !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([k, x]) => [k, sorted(x)]),
    );
  };
  return sha256(JSON.stringify(sorted(value)));
}

export function inputsFingerprint(files: readonly string[]): string {
  return sha256(files.join('\n'));
}

export async function writeManifest(dir: string, manifest: ShardManifest): Promise<void> {
  await writeJsonAtomic(join(dir, MANIFEST_FILE), manifest);
}

/** The shard folder's manifest; E_SHARD_MISSING when it has none (the shard did not finish). */
export async function readManifest(dir: string): Promise<ShardManifest> {
  let text: string;
  try {
    text = await readFile(join(dir, MANIFEST_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new PrismaError('E_SHARD_MISSING', `${dir} holds no finished shard (no ${MANIFEST_FILE})`, {
        hint: 'rerun that shard with the same options and --resume; it writes shard.json when it finishes',
        data: { dir },
      });
    }
    throw new PrismaError('E_IO', `cannot read ${join(dir, MANIFEST_FILE)}: ${(err as Error).message}`);
  }
  let doc: ShardManifest;
  try {
    doc = JSON.parse(text) as ShardManifest;
  } catch {
    throw new PrismaError('E_SHARD_MISMATCH', `${join(dir, MANIFEST_FILE)} is not JSON`);
  }
  if (doc.kind !== MANIFEST_KIND || doc.schemaVersion !== 1) {
    throw new PrismaError('E_SHARD_MISMATCH', `${join(dir, MANIFEST_FILE)} is not a vit-prisma shard manifest (schema 1)`);
  }
  return doc;
}

export interface ShardDir {
  dir: string;
  manifest: ShardManifest;
}

const mismatch = (message: string, hint: string) => new PrismaError('E_SHARD_MISMATCH', message, { hint });

/**
 * Checks that `shards` are the n shards of one job: one command, the same n, partition, model,
 * options and input list, each index once and none missing. Throws one line naming what differs.
 * Returns the shards ordered by index.
 */
export function checkShards(shards: readonly ShardDir[]): ShardDir[] {
  if (shards.length === 0) throw new PrismaError('E_USAGE', 'prisma merge needs at least one shard folder');
  const [first] = shards as [ShardDir, ...ShardDir[]];
  const a = first.manifest;
  const rerun = 'merge the shards of one job: the same command, model, options and inputs, run with --shard k/n for every k';
  for (const { dir, manifest: b } of shards.slice(1)) {
    if (b.command !== a.command) throw mismatch(`${dir} is a ${b.command} shard, ${first.dir} a ${a.command} shard`, rerun);
    if (b.shard.count !== a.shard.count) {
      throw mismatch(
        `shards disagree on n: ${first.dir} is shard ${formatShard(a.shard)}, ${dir} is shard ${formatShard(b.shard)}`,
        'every shard of a job must be run with the same n in --shard k/n',
      );
    }
    if (b.partition !== a.partition)
      throw mismatch(`${dir} was cut with another partition than ${first.dir} (another vit-prisma version)`, rerun);
    if (b.fingerprint.model !== a.fingerprint.model) throw mismatch(`${dir} was run with another model than ${first.dir}`, rerun);
    if (b.fingerprint.options !== a.fingerprint.options) throw mismatch(`${dir} was run with other options than ${first.dir}`, rerun);
    if (b.fingerprint.inputs !== a.fingerprint.inputs || b.inputs.total !== a.inputs.total) {
      throw mismatch(
        `${dir} listed other inputs than ${first.dir} (${b.inputs.total} vs ${a.inputs.total} files, or another order)`,
        'every shard must see the same input list; did the folder change while the job ran?',
      );
    }
  }
  const byIndex = new Map<number, ShardDir>();
  for (const s of shards) {
    const seen = byIndex.get(s.manifest.shard.index);
    if (seen)
      throw mismatch(`shard ${formatShard(s.manifest.shard)} is given twice: ${seen.dir} and ${s.dir}`, 'give each shard folder once');
    byIndex.set(s.manifest.shard.index, s);
  }
  const n = a.shard.count;
  const missing = Array.from({ length: n }, (_, k) => k).filter((k) => !byIndex.has(k));
  if (missing.length > 0) {
    const names = missing.slice(0, 8).map((k) => `${k}/${n}`);
    throw new PrismaError(
      'E_SHARD_MISSING',
      `missing shard${missing.length > 1 ? 's' : ''} ${names.join(', ')}${missing.length > 8 ? `, … (${missing.length} in all)` : ''}`,
      { hint: `give all ${n} shard folders (k = 0 to ${n - 1})`, data: { missing } },
    );
  }
  const total = shards.reduce((sum, s) => sum + s.manifest.inputs.shard, 0);
  if (total !== a.inputs.total) {
    throw mismatch(`the shards hold ${total} inputs in all, the input list has ${a.inputs.total}`, rerun);
  }
  return [...byIndex.keys()].sort((x, y) => x - y).map((k) => byIndex.get(k)!);
}
