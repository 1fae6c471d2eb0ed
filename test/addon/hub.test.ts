// Models by hub ID (issue 21, item 7), from the CLI:
// - reading a Hugging Face cache laid out by huggingface_hub 0.36.2 itself (fixtures/hub-cache, made
//   by fixtures/make_hub_cache.py with hf_hub_download against a local server), offline, through
//   HF_HUB_CACHE and HF_HOME, by branch (refs/main) and by commit;
// - downloading from a local server that answers the hub's routes (test/helpers/fake-hub.ts) into
//   an empty cache: the tree written equals the Python-made one (same paths, symlink targets, refs,
//   blob names and bytes); a download cut mid-file resumes with a Range request and ends with the
//   right bytes; gated models need HF_TOKEN; HF_HUB_OFFLINE and an unreachable hub fall back to
//   the cache.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BIN, FIXTURES, ROOT, requireBuilt, type CliResult } from '../helpers/cli.js';
import { FakeHub, commitOf, repoFromFolder } from '../helpers/fake-hub.js';

const REPO = 'prisma-test/vit-tiny-cls';
const COMMIT = commitOf(REPO);
const PY_CACHE = join(FIXTURES, 'hub-cache');
const IMAGE = join(FIXTURES, 'images', 'chelsea.jpg');
const tmp = mkdtempSync(join(tmpdir(), 'prisma-hub-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
beforeAll(() => requireBuilt());

/** The CLI, spawned without blocking the event loop (the fake hub answers from this process). */
function prisma(args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HF_') && k !== 'TRANSFORMERS_OFFLINE'));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { ...clean, NO_COLOR: '1', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Every path under `dir` with what it is: a symlink's target, a file's sha256, or 'dir'. */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      const key = relative(dir, p);
      if (st.isSymbolicLink()) out[key] = `-> ${readlinkSync(p)}`;
      else if (st.isDirectory()) {
        out[key] = 'dir';
        walk(p);
      } else out[key] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(dir);
  return out;
}

function copyCache(name: string): string {
  const dst = join(tmp, name);
  cpSync(PY_CACHE, dst, { recursive: true, verbatimSymlinks: true });
  return dst;
}

interface RunDoc {
  ok: boolean;
  predictions: { topK: { index: number; logit: number }[] }[];
}

async function runOk(args: string[], env: NodeJS.ProcessEnv): Promise<RunDoc> {
  const r = await prisma(['run', ...args, '--json'], env);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as RunDoc;
}

let localLogits: number[];
beforeAll(async () => {
  const doc = await runOk([join(FIXTURES, 'models', 'vit-tiny-cls'), IMAGE, '--top-k', '5'], {});
  localLogits = doc.predictions[0]!.topK.map((t) => t.logit);
}, 120_000); // one spawned CLI run: seconds alone, more on a loaded machine

describe('reading the cache huggingface_hub laid out', () => {
  it('the fixture is what hf_hub_download writes: refs/main, blobs by etag, relative symlinks', () => {
    const t = tree(PY_CACHE);
    const repo = 'models--prisma-test--vit-tiny-cls';
    expect(readFileSync(join(PY_CACHE, repo, 'refs', 'main'), 'utf8')).toBe(COMMIT);
    expect(t[`${repo}/snapshots/${COMMIT}/model.safetensors`]).toMatch(/^-> \.\.\/\.\.\/blobs\/[0-9a-f]{64}$/);
    expect(t[`${repo}/snapshots/${COMMIT}/config.json`]).toMatch(/^-> \.\.\/\.\.\/blobs\/[0-9a-f]{40}$/);
  });

  it.each([
    ['HF_HUB_CACHE, by branch', (c: string) => ({ HF_HUB_CACHE: c }), REPO],
    ['HF_HUB_CACHE, by commit', (c: string) => ({ HF_HUB_CACHE: c }), `${REPO}@${COMMIT}`],
    ['HF_HOME/hub, @main', (c: string) => ({ HF_HOME: join(c, '..') }), `${REPO}@main`],
  ])('offline, %s: the same predictions as the local folder', async (_what, envOf, id) => {
    const home = join(tmp, `home-${Math.random().toString(36).slice(2)}`);
    const cache = join(home, 'hub');
    cpSync(PY_CACHE, cache, { recursive: true, verbatimSymlinks: true });
    const doc = await runOk([id, IMAGE, '--top-k', '5'], { ...envOf(cache), HF_HUB_OFFLINE: '1' });
    expect(doc.predictions[0]!.topK.map((t) => t.logit)).toEqual(localLogits);
  });

  it('offline, a revision the cache does not have: one E_HUB line', async () => {
    const r = await prisma(['inspect', `${REPO}@v2`], { HF_HUB_CACHE: copyCache('offline-miss'), HF_HUB_OFFLINE: '1' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^prisma: E_HUB: prisma-test\/vit-tiny-cls@v2 is not in the Hugging Face cache .* and HF_HUB_OFFLINE is set\nhint: /,
    );
  });

  it('a path that is neither a folder nor a hub ID says "not found"', async () => {
    const r = await prisma(['inspect', './no/such/model'], {});
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model not found: \.\/no\/such\/model/);
  });
});

describe('downloading into the cache from a server with the hub routes', () => {
  let hub: FakeHub;
  beforeAll(async () => {
    hub = await new FakeHub(
      new Map([
        [REPO, repoFromFolder(join(FIXTURES, 'models', 'vit-tiny-cls'))],
        ['prisma-test/gated', repoFromFolder(join(FIXTURES, 'models', 'vit-tiny-cls'), 'hf_secret')],
      ]),
    ).start();
  });
  afterAll(() => hub.stop());

  it('writes the tree huggingface_hub writes, and the model runs from it', async () => {
    const cache = join(tmp, 'dl');
    const doc = await runOk([REPO, IMAGE, '--top-k', '5'], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    expect(doc.predictions[0]!.topK.map((t) => t.logit)).toEqual(localLogits);
    expect(tree(cache)).toEqual(tree(PY_CACHE));
    // A second run downloads nothing: only the file list is asked for.
    const before = hub.seen.length;
    await runOk([REPO, IMAGE], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    expect(hub.seen.slice(before).map((r) => r.path)).toEqual([`/api/models/${REPO}/revision/main`]);
  });

  it('an interrupted download resumes with a Range request and ends with the right bytes', async () => {
    const cache = join(tmp, 'resume');
    const weights = readFileSync(join(FIXTURES, 'models', 'vit-tiny-cls', 'model.safetensors'));
    const sha = createHash('sha256').update(weights).digest('hex');
    hub.cuts.set('model.safetensors', { afterBytes: 40_000, times: 1 });
    const first = await prisma(['inspect', REPO], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(
      /model\.safetensors: download interrupted at 40000 of 100468 bytes.*\nhint: run the command again: the download resumes where it stopped/,
    );
    const partial = join(cache, 'models--prisma-test--vit-tiny-cls', 'blobs', `${sha}.incomplete`);
    expect(statSync(partial).size).toBe(40_000);

    const start = hub.seen.length;
    const second = await prisma(['inspect', REPO], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    expect(second.code).toBe(0);
    expect(second.stderr).toContain('prisma: downloading prisma-test/vit-tiny-cls/model.safetensors (100 kB, resuming at 40 kB)');
    const lfs = hub.seen.slice(start).filter((r) => r.path.startsWith('/lfs/') && r.method === 'GET');
    expect(lfs.map((r) => r.range)).toEqual(['bytes=40000-']);
    const blob = join(cache, 'models--prisma-test--vit-tiny-cls', 'blobs', sha);
    expect(createHash('sha256').update(readFileSync(blob)).digest('hex')).toBe(sha);
    expect(existsSync(partial)).toBe(false);
    expect(tree(cache)).toEqual(tree(PY_CACHE));
  });

  it('a gated model needs HF_TOKEN, which is sent as a bearer token', async () => {
    const cache = join(tmp, 'gated');
    const denied = await prisma(['inspect', 'prisma-test/gated'], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toMatch(/401 .*gated or private\nhint: set HF_TOKEN/);
    const ok = await prisma(['inspect', 'prisma-test/gated', '--json'], {
      HF_ENDPOINT: hub.url,
      HF_HUB_CACHE: cache,
      HF_TOKEN: 'hf_secret',
    });
    expect(ok.code).toBe(0);
    expect(hub.seen.filter((r) => r.path.includes('gated')).some((r) => r.auth === 'Bearer hf_secret')).toBe(true);
  });

  it('HF_HUB_OFFLINE with an empty cache names the variable; an unreachable hub falls back to the cache', async () => {
    const empty = await prisma(['inspect', REPO], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: join(tmp, 'empty'), HF_HUB_OFFLINE: '1' });
    expect(empty.code).toBe(1);
    expect(empty.stderr).toMatch(/HF_HUB_OFFLINE is set/);
    const cache = copyCache('unreachable');
    const doc = await runOk([REPO, IMAGE, '--top-k', '5'], { HF_ENDPOINT: 'http://127.0.0.1:9', HF_HUB_CACHE: cache });
    expect(doc.predictions[0]!.topK.map((t) => t.logit)).toEqual(localLogits);
  });

  it('a file the hub does not have is an E_HUB line, not a crash', async () => {
    const r = await prisma(['inspect', 'prisma-test/missing'], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: join(tmp, 'missing') });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/prisma-test\/missing@main: not found on http:\/\/127\.0\.0\.1:\d+/);
  });
});
