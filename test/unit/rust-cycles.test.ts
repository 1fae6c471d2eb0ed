// scripts/rust-cycles.mjs (run by scripts/check.mjs): it finds an import cycle injected into a small
// crate written here, in each way Rust names a module (crate::, super::, a child without self::, a
// path in an expression, a `pub use` re-export), ignores names in comments, strings and test
// modules, and passes this repository's crates.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
// @ts-expect-error: a plain .mjs script without type declarations
import { checkCrates, stripCommentsAndStrings } from '../../scripts/rust-cycles.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const script = join(root, 'scripts', 'rust-cycles.mjs');
const made: string[] = [];

/** A repository with one crate `demo` whose src/ holds `files` (path -> source). */
function repo(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'rust-cycles-'));
  made.push(dir);
  for (const [path, src] of Object.entries(files)) {
    const file = join(dir, 'crates', 'demo', 'src', path);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, src);
  }
  return dir;
}

type Result = { crates: { name: string; modules: number; cycles: { scc: string[]; path: string[] }[] }[] };
const cyclesOf = (dir: string) => (checkCrates(dir) as Result).crates[0].cycles;

afterEach(() => {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
});

// A crate with no cycle: a facade re-exporting its children, children using a sibling directly.
const acyclic = {
  'lib.rs': 'pub mod a;\npub mod b;\npub use a::Thing;\n',
  'a/mod.rs': 'mod inner;\npub use inner::Thing;\n',
  'a/inner.rs': 'use crate::b::helper;\npub struct Thing;\npub fn f() { helper() }\n',
  'b.rs': 'pub fn helper() {}\n',
};

describe('rust-cycles', () => {
  it('passes a crate without cycles', () => {
    expect(cyclesOf(repo(acyclic))).toEqual([]);
  });

  it.each([
    ['a use of crate::', 'use crate::a::Thing;\npub fn helper() {}\n'],
    ['a path in an expression', 'pub fn helper() { let _ = crate::a::inner::f; }\n'],
    ['a grouped, multi-line use', 'use crate::{\n    a::{inner::Thing},\n};\npub fn helper() {}\n'],
  ])('finds a cycle injected through %s', (_how, b) => {
    const cycles = cyclesOf(repo({ ...acyclic, 'b.rs': b }));
    expect(cycles).toHaveLength(1);
    expect(cycles[0].scc).toContain('crate::b');
    expect(cycles[0].scc).toContain('crate::a::inner');
    // The reported path starts and ends at the same module and follows real edges.
    expect(cycles[0].path[0]).toBe(cycles[0].path[cycles[0].path.length - 1]);
  });

  it('finds a parent and child that import each other (super:: and a child named without self::)', () => {
    const dir = repo({
      'lib.rs': 'pub mod hooks;\n',
      'hooks/mod.rs': 'mod ctx;\npub use ctx::Ctx;\npub struct Point;\n',
      'hooks/ctx.rs': 'use super::Point;\npub struct Ctx(Point);\n',
    });
    expect(cyclesOf(dir).map((c) => c.scc)).toEqual([['crate::hooks', 'crate::hooks::ctx']]);
  });

  it('reads no paths in comments, strings or test modules', () => {
    const b = [
      '// use crate::a::Thing;',
      '/* crate::a::inner::f() */',
      'pub fn helper() { let _s = "crate::a::Thing"; let _r = r#"use crate::a;"#; }',
      '#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n    fn t() { let _ = super::super::a::inner::f; }\n}',
    ].join('\n');
    expect(cyclesOf(repo({ ...acyclic, 'b.rs': b }))).toEqual([]);
    expect(stripCommentsAndStrings("let c = '\"'; // x\nuse a;")).toBe("let c = ' '; \nuse a;");
  });

  it('exits 1 and names the cycle on the command line; 0 on this repository', () => {
    const bad = spawnSync('node', [script, repo({ ...acyclic, 'b.rs': 'use crate::a::Thing;\n' })], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stdout).toMatch(/demo: import cycle crate::\S+ -> .*crate::b/);
    const here = spawnSync('node', [script, root], { encoding: 'utf8' });
    expect(here.stdout).toMatch(/prisma-core: \d+ modules, \d+ dependencies, 0 cycles/);
    expect(here.status).toBe(0);
  });
});
