// The GPU kit (bench/gpu/run.sh) in short mode on this CPU, so it cannot rot between GPU lendings:
// the native half is built as it is for the device (no library path in it, cxx11-ABI libtorch),
// the script runs end to end with --device cpu and its one JSON summary says every check passed,
// and what travels to the device (the working tree plus the carried kit) is under 64 MiB.
import { spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';

const LIMIT = 64 * 1024 * 1024;
const FIXTURES = [
  'vit-tiny-cls',
  'vit-tiny-base',
  'vit-odd',
  'clip-tiny',
  'openclip-tiny',
  'openclip-tiny-bin',
  'timm-vit-tiny',
  'timm-vit-gap',
  'dinov2-reg-tiny',
  'dinov2-swiglu-tiny',
  'videomae-tiny',
  'vivit-tiny',
];

interface Check {
  name: string;
  pass: boolean;
}
interface Summary {
  pass: boolean;
  failed: string[];
  mode: string;
  size: { bytes: number; limit_bytes: number; under_limit: boolean };
  checks: Check[];
  python_peers: { ran: boolean; reason: string };
  speed_table: { dtype: string; sweep: string; ours_s?: number; ours_images_per_s?: number }[];
  fidelity: Record<string, { hooks: number; compared: number; max_abs_diff: number }>;
}

interface Build {
  bytes: number;
  needed: string[];
  runpath: boolean;
  cxx11Symbols: number;
}

const buildEnv = JSON.parse(readFileSync(join(ROOT, 'native', '.build-env.json'), 'utf8')) as Record<string, string>;
// A Python with torch (it is asked for nothing else unless it also has transformers, when the Python
// peers run too); PRISMA_KIT_PYTHON picks another.
const python = process.env.PRISMA_KIT_PYTHON ?? (buildEnv.VIRTUAL_ENV ? join(buildEnv.VIRTUAL_ENV, 'bin', 'python') : 'python3');

let build: Build;
let summary: Summary;
let code: number | null;
let work: string;

beforeAll(() => {
  const b = spawnSync(process.execPath, ['bench/gpu/build.mjs'], { cwd: ROOT, encoding: 'utf8', timeout: 1_200_000 });
  if (b.status !== 0) throw new Error(`bench/gpu/build.mjs failed: ${b.stderr.slice(-2000)}`);
  build = JSON.parse(b.stdout.trim().split('\n').at(-1) ?? '') as Build;
  work = mkdtempSync(join(tmpdir(), 'gpu-kit-'));
  const r = spawnSync('bash', ['bench/gpu/run.sh', '--device', 'cpu', '--short'], {
    cwd: ROOT,
    encoding: 'utf8',
    // 35-45 s on an idle machine, over 10 minutes at load 20: the script's own deadline is raised.
    env: { ...process.env, PRISMA_LIBTORCH_LIB: buildEnv.PRISMA_LIBTORCH_LIB, PY: python, WORK: work, KIT_SECONDS: '1500' },
    timeout: 1_600_000,
  });
  code = r.status;
  try {
    summary = JSON.parse(r.stdout) as Summary;
  } catch {
    throw new Error(`run.sh printed no JSON (exit ${r.status}): ${r.stdout.slice(-500)} ${r.stderr.slice(-2000)}`);
  }
}, 1_800_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/**
 * Bytes of what a device call sends: tracked and untracked-not-ignored files, plus the carried kit
 * (a symbolic link travels as a link, so its own size counts).
 */
function travellingBytes(): number {
  const listed = spawnSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' });
  const files = new Set(listed.stdout.split('\0').filter((f) => f.length > 0));
  files.add('bench/gpu/kit/gpu_kit');
  let total = 0;
  for (const f of files) {
    try {
      total += lstatSync(join(ROOT, f)).size;
    } catch {
      // listed by git but deleted in the working tree: it does not travel
    }
  }
  return total;
}

describe('GPU kit, short mode on the CPU', () => {
  it('builds a binary that loads whatever libtorch the machine has', () => {
    expect(build.runpath).toBe(false);
    expect(build.needed).toContain('libtorch_cpu.so');
    expect(build.needed).toContain('libc10.so');
    expect(build.cxx11Symbols).toBeGreaterThan(0);
  });

  it('prints one JSON summary in which every check passes', () => {
    expect(summary.failed).toEqual([]);
    expect(summary.pass).toBe(true);
    expect(code).toBe(0);
    expect(summary.mode).toBe('short');
    expect(summary.checks.length).toBeGreaterThan(40);
    expect(summary.checks.filter((c) => !c.pass)).toEqual([]);
  });

  it('compares every hook of every fixture model, and every dtype', () => {
    for (const name of FIXTURES) {
      const f = summary.fidelity[name];
      expect(f, name).toBeDefined();
      expect(f?.compared, name).toBe(f?.hooks);
      expect(f?.hooks, name).toBeGreaterThan(10);
      for (const dtype of ['bf16', 'f16']) {
        expect(summary.checks.some((c) => c.name.startsWith(`${dtype} ${name}:`) && c.pass)).toBe(true);
      }
    }
    for (const what of ['patch resid_pre', 'patch head z', 'attribution', 'logit lens', 'dla']) {
      expect(summary.checks.filter((c) => c.name.startsWith(what)).length, what).toBeGreaterThanOrEqual(2);
    }
    expect(summary.checks.some((c) => c.name.startsWith('interventions with host tensors'))).toBe(true);
  });

  it('times our side of every row of the speed table', () => {
    for (const dtype of ['fp32', 'bf16']) {
      for (const sweep of ['resid', 'head', 'attribution resid', 'forward']) {
        const row = summary.speed_table.find((r) => r.dtype === dtype && r.sweep === sweep);
        expect(row, `${dtype} ${sweep}`).toBeDefined();
        expect((row?.ours_s ?? row?.ours_images_per_s ?? 0) > 0).toBe(true);
      }
    }
    // The Python peers need transformers, which the test machine's torch may lack: then the summary
    // says why they did not run; with it, their fp32 agreement is among the checks above.
    if (summary.python_peers.ran) {
      expect(summary.checks.filter((c) => c.name.includes('Python on the same card')).length).toBe(4);
    } else {
      expect(summary.python_peers.reason).toMatch(/cannot import transformers/);
    }
  });

  it('travels in under 64 MiB, as the summary states', () => {
    const bytes = travellingBytes();
    expect(summary.size.bytes).toBe(bytes);
    expect(bytes).toBeLessThan(LIMIT);
    expect(summary.size.under_limit).toBe(true);
  });
});
