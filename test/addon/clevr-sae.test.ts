// The shipped SAE (models/clevr-sae): its model card's commands, run as printed (paths moved to a
// temporary folder), give the same folder byte for byte: weights, config, concept table and card.
// Slow (a dataset, a forward over 3000 scenes and four SAEs trained on one thread).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, ROOT, requireBuilt } from '../helpers/cli.js';

const SHIPPED = join(ROOT, 'models', 'clevr-sae');

/** The lines of the card's first ```sh block. */
function cardCommands(card: string): string[] {
  const m = /```sh\n([\s\S]*?)```/.exec(card);
  if (!m) throw new Error('MODEL_CARD.md has no ```sh block');
  return m[1]!.split('\n').filter((l) => l.trim().length > 0);
}

describe('models/clevr-sae', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'clevr-sae-'));
  // 3000 scene files: deleting them took minutes on this machine's loaded disk.
  afterAll(() => rmSync(tmp, { recursive: true, force: true }), 600_000);

  it('is a SAELens folder of at most 5 MB', () => {
    const files = readdirSync(SHIPPED).sort();
    expect(files).toEqual(['MODEL_CARD.md', 'cfg.json', 'concepts.json', 'sae_weights.safetensors']);
    const bytes = files.reduce((n, f) => n + statSync(join(SHIPPED, f)).size, 0);
    expect(bytes).toBeLessThanOrEqual(5 * 1024 * 1024);
    const cfg = JSON.parse(readFileSync(join(SHIPPED, 'cfg.json'), 'utf8')) as { metadata: { hook_name: string } };
    expect(cfg.metadata.hook_name).toBe('blocks.1.hook_resid_post');
  });

  it("the card's commands rerun to identical weights", { timeout: 1_800_000 }, () => {
    requireBuilt();
    const card = readFileSync(join(SHIPPED, 'MODEL_CARD.md'), 'utf8');
    const commands = cardCommands(card);
    expect(commands).toHaveLength(3);
    const out = join(tmp, 'sae');
    for (const line of commands) {
      // The card's paths have no spaces or quotes, so splitting on spaces is the shell's reading.
      const words = line.replaceAll('/tmp/clevr-sae', join(tmp, 'data')).replaceAll('models/clevr-sae', out).split(/\s+/);
      const [cmd, ...args] = words;
      const argv = cmd === 'prisma' ? [BIN, ...args] : cmd === 'node' ? args : undefined;
      if (!argv) throw new Error(`unexpected command in the card: ${line}`);
      const r = spawnSync(process.execPath, argv, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
      expect(r.status, `${line}\n${r.stderr}`).toBe(0);
    }
    for (const f of readdirSync(SHIPPED)) {
      expect(readFileSync(join(out, f)).equals(readFileSync(join(SHIPPED, f))), f).toBe(true);
    }
  });
});
