import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const pkg = createRequire(import.meta.url)('../package.json') as { name: string; version: string };

export const PACKAGE_NAME: string = pkg.name;
export const VERSION: string = pkg.version;

/** The package root (where package.json, models/ and schemas/ live), from src/ or dist/. */
export const PACKAGE_ROOT: string = fileURLToPath(new URL('..', import.meta.url));
