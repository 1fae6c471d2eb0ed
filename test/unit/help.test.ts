// `--help` for every command (issue 21, item 13): examples, mandatory options marked, each default
// stated once, the shared model options under their own heading after the command's own, and the
// examples' flags are real options of their command (quoted where the shell would expand them).
import { describe, expect, it } from 'vitest';

import type { Command } from 'commander';

import { buildProgram, runCli } from '../../src/cli/main.js';
import { EXAMPLES } from '../../src/cli/help.js';
import { memoryIo } from '../helpers/io.js';

function commands(): { path: string; cmd: Command }[] {
  const io = memoryIo();
  const program = buildProgram({ io, json: false });
  const out: { path: string; cmd: Command }[] = [];
  const visit = (cmd: Command, prefix: string) => {
    for (const sub of cmd.commands) {
      if (sub.name() === 'help') continue;
      const path = `${prefix}${sub.name()}`;
      out.push({ path, cmd: sub });
      visit(sub, `${path} `);
    }
  };
  visit(program, '');
  return out;
}

async function help(path: string): Promise<string> {
  const io = memoryIo();
  expect(await runCli([...path.split(' '), '--help'], io)).toBe(0);
  return io.out();
}

const ALL = commands();

describe('--help', () => {
  it.each(ALL.map((c) => c.path))('%s: examples whose flags are its own options', async (path) => {
    const text = await help(path);
    const examples = EXAMPLES[path];
    expect(examples, `no examples for ${path}`).toBeDefined();
    expect(text).toContain('\nExamples:\n');
    for (const example of examples!) {
      // the prisma part of the example (after a pipe), without its comment
      const call = example.split('#')[0]!.split('| ').at(-1)!.trim();
      expect(call === `prisma ${path}` || call.startsWith(`prisma ${path} `), example).toBe(true);
      // the command the example runs (a parent's example names a subcommand)
      const words = call.split(/\s+/).slice(1);
      let target = ALL.find((c) => c.path === words[0])!;
      if (ALL.some((c) => c.path === `${words[0]} ${words[1]}`)) target = ALL.find((c) => c.path === `${words[0]} ${words[1]}`)!;
      const flags = new Set(target.cmd.options.flatMap((o) => [o.long, o.short].filter((f): f is string => f !== undefined)));
      for (const flag of call.match(/(?<=\s)--?[a-z][\w-]*/g) ?? []) expect(flags, `${path}: ${flag}`).toContain(flag);
      // brackets, pipes and globs in an argument must be quoted, or the shell takes them
      const unquoted = example
        .replace(/'[^']*'|"[^"]*"/g, "''")
        .split('#')[0]!
        .replace(/\|\s*prisma/, '');
      expect(unquoted, `${path}: unquoted shell syntax in ${example}`).not.toMatch(/[[\]*?|]/);
    }
  });

  it.each(ALL.map((c) => c.path))('%s: mandatory options say (required); no default is stated twice', async (path) => {
    const text = await help(path);
    const cmd = ALL.find((c) => c.path === path)!.cmd;
    const section = text.split('\nExamples:')[0]!;
    for (const o of cmd.options.filter((x) => x.mandatory)) {
      const entry = section.split(/\n(?= {2}-)/).find((e) => e.trimStart().startsWith(o.flags))!;
      expect(entry.replace(/\s+/g, ' '), o.flags).toMatch(/\(required\)$/);
    }
    for (const entry of section.split(/\n(?= {2}-)/)) expect(entry.match(/default/gi)?.length ?? 0, entry).toBeLessThanOrEqual(1);
  });

  it('patch marks --what and --by as required, and --clean/--corrupt as required unless --pairs', async () => {
    const text = (await help('patch')).replace(/\s+/g, ' ');
    for (const flag of ['--what <site>', '--by <axes>']) {
      expect(text).toMatch(new RegExp(`${flag.replace(/[<>]/g, '.')} [^-]*\\(required\\)`));
    }
    for (const flag of ['--clean <image>', '--corrupt <image>']) {
      expect(text).toMatch(new RegExp(`${flag.replace(/[<>]/g, '.')} .*?\\(required unless --pairs\\)`));
    }
  });

  it("model options come after the command's own, under their heading", async () => {
    const text = await help('logit-lens');
    expect(text.indexOf('\nModel options:\n')).toBeGreaterThan(text.indexOf('--site'));
    expect(text.indexOf('--device')).toBeGreaterThan(text.indexOf('\nModel options:\n'));
  });

  it("heads --query states its default and takes the reports' token names", async () => {
    const text = (await help('heads')).replace(/\s+/g, ' ');
    expect(text).toContain('(r2c3)');
    expect(text).toContain('(default: cls; patch 0 without a class token)');
  });
});
