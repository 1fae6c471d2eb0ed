/**
 * How a folder job's report is laid out from its result lines (lines.ts): the fields that do not
 * depend on the inputs (`fixed`, the same in every shard, kept in shard.json) plus what the lines
 * give, in the order the report has always had. The command and `prisma merge` both build the
 * report here, from `results.jsonl`, so a merged report is byte for byte the one-process one, and
 * neither holds every result: result arrays are streamed (json-stream.ts).
 */
import { PrismaError } from '../errors.js';
import type { Figure } from './figures.js';
import { Later, StreamedArray } from './json-stream.js';
import type { ErrorLine, OkLine, ResultLine } from './lines.js';

export interface InputError {
  input: string;
  code: string;
  message: string;
}

/** What one pass over the lines tells: the files in order, the inputs that succeeded, the errors. */
export interface LinesDigest {
  /** Every file, in order (a file with several rows once). */
  files: string[];
  /** Labels of the inputs that succeeded, in order. */
  okInputs: string[];
  errors: InputError[];
  resumed: number;
  computed: number;
}

export class DigestBuilder {
  readonly digest: LinesDigest = { files: [], okInputs: [], errors: [], resumed: 0, computed: 0 };
  private lastPosition = -1;

  add(line: ResultLine): void {
    if (line.position !== this.lastPosition) {
      this.digest.files.push(line.file);
      this.lastPosition = line.position;
    }
    if (line.ok) {
      this.digest.okInputs.push(line.input);
      if (line.resumed) this.digest.resumed += 1;
      else this.digest.computed += 1;
    } else {
      this.digest.errors.push({ input: line.input, code: line.error.code, message: line.error.message });
    }
  }
}

export type Lines = () => AsyncIterable<ResultLine>;

/** Checks of the parts of a streamed report (schema.ts supplies them for the analysis commands). */
export interface ReportChecks {
  /** The report with its streamed arrays empty. */
  frame(doc: unknown): void;
  /** One element of `results`. */
  result(result: unknown): void;
}

async function* okLines(lines: Lines): AsyncGenerator<OkLine> {
  for await (const line of lines()) if (line.ok) yield line;
}

/** A report field computed from every result, one at a time. */
interface Aggregate {
  add(result: unknown): void;
  value(): unknown;
}

interface PatchScore {
  layer: number;
  site: string;
  correct: number;
  labelled: number;
  accuracy: number | null;
}

/** logit-lens --patch-labels: per layer, correct and labelled patches summed over every image. */
function patchLabelAccuracy(): Aggregate {
  let sum: PatchScore[] | null = null;
  return {
    add(result) {
      const scores = (result as { patchLabels?: PatchScore[] | null }).patchLabels;
      if (!Array.isArray(scores)) return;
      sum = (sum ?? scores.map((s) => ({ ...s, correct: 0, labelled: 0 }))).map((s, i) => ({
        ...s,
        correct: s.correct + scores[i]!.correct,
        labelled: s.labelled + scores[i]!.labelled,
      }));
    },
    value: () => sum?.map((s) => ({ ...s, accuracy: s.labelled ? s.correct / s.labelled : null })) ?? null,
  };
}

const AGGREGATES: Record<string, () => Aggregate> = { patchLabelAccuracy };

// ---------------------------------------------------------------------------------------------
// The analysis commands (logit-lens, heads, dla, ablate)

export interface AnalysisFixed {
  /** schemaVersion, ok, command, generator, model: the fields before `inputs`. */
  base: Record<string, unknown>;
  options: unknown;
  /** Fields after `figures` computed from every result (names in AGGREGATES). */
  aggregates: string[];
}

export function analysisReport(fixed: AnalysisFixed, digest: LinesDigest, lines: Lines, checks?: ReportChecks): unknown {
  for (const name of fixed.aggregates) {
    if (!(name in AGGREGATES)) throw new PrismaError('E_INTERNAL', `unknown report aggregate '${name}'`);
  }
  const aggregates = new Map<string, Aggregate>();
  const results = new StreamedArray(async function* () {
    for (const name of fixed.aggregates) aggregates.set(name, AGGREGATES[name]!());
    for await (const line of okLines(lines)) {
      const result = {
        ...(line.result as object),
        input: line.input,
        name: line.name ?? '',
        figures: (line.figures ?? []).map((f) => f.path),
      };
      checks?.result(result);
      for (const a of aggregates.values()) a.add(line.result);
      yield result;
    }
  });
  const figures = new StreamedArray(async function* () {
    for await (const line of okLines(lines)) yield* (line.figures ?? []) as Figure[];
  });
  const doc: Record<string, unknown> = {
    ...fixed.base,
    inputs: digest.files,
    options: fixed.options,
    results,
    errors: digest.errors,
    resumed: digest.resumed,
    computed: digest.computed,
    figures,
  };
  for (const name of fixed.aggregates) doc[name] = new Later(() => aggregates.get(name)?.value() ?? null);
  checks?.frame({ ...doc, results: [], figures: [], ...Object.fromEntries(fixed.aggregates.map((n) => [n, null])) });
  return doc;
}

// ---------------------------------------------------------------------------------------------
// classify

export interface ClassifyFixed {
  head: Record<string, unknown>;
}

export function classifyReport(fixed: ClassifyFixed, digest: LinesDigest, lines: Lines): unknown {
  return {
    ...fixed.head,
    results: new StreamedArray(async function* () {
      for await (const line of okLines(lines)) yield { input: line.input, ...(line.result as object) };
    }),
    errors: digest.errors,
  };
}

// ---------------------------------------------------------------------------------------------
// run

export interface RunTensor {
  name: string;
  /** Without the row axis when `perInput`. */
  shape: number[];
  /** One row per input (the rows axis is the number of inputs that succeeded). */
  perInput: boolean;
}

export interface RunFixed {
  model: string;
  output: RunTensor;
  cached: string[];
  /** Whether each line's result carries top-k predictions. */
  predictions: boolean;
  /** The activations file (relative to the output folder) and its tensors. */
  written?: { path: string; tensors: RunTensor[] };
}

export function fullShape(t: RunTensor, rows: number): number[] {
  return t.perInput ? [rows, ...t.shape] : [...t.shape];
}

export function runReport(fixed: RunFixed, digest: LinesDigest, lines: Lines): unknown {
  const rows = digest.okInputs.length;
  return {
    ok: true,
    schemaVersion: 1,
    model: fixed.model,
    inputs: digest.okInputs,
    output: { name: fixed.output.name, shape: fullShape(fixed.output, rows) },
    cached: fixed.cached,
    predictions: fixed.predictions
      ? new StreamedArray(async function* () {
          for await (const line of okLines(lines)) yield { input: line.input, topK: (line.result as { topK: unknown }).topK };
        })
      : undefined,
    written: fixed.written && {
      path: fixed.written.path,
      tensors: fixed.written.tensors.map((t) => ({ name: t.name, shape: fullShape(t, rows) })),
    },
    errors: digest.errors,
  };
}

// ---------------------------------------------------------------------------------------------

export type LayoutName = 'analysis' | 'classify' | 'run';

/** The report of layout `name` (for `prisma merge`, which knows the layout from shard.json). */
export function layoutReport(name: string, fixed: unknown, digest: LinesDigest, lines: Lines, checks?: ReportChecks): unknown {
  switch (name) {
    case 'analysis':
      return analysisReport(fixed as AnalysisFixed, digest, lines, checks);
    case 'classify':
      return classifyReport(fixed as ClassifyFixed, digest, lines);
    case 'run':
      return runReport(fixed as RunFixed, digest, lines);
    default:
      throw new PrismaError('E_SHARD_MISMATCH', `unknown report layout '${name}' (a newer vit-prisma wrote these shards)`);
  }
}

export type { ErrorLine, OkLine };
