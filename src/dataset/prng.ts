/**
 * A small seeded PRNG for dataset generation (never `Math.random`): mulberry32 for the stream and
 * a splitmix-style 32-bit mixer to derive independent streams from (seed, image index, purpose),
 * so image i of a dataset is the same whatever `n` is, and optional extras (edits) never shift
 * the main stream. All arithmetic is on 32-bit integers, so results are identical on every platform.
 */

/** Mix 32-bit words into one well-scrambled 32-bit seed (murmur3 finaliser over a running hash). */
export function mixSeed(...words: number[]): number {
  let h = 0x9e3779b9;
  for (const w of words) {
    h = Math.imul(h ^ (w >>> 0), 0x85ebca6b);
    h = (h ^ (h >>> 13)) >>> 0;
    h = Math.imul(h, 0xc2b2ae35);
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h >>> 0;
}

/** A 32-bit hash of a short ASCII label, to name streams ('scene', 'edit', 'noise'). */
export function labelWord(label: string): number {
  let h = 0x811c9dc5; // FNV-1a
  for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** mulberry32: a uniform 32-bit unsigned integer. */
  nextU32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.nextU32() / 4294967296;
  }

  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!;
  }

  bool(p = 0.5): boolean {
    return this.float() < p;
  }
}

/** The stream for one purpose of one item of a seeded dataset. */
export function streamFor(seed: number, index: number, purpose: string): Rng {
  return new Rng(mixSeed(seed, index, labelWord(purpose)));
}
