/** Checks on analysis reports: schema validation (a separate ajv instance) and figure files. */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Ajv, type ValidateFunction } from 'ajv';
import sharp from 'sharp';
import { expect } from 'vitest';

import { BIN, FIXTURES, ROOT, prisma, type CliResult } from './cli.js';

const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
const validators = new Map<string, ValidateFunction>();

export function validateSchema(command: string, doc: unknown): void {
  let v = validators.get(command);
  if (!v) {
    v = ajv.compile(JSON.parse(readFileSync(join(ROOT, 'schemas', `${command}.schema.json`), 'utf8')) as object);
    validators.set(command, v);
  }
  const ok = v(doc);
  expect(ok, JSON.stringify(v.errors?.slice(0, 5))).toBe(true);
}

export interface FigureEntry {
  path: string;
  kind: string;
  format: 'png' | 'html';
  width?: number;
  height?: number;
}

/** Every listed figure exists; PNGs are valid, of the listed size, and not a single colour. */
export async function checkFigures(outDir: string, figures: FigureEntry[]): Promise<void> {
  for (const f of figures) {
    const path = join(outDir, ...f.path.split('/'));
    expect(existsSync(path), path).toBe(true);
    if (f.format === 'png') {
      const img = sharp(path);
      const meta = await img.metadata();
      expect(meta.format, path).toBe('png');
      expect(meta.width, path).toBe(f.width);
      expect(meta.height, path).toBe(f.height);
      expect(meta.width!).toBeGreaterThan(100);
      const stats = await img.stats();
      const spread = Math.max(...stats.channels.slice(0, 3).map((c) => c.stdev));
      expect(spread, `${path} looks blank`).toBeGreaterThan(5);
    } else {
      const html = readFileSync(path, 'utf8');
      expect(html).toMatch(/^<!doctype html>/);
      expect(html).toMatch(/<canvas/);
      expect(html).toMatch(/data:image\/png;base64,/);
      // self-contained: nothing fetched from the network
      expect(html).not.toMatch(/(src|href)=["']?(https?:)?\/\//);
    }
  }
}

/** Spawn the CLI with stdin text. */
export function prismaWithInput(args: string[], input: string): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1' },
    input,
    timeout: 120_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// Fixture paths and the spawn-and-check step shared by the analysis command tests.
export const model = (name: string) => join(FIXTURES, 'models', name);
export const image = (name: string) => join(FIXTURES, 'images', name);
export const IMAGES = join(FIXTURES, 'images');
export const CLS = model('vit-tiny-cls');
export const ODD = model('vit-odd');
export const tmp = () => mkdtempSync(join(tmpdir(), 'prisma-analysis-'));

export interface Report {
  schemaVersion: number;
  ok: boolean;
  command: string;
  inputs: string[];
  errors: { input: string; code: string; message: string }[];
  resumed: number;
  computed: number;
  figures: FigureEntry[];
  results?: Record<string, unknown>[];
  result?: Record<string, unknown>;
  [k: string]: unknown;
}

/** Run with --json --out, check exit 0, schema, report.json == stdout, figures. */
export async function runReport(command: string, args: string[], expectedCode = 0): Promise<{ doc: Report; out: string; r: CliResult }> {
  const out = tmp();
  const r = prisma([command, ...args, '--out', out, '--json']);
  expect(r.code, r.stdout + r.stderr).toBe(expectedCode);
  expect(r.stderr).toBe('');
  const doc = JSON.parse(r.stdout) as Report;
  expect(doc.schemaVersion).toBe(1);
  expect(doc.command).toBe(command);
  validateSchema(command, doc);
  const written = JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')) as Report;
  expect(written).toEqual(doc);
  await checkFigures(out, doc.figures);
  return { doc, out, r };
}
