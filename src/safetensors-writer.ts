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
import { randomBytes } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

import { PrismaError } from './errors.js';
import { TEMP_PREFIX } from './report/write.js';
import { formatShape, numel } from './tensor.js';

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

/** The header bytes (length prefix included) and where each tensor's data starts. */
function layout(specs: readonly TensorSpec[], metadata: Record<string, string>): { header: Buffer; placements: Map<string, Placement> } {
  const names = specs.map((s) => s.name);
  if (new Set(names).size !== names.length) throw new PrismaError('E_ARGUMENT', `duplicate tensor names in ${names.join(', ')}`);
  const ordered = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const entries: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) entries.__metadata__ = metadata;
  let offset = 0;
  const relative = new Map<string, [number, TensorSpec]>();
  for (const spec of ordered) {
    if (!spec.shape.every((d) => Number.isInteger(d) && d >= 0) || spec.shape.length === 0) {
      throw new PrismaError('E_SHAPE', `tensor '${spec.name}' has an invalid shape ${formatShape(spec.shape)}`);
    }
    const bytes = numel(spec.shape) * 4;
    entries[spec.name] = { dtype: 'F32', shape: [...spec.shape], data_offsets: [offset, offset + bytes] };
    relative.set(spec.name, [offset, spec]);
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(sortedKeys(entries)), 'utf8');
  const padded = Buffer.alloc(json.length + ((8 - (json.length % 8)) % 8), ' ');
  json.copy(padded);
  const header = Buffer.alloc(8 + padded.length);
  header.writeBigUInt64LE(BigInt(padded.length), 0);
  padded.copy(header, 8);
  const placements = new Map<string, Placement>();
  for (const [name, [start, spec]] of relative) {
    placements.set(name, { shape: spec.shape, start: header.length + start, rowValues: numel(spec.shape.slice(1)) });
  }
  return { header, placements };
}

export class SafetensorsWriter {
  private readonly tmp: string;
  private readonly header: Buffer;
  private readonly placements: Map<string, Placement>;
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
    ({ header: this.header, placements: this.placements } = layout(specs, metadata));
    this.tmp = join(dirname(path), `${TEMP_PREFIX}${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}`);
  }

  /** A writer with its file open: `new SafetensorsWriter(...)` then `open()`. */
  static async create(path: string, specs: readonly TensorSpec[], metadata: Record<string, string> = {}): Promise<SafetensorsWriter> {
    const writer = new SafetensorsWriter(path, specs, metadata);
    await writer.open();
    return writer;
  }

  /** Creates the temporary file with its header; every tensor's rows are then written with `writeRows`. */
  async open(): Promise<void> {
    await removeOrphans(this.path);
    try {
      this.file = await open(this.tmp, 'w');
      await this.file.write(this.header, 0, this.header.length, 0);
      const end = [...this.placements.values()].reduce((m, p) => Math.max(m, p.start + numel(p.shape) * 4), this.header.length);
      // The full length up front: a tensor with no rows written yet reads as zeros, not as a short file.
      await this.file.truncate(end);
    } catch (err) {
      await this.abort();
      throw ioError(this.path, err);
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
      throw ioError(this.path, err);
    }
  }

  /** Closes the file and moves it to its destination. */
  async finish(): Promise<void> {
    try {
      if (!this.file) throw new PrismaError('E_INTERNAL', `${this.path}: finish before open()`);
      await this.file.close();
      await rename(this.tmp, this.path);
    } catch (err) {
      await unlink(this.tmp).catch(() => {});
      throw ioError(this.path, err);
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

function ioError(path: string, err: unknown): PrismaError {
  if (err instanceof PrismaError) return err;
  return new PrismaError('E_IO', `cannot write ${path}: ${(err as Error).message ?? String(err)}`, { cause: err });
}

/**
 * Removes temporary files for `path` left by runs that were killed outright (SIGKILL, a crash):
 * those whose process is gone. A run writing the same file right now keeps its own.
 */
async function removeOrphans(path: string): Promise<void> {
  const prefix = `${TEMP_PREFIX}${basename(path)}.`;
  let names: string[];
  try {
    names = await readdir(dirname(path));
  } catch {
    return;
  }
  for (const name of names.filter((n) => n.startsWith(prefix))) {
    const pid = Number(name.slice(prefix.length).split('.')[0]);
    if (Number.isInteger(pid) && pid > 0 && !processAlive(pid)) await unlink(join(dirname(path), name)).catch(() => {});
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

