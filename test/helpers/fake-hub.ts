/**
 * A local HTTP server that answers the Hugging Face hub's file routes as the hub does (the rules of
 * fixtures/make_hub_cache.py's server, which made fixtures/hub-cache with huggingface_hub itself):
 * - GET /api/models/{repo}/revision/{rev}: {id, sha, siblings: [{rfilename}]};
 * - HEAD/GET /{repo}/resolve/{rev}/{file}: X-Repo-Commit; small files inline with ETag = git blob
 *   sha1; *.safetensors as LFS: 302 to an absolute /lfs/{sha256} with X-Linked-Etag / X-Linked-Size;
 * - GET /lfs/{sha256}: the bytes, with Range.
 * Gated repos answer 401 without `Authorization: Bearer <token>`. `cutAfter` makes the next GETs
 * of a file send only that many bytes and then drop the connection (an interrupted download).
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface FakeRepo {
  files: Map<string, Buffer>;
  /** Required bearer token (a gated model). */
  token?: string;
}

export interface SeenRequest {
  method: string;
  path: string;
  range?: string;
  auth?: string;
}

export const commitOf = (repoId: string): string => createHash('sha1').update(repoId).digest('hex');
const gitSha1 = (data: Buffer) =>
  createHash('sha1')
    .update(Buffer.concat([Buffer.from(`blob ${data.length}\0`), data]))
    .digest('hex');
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const isLfs = (name: string) => name.endsWith('.safetensors');

export function repoFromFolder(dir: string, token?: string): FakeRepo {
  const files = new Map(
    readdirSync(dir)
      .sort()
      .map((n) => [n, readFileSync(join(dir, n))] as const),
  );
  return token === undefined ? { files } : { files, token };
}

export class FakeHub {
  readonly seen: SeenRequest[] = [];
  /** file name -> bytes to send before dropping the connection, for the next `times` GETs. */
  readonly cuts = new Map<string, { afterBytes: number; times: number }>();
  private server: Server | undefined;

  constructor(readonly repos: Map<string, FakeRepo>) {}

  get url(): string {
    return `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    return this;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  private lfsBlob(hash: string): { name: string; data: Buffer } | undefined {
    for (const repo of this.repos.values())
      for (const [name, data] of repo.files) if (isLfs(name) && sha256(data) === hash) return { name, data };
    return undefined;
  }

  /** Answers one request; true once answered. */
  private handle(req: IncomingMessage, res: ServerResponse): boolean {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]!);
    const method = req.method ?? 'GET';
    this.seen.push({
      method,
      path,
      ...(req.headers.range ? { range: req.headers.range } : {}),
      ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
    });
    const send = (code: number, headers: Record<string, string>, body?: Buffer): boolean => {
      res.writeHead(code, { 'content-length': String(body?.length ?? 0), ...headers });
      res.end(method === 'HEAD' ? undefined : body);
      return true;
    };
    if (path.startsWith('/lfs/')) {
      const blob = this.lfsBlob(path.slice(5));
      if (!blob) return send(404, {});
      const start = req.headers.range ? Number(/bytes=(\d+)-/.exec(req.headers.range)?.[1] ?? 0) : 0;
      const part = blob.data.subarray(start);
      const cut = this.cuts.get(blob.name);
      const headers: Record<string, string> =
        start > 0 ? { 'content-range': `bytes ${start}-${blob.data.length - 1}/${blob.data.length}` } : {};
      if (cut && cut.times > 0 && method === 'GET') {
        cut.times -= 1;
        res.writeHead(start > 0 ? 206 : 200, { 'content-length': String(part.length), ...headers });
        res.write(part.subarray(0, cut.afterBytes), () => setTimeout(() => res.destroy(), 20));
        return true;
      }
      return send(start > 0 ? 206 : 200, headers, part);
    }
    for (const [repoId, repo] of this.repos) {
      const commit = commitOf(repoId);
      const api = `/api/models/${repoId}/revision/`;
      const resolve = `/${repoId}/resolve/`;
      if (!path.startsWith(api) && !path.startsWith(resolve)) continue;
      if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) return send(401, { 'x-error-code': 'GatedRepo' });
      if (path.startsWith(api)) {
        const body = Buffer.from(
          JSON.stringify({ id: repoId, sha: commit, siblings: [...repo.files.keys()].map((rfilename) => ({ rfilename })) }),
        );
        return send(200, { 'content-type': 'application/json' }, body);
      }
      const name = path.slice(resolve.length).split('/').slice(1).join('/');
      const data = repo.files.get(name);
      if (!data) return send(404, { 'x-repo-commit': commit, 'x-error-code': 'EntryNotFound' });
      if (isLfs(name)) {
        return send(302, {
          location: `${this.url}/lfs/${sha256(data)}`,
          'x-repo-commit': commit,
          'x-linked-etag': `"${sha256(data)}"`,
          'x-linked-size': String(data.length),
          etag: `"${gitSha1(data)}"`,
        });
      }
      return send(200, { 'x-repo-commit': commit, etag: `"${gitSha1(data)}"` }, data);
    }
    return send(404, {});
  }
}
