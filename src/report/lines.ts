/**
 * One line of JSON per input: what `--jsonl` prints as each input finishes, and what a folder
 * job keeps in `OUT/results.jsonl`, from which its report is assembled (so the report never needs
 * every result in memory) and from which `prisma merge` puts shards back in order.
 *
 * A line is `{"position":P,"file":F,"input":I,"ok":true,...,"result":{...}}` or
 * `{"position":P,"file":F,"input":I,"ok":false,"error":{"code":"E_…","message":"…"}}`: P is the
 * file's place in the whole input list (the same in every shard), F the file, I the input's label
 * (`file[i]` for row i of a tensor file with several rows; those rows share P).
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createInterface } from 'node:readline';

import { PrismaError } from '../errors.js';
import type { Figure } from './figures.js';
import { cannotWrite, tempPathFor } from './write.js';

export interface LineError {
  code: string;
  message: string;
}

export interface OkLine<R = unknown> {
  position: number;
  file: string;
  input: string;
  ok: true;
  /** Short name for the input's figures (analysis commands). */
  name?: string;
  /** True when taken from an earlier run's record (--resume). */
  resumed?: true;
  result: R;
  /** Figures written for this input (with --out). */
  figures?: Figure[];
}

export interface ErrorLine {
  position: number;
  file: string;
  input: string;
  ok: false;
  error: LineError;
}

export type ResultLine<R = unknown> = OkLine<R> | ErrorLine;

/** The line's text (no newline). Field order is fixed, so the same outcome always gives the same bytes. */
export function formatLine(line: ResultLine): string {
  if (!line.ok) {
    const { position, file, input, error } = line;
    return JSON.stringify({ position, file, input, ok: false, error: { code: error.code, message: error.message } });
  }
  const { position, file, input, name, resumed, result, figures } = line;
  return JSON.stringify({ position, file, input, ok: true, name, resumed, result, figures });
}

/** Reads a results.jsonl file line by line (blank lines skipped). */
export async function* readLines<R = unknown>(path: string): AsyncGenerator<{ line: ResultLine<R>; text: string }> {
  const stream = createReadStream(path, { encoding: 'utf8' });
  const failed = new Promise<never>((_, reject) => stream.once('error', reject));
  failed.catch(() => {});
  const rl = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
  let n = 0;
  try {
    for await (const text of rl) {
      n += 1;
      if (text.trim().length === 0) continue;
      let line: ResultLine<R>;
      try {
        line = JSON.parse(text) as ResultLine<R>;
      } catch {
        throw new PrismaError('E_INPUT', `${path}:${n} is not a JSON line (the file is damaged or was cut short)`);
      }
      if (typeof line.position !== 'number' || typeof line.input !== 'string' || typeof line.ok !== 'boolean') {
        throw new PrismaError('E_INPUT', `${path}:${n} is not a result line (position, input, ok)`);
      }
      yield { line, text };
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).syscall !== undefined) {
      throw new PrismaError('E_IO', `cannot read ${path}: ${(err as Error).message}`, { cause: err });
    }
    throw err;
  } finally {
    rl.close();
    stream.destroy();
  }
}

/**
 * Lines of several position-ordered sources (shards) merged into position order. Each file is in
 * one source, so the lines of one position (a tensor file's rows) come from one source, in its order.
 * `onDisorder` is called when a source goes backwards or two sources hold the same position.
 */
export async function* mergeByPosition<T extends { line: ResultLine }>(
  sources: readonly AsyncIterable<T>[],
  onDisorder: (source: number, position: number) => Error,
): AsyncGenerator<T & { source: number }> {
  const its = sources.map((s) => s[Symbol.asyncIterator]());
  const heads: ({ value: T } | undefined)[] = await Promise.all(
    its.map(async (it) => {
      const r = await it.next();
      return r.done ? undefined : { value: r.value };
    }),
  );
  // A binary heap of source indexes keyed by their head line's position.
  const heap: number[] = [];
  const pos = (i: number) => heads[i]!.value.line.position;
  const less = (a: number, b: number) => pos(a) < pos(b) || (pos(a) === pos(b) && a < b);
  const up = (k: number) => {
    while (k > 0) {
      const p = (k - 1) >> 1;
      if (!less(heap[k]!, heap[p]!)) break;
      [heap[k], heap[p]] = [heap[p]!, heap[k]!];
      k = p;
    }
  };
  const down = (k: number) => {
    for (;;) {
      const l = 2 * k + 1;
      const r = l + 1;
      let m = k;
      if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
      if (m === k) return;
      [heap[k], heap[m]] = [heap[m]!, heap[k]!];
      k = m;
    }
  };
  heads.forEach((h, i) => {
    if (h) {
      heap.push(i);
      up(heap.length - 1);
    }
  });
  let last = -1;
  while (heap.length > 0) {
    const i = heap[0]!;
    const position = pos(i);
    if (position <= last) throw onDisorder(i, position);
    // Every line of this position from this source.
    while (heads[i] && heads[i]!.value.line.position === position) {
      yield { ...heads[i]!.value, source: i };
      const r = await its[i]!.next();
      if (r.done) {
        heads[i] = undefined;
      } else {
        if (r.value.line.position < position) throw onDisorder(i, r.value.line.position);
        heads[i] = { value: r.value };
      }
    }
    last = position;
    if (heads[i]) {
      down(0);
    } else {
      heap[0] = heap[heap.length - 1]!;
      heap.pop();
      if (heap.length > 0) down(0);
    }
  }
}

/**
 * Lines appended to a file as inputs finish: written under a temporary name and renamed by
 * `finish()`, so `results.jsonl` is only ever complete; `abort()` removes it.
 */
export class LinesFile {
  private readonly tmp: string;
  private stream: WriteStream | undefined;
  private failure: Error | undefined;

  constructor(readonly path: string) {
    this.tmp = tempPathFor(path);
  }

  async open(): Promise<void> {
    try {
      await mkdir(dirname(this.path), { recursive: true });
    } catch (err) {
      throw cannotWrite(this.path, err);
    }
    this.stream = createWriteStream(this.tmp);
    this.stream.on('error', (err) => {
      this.failure = err;
    });
  }

  async write(text: string): Promise<void> {
    if (this.failure) throw cannotWrite(this.path, this.failure);
    if (!this.stream) throw new PrismaError('E_INTERNAL', `${this.path}: write before open()`);
    if (!this.stream.write(`${text}\n`)) await new Promise<void>((resolve) => this.stream!.once('drain', () => resolve()));
  }

  async finish(): Promise<void> {
    const stream = this.stream;
    if (!stream) throw new PrismaError('E_INTERNAL', `${this.path}: finish before open()`);
    try {
      await new Promise<void>((resolve, reject) => stream.end((err?: Error | null) => (err ? reject(err) : resolve())));
      if (this.failure) throw this.failure;
      await rename(this.tmp, this.path);
    } catch (err) {
      await unlink(this.tmp).catch(() => {});
      throw cannotWrite(this.path, err);
    }
  }

  async abort(): Promise<void> {
    const stream = this.stream;
    if (stream && !stream.closed) await new Promise<void>((resolve) => stream.destroy().once('close', () => resolve()));
    await unlink(this.tmp).catch(() => {});
  }
}
