/**
 * `--help` for every command: mandatory options marked "(required)", a default stated once (not
 * again by commander when the description already gives it), the shared model options grouped
 * after the command's own, and examples that run as written (quoted where the shell would
 * otherwise expand brackets or globs).
 */
import { Help, type Command, type Option } from 'commander';

/** Examples per command path (`dataset clevr-lite` for a subcommand). Paths are the repo's own models and fixtures. */
export const EXAMPLES: Record<string, string[]> = {
  inspect: ['prisma inspect models/clevr-vit', 'prisma inspect google/vit-base-patch16-224     # a hub ID, from the Hugging Face cache'],
  run: [
    "prisma run models/clevr-vit photo.jpg --cache 'blocks.*.hook_resid_post' --out acts.safetensors",
    'prisma run models/clevr-vit photos/ --recursive --top-k 3 --json',
    'find . -name "*.png" | prisma run models/clevr-vit - --json',
  ],
  classify: ["prisma classify models/clevr-clip photo.jpg --labels 'red,green,blue' --template 'a photo of a {} object.'"],
  'logit-lens': [
    'prisma logit-lens models/clevr-vit photo.jpg --out lens/',
    'prisma logit-lens models/clevr-vit photos/ --site resid_pre,resid_post --json',
  ],
  patch: [
    'prisma patch models/clevr-vit --clean a.png --corrupt b.png --what resid_pre --by layer,pos --out patch/',
    'prisma patch models/clevr-vit --clean a.png --corrupt b.png --what head_z --by layer,head --method both',
    'prisma patch models/clevr-vit --pairs clevr/edits.jsonl --what resid_pre --by layer,pos --out patch-many/     # mean and spread over pairs',
  ],
  heads: [
    'prisma heads models/clevr-vit photo.jpg --out heads/',
    'prisma heads models/clevr-vit photo.jpg --query r2c3 --layers 0-3 --out heads/',
  ],
  dla: ['prisma dla models/clevr-vit photo.jpg --out dla/', 'prisma dla models/clevr-vit photos/ --target red --json'],
  ablate: [
    "prisma ablate models/clevr-vit photo.jpg --ablate 'blocks.3.attn.hook_z[head=1|2]'     # quote: [ and | are shell syntax",
    'prisma ablate models/clevr-vit photo.jpg --mode mean --reference refs/ --out ablate/',
  ],
  merge: ['prisma merge out/all out/shard-0 out/shard-1'],
  sae: [
    'prisma sae cache models/clevr-vit clevr/ --hook blocks.1.hook_resid_post --out acts/',
    'prisma sae convert fixtures/sae/vit-prisma/legacy-standard.pt my-sae/',
    'prisma sae inspect fixtures/sae/saelens/topk',
  ],
  'sae cache': [
    'prisma sae cache models/clevr-vit clevr/ --hook blocks.1.hook_resid_post --tokens patches --out acts/',
    'prisma sae cache models/clevr-vit clevr/ --hook blocks.1.hook_resid_post --out acts-0/ --shard 0/2     # one part per machine',
  ],
  'sae cache-merge': ['prisma sae cache-merge acts-0/ acts-1/ --out acts/'],
  'sae train': [
    'prisma sae train --cache acts/ --arch topk --k 16,32 --expansion 8 --out saes/',
    'prisma sae train --cache acts/ --arch standard --l1 5 --lr-warm-up 100 --out sae-relu/ --resume     # after a kill',
  ],
  dataset: ['prisma dataset clevr-lite --n 200 --seed 1 --out clevr/', 'prisma dataset fashion-mnist --n 50 --out fm/'],
  'dataset clevr-lite': ['prisma dataset clevr-lite --n 200 --seed 1 --out clevr/ --edit     # also edited copies for patching pairs'],
  'dataset patch-labels': ['prisma dataset patch-labels --annotations boxes/ --model models/clevr-vit --out labels.json'],
  'dataset fashion-mnist': ['prisma dataset fashion-mnist --n 50 --out fm/'],
  train: ['prisma train --data fashion-mnist --out my-vit', 'prisma train --data clevr/ --question color --seed 1 --out my-clevr-vit'],
  demo: ['prisma demo --out demo-report', 'prisma demo --out demo-report --device cuda     # the models on the first GPU'],
  'sae convert': [
    'prisma sae convert fixtures/sae/vit-prisma/legacy-standard.pt my-sae/',
    'prisma sae convert fixtures/sae/saev/topk/sae.pt my-sae/ --hook blocks.1.hook_resid_post --tokens patches',
  ],
  'sae eval': [
    'prisma sae eval models/clevr-vit my-sae/ clevr/images --out sae-eval/',
    'prisma sae eval models/clevr-vit my-sae/@blocks.3.hook_resid_post photos/ --targets labels.txt --out sae-eval/ --json',
  ],
  'sae inspect': ['prisma sae inspect fixtures/sae/saelens/topk', 'prisma sae inspect fixtures/sae/saev/topk/sae.pt --json'],
  doctor: ['prisma doctor', 'prisma doctor --json     # what was found, as JSON'],
  setup: ['prisma setup'],
};

/** commander's help, with "(required)" for mandatory options and no second default. */
class PrismaHelp extends Help {
  override optionDescription(option: Option): string {
    const saysDefault = /\bdefault\b/i.test(option.description ?? '');
    const shown = saysDefault
      ? Object.assign(Object.create(Object.getPrototypeOf(option) as object), option, { defaultValue: undefined })
      : option;
    const text = super.optionDescription(shown as Option);
    return option.mandatory ? `${text} (required)` : text;
  }
}

function pathOf(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Applies the help rules and examples to `program` and every command under it. */
export function configureHelp(program: Command): void {
  const visit = (cmd: Command) => {
    cmd.createHelp = () => Object.assign(new PrismaHelp(), cmd.configureHelp());
    const examples = EXAMPLES[pathOf(cmd)];
    if (examples) cmd.addHelpText('after', `\nExamples:\n${examples.map((e) => `  $ ${e}`).join('\n')}`);
    for (const sub of cmd.commands) visit(sub);
  };
  visit(program);
}
