// The built CLI, spawned (`node bin/prisma.js`): needs native/prisma.node and dist/ (npm run setup).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { saveTensors } from '../../src/index.js';
import { BIN, FIXTURES, ROOT, prisma, requireBuilt, spawnAndKillWhen, stderrLines, type CliResult } from '../helpers/cli.js';
import { absDiff, readSafetensors } from '../helpers/safetensors.js';

const MODELS = ['vit-tiny-cls', 'vit-tiny-base', 'vit-odd', 'deit-tiny'] as const;
/** Reference keys at the model's own size: other resolutions (res*.*, pixel_values_*) are checked by the Rust tests. */
const atThisSize = (key: string) => !key.startsWith('pixel_values') && !key.startsWith('res');
const model = (name: string) => join(FIXTURES, 'models', name);
const reference = (name: string) => join(FIXTURES, 'reference', `${name}.safetensors`);
const tmp = () => mkdtempSync(join(tmpdir(), 'prisma-cli-'));

/** Tolerance for activations computed from the reference pixel tensor (fp32 CPU vs HF fp32). */
const ATOL = 1e-4;

interface Summary {
  ok: boolean;
  schemaVersion: number;
  model: string;
  inputs: string[];
  output: { name: string; shape: number[] };
  cached: string[];
  predictions?: { input: string; topK: { index: number; label: string; logit: number; prob: number }[] }[];
  written?: { path: string; tensors: { name: string; shape: number[] }[] };
}

function ok(r: CliResult): Summary {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.stdout) as Summary;
}

beforeAll(() => requireBuilt());

describe('prisma inspect', () => {
  it.each(MODELS)('%s: lists every reference hook with its shape for one image', (name) => {
    const r = prisma(['inspect', model(name)]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(name === 'deit-tiny' ? /family\s+deit/ : /family\s+vit/);
    expect(r.stdout).toMatch(/parameters\s+\S+ \([\d,]+\)/);
    const ref = readSafetensors(reference(name)).tensors;
    for (const [hook, t] of ref) {
      if (!atThisSize(hook)) continue;
      const shape = `[${[1, ...t.shape.slice(1)].join(', ')}]`;
      expect(r.stdout).toMatch(new RegExp(`^  ${hook.replace(/\./g, '\\.')}\\s+${shape.replace(/[[\]]/g, '\\$&')}$`, 'm'));
    }
  });

  it('--json gives the config summary and hook shapes', () => {
    const r = prisma(['inspect', model('vit-odd'), '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as {
      ok: boolean;
      schemaVersion: number;
      model: Record<string, unknown>;
      hooks: { name: string; shape: number[] }[];
    };
    expect(doc.ok).toBe(true);
    expect(doc.schemaVersion).toBe(1);
    expect(doc.model).toMatchObject({
      family: 'vit',
      architecture: 'ViTForImageClassification',
      sourceFormat: 'hf',
      imageSize: [30, 30],
      patchSize: 6,
      nLayers: 3,
      nHeads: 3,
      dModel: 36,
      dMlp: 52,
      nClasses: 7,
      activation: 'gelu_tanh',
    });
    expect(doc.model['nParams']).toBeGreaterThan(0);
    expect(doc.model).not.toHaveProperty('configJson');
    const ref = readSafetensors(reference('vit-odd')).tensors;
    const fromInspect = new Map(doc.hooks.map((h) => [h.name, h.shape]));
    const keys = [...ref.keys()].filter(atThisSize);
    expect(keys.sort()).toEqual([...fromInspect.keys()].sort());
    for (const hook of keys) expect(fromInspect.get(hook), hook).toEqual([1, ...ref.get(hook)!.shape.slice(1)]);
  });
});

describe('prisma run', () => {
  it.each(MODELS)('%s: cached activations from the reference pixels match the reference within 1e-4', (name) => {
    const out = join(tmp(), 'acts.safetensors');
    const summary = ok(prisma(['run', model(name), reference(name), '--cache', '*', '--out', out]));
    const ref = readSafetensors(reference(name));
    const batch = ref.tensors.get('pixel_values')!.shape[0]!;

    expect(summary).toMatchObject({ ok: true, schemaVersion: 1, model: model(name) });
    expect(summary.inputs).toEqual(Array.from({ length: batch }, (_, i) => `${reference(name)}[${i}]`));
    expect(summary.written?.path).toBe(out);
    const hasHead = ref.tensors.has('hook_logits');
    if (hasHead) {
      expect(summary.output.name).toBe('hook_logits');
      expect(summary.predictions).toHaveLength(batch);
      const nClasses = ref.tensors.get('hook_logits')!.shape[1]!;
      for (const p of summary.predictions!) {
        expect(p.topK).toHaveLength(Math.min(5, nClasses));
        expect(p.topK[0]!.prob).toBeGreaterThan(0);
        expect(p.topK[0]!.logit).toBeGreaterThanOrEqual(p.topK[1]!.logit);
      }
    } else {
      expect(summary.output.name).toBe('ln_final.hook_normalized');
      expect(summary.predictions).toBeUndefined();
    }

    const written = readSafetensors(out);
    expect(written.metadata['model']).toBe(model(name));
    expect(JSON.parse(written.metadata['inputs']!)).toEqual(summary.inputs);
    expect(new Set(summary.written!.tensors.map((t) => t.name))).toEqual(new Set(written.tensors.keys()));
    const expected = [...ref.tensors.keys()].filter(atThisSize);
    expect([...written.tensors.keys()].sort()).toEqual(expected.sort());
    for (const key of expected) {
      const got = written.tensors.get(key)!;
      const want = ref.tensors.get(key)!;
      expect(got.shape, key).toEqual(want.shape);
      expect(got.dtype, key).toBe('F32');
      const d = absDiff(got.data, want.data);
      expect(d.max, `${name} ${key}: max abs diff ${d.max}`).toBeLessThanOrEqual(ATOL);
    }
  });

  it('--input-key selects the tensor; a missing key is an error', () => {
    const name = 'vit-tiny-cls';
    const s = ok(prisma(['run', model(name), reference(name), '--input-key', 'pixel_values', '--top-k', '2']));
    expect(s.predictions![0]!.topK).toHaveLength(2);
    const r = prisma(['run', model(name), reference(name), '--input-key', 'nope']);
    expect(r.code).toBe(1);
    expect(stderrLines(r)[0]).toMatch(/^prisma: .*has no tensor 'nope'/);
  });

  it('images: predictions per image, close to the reference logits', () => {
    const name = 'vit-tiny-cls';
    const s = ok(prisma(['run', model(name), join(FIXTURES, 'images'), '--top-k', '5']));
    expect(s.inputs.map((p) => p.split('/').pop())).toEqual(['astronaut.png', 'chelsea.jpg', 'coffee.png']);
    expect(s.cached).toEqual([]);
    expect(s.written).toBeUndefined();
    const logits = readSafetensors(reference(name)).tensors.get('hook_logits')!;
    const n = logits.shape[1]!;
    expect(s.predictions).toHaveLength(3);
    s.predictions!.forEach((p, i) => {
      expect(p.topK).toHaveLength(5);
      for (const t of p.topK) {
        // sharp vs PIL resampling moves these logits by up to 0.049 (docs/preprocessing.md); 2x headroom
        expect(Math.abs(t.logit - logits.data[i * n + t.index]!)).toBeLessThan(0.1);
      }
      expect(p.topK.reduce((acc, t) => acc + t.prob, 0)).toBeCloseTo(1, 5);
    });
  });

  it("--stop-at-layer returns that block's resid_pre and no predictions", () => {
    const name = 'vit-odd';
    const out = join(tmp(), 'stop.safetensors');
    const s = ok(prisma(['run', model(name), reference(name), '--stop-at-layer', '1', '--out', out]));
    expect(s.output.name).toBe('blocks.1.hook_resid_pre');
    expect(s.predictions).toBeUndefined();
    const got = readSafetensors(out).tensors.get('blocks.1.hook_resid_pre')!;
    const want = readSafetensors(reference(name)).tensors.get('blocks.1.hook_resid_pre')!;
    expect(absDiff(got.data, want.data).max).toBeLessThanOrEqual(ATOL);
  });

  it('--batch-size: a tensor file and a folder run a batch at a time give what one batch gives', () => {
    const name = 'vit-tiny-cls';
    const inputs = [reference(name), join(FIXTURES, 'images')];
    const dir = tmp();
    const [one, many] = [join(dir, 'one.safetensors'), join(dir, 'many.safetensors')];
    const whole = ok(prisma(['run', model(name), ...inputs, '--cache', '*', '--out', one, '--batch-size', '64']));
    const rows = readSafetensors(reference(name)).tensors.get('pixel_values')!.shape[0]!;
    expect(whole.inputs.length).toBe(rows + 3);
    // Batches of 2 split the tensor file's rows and the folder's three images.
    expect(rows % 2).toBe(1);
    const split = ok(prisma(['run', model(name), ...inputs, '--cache', '*', '--out', many, '--batch-size', '2']));
    // The same summary, to float rounding: a row's products may take another kernel at another batch size.
    const { predictions: wholeTop, ...wholeRest } = whole;
    const { predictions: splitTop, ...splitRest } = split;
    expect({ ...splitRest, written: { ...splitRest.written, path: one } }).toEqual(wholeRest);
    splitTop!.forEach((p, i) => {
      expect(p.input).toBe(wholeTop![i]!.input);
      p.topK.forEach((t, k) => {
        expect(t.index).toBe(wholeTop![i]!.topK[k]!.index);
        expect(Math.abs(t.logit - wholeTop![i]!.topK[k]!.logit)).toBeLessThan(1e-5);
      });
    });
    const [a, b] = [readSafetensors(one), readSafetensors(many)];
    expect(b.metadata).toEqual(a.metadata);
    expect([...b.tensors.keys()]).toEqual([...a.tensors.keys()]);
    for (const [key, t] of a.tensors) {
      const u = b.tensors.get(key)!;
      expect(u.shape, key).toEqual(t.shape);
      expect(u.shape[0], key).toBe(whole.inputs.length);
      expect(absDiff(u.data, t.data).max, key).toBeLessThan(1e-5);
    }
  });

  it('Ctrl-C while activations stream to --out ends the run and leaves no temporary file', async () => {
    const dir = tmp();
    // 3000 rows of the reference image, one forward each: seconds of work.
    const px = readSafetensors(reference('vit-tiny-cls')).tensors.get('pixel_values')!;
    const row = px.data.length / px.shape[0]!;
    const rows = 3000;
    const many = new Float32Array(rows * row);
    for (let i = 0; i < rows; i++) many.set(px.data.subarray(0, row), i * row);
    const input = join(dir, 'many.safetensors');
    await saveTensors(input, [{ name: 'pixel_values', shape: [rows, ...px.shape.slice(1)], data: many }]);
    const out = join(dir, 'out');
    mkdirSync(out);
    // A temporary file of a run killed outright (no such process) is removed; one of a live process stays.
    const orphan = join(out, `.prisma-tmp-acts.safetensors.${2 ** 22 + 7}.00000000`);
    const live = join(out, `.prisma-tmp-acts.safetensors.${process.pid}.00000000`);
    writeFileSync(orphan, 'x');
    writeFileSync(live, 'x');
    const streaming = () => readdirSync(out).some((n) => n.startsWith(`.prisma-tmp-acts.safetensors.`) && !n.endsWith('.00000000'));
    const ended = await spawnAndKillWhen(
      ['run', model('vit-tiny-cls'), input, '--cache', '*', '--batch-size', '1', '--out', join(out, 'acts.safetensors')],
      streaming,
      'no temporary file',
      5,
      60_000,
      'SIGINT',
    );
    expect(ended.signal).toBe('SIGINT');
    expect(readdirSync(out).sort()).toEqual([basename(live)]);
  });

  it('writes nothing without --out', () => {
    const cwd = tmp();
    ok(prisma(['run', model('vit-tiny-cls'), reference('vit-tiny-cls'), '--cache', '*'], {}, cwd));
    expect(readdirSync(cwd)).toEqual([]);
  });
});

/** A .npy file (format 1.0) holding `values` as `descr` ('<f4', '>f4', '<f8', '<i8'). */
function writeNpy(path: string, descr: string, shape: readonly number[], values: ArrayLike<number>): void {
  const size = Number(descr.slice(2));
  const body = Buffer.alloc(values.length * size);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (descr === '<f4') body.writeFloatLE(v, i * 4);
    else if (descr === '>f4') body.writeFloatBE(v, i * 4);
    else if (descr === '<f8') body.writeDoubleLE(v, i * 8);
    else body.writeBigInt64LE(BigInt(Math.round(v)), i * 8);
  }
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')},), }`;
  header += `${' '.repeat(63 - ((10 + header.length) % 64))}\n`;
  const prefix = Buffer.from([0x93, ...Buffer.from('NUMPY'), 1, 0, header.length & 0xff, header.length >> 8]);
  writeFileSync(path, Buffer.concat([prefix, Buffer.from(header, 'latin1'), body]));
}

describe('.npy inputs', () => {
  const cls = model('vit-tiny-cls');
  const px = () => readSafetensors(reference('vit-tiny-cls')).tensors.get('pixel_values')!;
  const logits = (r: CliResult) => (ok(r).predictions ?? []).map((p) => p.topK.map((t) => [t.index, t.logit]));

  it.each(['<f4', '>f4', '<f8'])('%s pixels give the logits of the same pixels in .safetensors, exactly', (descr) => {
    const path = join(tmp(), 'px.npy');
    writeNpy(path, descr, px().shape, px().data);
    expect(logits(prisma(['run', cls, path]))).toEqual(logits(prisma(['run', cls, reference('vit-tiny-cls')])));
  });

  it.each([
    ['integer pixels', '<i8', (d: Float32Array) => d, /dtype '<i8' is not supported; use float32/],
    [
      'NaN pixels',
      '<f4',
      (d: Float32Array) => d.map((v, i) => (i % 7 === 0 ? Number.NaN : v)),
      /tensor 'pixel_values': \d+ of \d+ values are NaN or infinite$/,
    ],
  ] as const)('%s: one error line, exit 1', (_what, descr, edit, pattern) => {
    const path = join(tmp(), 'px.npy');
    writeNpy(path, descr, px().shape, edit(px().data));
    const r = prisma(['run', cls, path]);
    expect(r.code).toBe(1);
    expect(stderrLines(r)).toHaveLength(1);
    expect(stderrLines(r)[0]).toMatch(pattern);
  });

  it('a truncated .npy: one error line, exit 1', () => {
    const path = join(tmp(), 'px.npy');
    writeNpy(path, '<f4', px().shape, px().data);
    writeFileSync(path, readFileSync(path).subarray(0, 300));
    const r = prisma(['run', cls, path]);
    expect(r.code).toBe(1);
    expect(stderrLines(r)[0]).toMatch(/unreadable or truncated data/);
  });
});

describe('bad inputs: exit != 0, one stderr line (+ hint), no output file', () => {
  const cls = model('vit-tiny-cls');
  const image = join(FIXTURES, 'images', 'coffee.png');
  const cases: [string, string[], string][] = [
    ['not an image', ['run', cls, join(FIXTURES, 'bad', 'not-an-image.jpg')], 'E_IMAGE_DECODE'],
    ['truncated png', ['run', cls, join(FIXTURES, 'bad', 'truncated.png')], 'E_IMAGE_DECODE'],
    ['folder with a bad image', ['run', cls, join(FIXTURES, 'bad')], 'E_IMAGE_DECODE'],
    ['missing input', ['run', cls, join(FIXTURES, 'images', 'nope.png')], 'E_INPUT'],
    ['model without config', ['run', join(FIXTURES, 'bad', 'no-config'), image], 'E_MODEL_DIR'],
    ['truncated weights', ['run', join(FIXTURES, 'bad', 'truncated-model'), image], 'E_WEIGHTS_FORMAT'],
    ['text model', ['run', join(FIXTURES, 'bad', 'text-model'), image], 'E_UNSUPPORTED_MODEL'],
    ['missing model dir', ['run', join(FIXTURES, 'models', 'nope'), image], 'E_MODEL_DIR'],
    ['unknown hook', ['run', cls, image, '--cache', 'blocks.*.hook_nothing'], 'E_UNKNOWN_HOOK'],
    ['hook in a missing layer', ['run', cls, image, '--cache', 'blocks.9.hook_resid_post'], 'E_'],
    ['bad layer index', ['run', cls, image, '--stop-at-layer', '7'], 'E_LAYER_RANGE'],
    ['wrong tensor shape', ['run', model('vit-odd'), reference('vit-tiny-cls')], 'E_SHAPE'],
    ['tensor file without pixel_values', ['run', cls, join(FIXTURES, 'reference', 'interventions.safetensors')], 'E_TENSOR_FILE'],
    ['unavailable device', ['run', cls, image, '--device', 'cuda:7'], 'E_DEVICE'],
  ];

  it.each(cases)('%s', (_what, args, code) => {
    const dir = tmp();
    const out = join(dir, 'out.safetensors');
    const r = prisma([...args, '--out', out]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    // A folder's subfolders are named as skipped (issue 21, item 4) before the error line.
    const lines = stderrLines(r).filter((l) => !l.startsWith('prisma: skipped in '));
    expect(lines.length === 1 || (lines.length === 2 && lines[1]!.startsWith('hint: ')), r.stderr).toBe(true);
    expect(lines[0]).toMatch(/^prisma: \S/);
    expect(lines[0]).not.toContain('\u001b[');
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);

    const j = prisma([...args, '--out', out, '--json']);
    expect(j.code).toBe(r.code);
    expect(j.stderr).toBe('');
    const doc = JSON.parse(j.stdout) as { ok: boolean; error: { code: string; message: string } };
    expect(doc.ok).toBe(false);
    expect(doc.error.code.startsWith(code)).toBe(true);
    expect(lines[0]!.startsWith(`prisma: ${doc.error.code}: `)).toBe(true);
    expect(doc.error.message).toBe(lines[0]!.replace(/^prisma: E_[A-Z0-9_]+: /, ''));
  });

  it.each([
    ['no-config', 'E_MODEL_DIR'],
    ['truncated-model', 'E_WEIGHTS_FORMAT'],
    ['text-model', 'E_UNSUPPORTED_MODEL'],
  ])('inspect %s -> %s', (dir, code) => {
    const r = prisma(['inspect', join(FIXTURES, 'bad', dir), '--json']);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as { error: { code: string } }).error.code).toBe(code);
  });
});

describe('output into a closed pipe', () => {
  it('a reader that stops early (`prisma ... | head`) ends the run quietly: exit 0, nothing on stderr', async () => {
    const child = spawn(process.execPath, [BIN, 'inspect', model('vit-tiny-cls'), '--json'], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1' },
    });
    // Close our end before the CLI has started: its first write to stdout meets EPIPE.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});
