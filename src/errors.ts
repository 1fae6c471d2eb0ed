/**
 * Typed errors. Everything the library or CLI throws on purpose is a PrismaError with a stable
 * `code` (E_…), an optional one-line `hint` (what to do next) and optional structured `data`.
 * The CLI (src/cli/main.ts) turns them into one stderr line (or `{ok:false,error}` with --json).
 */

/** Codes produced by the native addon (see docs/native-api.md). */
export const NATIVE_CODES = [
  'E_MODEL_DIR',
  'E_CONFIG',
  'E_UNSUPPORTED_MODEL',
  'E_WEIGHTS_MISSING',
  'E_WEIGHTS_SHAPE',
  'E_WEIGHTS_FORMAT',
  'E_WEIGHTS_NONFINITE',
  'E_UNKNOWN_HOOK',
  'E_LAYER_RANGE',
  'E_SHAPE',
  'E_INTERVENTION',
  'E_TENSOR_FILE',
  'E_DEVICE',
  'E_DTYPE',
  'E_IO',
  'E_ARGUMENT',
  'E_INTERNAL',
] as const;

/** Codes produced by the TypeScript layer. */
export const TS_CODES = [
  'E_USAGE',
  'E_NATIVE_MISSING',
  'E_NATIVE_LOAD',
  'E_IMAGE_DECODE',
  'E_INPUT',
  'E_PREPROCESS_CONFIG',
  'E_SHARD_MISMATCH',
  'E_SHARD_MISSING',
  'E_HUB',
  // Set-up (src/setup/): libtorch missing or unusable, the wrong release, an addon built for
  // another libtorch, a cache directory that cannot be written.
  'E_LIBTORCH',
  'E_LIBTORCH_VERSION',
  'E_NATIVE_MISMATCH',
  'E_CACHE',
] as const;

export type ErrorCode = (typeof NATIVE_CODES)[number] | (typeof TS_CODES)[number];

export interface PrismaErrorOptions {
  hint?: string;
  data?: unknown;
  cause?: unknown;
}

export class PrismaError extends Error {
  override readonly name = 'PrismaError';
  readonly code: string;
  readonly hint?: string;
  readonly data?: unknown;

  constructor(code: string, message: string, options: PrismaErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options.hint !== undefined) this.hint = options.hint;
    if (options.data !== undefined) this.data = options.data;
  }

  toJSON(): ErrorJson {
    return errorJson(this);
  }
}

/** A mistake in how the CLI or API was called (exit code 2). */
export function usageError(message: string, hint?: string): PrismaError {
  return new PrismaError('E_USAGE', message, hint === undefined ? {} : { hint });
}

export function isPrismaError(err: unknown): err is PrismaError {
  return err instanceof PrismaError;
}

export interface ErrorJson {
  code: string;
  message: string;
  hint?: string;
}

export function errorJson(err: PrismaError): ErrorJson {
  const out: ErrorJson = { code: err.code, message: err.message };
  if (err.hint !== undefined) out.hint = err.hint;
  return out;
}

/** Collapse a message to a single line (native or library messages may contain newlines). */
export function oneLine(text: string): string {
  return text.replace(/\s*\r?\n\s*/g, '; ').trim();
}

/**
 * Turn anything thrown into a PrismaError. Unknown errors become E_INTERNAL with their message,
 * so the CLI still prints exactly one line.
 */
export function toPrismaError(err: unknown): PrismaError {
  if (err instanceof PrismaError) return err;
  if (err instanceof Error) {
    const parsed = parseCodedMessage(err.message);
    if (parsed) return new PrismaError(parsed.code, parsed.message, { cause: err, hint: hintFor(parsed.code) });
    return new PrismaError('E_INTERNAL', err.message || String(err), { cause: err });
  }
  return new PrismaError('E_INTERNAL', String(err));
}

const CODED = /^(E_[A-Z0-9_]+):\s*([\s\S]*)$/;

/** Parse the native message format `E_CODE: human message`. */
export function parseCodedMessage(message: string): { code: string; message: string } | undefined {
  const m = CODED.exec(message);
  if (!m) return undefined;
  return { code: m[1]!, message: m[2]!.trim() };
}

/** Default hints for codes a user can act on. */
export function hintFor(code: string): string | undefined {
  switch (code) {
    case 'E_NATIVE_MISSING':
    case 'E_NATIVE_LOAD':
      return '`prisma doctor` shows what is set up (in a clone: `npm run setup`)';
    case 'E_MODEL_DIR':
    case 'E_WEIGHTS_MISSING':
      return 'MODEL_DIR must be a folder holding config.json and model.safetensors (Hugging Face layout)';
    case 'E_WEIGHTS_NONFINITE':
      return 'the checkpoint is broken (diverged training, a bad conversion); pass --allow-nonfinite to load it anyway and look at it';
    case 'E_WEIGHTS_FORMAT':
      return 'the weights file is unreadable or truncated; download it again';
    case 'E_UNKNOWN_HOOK':
      return 'run `prisma inspect MODEL_DIR` to list hook names';
    case 'E_LAYER_RANGE':
      return 'run `prisma inspect MODEL_DIR` to see the number of layers';
    case 'E_DEVICE':
      return 'use --device cpu, or check that CUDA and a CUDA build of libtorch are available';
    case 'E_DTYPE':
      return 'use --dtype f32, f16 or bf16';
    case 'E_INTERNAL':
      return 'this is a bug in vit-prisma; please report it with the command you ran';
    default:
      return undefined;
  }
}
