/**
 * Ablation specs: `HOOK[key=val,...]`, e.g. `blocks.3.attn.hook_z[head=5]`,
 * `blocks.0.hook_resid_post[pos=1-4|9]`, `blocks.*.attn.hook_z[head=0,pos=0]`.
 *
 *   spec  := hook ( '[' pair ( ',' pair )* ']' )?
 *   pair  := ('head' | 'pos' | 'batch' | 'feature') '=' list     (feature: a spliced SAE's hook_sae_acts_*)
 *   list  := item ( '|' item )*
 *   item  := int | int '-' int          (an inclusive range)
 *
 * A small hand-written scanner (no regular expressions); the hook name itself is checked
 * against the model with `model.matchHooks`, which also expands globs.
 */
import { PrismaError } from '../errors.js';
import type { Select } from '../interventions.js';

export const SELECT_KEYS = ['head', 'pos', 'batch', 'feature'] as const;
export type SelectKey = (typeof SELECT_KEYS)[number];

export interface AblateSpec {
  /** The text as given. */
  text: string;
  /** Hook name or glob. */
  hook: string;
  select: Select;
}

class Scanner {
  i = 0;
  constructor(readonly s: string) {}

  fail(message: string): never {
    throw new PrismaError('E_USAGE', `--ablate '${this.s}': ${message} (at character ${this.i + 1})`, {
      hint: "write HOOK or HOOK[head=1|2,pos=0-3], e.g. 'blocks.0.attn.hook_z[head=1]'",
    });
  }
  peek(): string | undefined {
    return this.s[this.i];
  }
  done(): boolean {
    return this.i >= this.s.length;
  }
  spaces(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.i++;
  }
  expect(ch: string): void {
    this.spaces();
    if (this.peek() !== ch) this.fail(this.done() ? `expected '${ch}' at the end` : `expected '${ch}', found '${this.peek()}'`);
    this.i++;
  }
  word(): string {
    this.spaces();
    const start = this.i;
    while (!this.done()) {
      const c = this.peek()!;
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c === '_')) break;
      this.i++;
    }
    return this.s.slice(start, this.i);
  }
  int(): number {
    this.spaces();
    const start = this.i;
    while (!this.done() && this.peek()! >= '0' && this.peek()! <= '9') this.i++;
    if (start === this.i) this.fail(this.done() ? 'expected a number at the end' : `expected a number, found '${this.peek()}'`);
    const v = Number.parseInt(this.s.slice(start, this.i), 10);
    if (!Number.isSafeInteger(v)) this.fail('number too large');
    return v;
  }
}

const MAX_RANGE = 1 << 16;

function list(sc: Scanner): number[] {
  const out: number[] = [];
  for (;;) {
    const a = sc.int();
    sc.spaces();
    if (sc.peek() === '-') {
      sc.i++;
      const b = sc.int();
      if (b < a) sc.fail(`range ${a}-${b} runs backwards`);
      if (b - a > MAX_RANGE) sc.fail(`range ${a}-${b} is too long`);
      for (let v = a; v <= b; v++) out.push(v);
    } else {
      out.push(a);
    }
    sc.spaces();
    if (sc.peek() !== '|') break;
    sc.i++;
  }
  return [...new Set(out)].sort((x, y) => x - y);
}

export function parseAblateSpec(text: string): AblateSpec {
  const sc = new Scanner(text.trim());
  const start = sc.i;
  while (!sc.done() && sc.peek() !== '[' && sc.peek() !== ' ') sc.i++;
  const hook = sc.s.slice(start, sc.i);
  if (hook.length === 0) sc.fail('expected a hook name');
  const select: Select = {};
  sc.spaces();
  if (!sc.done()) {
    sc.expect('[');
    for (;;) {
      const key = sc.word();
      if (key.length === 0)
        sc.fail(sc.done() ? "expected 'head', 'pos' or 'batch' at the end" : `expected 'head', 'pos' or 'batch', found '${sc.peek()}'`);
      if (!(SELECT_KEYS as readonly string[]).includes(key)) {
        sc.i -= key.length;
        sc.fail(`unknown key '${key}' (use head, pos, batch or feature)`);
      }
      if (select[key as SelectKey] !== undefined) {
        sc.i -= key.length;
        sc.fail(`'${key}' is given twice`);
      }
      sc.expect('=');
      select[key as SelectKey] = list(sc);
      sc.spaces();
      if (sc.peek() === ',') {
        sc.i++;
        continue;
      }
      sc.expect(']');
      break;
    }
    sc.spaces();
    if (!sc.done()) sc.fail(`unexpected '${sc.s.slice(sc.i)}' after ']'`);
  }
  return { text, hook, select };
}

/** The spec back as text (canonical spacing and order). */
export function formatAblateSpec(spec: Pick<AblateSpec, 'hook' | 'select'>): string {
  const parts = SELECT_KEYS.filter((k) => spec.select[k] !== undefined).map((k) => `${k}=${spec.select[k]!.join('|')}`);
  return parts.length > 0 ? `${spec.hook}[${parts.join(',')}]` : spec.hook;
}
