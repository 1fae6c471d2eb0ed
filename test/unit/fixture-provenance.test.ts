// Each committed reference records the sha256 of the generator scripts that wrote it (fixtures/*.py) and the
// installed versions of the packages pinned in fixtures/requirements*.txt. A script edited after its references
// were generated, or references made with other library versions, fail here: regenerate them with the pinned venv.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { FIXTURES } from '../helpers/cli.js';
import { readSafetensors } from '../helpers/safetensors.js';

const REFERENCE = join(FIXTURES, 'reference');

/** References whose generators do not record provenance yet, with why. */
const NOT_YET: Record<string, string> = {
  'sae.safetensors': 'make_sae_fixtures.py needs the sae-lens venv (requirements-sae.txt)',
  'sae-train.safetensors': 'make_sae_train_reference.py needs the sae-lens venv (requirements-sae.txt)',
  'sae-metrics.json': 'make_sae_metrics_reference.py needs the sae-lens venv (requirements-sae.txt)',
};

/** package -> pinned version, over every fixtures/requirements*.txt (a package pinned twice must agree). */
function pins(): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of readdirSync(FIXTURES).filter((n) => /^requirements.*\.txt$/.test(n))) {
    for (const raw of readFileSync(join(FIXTURES, f), 'utf8').split('\n')) {
      const line = raw.split('#')[0]!.trim();
      const m = /^([A-Za-z0-9_.-]+)==(\S+)$/.exec(line);
      if (!m) continue;
      const [, name, version] = m as unknown as [string, string, string];
      const seen = out.get(name);
      if (seen !== undefined && seen !== version) throw new Error(`${name} is pinned to ${seen} and ${version}`);
      out.set(name, version);
    }
  }
  return out;
}

type Meta = Record<string, unknown>;

function metadataOf(file: string): Meta {
  const path = join(REFERENCE, file);
  return file.endsWith('.json') ? (JSON.parse(readFileSync(path, 'utf8')) as Meta) : readSafetensors(path).metadata;
}

/** A map recorded as a JSON string (safetensors metadata) or as an object (JSON references). */
function mapOf(value: unknown, what: string): Record<string, string> {
  expect(value, `no ${what}`).toBeDefined();
  const map = (typeof value === 'string' ? JSON.parse(value) : value) as Record<string, string>;
  expect(Object.keys(map).length, `empty ${what}`).toBeGreaterThan(0);
  return map;
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

const files = readdirSync(REFERENCE)
  .filter((f) => f.endsWith('.safetensors') || f.endsWith('.json'))
  .sort();

describe('fixture provenance', () => {
  it('finds the references', () => {
    // vit-tiny-cls and the family references at least; a glob that matched nothing would test nothing.
    expect(files).toContain('vit-tiny-cls.safetensors');
    expect(files).toContain('timm-vit-tiny.safetensors');
    expect(files.filter((f) => !(f in NOT_YET)).length).toBeGreaterThanOrEqual(17);
  });

  it.each(files.filter((f) => !(f in NOT_YET)))('%s: written by the committed scripts with the pinned versions', (file) => {
    const meta = metadataOf(file);
    const scripts = mapOf(meta['generator_sha256'], 'generator_sha256');
    for (const [script, hash] of Object.entries(scripts)) {
      expect(sha256(join(FIXTURES, script)), `${file}: fixtures/${script} changed since it wrote this file; rerun it`).toBe(hash);
    }
    const used = mapOf(meta['pinned_versions'], 'pinned_versions');
    const pinned = pins();
    expect(used['torch'], `${file}: torch version`).toBeDefined();
    for (const [name, version] of Object.entries(used)) {
      expect(pinned.get(name), `${file}: ${name} is not pinned in fixtures/requirements*.txt`).toBeDefined();
      // a local build tag (torch 2.11.0+cu130) is the same release
      expect(version.split('+')[0], `${file}: made with ${name} ${version}, pinned ${pinned.get(name)}`).toBe(pinned.get(name));
    }
  });

  it('a changed script is caught: the hash of a different text differs', () => {
    const meta = metadataOf('vit-tiny-cls.safetensors');
    const recorded = mapOf(meta['generator_sha256'], 'generator_sha256')['make_fixtures.py'];
    const text = readFileSync(join(FIXTURES, 'make_fixtures.py'));
    expect(createHash('sha256').update(text).digest('hex')).toBe(recorded);
    expect(
      createHash('sha256')
        .update(Buffer.concat([text, Buffer.from('\n')]))
        .digest('hex'),
    ).not.toBe(recorded);
  });
});
