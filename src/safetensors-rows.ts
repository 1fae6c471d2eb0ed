/**
 * Reading a .safetensors file's header and copying whole rows (batch entries) of its F32 tensors
 * into a `SafetensorsWriter`, a run of rows at a time: how `prisma merge` puts shards' activations
 * back in input order, and how a run drops the rows of inputs that failed, without holding a tensor.
 */
import { open, type FileHandle } from 'node:fs/promises';

import { PrismaError } from './errors.js';
import type { SafetensorsWriter } from './safetensors-writer.js';
import { numel } from './tensor.js';

export interface StoredTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte offset of the data from the start of the file. */
  start: number;
  /** Values per row. */
  rowValues: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, StoredTensor>;
  metadata: Record<string, string>;
}

/** Parses the header of an open .safetensors file. */
export async function readHeader(file: FileHandle, path: string): Promise<SafetensorsHeader> {
  const bad = (why: string) => new PrismaError('E_TENSOR_FILE', `${path}: ${why}`);
  const prefix = Buffer.alloc(8);
  const { bytesRead } = await file.read(prefix, 0, 8, 0);
  if (bytesRead < 8) throw bad('too short for a safetensors header');
  const length = Number(prefix.readBigUInt64LE(0));
  if (length > 100 * 2 ** 20) throw bad(`header of ${length} bytes`);
  const json = Buffer.alloc(length);
  if ((await file.read(json, 0, length, 8)).bytesRead < length) throw bad('header cut short');
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(json.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('header is not JSON');
  }
  const tensors = new Map<string, StoredTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(doc)) {
    if (name === '__metadata__') {
      metadata = value as Record<string, string>;
      continue;
    }
    const t = value as { dtype: string; shape: number[]; data_offsets: [number, number] };
    tensors.set(name, { name, dtype: t.dtype, shape: t.shape, start: 8 + length + t.data_offsets[0], rowValues: numel(t.shape.slice(1)) });
  }
  return { tensors, metadata };
}

export async function openTensorFile(path: string): Promise<{ file: FileHandle; header: SafetensorsHeader }> {
  let file: FileHandle;
  try {
    file = await open(path, 'r');
  } catch (err) {
    throw new PrismaError('E_IO', `cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    return { file, header: await readHeader(file, path) };
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Rows copied at most at once (bytes), so a copy never holds much of a tensor. */
const CHUNK_BYTES = 16 * 2 ** 20;

/**
 * Copies rows `[from, from + count)` of tensor `t` in `file` to rows `[to, to + count)` of the same
 * tensor in `writer`.
 */
export async function copyRows(
  file: FileHandle,
  t: StoredTensor,
  from: number,
  count: number,
  writer: SafetensorsWriter,
  to: number,
): Promise<void> {
  const rowBytes = t.rowValues * 4;
  const perChunk = Math.max(1, Math.floor(CHUNK_BYTES / Math.max(1, rowBytes)));
  for (let done = 0; done < count; done += perChunk) {
    const rows = Math.min(perChunk, count - done);
    const bytes = Buffer.alloc(rows * rowBytes);
    const { bytesRead } = await file.read(bytes, 0, bytes.length, t.start + (from + done) * rowBytes);
    if (bytesRead < bytes.length) throw new PrismaError('E_TENSOR_FILE', `tensor '${t.name}' is cut short`);
    await writer.writeRows(t.name, to + done, new Float32Array(bytes.buffer, bytes.byteOffset, rows * t.rowValues));
  }
}
