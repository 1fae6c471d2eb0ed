/**
 * Folder jobs of the commands that only run the model forward (run, classify): inputs are read one
 * file at a time, so an unreadable, truncated or non-image file is one error line and the job goes
 * on; the rows that load are run `maxRows` at a time; each input's result line is written in input
 * order as its batch finishes (folder-job.ts). `prisma run`'s recorded tensors are kept as raw rows
 * in temporary files (their final row count is only known at the end: failed inputs have none)
 * and written into the .safetensors file at the end, a run of rows at a time.
 */
import { unlinkSync } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { PrismaError, toPrismaError } from '../errors.js';
import type { Model } from '../model.js';
import { cannotWrite, tempPathFor } from '../report/write.js';
import { SafetensorsWriter } from '../safetensors-writer.js';
import { prefetch } from '../prefetch.js';
import type { ShardEntry } from '../shard.js';
import { batchRows, concatBatches, numel, type PixelBatch } from '../tensor.js';
import type { CommandContext } from './context.js';
import type { LineSink } from './folder-job.js';
import { startProgress } from './ui/progress.js';

export interface ForwardJobSpec<R> {
  model: Model;
  entries: readonly ShardEntry<string>[];
  /** Rows per forward. */
  maxRows: number;
  inputKey?: string;
  sink: LineSink;
  ctx: CommandContext;
  title: string;
  /**
   * Runs one batch of rows that loaded; returns one result per row for its first `keep` rows (the
   * others are padding), in order.
   */
  forward(batch: PixelBatch, keep: number): Promise<R[]>;
}

/** `batch` with its rows repeated in turn up to `rows` rows. */
function padRows(batch: PixelBatch, rows: number): PixelBatch {
  const parts: PixelBatch[] = [];
  for (let n = 0; n < rows; n += batch.shape[0]) parts.push(batchRows(batch, 0, Math.min(batch.shape[0], rows - n)));
  return concatBatches(parts);
}

type Pending = { position: number; file: string } & ({ batch: PixelBatch } | { error: { code: string; message: string } });

/** Runs every entry, one result line per input (or per row of a tensor file), in input order. */
export async function runForwardJob<R>(spec: ForwardJobSpec<R>): Promise<void> {
  const { sink } = spec;
  const maxRows = Math.max(1, Math.floor(spec.maxRows));
  const progress = startProgress(spec.ctx, spec.entries.length, spec.title);
  let pending: Pending[] = [];
  let rows = 0;
  let done = 0;
  const flush = async () => {
    const loaded = pending.flatMap((p) => ('batch' in p ? [p.batch] : []));
    const results: R[] = [];
    if (loaded.length > 0) {
      const all = concatBatches(loaded);
      for (let start = 0; start < all.shape[0]; start += maxRows) {
        const chunk = batchRows(all, start, Math.min(all.shape[0], start + maxRows));
        // libtorch's kernels depend on the batch's row count (a row's values differ in the last
        // bits between a batch of 1, 2 or 64 on some models), so every forward has exactly
        // `maxRows` rows, a short batch padded with copies of its rows: a row's values then never
        // depend on how the inputs fell into batches (or shards).
        const padded = chunk.shape[0] === maxRows ? chunk : padRows(chunk, maxRows);
        results.push(...(await spec.forward(padded, chunk.shape[0])));
      }
    }
    let r = 0;
    for (const p of pending) {
      if ('error' in p) {
        await sink.add({ position: p.position, file: p.file, input: p.file, ok: false, error: p.error });
        continue;
      }
      for (let i = 0; i < p.batch.shape[0]; i++) {
        await sink.add({ position: p.position, file: p.file, input: p.batch.labels[i] ?? p.file, ok: true, result: results[r++] as R });
      }
    }
    done += pending.length;
    progress.update(done, pending.at(-1)?.file);
    pending = [];
    rows = 0;
  };
  try {
    // The next batch's inputs are read and preprocessed while this one runs its forward.
    const load = async ({ item: file, position }: ShardEntry<string>): Promise<Pending> => {
      try {
        return {
          position,
          file,
          batch: await spec.model.loadInputs([file], spec.inputKey === undefined ? {} : { inputKey: spec.inputKey }),
        };
      } catch (err) {
        const pe = toPrismaError(err);
        return { position, file, error: { code: pe.code, message: pe.message } };
      }
    };
    for await (const loaded of prefetch(spec.entries, Math.min(64, maxRows + 1), load)) {
      pending.push(loaded);
      if ('batch' in loaded) rows += loaded.batch.shape[0];
      if (rows >= maxRows) await flush();
    }
    await flush();
  } finally {
    progress.stop();
  }
}

/** Rows of one tensor appended to a temporary file as batches finish. */
class RowSpill {
  private file: FileHandle | undefined;
  private bytes = 0;
  rows = 0;

  constructor(
    readonly name: string,
    readonly rowValues: number,
    readonly path: string,
  ) {}

  async append(data: Float32Array): Promise<void> {
    try {
      this.file ??= await open(this.path, 'w+');
      const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      await this.file.write(view, 0, view.length, this.bytes);
    } catch (err) {
      throw cannotWrite(this.path, err);
    }
    this.bytes += data.byteLength;
    this.rows += this.rowValues === 0 ? 0 : data.length / this.rowValues;
  }

  /** Copies every row into `writer`'s tensor, a run of rows at a time. */
  async copyTo(writer: SafetensorsWriter): Promise<void> {
    if (!this.file) return;
    const rowBytes = this.rowValues * 4;
    const perChunk = Math.max(1, Math.floor((16 * 2 ** 20) / Math.max(1, rowBytes)));
    for (let at = 0; at < this.rows; at += perChunk) {
      const n = Math.min(perChunk, this.rows - at);
      const buf = Buffer.alloc(n * rowBytes);
      await this.file.read(buf, 0, buf.length, at * rowBytes);
      await writer.writeRows(this.name, at, new Float32Array(buf.buffer, buf.byteOffset, n * this.rowValues));
    }
  }

  async remove(): Promise<void> {
    await this.file?.close().catch(() => {});
    await unlink(this.path).catch(() => {});
  }
}

export interface RecordedTensor {
  name: string;
  /** Without the row axis when `perInput`. */
  shape: number[];
  perInput: boolean;
}

/**
 * `prisma run`'s activations in a folder job: per-input tensors' rows spilled as they come, other
 * tensors (the same for every input) kept from the first batch; `finish` writes the .safetensors
 * file with exactly the rows of the inputs that succeeded (none: no file, as nothing was recorded).
 */
export class ActivationSpill {
  private spills = new Map<string, RowSpill>();
  private fixed = new Map<string, Float32Array>();

  constructor(
    private readonly path: string,
    private readonly tensors: readonly RecordedTensor[],
  ) {
    for (const t of tensors) {
      if (t.perInput) this.spills.set(t.name, new RowSpill(t.name, numel(t.shape), tempPathFor(join(dirname(path), `rows-${t.name}`))));
    }
  }

  async add(name: string, data: Float32Array): Promise<void> {
    const spill = this.spills.get(name);
    if (spill) await spill.append(data);
    else if (!this.fixed.has(name)) this.fixed.set(name, data.slice());
  }

  async finish(metadata: Record<string, string>): Promise<boolean> {
    const rows = Math.min(...[...this.spills.values()].map((s) => s.rows));
    if (!Number.isFinite(rows) || rows === 0) return false;
    const writer = new SafetensorsWriter(
      this.path,
      this.tensors.map((t) => ({ name: t.name, shape: t.perInput ? [rows, ...t.shape] : t.shape })),
      metadata,
    );
    try {
      await writer.open();
      for (const t of this.tensors) {
        const spill = this.spills.get(t.name);
        if (spill) await spill.copyTo(writer);
        else {
          const data = this.fixed.get(t.name);
          if (!data) throw new PrismaError('E_INTERNAL', `no values recorded for '${t.name}'`);
          await writer.writeRows(t.name, 0, data);
        }
      }
      await writer.finish();
    } catch (err) {
      await writer.abort();
      throw err;
    }
    return true;
  }

  /** Removes the temporary row files (always, after `finish` or on failure). */
  async remove(): Promise<void> {
    await Promise.all([...this.spills.values()].map((s) => s.remove()));
  }

  /** For a process about to end on a signal. */
  removeSync(): void {
    for (const s of this.spills.values()) {
      try {
        unlinkSync(s.path);
      } catch {
        // not there
      }
    }
  }
}
