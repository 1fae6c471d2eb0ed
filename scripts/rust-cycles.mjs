#!/usr/bin/env node
// Fails when the modules of a Rust crate under crates/ import each other in a cycle. Run by
// scripts/check.mjs; `node scripts/rust-cycles.mjs [ROOT] [--print]` checks ROOT/crates/*/src
// (default: this repository) and with --print lists every module's dependencies.
//
// A module is a file (lib.rs is the crate, a/mod.rs and a.rs are `a`, a/b.rs is `a::b`); inline
// modules count as their file, and `#[cfg(test)]` modules are left out (as cargo-modules does by
// default). Module A depends on B when A's code names a path into B: a `use` of `crate::`, `super::`,
// `self::` or a child module (re-exports included), or such a path in an expression
// (`crate::weights::store::read(...)`). The path's longest prefix that is a module is the
// dependency; `pub mod b;` is ownership, not a dependency. Comments and string literals are skipped.
// Cycles are the strongly connected components of that graph with more than one module.
// cargo-modules' `dependencies --acyclic` does the same with rust-analyzer, but its current release
// needs a newer rustc than this project's and builds several hundred crates.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Source with comments, string and char literals blanked (newlines kept), so paths in them are not read. */
export function stripCommentsAndStrings(src) {
  let out = '';
  let i = 0;
  const n = src.length;
  while (i < n) {
    const c = src[i];
    const next = src[i + 1];
    if (c === '/' && next === '/') {
      while (i < n && src[i] !== '\n') i++;
    } else if (c === '/' && next === '*') {
      let depth = 0;
      do {
        if (src[i] === '/' && src[i + 1] === '*') {
          depth++;
          i += 2;
        } else if (src[i] === '*' && src[i + 1] === '/') {
          depth--;
          i += 2;
        } else {
          if (src[i] === '\n') out += '\n';
          i++;
        }
      } while (i < n && depth > 0);
    } else if (c === 'r' && /^r#*"/.test(src.slice(i, i + 260)) && !/[A-Za-z0-9_]/.test(src[i - 1] ?? '')) {
      // raw string r"..." / r#"..."#
      const hashes = /^r(#*)"/.exec(src.slice(i, i + 260))[1];
      const end = `"${hashes}`;
      const stop = src.indexOf(end, i + 2 + hashes.length);
      const to = stop < 0 ? n : stop + end.length;
      out += src.slice(i, to).replace(/[^\n]/g, ' ');
      i = to;
    } else if (c === '"') {
      i++;
      while (i < n && src[i] !== '"') {
        if (src[i] === '\\') i++;
        else if (src[i] === '\n') out += '\n';
        i++;
      }
      i++;
      out += '""';
    } else if (c === "'" && /^'(\\.|\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|[^\\'])'/.test(src.slice(i, i + 12))) {
      // a char literal (a lifetime like 'a has no closing quote)
      const m = /^'(\\.|\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|[^\\'])'/.exec(src.slice(i, i + 12));
      out += "' '";
      i += m[0].length;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** `code` with its `#[cfg(test)] mod x { ... }` blocks blanked: test code is not the crate's structure. */
export function stripTestModules(code) {
  let out = code;
  const open = /#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{/g;
  for (let m = open.exec(out); m; m = open.exec(out)) {
    let depth = 1;
    let i = m.index + m[0].length;
    while (i < out.length && depth > 0) {
      if (out[i] === '{') depth++;
      else if (out[i] === '}') depth--;
      i++;
    }
    out = out.slice(0, m.index) + out.slice(m.index, i).replace(/[^\n]/g, ' ') + out.slice(i);
    open.lastIndex = i;
  }
  return out;
}

/** Every .rs file below `srcDir` as [module path ('crate', 'crate::a::b'), file]. */
function moduleFiles(srcDir) {
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.rs')) files.push(p);
    }
  };
  walk(srcDir);
  const modules = new Map();
  for (const file of files) {
    const parts = relative(srcDir, file).split(sep);
    const last = parts.pop().replace(/\.rs$/, '');
    if (!(parts.length === 0 && (last === 'lib' || last === 'main')) && last !== 'mod') parts.push(last);
    if (parts.length === 0 && last === 'main' && existsSync(join(srcDir, 'lib.rs'))) continue; // a bin beside the lib
    if (parts.includes('bin')) continue;
    modules.set(['crate', ...parts].join('::'), file);
  }
  return modules;
}

/** Splits a `use` tree (`a::{b, c::d}`) into full paths. */
function expandUseTree(tree) {
  const t = tree.replace(/\s+/g, '');
  const brace = t.indexOf('{');
  if (brace < 0) return [t.replace(/::\*$/, '').replace(/\bas\w+$/, '')];
  const prefix = t.slice(0, brace);
  const inner = t.slice(brace + 1, t.lastIndexOf('}'));
  const items = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= inner.length; i++) {
    const ch = inner[i];
    if (ch === '{') depth++;
    else if (ch === '}') depth--;
    else if ((ch === ',' || i === inner.length) && depth === 0) {
      const item = inner.slice(start, i);
      if (item) items.push(item);
      start = i + 1;
    }
  }
  return items.flatMap((item) => expandUseTree(prefix + (item === 'self' ? '' : item)).map((p) => p.replace(/::$/, '')));
}

/**
 * The module dependency graph of one crate: Map<module, Set<module>>.
 * `srcDir` is the crate's src/ folder.
 */
export function crateGraph(srcDir) {
  const modules = moduleFiles(srcDir);
  const graph = new Map([...modules.keys()].map((m) => [m, new Set()]));
  // The module a path names: its longest prefix that is a module (a file here).
  const target = (segments) => {
    for (let k = segments.length; k > 0; k--) {
      const m = segments.slice(0, k).join('::');
      if (modules.has(m)) return m;
    }
    return undefined;
  };
  for (const [mod, file] of modules) {
    const code = stripTestModules(stripCommentsAndStrings(readFileSync(file, 'utf8')));
    const here = mod.split('::');
    // Inline modules: the depth of `mod x {` blocks at each offset, so `super::` inside `mod tests`
    // names the file's module.
    const inlineAt = [];
    const stack = [];
    let depth = 0;
    const inlineOpen = /\bmod\s+\w+\s*\{/y;
    for (let i = 0; i < code.length; i++) {
      inlineOpen.lastIndex = i;
      if (inlineOpen.test(code)) {
        stack.push(depth);
        depth++;
        i = inlineOpen.lastIndex - 1;
        inlineAt.push([i, stack.length]);
        continue;
      }
      if (code[i] === '{') depth++;
      else if (code[i] === '}') {
        depth--;
        if (stack.length && stack[stack.length - 1] === depth) {
          stack.pop();
          inlineAt.push([i, stack.length]);
        }
      }
    }
    const nestingAt = (offset) => {
      let level = 0;
      for (const [at, l] of inlineAt) {
        if (at > offset) break;
        level = l;
      }
      return level;
    };
    const resolvePath = (path, offset) => {
      const segs = path.split('::').filter(Boolean);
      if (segs.length === 0) return undefined;
      let base;
      let rest;
      if (segs[0] === 'crate') {
        base = ['crate'];
        rest = segs.slice(1);
      } else if (segs[0] === 'self' || segs[0] === 'super') {
        // Inside an inline module, `super` first climbs out of it to the file's module.
        let level = nestingAt(offset);
        base = [...here];
        rest = segs;
        if (rest[0] === 'self') rest = rest.slice(1);
        while (rest[0] === 'super') {
          if (level > 0) level--;
          else base = base.slice(0, -1);
          rest = rest.slice(1);
        }
      } else if (modules.has([...here, segs[0]].join('::'))) {
        base = [...here]; // a child module named without `self::`
        rest = segs;
      } else {
        return undefined; // another crate, std, or an item in scope
      }
      const t = target([...base, ...rest]);
      return t && t !== mod ? t : undefined;
    };
    // `use` declarations (possibly `pub use`, grouped, over several lines).
    for (const m of code.matchAll(/\buse\s+([^;]+);/g)) {
      for (const path of expandUseTree(m[1])) {
        const t = resolvePath(path, m.index);
        if (t) graph.get(mod).add(t);
      }
    }
    // Paths in expressions and types: crate::a::b, super::a, self::a.
    for (const m of code.matchAll(/(?<![\w:])((?:crate|super|self)(?:::(?:super|\w+))+)/g)) {
      const t = resolvePath(m[1], m.index);
      if (t) graph.get(mod).add(t);
    }
  }
  return graph;
}

/** Strongly connected components with more than one module (Tarjan), each sorted. */
export function findCycles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const onStack = new Set();
  const stack = [];
  const cycles = [];
  const visit = (v) => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const scc = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1) cycles.push(scc.sort());
    }
  };
  for (const v of [...graph.keys()].sort()) if (!idx.has(v)) visit(v);
  return cycles;
}

/** One path around a cycle, for the message: a -> b -> ... -> a. */
export function cyclePath(graph, scc) {
  const inScc = new Set(scc);
  const start = scc[0];
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length) {
    const v = queue.shift();
    for (const w of graph.get(v) ?? []) {
      if (!inScc.has(w)) continue;
      if (w === start) {
        const path = [start];
        for (let u = v; u !== start; u = prev.get(u)) path.splice(1, 0, u);
        return [...path, start];
      }
      if (!prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return scc;
}

/** Checks every crate under ROOT/crates; returns { crates: [{name, modules, edges, cycles}] }. */
export function checkCrates(root) {
  const cratesDir = join(root, 'crates');
  const crates = [];
  for (const name of readdirSync(cratesDir).sort()) {
    const src = join(cratesDir, name, 'src');
    if (!existsSync(src)) continue;
    const graph = crateGraph(src);
    const edges = [...graph.values()].reduce((a, s) => a + s.size, 0);
    crates.push({
      name,
      graph,
      modules: graph.size,
      edges,
      cycles: findCycles(graph).map((scc) => ({ scc, path: cyclePath(graph, scc) })),
    });
  }
  return { crates };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const root = resolve(args.find((a) => !a.startsWith('--')) ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
  const { crates } = checkCrates(root);
  let failed = false;
  for (const c of crates) {
    if (args.includes('--print')) {
      for (const [m, deps] of c.graph) process.stdout.write(`${m} -> ${[...deps].sort().join(', ') || '(none)'}\n`);
    }
    process.stdout.write(`[rust-cycles] ${c.name}: ${c.modules} modules, ${c.edges} dependencies, ${c.cycles.length} cycles\n`);
    for (const cycle of c.cycles) {
      failed = true;
      process.stdout.write(`[rust-cycles] ${c.name}: import cycle ${cycle.path.join(' -> ')} (modules in it: ${cycle.scc.join(', ')})\n`);
    }
  }
  process.exit(failed ? 1 : 0);
}
