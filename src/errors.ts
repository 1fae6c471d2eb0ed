/**
 * Typed errors. Everything the library or CLI throws on purpose is a PrismaError with a stable
 * `code` from ERROR_CODES below, an optional one-line `hint` (what to do next) and optional
 * structured `data`. Errors from the native addon arrive as data (a JS Error whose `code`, `hint`
 * and `data` the core set; crates/prisma-core/src/error.rs) and are only re-typed here. The CLI
 * (src/cli/main.ts) turns a PrismaError into one stderr line (or `{ok:false,error}` with --json).
 */

/** Where a code comes from; `native` codes are exactly the core's (test/addon/error-codes.test.ts). */
export type CodeSource = 'native' | 'library' | 'cli' | 'setup';

export interface CodeSpec {
  source: CodeSource;
  /** Process exit status when the CLI ends on this error: 2 for a call the user can fix by changing it, else 1. */
  exit: 1 | 2;
  /** What the code means (docs/architecture.md lists these). */
  meaning: string;
  /** Default hint, used when the error carries none. */
  hint?: string;
}

const INSPECT_LAYERS = 'run `prisma inspect MODEL` to see the number of layers';

/** The one registry of error codes. Never change an existing code's name. */
export const ERROR_CODES = {
  // --- from the core (crates/prisma-core/src/error.rs, `CODES`) ---
  E_MODEL_DIR: {
    source: 'native',
    exit: 1,
    meaning: 'the model folder is missing or not a model',
    hint: 'MODEL must be a folder with config.json and its weights (Hugging Face, timm or open_clip layout), or a hub id ORG/NAME',
  },
  E_CONFIG: { source: 'native', exit: 1, meaning: "a model's or processor's config file is unreadable or inconsistent" },
  E_UNSUPPORTED_MODEL: { source: 'native', exit: 1, meaning: 'the checkpoint is not a supported model family' },
  E_WEIGHTS_MISSING: {
    source: 'native',
    exit: 1,
    meaning: 'a tensor the model needs is not in the checkpoint',
    hint: 'MODEL must be a folder with config.json and its weights (Hugging Face, timm or open_clip layout)',
  },
  E_WEIGHTS_SHAPE: { source: 'native', exit: 1, meaning: "a checkpoint tensor's shape does not match the config" },
  E_WEIGHTS_FORMAT: {
    source: 'native',
    exit: 1,
    meaning: 'the weights file is unreadable, truncated or of an unknown format',
    hint: 'the weights file is unreadable or truncated; download it again',
  },
  E_UNSAFE_PICKLE: { source: 'native', exit: 1, meaning: 'a pickle file would run code when loaded, so it is refused' },
  E_WEIGHTS_NONFINITE: {
    source: 'native',
    exit: 1,
    meaning: 'a weight holds NaN or infinite values',
    hint: 'the checkpoint is broken (diverged training, a bad conversion); pass --allow-nonfinite (library: allowNonfinite) to load it anyway and look at it',
  },
  E_UNKNOWN_HOOK: {
    source: 'native',
    exit: 1,
    meaning: 'a hook name or pattern names no hook of the model',
    hint: 'run `prisma inspect MODEL` to list hook names',
  },
  E_LAYER_RANGE: { source: 'native', exit: 1, meaning: 'a layer index is outside the model', hint: INSPECT_LAYERS },
  E_SHAPE: { source: 'native', exit: 1, meaning: "a tensor's shape does not fit the model or the operation" },
  E_INTERVENTION: { source: 'native', exit: 1, meaning: 'an intervention spec is malformed or does not fit its hook' },
  E_TENSOR_FILE: { source: 'native', exit: 1, meaning: 'a .npy or .safetensors file is unreadable' },
  E_DEVICE: {
    source: 'native',
    exit: 1,
    meaning: 'the device is unknown or unavailable',
    hint: 'use --device cpu (library: device), or check that CUDA and a CUDA build of libtorch are available',
  },
  E_DTYPE: { source: 'native', exit: 1, meaning: 'the dtype is unknown or unsupported', hint: 'use --dtype f32, f16 or bf16' },
  E_IO: { source: 'native', exit: 1, meaning: 'a file or folder could not be read or written' },
  E_ARGUMENT: {
    source: 'native',
    exit: 2,
    meaning:
      'a well-formed value that the library refuses for this model or call (a class out of range, a head split of a site without heads)',
  },
  E_OUT_OF_MEMORY: {
    source: 'native',
    exit: 1,
    meaning: 'libtorch could not allocate memory for what was asked',
    hint: 'use fewer inputs at once (--batch-size), fewer cached hooks, a smaller --image-size or --dtype f16',
  },
  E_CACHE_MISMATCH: {
    source: 'native',
    exit: 1,
    meaning:
      'an activation cache (or one of its shards) was made for other activations: another model, hook, token selection, dtype or inputs',
    hint: 'write the cache into a new --out folder, or pass the hook the cache holds',
  },
  E_CACHE_CORRUPT: {
    source: 'native',
    exit: 1,
    meaning: 'an activation cache file is truncated, missing or not a cache shard',
    hint: 'delete the named shard and rerun the same `prisma sae cache` command to write it again',
  },
  E_UNSUPPORTED: {
    source: 'native',
    exit: 1,
    meaning: 'a valid request the technique cannot honour (an analysis that runs its own forwards, on a model with an SAE spliced in)',
    hint: 'run it without --sae; prisma run, classify, heads and ablate --ablate take --sae',
  },
  E_INTERNAL: {
    source: 'native',
    exit: 1,
    meaning: 'a bug in vit-prisma',
    hint: 'this is a bug in vit-prisma; please report it with the command you ran',
  },

  // --- from the TypeScript library ---
  E_IMAGE_DECODE: { source: 'library', exit: 1, meaning: 'an image file cannot be decoded' },
  E_INPUT: { source: 'library', exit: 1, meaning: 'an input is missing, empty, of an unknown kind, or not what the call takes' },
  E_PREPROCESS_CONFIG: { source: 'library', exit: 1, meaning: "the model's preprocessing config cannot be used" },
  E_DATASET: { source: 'library', exit: 1, meaning: 'a dataset file or its labels are missing or malformed' },
  E_HUB: { source: 'library', exit: 1, meaning: 'the model hub cannot be reached or refuses a download' },
  E_SHARD_MISMATCH: { source: 'library', exit: 1, meaning: 'shard folders given to merge do not belong to one job' },
  E_SHARD_MISSING: { source: 'library', exit: 1, meaning: 'a shard of the job is missing' },

  // --- from the command line ---
  E_USAGE: {
    source: 'cli',
    exit: 2,
    meaning: 'the command line cannot be parsed: an unknown command or flag, a missing argument, a malformed flag value',
  },

  // --- from set-up (src/setup/) ---
  E_NATIVE_MISSING: {
    source: 'setup',
    exit: 1,
    meaning: 'no native addon for this platform, and none can be built',
    hint: '`prisma doctor` shows what is set up (in a clone: `npm run setup`)',
  },
  E_NATIVE_LOAD: {
    source: 'setup',
    exit: 1,
    meaning: 'the native addon does not load',
    hint: '`prisma doctor` shows what is set up (in a clone: `npm run setup`)',
  },
  E_NATIVE_MISMATCH: { source: 'setup', exit: 1, meaning: 'the native addon was built for another libtorch' },
  E_LIBTORCH: { source: 'setup', exit: 1, meaning: 'libtorch is missing or unusable' },
  E_LIBTORCH_VERSION: { source: 'setup', exit: 1, meaning: 'libtorch is the wrong release' },
  E_CACHE: { source: 'setup', exit: 1, meaning: 'the cache folder cannot be written' },
} as const satisfies Record<string, CodeSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;

const codesFrom = (source: CodeSource): ErrorCode[] =>
  (Object.keys(ERROR_CODES) as ErrorCode[]).filter((c) => ERROR_CODES[c].source === source);

/** Codes produced by the native addon: the core's `CODES`, in its order. */
export const NATIVE_CODES: readonly ErrorCode[] = codesFrom('native');

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

export interface PrismaErrorOptions {
  hint?: string;
  data?: unknown;
  cause?: unknown;
}

export class PrismaError extends Error {
  override readonly name = 'PrismaError';
  readonly code: ErrorCode;
  readonly hint?: string;
  readonly data?: unknown;

  constructor(code: ErrorCode, message: string, options: PrismaErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options.hint !== undefined) this.hint = options.hint;
    if (options.data !== undefined) this.data = options.data;
  }

  toJSON(): ErrorJson {
    return errorJson(this);
  }
}

/** A command line the CLI cannot parse (exit code 2). Library code throws E_ARGUMENT instead. */
export function usageError(message: string, hint?: string): PrismaError {
  return new PrismaError('E_USAGE', message, hint === undefined ? {} : { hint });
}

/** A value the library refuses (exit code 2 from the CLI), in wording that fits library and CLI. */
export function argumentError(message: string, hint?: string): PrismaError {
  return new PrismaError('E_ARGUMENT', message, hint === undefined ? {} : { hint });
}

/**
 * E_ARGUMENT for one option of a library call, worded for the library (`option` is its name there);
 * the CLI names its flag for it (src/cli/main.ts, OPTION_FLAGS), from `data.option`.
 */
export function optionError(option: string, message: string, hint?: string): PrismaError {
  return new PrismaError('E_ARGUMENT', message, { data: { option }, ...(hint === undefined ? {} : { hint }) });
}

export function isPrismaError(err: unknown): err is PrismaError {
  return err instanceof PrismaError;
}

export interface ErrorJson {
  code: ErrorCode;
  message: string;
  hint?: string;
  /** Structured context (paths, tensor names, shapes, counts), when the error has it. */
  data?: unknown;
}

export function errorJson(err: PrismaError): ErrorJson {
  const out: ErrorJson = { code: err.code, message: err.message };
  if (err.hint !== undefined) out.hint = err.hint;
  if (err.data !== undefined) out.data = err.data;
  return out;
}

/** Collapse a message to a single line (native or library messages may contain newlines). */
export function oneLine(text: string): string {
  return text.replace(/\s*\r?\n\s*/g, '; ').trim();
}

/**
 * Turn anything thrown into a PrismaError. An error that already carries a registered `code` (the
 * native addon's) keeps it, with its `hint` and `data`; anything else becomes E_INTERNAL with its
 * message, so the CLI still prints exactly one line.
 */
export function toPrismaError(err: unknown): PrismaError {
  if (err instanceof PrismaError) return err;
  if (err instanceof Error) {
    const fields = err as Error & { code?: unknown; hint?: unknown; data?: unknown };
    const options: PrismaErrorOptions = { cause: err };
    if (!isErrorCode(fields.code)) return new PrismaError('E_INTERNAL', err.message || String(err), options);
    const code = fields.code;
    const hint = typeof fields.hint === 'string' ? fields.hint : hintFor(code);
    if (hint !== undefined) options.hint = hint;
    if (fields.data !== undefined && fields.data !== null) options.data = fields.data;
    return new PrismaError(code, oneLine(err.message) || code, options);
  }
  return new PrismaError('E_INTERNAL', String(err));
}

/** The default hint of a code (ERROR_CODES), if it has one. */
export function hintFor(code: ErrorCode): string | undefined {
  const spec: CodeSpec = ERROR_CODES[code];
  return spec.hint;
}

/** The CLI's exit status for an error: 2 for E_USAGE and E_ARGUMENT, 1 otherwise. */
export function exitStatusFor(code: ErrorCode): 1 | 2 {
  return ERROR_CODES[code].exit;
}
