// --device on every command that runs a model, and one E_DEVICE line (plus its hint) when the GPU
// asked for is not usable (this machine has none). Every command of `prisma --help` is either in
// MODEL_COMMANDS or in NO_MODEL with the reason it takes no device, so a new one must be placed.
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXTURES, prisma, requireBuilt, stderrLines } from '../helpers/cli.js';

const vit = `${FIXTURES}/models/vit-tiny-cls`;
const clip = `${FIXTURES}/models/clip-tiny`;
const a = `${FIXTURES}/images/chelsea.jpg`;
const b = `${FIXTURES}/images/coffee.png`;
const demoOut = join(tmpdir(), `prisma-device-demo-${process.pid}`);

/** Each command with arguments that pass its own checks, so the device is what fails. */
const MODEL_COMMANDS: Record<string, string[]> = {
  inspect: [vit],
  run: [vit, a],
  classify: [clip, a, '--labels', 'red,blue'],
  'logit-lens': [vit, a],
  patch: [vit, '--clean', a, '--corrupt', b, '--what', 'resid_pre', '--by', 'layer,pos'],
  heads: [vit, a],
  dla: [vit, a],
  ablate: [vit, a, '--ablate', 'blocks.0.attn.hook_z[head=1]'],
  demo: ['--out', demoOut],
  'sae cache': [vit, a, '--hook', 'blocks.0.hook_resid_post', '--out', join(tmpdir(), `prisma-device-sae-${process.pid}`)],
  'sae train': [vit, a, '--hook', 'blocks.0.hook_resid_post', '--out', join(tmpdir(), `prisma-device-sae-train-${process.pid}`)],
  'sae eval': [vit, `${FIXTURES}/sae/saelens/topk`, a, '--out', join(tmpdir(), `prisma-device-sae-eval-${process.pid}`)],
};

const NO_MODEL: Record<string, string> = {
  merge: 'combines shard folders; runs no model',
  'dataset clevr-lite': 'draws synthetic scenes; runs no model',
  'dataset patch-labels': "reads only a model's config",
  'dataset fashion-mnist': 'exports images; runs no model',
  'sae cache-merge': 'combines finished caches; runs no model',
  'sae convert': 'rewrites an SAE file as a SAELens folder; runs no model',
  'sae inspect': "reads an SAE's config and weights; runs no model",
  doctor: 'reports on the set-up (including whether CUDA is usable)',
  setup: 'sets up libtorch and the addon',
  train: "the core's trainer (crates/prisma-core/src/training) builds and steps its models on the CPU only",
};

describe('--device', () => {
  it('every command is classified as running a model or not', () => {
    requireBuilt();
    const names = (help: string) =>
      [...(help.split('Commands:')[1]?.split('Examples:')[0] ?? '').matchAll(/^\s{2}([a-z-]+)/gm)]
        .map((m) => m[1]!)
        .filter((c) => c !== 'help');
    const commands = names(prisma(['--help']).stdout).flatMap((c) => {
      const subs = names(prisma([c, '--help']).stdout);
      return subs.length > 0 ? subs.map((s) => `${c} ${s}`) : [c];
    });
    expect(commands.length).toBeGreaterThan(15);
    for (const c of commands) expect(c in MODEL_COMMANDS || c in NO_MODEL, `${c} is in neither list`).toBe(true);
  }, 300_000);

  for (const [command, args] of Object.entries(MODEL_COMMANDS)) {
    it(`${command} takes --device, and cuda without a usable GPU is one E_DEVICE line`, () => {
      requireBuilt();
      const words = command.split(' ');
      expect(prisma([...words, '--help']).stdout).toMatch(/--device <device>/);
      const r = prisma([...words, ...args, '--device', 'cuda']);
      // The error line and its hint, nothing else (no stack, no half-written output).
      expect(stderrLines(r)).toEqual([
        expect.stringMatching(/^prisma: E_DEVICE: device 'cuda' requested but CUDA is not available \(libtorch .*\)$/),
        expect.stringMatching(/^hint: use --device cpu/),
      ]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      if (command === 'demo') expect(existsSync(demoOut), 'the report folder is left alone').toBe(false);
    }, 180_000);
  }
});
