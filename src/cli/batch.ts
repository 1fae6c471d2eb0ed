/**
 * Multi-input runs: inputs are processed one at a time; a failing input (unreadable image, bad
 * tensor) is recorded and the run goes on. With an output folder, each finished input is written
 * to `DIR/items/<id>.json` atomically (after its figures), so `--resume` can skip inputs a killed
 * run already finished; the report is assembled from the items at the end.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';

import type { CommandContext } from './context.js';
import type { LineSink } from './folder-job.js';
import { prefetch } from '../prefetch.js';
import type { ShardEntry } from '../shard.js';
import { PrismaError, toPrismaError } from '../errors.js';
import { inputKind } from '../image/preprocess.js';
import type { Model } from '../model.js';
import { batchRows, type PixelBatch } from '../tensor.js';
import { startProgress } from './ui/progress.js';
import { FigureWriter, sanitizeName, type Figure } from '../report/figures.js';
import type { DisplaySource } from '../report/overlay.js';
import { cleanUpOnSignal, removeStaleTemps, writeJsonAtomic } from '../report/write.js';

export interface BatchItem {
  /** The input's label (the path, or `file[i]` for a row of a tensor file). */
  input: string;
  file: string;
  /** File name (without .json) of its record under items/. */
  id: string;
  /** Short name for its figures. */
  name: string;
  /** This input alone, [1, C, H, W]. */
  batch: PixelBatch;
  display: DisplaySource;
}

export interface InputError {
  input: string;
  code: string;
  message: string;
}

export interface ItemRecord<R> {
  input: string;
  name: string;
  result: R;
  figures: Figure[];
  /** True when taken from an earlier run (--resume). */
  resumed: boolean;
}

export interface BatchOutcome {
  resumed: number;
  computed: number;
  failed: number;
}

export interface BatchSpec<R> {
  command: string;
  model: Model;
  /** Every input file of the job, folders already expanded (figure names are chosen among them all). */
  files: readonly string[];
  /** The files this process runs (all, or its shard's), with their positions in `files`. */
  entries: readonly ShardEntry<string>[];
  /** Where each input's result line goes as it finishes. */
  sink: LineSink;
  outDir?: string;
  resume?: boolean;
  /** Everything that changes the results (options); items from a run with another key are not reused. */
  key: unknown;
  ctx: CommandContext;
  inputKey?: string;
  process(item: BatchItem, figures: FigureWriter | undefined): Promise<{ result: R; figures: Figure[] }>;
}

/** Inputs read ahead of the one running (images of a few MB each at most). */
const PREFETCH = 4;

/** An input read ahead: its record (--resume), its pixels, or why it could not be read. */
type Prepared<R> = { file: string; position: number; isImage: boolean } & (
  | { stored: StoredItem<R> }
  | { batch: PixelBatch }
  | { failed: unknown }
  | { fatal: unknown }
);

interface StoredItem<R> {
  schemaVersion: 1;
  command: string;
  key: string;
  input: string;
  name: string;
  result: R;
  figures: Figure[];
}

const hash = (text: string, n: number) => createHash('sha256').update(text).digest('hex').slice(0, n);

export const ITEMS_DIR = 'items';

/** File-system-safe, collision-free record id for an input label. */
export function itemId(label: string): string {
  const abs = resolve(label.replace(/\[\d+\]$/, ''));
  const row = /\[(\d+)\]$/.exec(label)?.[1];
  return `${sanitizeName(basename(label), 48)}-${hash(row === undefined ? abs : `${abs}[${row}]`, 8)}`;
}

/** Figure names: the file's stem, made unique among `files` by a short hash when stems repeat. */
export function figureNames(files: readonly string[]): Map<string, string> {
  const stem = (f: string) => sanitizeName(basename(f, extname(f)), 40);
  const count = new Map<string, number>();
  for (const f of files) count.set(stem(f), (count.get(stem(f)) ?? 0) + 1);
  return new Map(files.map((f) => [f, (count.get(stem(f)) ?? 0) > 1 ? `${stem(f)}-${hash(resolve(f), 6)}` : stem(f)]));
}

export function runKey(command: string, model: Model, key: unknown): string {
  return hash(JSON.stringify({ command, model: resolve(model.info.modelDir), key }), 16);
}

async function readStored<R>(path: string, command: string, key: string): Promise<StoredItem<R> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  let doc: StoredItem<R>;
  try {
    doc = JSON.parse(text) as StoredItem<R>;
  } catch {
    return undefined; // unreadable: compute it again
  }
  if (doc.command !== command || doc.key !== key) {
    throw new PrismaError('E_USAGE', `--resume: ${path} was written by a different run (another command, model or options)`, {
      hint: 'rerun with the same options, or write to a new --out folder',
    });
  }
  return doc;
}

export async function runBatch<R>(spec: BatchSpec<R>): Promise<BatchOutcome> {
  const { model, command, sink } = spec;
  const key = runKey(command, model, spec.key);
  const writer = spec.outDir === undefined ? undefined : new FigureWriter(spec.outDir);
  const itemsDir = spec.outDir === undefined ? undefined : join(spec.outDir, ITEMS_DIR);
  if (itemsDir) await removeStaleTemps(itemsDir);
  const names = figureNames(spec.files);
  const spec0 = await model.preprocessSpec().catch(() => undefined);
  const out: BatchOutcome = { resumed: 0, computed: 0, failed: 0 };
  const total = spec.entries.length;
  const progress = startProgress(spec.ctx, total, command);
  // Ctrl-C (or SIGTERM): end the progress line and say what is kept and how to go on; every
  // finished item is already on disk (written atomically), so --resume picks up from there.
  const stopOnSignal = cleanUpOnSignal(() => {
    progress.stop();
    const done = out.resumed + out.computed;
    spec.ctx.io.stderr.write(
      spec.outDir === undefined
        ? `\nprisma: interrupted after ${done} of ${total} inputs; nothing was saved (no --out)\n`
        : `\nprisma: interrupted: ${done} of ${total} inputs saved in ${spec.outDir}; rerun the same command with --resume to finish\n`,
    );
  });

  const fail = async (position: number, file: string, input: string, err: unknown) => {
    const pe = toPrismaError(err);
    out.failed += 1;
    await sink.add({ position, file, input, ok: false, error: { code: pe.code, message: pe.message } });
  };
  const addResumed = async (position: number, file: string, stored: StoredItem<R>) => {
    await sink.add({
      position,
      file,
      input: stored.input,
      ok: true,
      name: stored.name,
      resumed: true,
      result: stored.result,
      figures: stored.figures,
    });
    out.resumed += 1;
  };
  const tryResume = async (position: number, file: string, label: string): Promise<boolean> => {
    if (!spec.resume || !itemsDir) return false;
    const stored = await readStored<R>(join(itemsDir, `${itemId(label)}.json`), command, key);
    if (!stored) return false;
    await addResumed(position, file, stored);
    return true;
  };

  try {
    // Each input is read (or its record found) while the ones before it run.
    const prepare = async ({ item: file, position }: ShardEntry<string>): Promise<Prepared<R>> => {
      const isImage = inputKind(file) === 'image';
      try {
        if (isImage && spec.resume && itemsDir) {
          const stored = await readStored<R>(join(itemsDir, `${itemId(file)}.json`), command, key);
          if (stored) return { file, position, isImage, stored };
        }
      } catch (err) {
        return { file, position, isImage, fatal: err };
      }
      try {
        return {
          file,
          position,
          isImage,
          batch: await model.loadInputs([file], spec.inputKey === undefined ? {} : { inputKey: spec.inputKey }),
        };
      } catch (err) {
        return { file, position, isImage, failed: err };
      }
    };
    let n = 0;
    for await (const prepared of prefetch(spec.entries, PREFETCH, prepare)) {
      const { file, position, isImage } = prepared;
      progress.update(n, basename(file));
      n += 1;
      if ('fatal' in prepared) throw prepared.fatal;
      if ('stored' in prepared) {
        await addResumed(position, file, prepared.stored);
        continue;
      }
      if ('failed' in prepared) {
        await fail(position, file, file, prepared.failed);
        continue;
      }
      const { batch } = prepared;
      const rows = batch.shape[0];
      const [h, w] = batch.shape.slice(-2) as [number, number];
      for (let i = 0; i < rows; i++) {
        const label = batch.labels[i] ?? file;
        if (!isImage && (await tryResume(position, file, label))) continue;
        const base = names.get(file) ?? 'input';
        const row = batchRows(batch, i, i + 1);
        const item: BatchItem = {
          input: label,
          file,
          id: itemId(label),
          name: rows > 1 ? `${base}-${i}` : base,
          batch: { ...row, labels: [label] },
          // A video clip is shown by its first frame (frames come first in [T, C, H, W]).
          display: { ...(isImage ? { path: file } : {}), pixels: row.data, imageSize: [h, w], ...(spec0 ? { spec: spec0 } : {}) },
        };
        let done: { result: R; figures: Figure[] };
        try {
          done = await spec.process(item, writer);
        } catch (err) {
          await fail(position, file, label, err);
          continue;
        }
        if (itemsDir) {
          const stored: StoredItem<R> = {
            schemaVersion: 1,
            command,
            key,
            input: label,
            name: item.name,
            result: done.result,
            figures: done.figures,
          };
          await writeJsonAtomic(join(itemsDir, `${item.id}.json`), stored);
        }
        await sink.add({ position, file, input: label, ok: true, name: item.name, result: done.result, figures: done.figures });
        out.computed += 1;
      }
    }
  } finally {
    stopOnSignal();
    progress.update(total);
    progress.stop();
  }
  return out;
}
