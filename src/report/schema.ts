/**
 * Report validation. Each command's report has a JSON Schema in `schemas/<command>.schema.json`
 * (draft-07, versioned by `schemaVersion`); a report that fails its schema is a bug in
 * vit-prisma (E_INTERNAL), caught before anything is printed or written.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Ajv, type ValidateFunction } from 'ajv';

import { PrismaError } from '../errors.js';
import { PACKAGE_ROOT } from '../version.js';

export const REPORT_COMMANDS = ['logit-lens', 'patch', 'heads', 'dla', 'ablate'] as const;
export type ReportCommand = (typeof REPORT_COMMANDS)[number];

/** Folder holding the schemas (package root / schemas). */
export const SCHEMA_DIR = join(PACKAGE_ROOT, 'schemas');

export function schemaPath(command: ReportCommand): string {
  return join(SCHEMA_DIR, `${command}.schema.json`);
}

let ajv: Ajv | undefined;
const compiled = new Map<ReportCommand, ValidateFunction>();

function validator(command: ReportCommand): ValidateFunction {
  const have = compiled.get(command);
  if (have) return have;
  let schema: unknown;
  try {
    schema = JSON.parse(readFileSync(schemaPath(command), 'utf8'));
  } catch (err) {
    throw new PrismaError('E_INTERNAL', `cannot read the ${command} report schema: ${(err as Error).message}`);
  }
  // strictRequired off: the ablate schema's if/then lists properties defined at the item level.
  ajv ??= new Ajv({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
  let fn: ValidateFunction;
  try {
    fn = ajv.compile(schema as object);
  } catch (err) {
    throw new PrismaError('E_INTERNAL', `the ${command} report schema does not compile: ${(err as Error).message}`);
  }
  compiled.set(command, fn);
  return fn;
}

/** Throw E_INTERNAL (naming the first few violations) unless `report` matches its schema. */
export function validateReport(command: ReportCommand, report: unknown): void {
  const validate = validator(command);
  // Validate what would be written (JSON.stringify drops undefined fields and turns NaN into null).
  const doc: unknown = JSON.parse(JSON.stringify(report));
  if (validate(doc)) return;
  const problems = (validate.errors ?? [])
    .slice(0, 3)
    .map((e) => `${e.instancePath || '/'} ${e.message ?? 'is invalid'}`)
    .join('; ');
  throw new PrismaError('E_INTERNAL', `the ${command} report does not match schemas/${command}.schema.json: ${problems}`);
}
