/**
 * "Did you mean" for hook names: the nearest real names to a mistyped one, by edit distance
 * (Damerau: a swap of two neighbours is one edit), tried on the whole name and, for a glob, on its
 * literal parts with the wildcards filled from the real name.
 */
import { PrismaError } from './errors.js';

/** Optimal string alignment distance (Levenshtein plus adjacent transpositions). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/** A glob's `*` parts filled from `name` where they line up segment by segment, else the glob. */
function alignGlob(glob: string, name: string): string {
  const g = glob.split('.');
  const n = name.split('.');
  if (g.length !== n.length) return glob;
  return g.map((part, i) => (part.includes('*') ? n[i]! : part)).join('.');
}

/** Up to `max` real names at the smallest distance from `wanted` (at most a third of its length, at least 2). */
export function nearestHooks(wanted: string, names: readonly string[], max = 3): string[] {
  const limit = Math.max(2, Math.floor(wanted.length / 3));
  const scored = names
    .map((name) => ({ name, d: editDistance(alignGlob(wanted, name), name) }))
    .filter((s) => s.d <= limit)
    .sort((x, y) => x.d - y.d || (x.name < y.name ? -1 : 1))
    .filter((s, _, all) => s.d === all[0]!.d);
  // For a glob, suggest the glob with the fix rather than every layer's name.
  const out: string[] = [];
  for (const s of scored) {
    const shown = wanted.includes('*')
      ? wanted
          .split('.')
          .map((p, i) => (p.includes('*') ? p : (s.name.split('.')[i] ?? p)))
          .join('.')
      : s.name;
    if (!out.includes(shown)) out.push(shown);
    if (out.length === max) break;
  }
  return out;
}

/** An E_UNKNOWN_HOOK error with "did you mean ..." for the first pattern that has near names. */
export function withHookSuggestions(err: PrismaError, patterns: readonly string[], names: readonly string[]): PrismaError {
  if (err.code !== 'E_UNKNOWN_HOOK') return err;
  for (const p of patterns) {
    if (!err.message.includes(`'${p}'`)) continue;
    const near = nearestHooks(p, names);
    if (near.length > 0) {
      return new PrismaError(err.code, err.message, {
        hint: `did you mean ${near.map((n) => `'${n}'`).join(' or ')}? (\`prisma inspect MODEL\` lists every hook)`,
        cause: err,
        ...(err.data === undefined ? {} : { data: err.data }),
      });
    }
  }
  return err;
}
