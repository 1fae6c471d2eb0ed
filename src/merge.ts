/**
 * `prisma merge OUT SHARD_DIR...`: the output folders of a job's n shards combined into the folder one
 * process would have written for the whole input list: results.jsonl and report.json in input
 * order, every figure and item record, and the activations file with its rows in input order. The
 * shards are checked first (shard-manifest.ts): one command, model, options, input list and
 * partition, every index from 0 to n-1 once. Nothing is held whole: lines are merged by position
 * as they are read, the report is streamed, tensors are copied a run of rows at a time.
 */
import { copyFile, mkdir, readdir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';

import { PrismaError } from './errors.js';
import { writeJsonStreamAtomic } from './report/json-stream.js';
import { DigestBuilder, fullShape, layoutReport, type LinesDigest, type ReportChecks, type RunFixed } from './report/layouts.js';
import { LinesFile, mergeByPosition, readLines } from './report/lines.js';
import { tempPathFor } from './report/write.js';
import { copyRows, openTensorFile } from './safetensors-rows.js';
import { SafetensorsWriter } from './safetensors-writer.js';
import { checkShards, MANIFEST_FILE, readManifest, type ShardDir } from './shard-manifest.js';

export const RESULTS_FILE = 'results.jsonl';
export const REPORT_FILE = 'report.json';
export const ITEMS_DIR = 'items';

export interface MergeOutcome {
  out: string;
  command: string;
  shards: number;
  /** Files in the input list. */
  inputs: number;
  digest: LinesDigest;
  /** The merged report's path. */
  report: string;
}

export interface MergeOptions {
  /** Schema checks for a command's report, when it has a schema. */
  checks?: (command: string) => ReportChecks | undefined;
}

async function copyFileAtomic(src: string, dst: string): Promise<void> {
  const tmp = tempPathFor(dst);
  try {
    await mkdir(dirname(dst), { recursive: true });
    await copyFile(src, tmp);
    await rename(tmp, dst);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !(await exists(src))) {
      throw new PrismaError('E_SHARD_MISSING', `${src} is missing from its shard folder`, { hint: 'rerun that shard with --resume' });
    }
    throw new PrismaError('E_IO', `cannot write ${dst}: ${(err as Error).message}`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** OUT must not be (or hold) a shard: merging into one of the inputs would destroy it. */
async function prepareOut(out: string, shards: readonly ShardDir[]): Promise<void> {
  const abs = resolve(out);
  for (const s of shards) {
    const rel = relative(resolve(s.dir), abs);
    if (rel === '' || (!rel.startsWith('..') && !rel.startsWith('/'))) {
      throw new PrismaError('E_USAGE', `the merge output ${out} is inside shard folder ${s.dir}`, {
        hint: 'write the merge to a new folder',
      });
    }
  }
  if (await exists(join(out, MANIFEST_FILE))) {
    throw new PrismaError('E_USAGE', `${out} holds a shard (${MANIFEST_FILE}); it cannot be a merge output`, {
      hint: 'write the merge to a new folder',
    });
  }
  try {
    await mkdir(out, { recursive: true });
  } catch (err) {
    throw new PrismaError('E_IO', `cannot create ${out}: ${(err as Error).message}`);
  }
}

/** Where each merged ok row comes from: its shard and its row there. */
interface RowSources {
  shard: number[];
  row: number[];
}

/** Merges results.jsonl by position into OUT's, copying each input's figures as it passes. */
async function mergeLines(out: string, shards: readonly ShardDir[]): Promise<{ digest: LinesDigest; rows: RowSources }> {
  const total = shards[0]!.manifest.inputs.total;
  const sources = shards.map((s) => readLines(join(s.dir, RESULTS_FILE)));
  const file = new LinesFile(join(out, RESULTS_FILE));
  await file.open();
  const digest = new DigestBuilder();
  const rows: RowSources = { shard: [], row: [] };
  const okRows = shards.map(() => 0);
  let expected = 0;
  try {
    const merged = mergeByPosition(
      sources,
      (source, position) =>
        new PrismaError('E_SHARD_MISMATCH', `input ${position} appears out of order or in two shards (${shards[source]!.dir})`, {
          hint: 'the shard folders were changed after they were written; rerun the shards',
        }),
    );
    let last = -1;
    for await (const { line, text, source } of merged) {
      if (line.position !== last) {
        if (line.position !== expected) {
          throw new PrismaError('E_SHARD_MISSING', `no shard holds input ${expected} of ${total}`, {
            hint: 'a shard folder is incomplete; rerun its shard with --resume',
          });
        }
        expected += 1;
        last = line.position;
      }
      digest.add(line);
      await file.write(text);
      if (!line.ok) continue;
      rows.shard.push(source);
      rows.row.push(okRows[source]!);
      okRows[source]! += 1;
      for (const f of line.figures ?? [])
        await copyFileAtomic(join(shards[source]!.dir, ...f.path.split('/')), join(out, ...f.path.split('/')));
    }
    if (expected !== total) {
      throw new PrismaError('E_SHARD_MISSING', `the shards hold ${expected} of ${total} inputs`, {
        hint: 'a shard folder is incomplete; rerun its shard with --resume',
      });
    }
    await file.finish();
  } catch (err) {
    await file.abort();
    throw err;
  }
  return { digest: digest.digest, rows };
}

/** Every shard's item records (the --resume records of analysis commands). */
async function copyItems(out: string, shards: readonly ShardDir[]): Promise<void> {
  for (const s of shards) {
    let names: string[];
    try {
      names = (await readdir(join(s.dir, ITEMS_DIR))).filter((n) => n.endsWith('.json'));
    } catch {
      continue;
    }
    for (const n of names) await copyFileAtomic(join(s.dir, ITEMS_DIR, n), join(out, ITEMS_DIR, n));
  }
}

/** `prisma run`'s activations: every shard's rows placed at their rows in input order. */
async function mergeActivations(
  out: string,
  shards: readonly ShardDir[],
  fixed: RunFixed,
  digest: LinesDigest,
  rows: RowSources,
): Promise<void> {
  if (!fixed.written) return;
  const name = fixed.written.path;
  const opened = await Promise.all(
    shards.map(async (s) => ((await exists(join(s.dir, name))) ? openTensorFile(join(s.dir, name)) : undefined)),
  );
  let writer: SafetensorsWriter | undefined;
  try {
    const first = opened.find((o) => o !== undefined);
    if (!first) return; // no input succeeded anywhere: no file, as in one process
    const total = digest.okInputs.length;
    writer = new SafetensorsWriter(
      join(out, name),
      fixed.written.tensors.map((t) => ({ name: t.name, shape: fullShape(t, total) })),
      { ...first.header.metadata, inputs: JSON.stringify(digest.okInputs) },
    );
    await writer.open();
    for (const t of fixed.written.tensors) {
      if (!t.perInput) {
        const stored = first.header.tensors.get(t.name);
        if (!stored) throw new PrismaError('E_SHARD_MISSING', `${name} of a shard has no tensor '${t.name}'`);
        await copyRows(first.file, stored, 0, stored.shape[0] ?? 0, writer, 0);
        continue;
      }
      // Runs of consecutive rows from one shard are copied together.
      let i = 0;
      while (i < rows.shard.length) {
        const s = rows.shard[i]!;
        let j = i + 1;
        while (j < rows.shard.length && rows.shard[j] === s && rows.row[j] === rows.row[j - 1]! + 1) j += 1;
        const src = opened[s];
        const stored = src?.header.tensors.get(t.name);
        if (!src || !stored) throw new PrismaError('E_SHARD_MISSING', `${join(shards[s]!.dir, name)} has no tensor '${t.name}'`);
        await copyRows(src.file, stored, rows.row[i]!, j - i, writer, i);
        i = j;
      }
    }
    await writer.finish();
  } catch (err) {
    await writer?.abort();
    throw err;
  } finally {
    await Promise.all(opened.map((o) => o?.file.close()));
  }
}

export async function mergeShards(out: string, dirs: readonly string[], options: MergeOptions = {}): Promise<MergeOutcome> {
  const shards = checkShards(await Promise.all(dirs.map(async (dir) => ({ dir, manifest: await readManifest(dir) }))));
  await prepareOut(out, shards);
  const { manifest } = shards[0]!;
  const { digest, rows } = await mergeLines(out, shards);
  await copyItems(out, shards);
  if (manifest.report.layout === 'run') await mergeActivations(out, shards, manifest.report.fixed as RunFixed, digest, rows);
  const report = join(out, REPORT_FILE);
  const checks = options.checks?.(manifest.command);
  const lines = async function* () {
    for await (const { line } of readLines(join(out, RESULTS_FILE))) yield line;
  };
  await writeJsonStreamAtomic(report, layoutReport(manifest.report.layout, manifest.report.fixed, digest, lines, checks));
  return { out, command: manifest.command, shards: shards.length, inputs: manifest.inputs.total, digest, report };
}
