/**
 * A .safetensors file written a batch of rows at a time, so that activations for a folder of
 * thousands of images never need to be in memory at once (`prisma run --out`). Each tensor's shape
 * is known up front ([N, ...] with N the number of inputs); rows land at their place in the file
 * with positional writes. The bytes are those of the addon's one-shot writer (`saveTensors`): the
 * same header (compact JSON, every object's keys sorted, space-padded to a multiple of 8) and the
 * tensors' data in name order, so either path gives the same file.
 *
 * The file is written under a temporary name in the destination's folder and renamed over it by
 * `finish()`; `abort()` (or a failed write) removes it, so an interrupted run leaves no partial file.
 */
import { unlinkSync } from 'node:fs';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';

import { PrismaError } from './errors.js';
import { cannotWrite, removeOrphanTemps, tempPathFor } from './report/write.js';
import { checkShape, formatShape, numel } from './tensor.js';

/** One tensor of the file: its name and full shape, batch axis first. */
export interface TensorSpec {
  name: string;
  shape: readonly number[];
}

interface Placement {
  shape: readonly number[];
  /** Byte offset of the tensor's data from the start of the file. */
  start: number;
  /** Values per row (one batch entry). */
  rowValues: number;
}

/** Keys sorted at every level, as the addon's writer leaves its header. */
function sortedKeys(value: unknown): unknown {
  if (Array.isArray(value) || value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(entries.map(([k, v]) => [k, sortedKeys(v)]));
}

/** The header bytes (length prefix included), where each tensor's data starts, and the file's size. */
function layout(
  specs: readonly TensorSpec[],
  metadata: Record<string, string>,
): { header: Buffer; placements: Map<string, Placement>; size: number } {
  const names = specs.map((s) => s.name);
  if (new Set(names).size !== names.length) throw new PrismaError('E_ARGUMENT', `duplicate tensor names in ${names.join(', ')}`);
  const ordered = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const entries: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) entries.__metadata__ = metadata;
  let offset = 0;
  // Each tensor's data offset from the end of the header, in `ordered`'s order.
  const starts = ordered.map((spec) => {
    checkShape(spec.name, spec.shape);
    // A row axis is needed: rows are what `writeRows` places.
    if (spec.shape.length === 0) throw new PrismaError('E_SHAPE', `tensor '${spec.name}' has an invalid shape ${formatShape(spec.shape)}`);
    const bytes = numel(spec.shape) * 4;
    const start = offset;
    entries[spec.name] = { dtype: 'F32', shape: [...spec.shape], data_offsets: [start, start + bytes] };
    offset += bytes;
    return start;
  });
  const json = Buffer.from(JSON.stringify(sortedKeys(entries)), 'utf8');
  const padded = json.length + ((8 - (json.length % 8)) % 8);
  const header = Buffer.alloc(8 + padded, ' ');
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  const placements = new Map(
    ordered.map((spec, i) => [spec.name, { shape: spec.shape, start: header.length + starts[i]!, rowValues: numel(spec.shape.slice(1)) }]),
  );
  return { header, placements, size: header.length + offset };
}

export class SafetensorsWriter {
  private readonly tmp: string;
  private readonly header: Buffer;
  private readonly placements: Map<string, Placement>;
  private readonly size: number;
  private file: FileHandle | undefined;

  /**
   * Plans the file (its header and where each tensor goes) and names its temporary file; nothing is
   * written until `open()`. From here on `discardSync()` knows what to remove.
   */
  constructor(
    private readonly path: string,
    specs: readonly TensorSpec[],
    metadata: Record<string, string> = {},
  ) {
    ({ header: this.header, placements: this.placements, size: this.size } = layout(specs, metadata));
    this.tmp = tempPathFor(path);
  }

  /** A writer with its file open: `new SafetensorsWriter(...)` then `open()`. */
  static async create(path: string, specs: readonly TensorSpec[], metadata: Record<string, string> = {}): Promise<SafetensorsWriter> {
    const writer = new SafetensorsWriter(path, specs, metadata);
    await writer.open();
    return writer;
  }

  /** Creates the temporary file with its header; every tensor's rows are then written with `writeRows`. */
  async open(): Promise<void> {
    await removeOrphanTemps(this.path);
    try {
      this.file = await open(this.tmp, 'w');
      await this.file.write(this.header, 0, this.header.length, 0);
      // The full length up front: a tensor with no rows written yet reads as zeros, not as a short file.
      await this.file.truncate(this.size);
    } catch (err) {
      await this.abort();
      throw cannotWrite(this.path, err);
    }
  }

  /** Writes `data` as rows `firstRow..` of tensor `name` (whole rows, row-major). */
  async writeRows(name: string, firstRow: number, data: Float32Array): Promise<void> {
    const p = this.placements.get(name);
    if (!p) throw new PrismaError('E_INTERNAL', `no tensor '${name}' in ${this.path}`);
    const rows = p.rowValues === 0 ? 0 : data.length / p.rowValues;
    if (!Number.isInteger(rows) || firstRow < 0 || firstRow + rows > (p.shape[0] ?? 0)) {
      throw new PrismaError('E_SHAPE', `tensor '${name}' ${formatShape(p.shape)}: cannot write ${data.length} values at row ${firstRow}`);
    }
    if (!this.file) throw new PrismaError('E_INTERNAL', `${this.path}: writeRows before open()`);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    try {
      await this.file.write(bytes, 0, bytes.length, p.start + firstRow * p.rowValues * 4);
    } catch (err) {
      await this.abort();
      throw cannotWrite(this.path, err);
    }
  }

  /** Closes the file and moves it to its destination. */
  async finish(): Promise<void> {
    if (!this.file) throw new PrismaError('E_INTERNAL', `${this.path}: finish before open()`);
    try {
      await this.file.close();
      await rename(this.tmp, this.path);
    } catch (err) {
      await unlink(this.tmp).catch(() => {});
      throw cannotWrite(this.path, err);
    }
  }

  /** Removes the temporary file at once, for a process about to end (see `cleanUpOnSignal`). */
  discardSync(): void {
    try {
      unlinkSync(this.tmp);
    } catch {
      // already gone
    }
  }

  /** Closes and removes the temporary file (idempotent). */
  async abort(): Promise<void> {
    await this.file?.close().catch(() => {});
    await unlink(this.tmp).catch(() => {});
  }
}
