// The environment scripts/setup.mjs recorded for building against libtorch (native/.build-env.json),
// and the host triple the addon build passes to cargo, shared by the scripts that run cargo.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** `{ env, host }` for running cargo like the addon build; exits with a hint when setup has not run. */
export function cargoEnv(tag) {
  let buildEnv;
  try {
    buildEnv = JSON.parse(readFileSync(join(root, 'native', '.build-env.json'), 'utf8'));
  } catch {
    process.stderr.write(`[${tag}] run \`node scripts/setup.mjs\` first (no native/.build-env.json)\n`);
    process.exit(1);
  }
  // @napi-rs/cli builds with an explicit `--target <host triple>`; passing the same one reuses the
  // addon build's compiled libtorch bindings instead of building them again.
  const host = /host: (\S+)/.exec(spawnSync('rustc', ['-vV'], { encoding: 'utf8' }).stdout ?? '')?.[1];
  return { env: { ...process.env, ...buildEnv }, host, buildEnv };
}
