/** Flags that describe how an SAE is read (sae convert / inspect): hook and token overrides, scaling, dtype. */
import { Option } from 'commander';

import { usageError } from '../../../errors.js';
import { normalizeDtype } from '../../../options.js';
import { parseSaeTokens, type SaeLoadOptions, type SaeTokens } from '../../../sae/index.js';
import { argParser } from '../common.js';

export interface SaeLoadFlags {
  hook?: string;
  tokens?: SaeTokens;
  scalingFactor?: number;
  dtype?: string;
}

export function parseScalingFactor(value: string): number {
  const f = Number(value);
  if (!(value.trim().length > 0 && Number.isFinite(f) && f > 0))
    throw usageError(`--scaling-factor must be a positive number, got '${value}'`);
  return f;
}

export function saeLoadFlagOptions(): Option[] {
  return [
    new Option('--hook <hook>', "the hook it reads, overriding its config (e.g. 'blocks.1.hook_resid_post')"),
    new Option('--tokens <which>', 'the tokens it applies to, overriding its config: all, cls or patches').argParser(
      argParser(parseSaeTokens),
    ),
    new Option(
      '--scaling-factor <f>',
      "SAELens expected_average_only_in: the dataset scaling factor to fold into the weights (a SAELens folder's activation_scaler.json is read by itself)",
    ).argParser(argParser(parseScalingFactor)),
    new Option('--dtype <dtype>', 'cast the weights: f32, f16 or bf16 (default: as stored)').argParser(argParser(normalizeDtype)),
  ];
}

export function saeLoadOptions(flags: SaeLoadFlags): SaeLoadOptions {
  const out: SaeLoadOptions = {};
  if (flags.hook !== undefined) out.hook = flags.hook;
  if (flags.tokens !== undefined) out.tokens = flags.tokens;
  if (flags.scalingFactor !== undefined) out.scalingFactor = flags.scalingFactor;
  if (flags.dtype !== undefined) out.dtype = flags.dtype;
  return out;
}
