/** File helpers shared by the dataset writers: atomic writes and a small ordered task pool. */
import { makeDir } from '../report/write.js';

// Atomic writes are the report writer's; dataset code imports them from here.
export { writeFileAtomic, writeJsonAtomic } from '../report/write.js';

/** One compact JSON document per line. */
export function jsonLines(values: readonly unknown[]): string {
  return values.map((v) => `${JSON.stringify(v)}\n`).join('');
}

export async function ensureDir(path: string): Promise<void> {
  await makeDir(path);
}

/** `000042` style file stems. */
export function stem(index: number): string {
  return String(index).padStart(6, '0');
}

/**
 * Run `task(i)` for i in [0, n) with at most `limit` in flight; results come back in index order.
 * Work is independent per index, so the outputs do not depend on scheduling.
 */
export async function mapPool<T>(n: number, limit: number, task: (i: number) => Promise<T>, onDone?: (done: number) => void): Promise<T[]> {
  const out = new Array<T>(n);
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      out[i] = await task(i);
      done++;
      onDone?.(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
  return out;
}
