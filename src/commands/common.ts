/** Flag definitions and parsers shared by several commands. */
import { InvalidArgumentError, Option } from 'commander';

import { isPrismaError } from '../errors.js';
import { normalizeDevice, normalizeDtype } from '../options.js';

/** Adapt one of our option parsers to commander (its errors become usage errors, exit 2). */
export function argParser<T>(parse: (value: string) => T): (value: string) => T {
  return (value: string) => {
    try {
      return parse(value);
    } catch (err) {
      throw new InvalidArgumentError(isPrismaError(err) ? err.message : String(err));
    }
  };
}

export function deviceOption(): Option {
  return new Option('--device <device>', 'cpu, cuda, cuda:N, mps or auto').default('cpu').argParser(argParser(normalizeDevice));
}

export function dtypeOption(): Option {
  return new Option('--dtype <dtype>', 'f32, f16 or bf16').default('float32', 'f32').argParser(argParser(normalizeDtype));
}

export function jsonOption(): Option {
  return new Option('--json', 'machine-readable output (errors as {"ok":false,"error":{...}} on stdout)');
}
