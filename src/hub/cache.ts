/**
 * The Hugging Face hub cache, laid out exactly as the Python `huggingface_hub` (0.36) lays it out,
 * so that a model fetched by either tool serves both:
 *
 *   $HF_HUB_CACHE (else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)
 *   └── models--ORG--NAME/
 *       ├── refs/main                 the commit hash a branch or tag last resolved to (no newline)
 *       ├── blobs/<etag>              file contents, named by the ETag (sha256 for LFS files, git sha1 otherwise)
 *       ├── blobs/<etag>.incomplete   a download in progress (resumed with an HTTP Range request)
 *       ├── snapshots/<commit>/<file> relative symlinks to ../../blobs/<etag> (../ more for files in subfolders)
 *       └── .no_exist/<commit>/<file> empty files: the hub said 404 for this file at this commit
 *
 * Reading needs no network: `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`) resolves a revision
 * through refs/ and reads the snapshot. Writing is in download.ts.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** A 40-hex commit hash (huggingface_hub's REGEX_COMMIT_HASH). */
export const COMMIT_HASH = /^[0-9a-f]{40}$/;

export interface HubEnv {
  HF_HUB_CACHE?: string | undefined;
  HUGGINGFACE_HUB_CACHE?: string | undefined;
  HF_HOME?: string | undefined;
  XDG_CACHE_HOME?: string | undefined;
  HF_HUB_OFFLINE?: string | undefined;
  TRANSFORMERS_OFFLINE?: string | undefined;
  HF_ENDPOINT?: string | undefined;
  HF_TOKEN?: string | undefined;
  HUGGING_FACE_HUB_TOKEN?: string | undefined;
  HF_TOKEN_PATH?: string | undefined;
  [key: string]: string | undefined;
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

/** `HF_HOME` as huggingface_hub's constants.py computes it. */
export function hfHome(env: HubEnv = process.env): string {
  return expandHome(env.HF_HOME ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface'));
}

/** The hub cache folder: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`. */
export function hubCacheDir(env: HubEnv = process.env): string {
  return expandHome(env.HF_HUB_CACHE ?? env.HUGGINGFACE_HUB_CACHE ?? join(hfHome(env), 'hub'));
}

/** huggingface_hub's `_is_true`: "1", "ON", "YES", "TRUE" in any case. */
export function isTrue(value: string | undefined): boolean {
  return value !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(value.toUpperCase());
}

export function hubOffline(env: HubEnv = process.env): boolean {
  return isTrue(env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE);
}

/** `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the token file `huggingface-cli login` writes. */
export function hubToken(env: HubEnv = process.env): string | undefined {
  const fromEnv = env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv !== undefined && fromEnv.trim() !== '') return fromEnv.trim();
  try {
    const token = readFileSync(expandHome(env.HF_TOKEN_PATH ?? join(hfHome(env), 'token')), 'utf8').trim();
    return token === '' ? undefined : token;
  } catch {
    return undefined;
  }
}

/** `HF_ENDPOINT` without a trailing slash, default https://huggingface.co. */
export function hubEndpoint(env: HubEnv = process.env): string {
  return (env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
}

/** `models--ORG--NAME` (huggingface_hub's `repo_folder_name` for a model). */
export function repoFolderName(repoId: string): string {
  return ['models', ...repoId.split('/')].join('--');
}

/** A hub model reference `ORG/NAME` or `NAME`, with an optional `@REVISION`. */
export interface HubRef {
  repoId: string;
  revision: string;
}

const REPO_PART = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

/**
 * `ORG/NAME[@REVISION]` -> a HubRef, or undefined when `spec` does not look like a hub ID (a
 * path with more than one `/`, `./x`, `~/x`, an absolute path, characters the hub does not allow).
 */
export function parseHubRef(spec: string): HubRef | undefined {
  const at = spec.indexOf('@');
  const id = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? 'main' : spec.slice(at + 1);
  const parts = id.split('/');
  if (parts.length !== 2 || !parts.every((p) => REPO_PART.test(p) && p !== '.' && p !== '..')) return undefined;
  if (revision === '' || /\s/.test(revision)) return undefined;
  return { repoId: id, revision };
}

export function storageFolder(cacheDir: string, repoId: string): string {
  return join(cacheDir, repoFolderName(repoId));
}

/** The commit a revision resolves to in the cache: itself when a hash, else refs/<revision>. */
export function cachedCommit(storage: string, revision: string): string | undefined {
  if (COMMIT_HASH.test(revision)) return revision;
  try {
    const commit = readFileSync(join(storage, 'refs', revision), 'utf8').trim();
    return COMMIT_HASH.test(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/** `snapshots/<commit>/<file>` when it exists (a symlink resolving to its blob, or a copy). */
export function cachedFile(storage: string, commit: string, file: string): string | undefined {
  const path = join(storage, 'snapshots', commit, file);
  try {
    return statSync(path).isFile() ? path : undefined;
  } catch {
    return undefined;
  }
}

/** True when the hub said this file does not exist at this commit (`.no_exist`). */
export function knownMissing(storage: string, commit: string, file: string): boolean {
  try {
    return statSync(join(storage, '.no_exist', commit, file)).isFile();
  } catch {
    return false;
  }
}
