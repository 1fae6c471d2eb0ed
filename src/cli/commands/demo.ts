/**
 * `prisma demo [--out DIR] [--device cuda]`: the README's main command. On the shipped toy models (a ViT trained on
 * clevr-lite to name the colour of the largest object, and one trained on Fashion-MNIST) it runs
 * activation patching, attribution patching, the logit lens, attention heads and DLA, and writes a
 * report folder with index.html, every figure, and a summary whose sentences come from the numbers.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';

import { type Command, Option } from 'commander';

import { printJson, type CommandContext } from '../context.js';
import { PrismaError } from '../../errors.js';
import { loadModel } from '../../model.js';
import { pickPair } from '../../demo/pick.js';
import { dlaStory, lensStory, patchingStory } from '../../demo/story.js';
import { makeDirSync, writeFileAtomic as writeAtomic } from '../../report/write.js';
import { dlaCommand } from './dla.js';
import { headsCommand } from './heads.js';
import { logitLensCommand } from './logit-lens.js';
import { patchCommand } from './patch.js';
import type { ReportBase } from './analysis.js';
import { deviceOption, jsonOption } from './common.js';
import { PACKAGE_ROOT } from '../../version.js';

export const DEMO_MODELS = {
  clevr: join(PACKAGE_ROOT, 'models', 'clevr-vit'),
  fashion: join(PACKAGE_ROOT, 'models', 'fashion-mnist-vit'),
  clip: join(PACKAGE_ROOT, 'models', 'clevr-clip'),
};
/** The toy CLIP's zero-shot prompts (its MODEL_CARD). */
const CLIP_TEMPLATE = 'a large {}';
/** The first 8 Fashion-MNIST test images (`prisma dataset fashion-mnist --n 8`), shipped with the package. */
const FASHION_IMAGES = join(PACKAGE_ROOT, 'demo-data', 'fashion-mnist');
const DEMO_SEED = 2026;

export interface DemoOptions {
  out: string;
  /** Where the models run (default cpu); the sections' commands carry it when it is not the CPU. */
  device?: string;
  json?: boolean;
}

export interface DemoSummary {
  ok: true;
  schemaVersion: 1;
  out: string;
  index: string;
  sections: DemoSection[];
}

export interface DemoSection {
  title: string;
  /** The `prisma ...` command that writes this section's report (paths as the demo used them). */
  command: string;
  lines: string[];
  report: string;
  figures: { path: string; caption: string }[];
}

/** What each kind of figure shows, for captions (a file name says little). */
const CAPTIONS: Record<string, string> = {
  'patch-overlay': 'normalised patching effect per layer, over the clean image',
  'patch-matrix': 'normalised patching effect, layer x token position',
  'patch-heads': 'normalised patching effect, layer x head',
  'patch-scatter': 'exact vs attribution patching, one point per patch',
  'lens-prob': "the lens's probability of the target class, per layer",
  'lens-patches': 'the lens read at every patch, per layer',
  'heads-grid': 'attention from the class token, every layer and head',
  'heads-rollout': 'attention rollout from the class token through all layers',
  'heads-head': "one head's attention from the class token",
  'heads-html': 'interactive viewer of the heads',
  'dla-components': 'direct contribution of each component to the logit',
  'dla-heads': 'direct contribution of each head, layer x head',
  'dla-top-heads': 'where the strongest heads attend',
  'ablate-effect': 'effect of the ablation on the logit',
  'ablate-heads': 'effect of ablating each head, layer x head',
};

const quote = (s: string) => (/^[\w./,:=@+-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);

const escapeHtml = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

function indexHtml(summary: Omit<DemoSummary, 'index'>, pair: { clean: string; corrupt: string }): string {
  const sections = summary.sections
    .map(
      (
        s,
      ) => `<section><h2>${escapeHtml(s.title)}</h2><pre class="cmd">$ ${escapeHtml(s.command)}</pre>${s.lines.map((l) => `<p>${escapeHtml(l)}</p>`).join('')}
<p class="meta">report: <a href="${escapeHtml(s.report)}">${escapeHtml(s.report)}</a></p>
<div class="figs">${s.figures
        .map((f) =>
          f.path.endsWith('.html')
            ? `<p><a href="${escapeHtml(f.path)}">${escapeHtml(f.caption)}</a></p>`
            : `<figure><a href="${escapeHtml(f.path)}"><img src="${escapeHtml(f.path)}" alt="${escapeHtml(f.caption)}"></a><figcaption>${escapeHtml(f.caption)}</figcaption></figure>`,
        )
        .join('')}</div></section>`,
    )
    .join('\n');
  return `<!doctype html><html><head><meta charset="utf-8"><title>vit-prisma demo</title>
<style>body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top}
figcaption,.meta{font-size:12px;color:#666}pre.cmd{background:#f4f4f4;padding:.5em;overflow-x:auto;font-size:13px}.pair img{width:192px;image-rendering:pixelated}</style></head><body>
<h1>vit-prisma demo</h1>
<p>Two small ViTs and a toy CLIP trained by <code>prisma train</code> and shipped in <code>models/</code> (see their MODEL_CARD.md).</p>
<div class="pair"><figure><img src="${escapeHtml(pair.clean)}"><figcaption>clean</figcaption></figure><figure><img src="${escapeHtml(pair.corrupt)}"><figcaption>corrupted (largest object recoloured)</figcaption></figure></div>
${sections}
</body></html>
`;
}

/** A batch command's report (held whenever neither --shard nor --jsonl is given, as here). */
function held<T>(report: T | undefined): T {
  if (report === undefined) throw new PrismaError('E_INTERNAL', 'a demo step returned no report');
  return report;
}

export async function demo(options: DemoOptions, ctx: CommandContext): Promise<DemoSummary> {
  for (const dir of Object.values(DEMO_MODELS)) {
    try {
      readFileSync(join(dir, 'config.json'));
    } catch {
      throw new PrismaError('E_MODEL_DIR', `the demo model ${relative(PACKAGE_ROOT, dir)} is missing`, {
        hint: 'it ships with the repository; restore it with git checkout',
      });
    }
  }
  // The device is checked (by loading the first model) before the report folder is replaced.
  const device = options.device ?? 'cpu';
  const clevr = await loadModel(DEMO_MODELS.clevr, { device });
  const out = resolve(options.out);
  rmSync(out, { recursive: true, force: true });
  makeDirSync(join(out, 'inputs'));
  // Sub-commands run quietly: their reports go to files, the summary to our stdout.
  const quiet: CommandContext = { io: { stdout: { write: () => true }, stderr: ctx.io.stderr, env: ctx.io.env }, json: true };
  const log = (msg: string) => {
    if (!ctx.json) ctx.io.stderr.write(`demo: ${msg}\n`);
  };
  const base = { device, dtype: 'float32' };

  log('choosing a clevr-lite scene the model answers correctly, before and after recolouring its largest object');
  const pair = await pickPair(clevr, join(out, 'inputs'), DEMO_SEED);

  log('activation patching (resid_pre, every layer x position; exact and attribution)');
  const resid = await patchCommand(
    DEMO_MODELS.clevr,
    {
      ...base,
      clean: pair.clean,
      corrupt: pair.corrupt,
      what: 'resid_pre',
      by: 'layer_pos',
      method: 'both',
      out: join(out, 'patch-resid'),
    },
    quiet,
  );
  log('activation patching (each head output, layer x head)');
  const heads = await patchCommand(
    DEMO_MODELS.clevr,
    { ...base, clean: pair.clean, corrupt: pair.corrupt, what: 'head_z', by: 'layer_head', method: 'exact', out: join(out, 'patch-heads') },
    quiet,
  );
  log('logit lens (clevr-lite)');
  const lensClevr = held(
    await logitLensCommand(
      DEMO_MODELS.clevr,
      [pair.clean],
      { ...base, site: ['resid_post'], topK: 3, out: join(out, 'lens-clevr') },
      quiet,
    ),
  );
  log('attention heads (clevr-lite, from the class token)');
  const att = held(await headsCommand(DEMO_MODELS.clevr, [pair.clean], { ...base, out: join(out, 'heads') }, quiet));
  log('direct logit attribution (clevr-lite)');
  const dla = held(
    await dlaCommand(DEMO_MODELS.clevr, [pair.clean], { ...base, baseline: pair.to, perPosition: true, out: join(out, 'dla') }, quiet),
  );

  log('logit lens (Fashion-MNIST test images)');
  const fashionRecords = readFileSync(join(FASHION_IMAGES, 'labels.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as { image: string; label: number });
  const lensFashion = held(
    await logitLensCommand(
      DEMO_MODELS.fashion,
      fashionRecords.map((r) => join(FASHION_IMAGES, r.image)),
      { ...base, site: ['resid_post'], topK: 3, out: join(out, 'lens-fashion') },
      quiet,
    ),
  );

  log('CLIP logit lens (toy CLIP, zero-shot over colour prompts, clean and recoloured scene)');
  const colours = clevr.info.labels;
  const lensClip = held(
    await logitLensCommand(
      DEMO_MODELS.clip,
      [pair.clean, pair.corrupt],
      { ...base, site: ['resid_post'], topK: 3, labels: colours, template: [CLIP_TEMPLATE], out: join(out, 'lens-clip') },
      quiet,
    ),
  );
  const clipTruth = [colours.indexOf(pair.from), colours.indexOf(pair.to)];
  const clipLines = [
    `toy CLIP (models/clevr-clip), prompts '${CLIP_TEMPLATE.replace('{}', '<colour>')}': zero-shot answer ${lensClip.results
      .map(
        (r, i) =>
          `${i === 0 ? 'clean' : 'recoloured'} '${r.logitsTopK[0]?.label ?? '?'}' (largest object is ${i === 0 ? pair.from : pair.to})`,
      )
      .join(', ')}.`,
    ...lensStory('toy CLIP', lensClip.results, clipTruth),
  ];

  // Paths in the commands as a user would type them here: relative to the working folder when
  // under it, else absolute.
  const rel = (p: string) => {
    const r = relative(process.cwd(), p);
    return r === '' ? '.' : r.startsWith('..') ? resolve(p) : r;
  };
  const onDevice = device === 'cpu' ? [] : ['--device', device];
  const cmd = (args: string[]) => ['prisma', ...[...args, ...onDevice].map(quote)].join(' ');
  const lensCmd = (model: string, inputs: string[], dir: string, extra: string[] = []) =>
    cmd(['logit-lens', rel(model), ...inputs, '--site', 'resid_post', '--top-k', '3', ...extra, '--out', join(rel(out), dir)]);
  const pairArgs = ['--clean', rel(pair.clean), '--corrupt', rel(pair.corrupt)];
  const section = (title: string, command: string, dir: string, lines: string[], report: ReportBase): DemoSection => ({
    title,
    command,
    lines,
    report: `${dir}/report.json`,
    figures: report.figures.map((f) => ({ path: `${dir}/${f.path}`, caption: CAPTIONS[f.kind] ?? f.kind })),
  });
  const dlaItem = dla.results[0];
  const sections = [
    section(
      'Activation patching: where the answer lives',
      cmd([
        'patch',
        rel(DEMO_MODELS.clevr),
        ...pairArgs,
        '--what',
        'resid_pre',
        '--by',
        'layer,pos',
        '--method',
        'both',
        '--out',
        join(rel(out), 'patch-resid'),
      ]),
      'patch-resid',
      patchingStory(pair, resid.result, heads.result),
      resid,
    ),
    section(
      'Patching heads',
      cmd(['patch', rel(DEMO_MODELS.clevr), ...pairArgs, '--what', 'head_z', '--by', 'layer,head', '--out', join(rel(out), 'patch-heads')]),
      'patch-heads',
      [],
      heads,
    ),
    section(
      'Logit lens (clevr-lite)',
      lensCmd(DEMO_MODELS.clevr, [rel(pair.clean)], 'lens-clevr'),
      'lens-clevr',
      lensStory('clevr-lite', lensClevr.results),
      lensClevr,
    ),
    section('Attention heads', cmd(['heads', rel(DEMO_MODELS.clevr), rel(pair.clean), '--out', join(rel(out), 'heads')]), 'heads', [], att),
    section(
      'Direct logit attribution',
      cmd(['dla', rel(DEMO_MODELS.clevr), rel(pair.clean), '--baseline', pair.to, '--per-position', '--out', join(rel(out), 'dla')]),
      'dla',
      dlaItem ? dlaStory(dlaItem) : [],
      dla,
    ),
    section(
      'CLIP logit lens (image-text similarity per layer)',
      lensCmd(DEMO_MODELS.clip, [rel(pair.clean), rel(pair.corrupt)], 'lens-clip', [
        '--labels',
        colours.join(','),
        '--template',
        CLIP_TEMPLATE,
      ]),
      'lens-clip',
      clipLines,
      lensClip,
    ),
    section(
      'Logit lens (Fashion-MNIST)',
      lensCmd(DEMO_MODELS.fashion, [join(rel(FASHION_IMAGES), 'images')], 'lens-fashion'),
      'lens-fashion',
      lensStory(
        'Fashion-MNIST',
        lensFashion.results,
        fashionRecords.map((r) => r.label),
      ),
      lensFashion,
    ),
  ];
  const partial = { ok: true as const, schemaVersion: 1 as const, out, sections };
  const index = join(out, 'index.html');
  await writeAtomic(index, indexHtml(partial, { clean: 'inputs/clean.png', corrupt: 'inputs/corrupt.png' }));
  // Sections with findings only: a heading with nothing under it says nothing.
  const text = sections
    .filter((s) => s.lines.length > 0)
    .map((s) => `## ${s.title}\n\n\`\`\`sh\n${s.command}\n\`\`\`\n\n${s.lines.map((l) => `- ${l}`).join('\n')}\n`)
    .join('\n');
  await writeAtomic(join(out, 'summary.md'), `# vit-prisma demo\n\n${text}`);
  return { ...partial, index };
}

export function registerDemo(program: Command, ctx: CommandContext): void {
  program
    .command('demo')
    .description('run every technique on the shipped toy models and write a report folder with index.html')
    .addOption(new Option('--out <dir>', 'report folder (replaced)').default('demo-report'))
    .addOption(deviceOption())
    .addOption(jsonOption())
    .action(async (options: DemoOptions) => {
      const summary = await demo(options, ctx);
      if (ctx.json) {
        printJson(ctx, summary);
        return;
      }
      for (const s of summary.sections) {
        if (s.lines.length === 0) continue;
        ctx.io.stdout.write(`\n${s.title}\n${s.lines.map((l) => `  - ${l}`).join('\n')}\n`);
      }
      ctx.io.stdout.write(`\nreport: ${summary.index}\n`);
    });
}
