/**
 * Models by hub ID (`prisma inspect google/vit-base-patch16-224`): the files a model needs, taken
 * from the Hugging Face cache (cache.ts) and, when online, downloaded into it through the hub's HTTP
 * API the way `huggingface_hub.hf_hub_download` (0.36) does, so the Python tools find them too:
 *
 * - `GET {HF_ENDPOINT}/api/models/{repo}/revision/{rev}`: the commit (`sha`) and the file list
 *   (`siblings[].rfilename`); a branch or tag is recorded in `refs/{rev}`;
 * - `HEAD {HF_ENDPOINT}/{repo}/resolve/{commit}/{file}` (relative redirects followed, others not):
 *   `X-Repo-Commit`, `X-Linked-Etag` or `ETag` (the blob's name, quotes and `W/` dropped),
 *   `X-Linked-Size` or `Content-Length`, and `Location` for LFS files stored elsewhere;
 * - `GET` of that location into `blobs/{etag}.incomplete`, resumed with `Range: bytes={done}-` when
 *   a previous run was interrupted (a 200 instead of 206 starts over), then renamed to
 *   `blobs/{etag}` and linked from `snapshots/{commit}/{file}` by a relative symlink;
 * - `Authorization: Bearer $HF_TOKEN` (or the `huggingface-cli login` token file) for gated and
 *   private models; a 404 on a file is remembered in `.no_exist/{commit}/{file}`.
 *
 * Not used: `@huggingface/hub` 2.15's `snapshotDownload`, which writes the same layout but truncates
 * `.incomplete` files instead of resuming them, has no progress hook or offline mode, and takes
 * the file list from `paths-info` rather than the resolve headers Python uses.
 */
import { createWriteStream } from 'node:fs';
import { readFile, rename, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';

import { PrismaError } from '../errors.js';
import { makeDir } from '../report/write.js';
import {
  COMMIT_HASH,
  cachedCommit,
  cachedFile,
  hubCacheDir,
  hubEndpoint,
  hubOffline,
  hubToken,
  knownMissing,
  storageFolder,
  type HubEnv,
  type HubRef,
} from './cache.js';

export interface DownloadProgress {
  repoId: string;
  file: string;
  /** Bytes of this file on disk so far (a resumed download starts above 0). */
  received: number;
  /** Its size, from the hub's headers. */
  total: number;
}

export interface HubOptions {
  /** Environment to read HF_* from (default process.env). */
  env?: HubEnv;
  /** Called as each file's bytes arrive, and once at the end of each file. */
  onProgress?: (p: DownloadProgress) => void;
  /** fetch to use (tests may wrap it); default the global fetch. */
  fetch?: typeof fetch;
}

/** Small files a model folder may carry besides its weights. */
const CONFIG_FILES = [
  'config.json',
  'preprocessor_config.json',
  'open_clip_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
];

/** Weights, in the loaders' order of preference (crates/prisma-core/src/weights/store.rs, open_clip.rs). */
const OPEN_CLIP_WEIGHTS = ['open_clip_model.safetensors', 'open_clip_pytorch_model.bin'];
const HF_WEIGHTS = ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'];

function hubError(message: string, hint?: string, data?: unknown): PrismaError {
  return new PrismaError('E_HUB', message, { ...(hint === undefined ? {} : { hint }), ...(data === undefined ? {} : { data }) });
}

const OFFLINE_HINT = 'unset HF_HUB_OFFLINE to download it, or fetch it once with huggingface_hub / this tool while online';

/**
 * A local folder holding `ref`'s model files: `snapshots/<commit>` in the hub cache. Online, the
 * files the model needs are downloaded first (only those missing); offline (`HF_HUB_OFFLINE=1`),
 * or when the hub cannot be reached, the cached snapshot is used as huggingface_hub uses it.
 */
export async function resolveHubModel(ref: HubRef, options: HubOptions = {}): Promise<string> {
  const env = options.env ?? process.env;
  const cache = hubCacheDir(env);
  const storage = storageFolder(cache, ref.repoId);
  const offline = hubOffline(env);
  const fromCache = (): string | undefined => {
    const commit = cachedCommit(storage, ref.revision);
    if (commit === undefined) return undefined;
    const snap = join(storage, 'snapshots', commit);
    return cachedFile(storage, commit, 'config.json') || cachedFile(storage, commit, 'open_clip_config.json') ? snap : undefined;
  };
  if (offline) {
    const snap = fromCache();
    if (snap) return snap;
    throw hubError(`${ref.repoId}@${ref.revision} is not in the Hugging Face cache (${cache}) and HF_HUB_OFFLINE is set`, OFFLINE_HINT);
  }
  const client = new HubClient(hubEndpoint(env), hubToken(env), options.fetch ?? fetch);
  let listing: { sha: string; files: string[] };
  try {
    listing = await client.listFiles(ref);
  } catch (err) {
    // As huggingface_hub: when the hub cannot be reached, a cached snapshot still serves.
    const snap = err instanceof PrismaError && err.data === 'unreachable' ? fromCache() : undefined;
    if (snap) return snap;
    throw err;
  }
  const { sha, files } = listing;
  if (ref.revision !== sha) {
    await makeDir(join(storage, 'refs'));
    await writeFile(join(storage, 'refs', ref.revision), sha);
  }
  const wanted = await chooseFiles(files, async (f) => {
    const local = await client.fetchFile(ref.repoId, sha, f, storage, options.onProgress);
    return readFile(local, 'utf8');
  });
  for (const f of wanted) await client.fetchFile(ref.repoId, sha, f, storage, options.onProgress);
  return join(storage, 'snapshots', sha);
}

/**
 * The files to fetch from a repo listing: its small config files, then one weights format (the
 * first present in the loaders' order), with the shards an index names.
 */
export async function chooseFiles(files: readonly string[], readText: (file: string) => Promise<string>): Promise<string[]> {
  const has = new Set(files);
  const out = CONFIG_FILES.filter((f) => has.has(f));
  if (!has.has('config.json') && !has.has('open_clip_config.json')) {
    throw hubError(
      `the repository has no config.json or open_clip_config.json (files: ${files.slice(0, 8).join(', ')}${files.length > 8 ? ', …' : ''})`,
      'vit-prisma reads Hugging Face, timm and open_clip model repositories',
    );
  }
  const order = has.has('open_clip_config.json') ? OPEN_CLIP_WEIGHTS : HF_WEIGHTS;
  const weights = order.find((f) => has.has(f));
  if (weights === undefined) return out; // the loader says which weights file is missing
  out.push(weights);
  if (weights.endsWith('.index.json')) {
    const index = JSON.parse(await readText(weights)) as { weight_map?: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map ?? {}))].sort();
    for (const s of shards) if (has.has(s)) out.push(s);
  }
  return out;
}

interface FileMeta {
  commit: string;
  etag: string;
  size: number;
  location: string;
}

function normalizeEtag(etag: string | null): string | null {
  if (etag === null) return null;
  return etag.replace(/^W\//, '').replace(/^"+|"+$/g, '');
}

class HubClient {
  constructor(
    private readonly endpoint: string,
    private readonly token: string | undefined,
    private readonly doFetch: typeof fetch,
  ) {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return {
      'user-agent': 'vit-prisma',
      ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
      ...extra,
    };
  }

  private async request(url: string, init: RequestInit): Promise<Response> {
    try {
      return await this.doFetch(url, init);
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new PrismaError('E_HUB', `cannot reach ${this.endpoint} (${cause?.code ?? cause?.message ?? (err as Error).message})`, {
        hint: 'check the network, or set HF_HUB_OFFLINE=1 to use only the local Hugging Face cache',
        data: 'unreachable',
      });
    }
  }

  private statusError(res: Response, what: string, repoId: string): PrismaError {
    if (res.status === 401 || res.status === 403) {
      return hubError(
        `${what}: ${res.status} ${res.statusText || 'unauthorized'}: ${repoId} is gated or private`,
        this.token
          ? 'the token in HF_TOKEN has no access: accept the model licence on its hub page, or use a token with read access'
          : 'set HF_TOKEN to a token with read access (after accepting the model licence on its hub page)',
      );
    }
    if (res.status === 404)
      return hubError(`${what}: not found on ${this.endpoint}`, 'check the model ID and revision (ORG/NAME or ORG/NAME@REVISION)');
    return hubError(`${what}: HTTP ${res.status} ${res.statusText} from ${this.endpoint}`);
  }

  async listFiles(ref: HubRef): Promise<{ sha: string; files: string[] }> {
    const url = `${this.endpoint}/api/models/${ref.repoId}/revision/${encodeURIComponent(ref.revision)}`;
    const res = await this.request(url, { headers: this.headers() });
    if (!res.ok) throw this.statusError(res, `${ref.repoId}@${ref.revision}`, ref.repoId);
    const body = (await res.json()) as { sha?: unknown; siblings?: { rfilename?: unknown }[] };
    if (typeof body.sha !== 'string' || !COMMIT_HASH.test(body.sha) || !Array.isArray(body.siblings)) {
      throw hubError(`${url}: unexpected answer (no commit sha or file list)`);
    }
    return { sha: body.sha, files: body.siblings.map((s) => s.rfilename).filter((f): f is string => typeof f === 'string') };
  }

  /** HEAD on the resolve route, as `get_hf_file_metadata`. */
  private async metadata(repoId: string, commit: string, file: string, storage: string): Promise<FileMeta> {
    let url = `${this.endpoint}/${repoId}/resolve/${commit}/${file.split('/').map(encodeURIComponent).join('/')}`;
    let res: Response;
    for (let hops = 0; ; hops++) {
      res = await this.request(url, { method: 'HEAD', redirect: 'manual', headers: this.headers({ 'accept-encoding': 'identity' }) });
      const location = res.headers.get('location');
      // Relative redirects (a renamed repo) are followed; an absolute one points at the file's storage.
      if (res.status >= 300 && res.status < 400 && location?.startsWith('/') && hops < 5) {
        url = new URL(location, url).toString();
        continue;
      }
      break;
    }
    if (res.status === 404) {
      const commitHeader = res.headers.get('x-repo-commit');
      if (commitHeader && COMMIT_HASH.test(commitHeader)) {
        await makeDir(dirname(join(storage, '.no_exist', commitHeader, file)));
        await writeFile(join(storage, '.no_exist', commitHeader, file), '');
      }
    }
    if (res.status >= 400) throw this.statusError(res, `${repoId}/${file}`, repoId);
    const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'));
    const size = Number(res.headers.get('x-linked-size') ?? res.headers.get('content-length'));
    const commitHeader = res.headers.get('x-repo-commit') ?? commit;
    if (!etag || !Number.isFinite(size)) throw hubError(`${repoId}/${file}: the hub's answer has no ETag or size`);
    const location = res.status >= 300 && res.status < 400 ? new URL(res.headers.get('location') ?? url, url).toString() : url;
    return { commit: commitHeader, etag, size, location };
  }

  /** `hf_hub_download` into the cache; returns the snapshot path. Skips what is already there. */
  async fetchFile(repoId: string, commit: string, file: string, storage: string, onProgress: HubOptions['onProgress']): Promise<string> {
    const cached = cachedFile(storage, commit, file);
    if (cached) return cached;
    if (knownMissing(storage, commit, file)) throw hubError(`${repoId}/${file}: not in the repository at ${commit}`);
    const meta = await this.metadata(repoId, commit, file, storage);
    const blob = join(storage, 'blobs', meta.etag);
    const pointer = join(storage, 'snapshots', meta.commit, file);
    await makeDir(join(storage, 'blobs'));
    await makeDir(dirname(pointer));
    if (!(await exists(blob))) await this.download(meta, blob, { repoId, file, onProgress });
    await unlink(pointer).catch(() => {});
    await symlink(relative(dirname(pointer), blob), pointer);
    return pointer;
  }

  private async download(
    meta: FileMeta,
    blob: string,
    what: { repoId: string; file: string; onProgress: HubOptions['onProgress'] },
  ): Promise<void> {
    const incomplete = `${blob}.incomplete`;
    let have = (await stat(incomplete).catch(() => undefined))?.size ?? 0;
    if (have > meta.size) have = 0;
    const report = (received: number) => what.onProgress?.({ repoId: what.repoId, file: what.file, received, total: meta.size });
    if (have < meta.size || meta.size === 0) {
      const res = await this.request(meta.location, {
        headers: this.headers({ 'accept-encoding': 'identity', ...(have > 0 ? { range: `bytes=${have}-` } : {}) }),
      });
      if (res.status === 416 && have > 0)
        have = meta.size; // nothing left to send
      else if (!res.ok) throw this.statusError(res, `${what.repoId}/${what.file}`, what.repoId);
      else {
        // A server that ignores Range answers 200 with the whole file: start over.
        if (res.status !== 206) have = 0;
        const out = createWriteStream(incomplete, { flags: have > 0 ? 'a' : 'w' });
        const closed = new Promise<void>((resolve, reject) => {
          out.once('close', resolve);
          out.once('error', reject);
        });
        try {
          report(have);
          const reader = res.body?.getReader();
          for (;;) {
            const chunk = reader ? await reader.read() : { done: true as const, value: undefined };
            if (chunk.done) break;
            if (!out.write(chunk.value)) await new Promise<void>((r) => out.once('drain', () => r()));
            have += chunk.value.length;
            report(have);
          }
        } catch (err) {
          out.end();
          await closed.catch(() => {});
          throw hubError(
            `${what.repoId}/${what.file}: download interrupted at ${have} of ${meta.size} bytes (${(err as Error).message})`,
            'run the command again: the download resumes where it stopped',
          );
        }
        out.end();
        await closed;
      }
    }
    if (have !== meta.size) {
      throw hubError(
        `${what.repoId}/${what.file}: got ${have} bytes, the hub announced ${meta.size}`,
        'run the command again: the download resumes where it stopped',
      );
    }
    await rename(incomplete, blob);
    report(have);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
