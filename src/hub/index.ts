/** Where a model comes from: a local folder, or a hub ID read from / downloaded into the Hugging Face cache. */
import { statSync } from 'node:fs';

import { PrismaError } from '../errors.js';
import { parseHubRef } from './cache.js';
import { resolveHubModel, type HubOptions } from './download.js';

export { hubCacheDir, hubOffline, hubToken, hubEndpoint, parseHubRef, repoFolderName, type HubRef, type HubEnv } from './cache.js';
export { resolveHubModel, chooseFiles, type HubOptions, type DownloadProgress } from './download.js';

/**
 * The local folder for `source`: an existing folder as it is; `ORG/NAME[@REVISION]` that is not a
 * local path, through the hub cache (`resolveHubModel`). Anything else: E_MODEL_DIR "not found".
 */
export async function resolveModelSource(source: string, options: HubOptions = {}): Promise<string> {
  const st = statSync(source, { throwIfNoEntry: false });
  if (st?.isDirectory()) return source;
  if (st) {
    throw new PrismaError('E_MODEL_DIR', `${source} is a file, not a model folder`, {
      hint: 'give the folder holding config.json (or open_clip_config.json) and the weights, or a hub ID ORG/NAME',
      data: { path: source },
    });
  }
  const ref = parseHubRef(source);
  if (!ref) {
    throw new PrismaError('E_MODEL_DIR', `model not found: ${source}`, {
      hint: 'give a model folder (config.json or open_clip_config.json + weights) or a hub ID ORG/NAME[@REVISION]',
      data: { path: source },
    });
  }
  return resolveHubModel(ref, options);
}
