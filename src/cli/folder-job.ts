/**
 * Folder jobs at scale, shared by every command that takes a list of inputs (run, classify and the
 * analysis commands): `--shard k/n` picks this process's part of the input list (src/shard.ts);
 * every input that finishes becomes one result line (report/lines.ts), appended to
 * OUT/results.jsonl and, with `--jsonl`, printed to stdout at once; the report is laid out from
 * the lines (report/layouts.ts), so neither the report nor --jsonl holds every result; a shard
 * writes OUT/shard.json last (shard-manifest.ts), which `prisma merge` checks before combining.
 */
import { readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { Option } from 'commander';

import { PrismaError, isErrorCode, usageError } from '../errors.js';
import { RESULTS_FILE, REPORT_FILE } from '../merge.js';
import type { Model } from '../model.js';
import { resolveJson, writeJsonStream, writeJsonStreamAtomic } from '../report/json-stream.js';
import { DigestBuilder, layoutReport, type LayoutName, type Lines, type LinesDigest } from '../report/layouts.js';
import { formatLine, LinesFile, readLines, type ResultLine } from '../report/lines.js';
import { reportChecks } from '../report/schema.js';
import { formatShard, parseShard, selectShard, type Shard, type ShardEntry } from '../shard.js';
import {
  hashJson,
  inputsFingerprint,
  MANIFEST_FILE,
  MANIFEST_KIND,
  PARTITION,
  type ShardManifest,
  writeManifest,
} from '../shard-manifest.js';
import { VERSION } from '../version.js';
import type { CommandContext } from './context.js';
import type { StreamLike } from './ui/style.js';
import { argParser } from './commands/common.js';

/** `--shard k/n`, for every command that takes a list of inputs (also the SAE cache and feature passes). */
export function shardOption(): Option {
  return new Option(
    '--shard <k/n>',
    'run shard k of n (k from 0 to n-1: a Slurm array or Kubernetes completion index) into its own --out folder; `prisma merge` combines them',
  ).argParser(argParser((v) => parseShard(v)));
}

/** `--jsonl`: one result line per input on stdout as it finishes. */
export function jsonlOption(): Option {
  return new Option(
    '--jsonl',
    'print one JSON line per input as it finishes (failed inputs as lines with their error code) instead of the report',
  );
}

export interface FolderJobFlags {
  shard?: Shard;
  jsonl?: boolean;
  out?: string;
  resume?: boolean;
  json?: boolean;
}

/** Checks of --shard / --jsonl that need no model. */
export function checkFolderFlags(flags: FolderJobFlags): void {
  if (flags.shard && flags.out === undefined && !flags.jsonl) {
    throw usageError(
      `--shard ${formatShard(flags.shard)} needs --out DIR`,
      'each shard writes its own folder (e.g. --out out/shards/K); prisma merge OUT DIR... combines them',
    );
  }
}

/** The input list, each input with its shard key (see src/shard.ts). */
export interface InputList {
  files: string[];
  keys: string[];
}

/** This process's inputs: all of them, or shard k's, each with its position in the whole list. */
export function selectInputs(list: InputList, shard: Shard | undefined): ShardEntry<string>[] {
  if (!shard) return list.files.map((item, position) => ({ item, position }));
  return selectShard(list.files, list.keys, shard);
}

/** Writes to a stream, waiting when its buffer is full (stdout piped to a slower reader: constant memory). */
async function writeWaiting(stream: StreamLike, text: string): Promise<void> {
  const ok = stream.write(text);
  const s = stream as StreamLike & { once?: (event: string, cb: () => void) => unknown };
  if (ok === false && typeof s.once === 'function') await new Promise<void>((done) => s.once!('drain', () => done()));
}

/**
 * Where result lines go as inputs finish: OUT/results.jsonl (with --out), stdout (--jsonl), and
 * memory when neither a file nor --jsonl keeps them and a report is still wanted.
 */
export class LineSink {
  readonly digest = new DigestBuilder();
  private file: LinesFile | undefined;
  private kept: ResultLine[] | undefined;
  /** Inputs (files) with at least one line. */
  finished = 0;
  private lastPosition = -1;

  constructor(
    private readonly out: string | undefined,
    private readonly stdout: StreamLike | undefined,
    keep: boolean,
  ) {
    if (out === undefined && keep) this.kept = [];
  }

  async open(): Promise<void> {
    if (this.out === undefined) return;
    this.file = new LinesFile(join(this.out, RESULTS_FILE));
    await this.file.open();
  }

  async add(line: ResultLine): Promise<void> {
    const text = formatLine(line);
    this.digest.add(line);
    if (line.position !== this.lastPosition) {
      this.finished += 1;
      this.lastPosition = line.position;
    }
    await this.file?.write(text);
    this.kept?.push(line);
    if (this.stdout) await writeWaiting(this.stdout, `${text}\n`);
  }

  async finish(): Promise<void> {
    await this.file?.finish();
  }

  async abort(): Promise<void> {
    await this.file?.abort();
  }

  /** The lines again, in order (from the file when there is one); undefined when none were kept. */
  lines(): Lines | undefined {
    if (this.file) {
      const path = this.file.path;
      return async function* () {
        for await (const { line } of readLines(path)) yield line;
      };
    }
    const kept = this.kept;
    if (!kept) return undefined;
    return async function* () {
      yield* kept;
    };
  }
}

/** What identifies the model for shard fingerprints: the same folder, architecture, device, dtype and classes. */
export function modelIdentity(model: Model): unknown {
  const i = model.info;
  return {
    dir: resolve(i.modelDir),
    architecture: i.architecture,
    family: i.family,
    nLayers: i.nLayers,
    imageSize: i.imageSize,
    device: i.device,
    dtype: i.dtype,
    labels: i.labels,
  };
}

export interface ShardSpec {
  command: string;
  shard: Shard;
  files: readonly string[];
  /** Inputs in this shard. */
  inShard: number;
  model: Model;
  /** Everything that changes the results. */
  key: unknown;
  layout: LayoutName;
  fixed: unknown;
  outputs?: string[];
}

export function shardManifest(spec: ShardSpec): ShardManifest {
  return {
    schemaVersion: 1,
    kind: MANIFEST_KIND,
    generator: `vit-prisma ${VERSION}`,
    command: spec.command,
    shard: spec.shard,
    partition: PARTITION,
    fingerprint: {
      model: hashJson(modelIdentity(spec.model)),
      options: hashJson({ command: spec.command, key: spec.key }),
      inputs: inputsFingerprint(spec.files),
    },
    inputs: { total: spec.files.length, shard: spec.inShard },
    report: { layout: spec.layout, fixed: spec.fixed },
    outputs: spec.outputs ?? [],
  };
}

/**
 * Before a run into `out`: an earlier shard's manifest there must be this shard's (a folder is one
 * shard's), and it is removed, so that the folder reads as unfinished until this run writes it
 * again. With `keepIfFinished`, a manifest of this very shard (same command, model, options and
 * inputs) is kept and true returned: the shard is already done (--resume of a finished shard).
 */
export async function claimOutFolder(
  out: string,
  shard: Shard | undefined,
  expect?: ShardManifest,
  keepIfFinished = false,
): Promise<boolean> {
  let earlier: ShardManifest;
  try {
    earlier = JSON.parse(await readFile(join(out, MANIFEST_FILE), 'utf8')) as ShardManifest;
  } catch {
    return false;
  }
  const was = earlier.shard;
  if (!shard || !was || was.index !== shard.index || was.count !== shard.count) {
    throw new PrismaError(
      'E_SHARD_MISMATCH',
      `${out} holds shard ${was ? formatShard(was) : '?'}; this run is ${shard ? `shard ${formatShard(shard)}` : 'not a shard'}`,
      { hint: 'give each shard its own --out folder, with the same n for every shard' },
    );
  }
  const same =
    expect !== undefined &&
    earlier.command === expect.command &&
    earlier.fingerprint?.model === expect.fingerprint.model &&
    earlier.fingerprint?.options === expect.fingerprint.options &&
    earlier.fingerprint?.inputs === expect.fingerprint.inputs;
  if (same && keepIfFinished) return true;
  await unlink(join(out, MANIFEST_FILE)).catch(() => {});
  return false;
}

export interface FinishSpec {
  command: string;
  layout: LayoutName;
  fixed: unknown;
  sink: LineSink;
  flags: FolderJobFlags;
  ctx: CommandContext;
  /** Written as shard.json last, with --shard. */
  manifest?: ShardManifest;
}

/** How a folder job ended: the report (resolved, when one is wanted in memory) and the digest. */
export interface FinishedJob {
  digest: LinesDigest;
  /** The report as a plain value; undefined with --jsonl or --shard (nothing holds every result). */
  report: unknown;
}

/**
 * Ends a folder job: results.jsonl complete, report.json laid out from it (streamed), shard.json
 * last. With --shard, stdout gets one summary line (or a small JSON object with --json); with
 * --jsonl nothing more; otherwise the report is resolved for the command to print.
 */
export async function finishFolderJob(spec: FinishSpec): Promise<FinishedJob> {
  const { sink, flags, ctx } = spec;
  await sink.finish();
  const digest = sink.digest.digest;
  const checks = reportChecks(spec.command);
  const lines = sink.lines();
  const doc = () => layoutReport(spec.layout, spec.fixed, digest, lines ?? async function* () {}, checks);
  if (flags.out !== undefined) await writeJsonStreamAtomic(join(flags.out, REPORT_FILE), doc());
  if (spec.manifest && flags.out !== undefined) await writeManifest(flags.out, spec.manifest);
  if (digest.errors.length > 0) ctx.partial = true;
  if (flags.shard && !flags.jsonl) {
    const summary = {
      ok: true,
      command: spec.command,
      shard: formatShard(flags.shard),
      out: flags.out,
      inputs: digest.files.length,
      results: digest.okInputs.length,
      errors: digest.errors.length,
    };
    if (flags.json) await writeJsonStream(summary, (c) => writeWaiting(ctx.io.stdout, c)).then(() => writeWaiting(ctx.io.stdout, '\n'));
    else
      await writeWaiting(
        ctx.io.stdout,
        `${spec.command} shard ${summary.shard}: ${summary.inputs} inputs, ${summary.results} results, ${summary.errors} failed, in ${flags.out}\n`,
      );
  }
  if (flags.shard || flags.jsonl || !lines) return { digest, report: undefined };
  return { digest, report: await resolveJson(doc()) };
}

/**
 * The error to end with when every input failed (exit 1, as a one-process run does); a shard whose
 * inputs all failed still finished (exit 3: its report and lines say why), so the merge can run.
 */
export function allFailed(digest: LinesDigest, flags: FolderJobFlags): PrismaError | undefined {
  if (flags.shard || digest.errors.length === 0 || digest.okInputs.length > 0) return undefined;
  const first = digest.errors[0]!;
  const more = digest.errors.length > 1 ? ` (all ${digest.errors.length} inputs failed)` : '';
  return new PrismaError(isErrorCode(first.code) ? first.code : 'E_INTERNAL', `${first.message}${more}`);
}
