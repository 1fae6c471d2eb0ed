/**
 * `formatJson`'s layout written piece by piece, for reports too large to hold: a field may be a
 * `StreamedArray` (its objects are produced one at a time, e.g. read back from disk) or a `Later`
 * value (computed when the writer reaches it, after the arrays before it were streamed: totals).
 * The bytes are exactly `formatJson` of the same document held in memory.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

import { PrismaError } from '../errors.js';
import { formatJson } from './json.js';
import { cannotWrite, tempPathFor } from './write.js';

/** An array of objects produced on demand; `items` may be called more than once. */
export class StreamedArray<T extends object = object> {
  constructor(readonly items: () => AsyncIterable<T>) {}
}

/** A value computed when the writer reaches its field (undefined: the field is left out). */
export class Later<T = unknown> {
  constructor(readonly value: () => T | Promise<T>) {}
}

export type Sink = (chunk: string) => void | Promise<void>;

/** Writes `value` as `formatJson(value, indent)` would lay it out, in pieces, to `sink`. */
export async function writeJsonStream(value: unknown, sink: Sink, indent = ''): Promise<void> {
  if (value instanceof Later) {
    await writeJsonStream(await value.value(), sink, indent);
    return;
  }
  const inner = `${indent}  `;
  if (value instanceof StreamedArray) {
    let first = true;
    for await (const item of value.items()) {
      if (item === null || typeof item !== 'object') throw new PrismaError('E_INTERNAL', 'a streamed report array holds a non-object');
      await sink(`${first ? '[\n' : ',\n'}${inner}`);
      await writeJsonStream(item, sink, inner);
      first = false;
    }
    await sink(first ? '[]' : `\n${indent}]`);
    return;
  }
  if (!hasStreamedParts(value)) {
    await sink(formatJson(value, indent));
    return;
  }
  if (Array.isArray(value)) {
    // Only arrays of objects hold streamed parts (hasStreamedParts), so this is the multi-line form.
    await sink('[\n');
    for (const [i, v] of value.entries()) {
      await sink(`${i > 0 ? ',\n' : ''}${inner}`);
      await writeJsonStream(v, sink, inner);
    }
    await sink(`\n${indent}]`);
    return;
  }
  let first = true;
  for (const [k, raw] of Object.entries(value as Record<string, unknown>)) {
    const v = raw instanceof Later ? await raw.value() : raw;
    if (v === undefined || typeof v === 'function') continue;
    await sink(`${first ? '{\n' : ',\n'}${inner}${JSON.stringify(k)}: `);
    await writeJsonStream(v, sink, inner);
    first = false;
  }
  await sink(first ? '{}' : `\n${indent}}`);
}

function hasStreamedParts(value: unknown): boolean {
  if (value instanceof StreamedArray || value instanceof Later) return true;
  if (value === null || typeof value !== 'object') return false;
  return Object.values(value as Record<string, unknown>).some(hasStreamedParts);
}

/** A sink into a file stream that waits when the stream's buffer is full. */
function streamSink(stream: WriteStream): Sink {
  return (chunk) =>
    stream.write(chunk)
      ? undefined
      : new Promise<void>((resolve, reject) => {
          const onError = (err: Error) => reject(err);
          stream.once('error', onError);
          stream.once('drain', () => {
            stream.off('error', onError);
            resolve();
          });
        });
}

/** `writeJsonAtomic` for a document with streamed parts: the same bytes, never the whole text in memory. */
export async function writeJsonStreamAtomic(path: string, value: unknown): Promise<void> {
  const tmp = tempPathFor(path);
  let stream: WriteStream | undefined;
  try {
    await mkdir(dirname(path), { recursive: true });
    stream = createWriteStream(tmp);
    const opened = stream;
    const failed = new Promise<never>((_, reject) => opened.once('error', reject));
    failed.catch(() => {});
    const sink = streamSink(opened);
    await Promise.race([
      (async () => {
        await writeJsonStream(value, sink);
        await sink('\n');
      })(),
      failed,
    ]);
    await new Promise<void>((resolve, reject) => opened.end((err?: Error | null) => (err ? reject(err) : resolve())));
    await rename(tmp, path);
  } catch (err) {
    if (stream && !stream.closed) await new Promise<void>((resolve) => stream!.destroy().once('close', () => resolve()));
    await unlink(tmp).catch(() => {});
    // File-system errors name the file; anything else (a failing item source) is passed on as it is.
    throw (err as NodeJS.ErrnoException).syscall === undefined ? err : cannotWrite(path, err);
  }
}

/**
 * The document with its streamed parts resolved (arrays gathered, `Later` values computed, fields
 * left out as `writeJsonStream` leaves them out): `formatJson` of it gives the streamed bytes.
 */
export async function resolveJson(value: unknown): Promise<unknown> {
  if (value instanceof Later) return resolveJson(await value.value());
  if (value instanceof StreamedArray) {
    const out: unknown[] = [];
    for await (const item of value.items()) out.push(await resolveJson(item));
    return out;
  }
  if (!hasStreamedParts(value)) return value;
  if (Array.isArray(value)) return Promise.all(value.map(resolveJson));
  const out: Record<string, unknown> = {};
  for (const [k, raw] of Object.entries(value as Record<string, unknown>)) {
    const v = await resolveJson(raw);
    if (v === undefined || typeof v === 'function') continue;
    out[k] = v;
  }
  return out;
}
