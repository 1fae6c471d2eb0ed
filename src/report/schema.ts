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
import type { ReportChecks } from './layouts.js';

export const REPORT_COMMANDS = ['logit-lens', 'patch', 'heads', 'dla', 'ablate'] as const;
export type ReportCommand = (typeof REPORT_COMMANDS)[number];

/** Folder holding the schemas (package root / schemas). */
export const SCHEMA_DIR = join(PACKAGE_ROOT, 'schemas');

/** Reports with a schema: the batch commands', and single reports such as `prisma sae eval`'s. */
export type SchemaName = ReportCommand | 'sae-eval';

export function schemaPath(command: SchemaName): string {
  return join(SCHEMA_DIR, `${command}.schema.json`);
}

let ajv: Ajv | undefined;
const compiled = new Map<SchemaName, ValidateFunction>();

function validator(command: SchemaName): ValidateFunction {
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
export function validateReport(command: SchemaName, report: unknown): void {
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

const resultValidators = new Map<ReportCommand, ValidateFunction>();

/** A validator for one element of the report's `results` (the schema's item, with its definitions). */
function resultValidator(command: ReportCommand): ValidateFunction {
  const have = resultValidators.get(command);
  if (have) return have;
  const schema = validator(command).schema as { definitions?: unknown; properties: { results: { items: object } } };
  const fn = ajv!.compile({ definitions: schema.definitions ?? {}, ...schema.properties.results.items });
  resultValidators.set(command, fn);
  return fn;
}

/**
 * Schema checks for a report whose results are streamed (report/layouts.ts): the report with empty
 * arrays, then each result as it passes. Undefined for commands without a report schema.
 */
export function reportChecks(command: string): ReportChecks | undefined {
  if (!(REPORT_COMMANDS as readonly string[]).includes(command)) return undefined;
  const name = command as ReportCommand;
  return {
    frame: (doc) => validateReport(name, doc),
    result: (result) => {
      const validate = resultValidator(name);
      if (validate(JSON.parse(JSON.stringify(result)))) return;
      const problems = (validate.errors ?? [])
        .slice(0, 3)
        .map((e) => `${e.instancePath || '/'} ${e.message ?? 'is invalid'}`)
        .join('; ');
      throw new PrismaError('E_INTERNAL', `a ${name} result does not match schemas/${name}.schema.json: ${problems}`);
    },
  };
}
