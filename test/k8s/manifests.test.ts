// The Kubernetes recipe (examples/kubernetes/): each manifest is a valid batch/v1 Job for Kubernetes
// v1.37 (the strict JSON schema vendored in test/k8s/schema/, see SOURCE there; no network), the
// shard Job is Indexed with as many completions as SHARDS, and the pods' shell commands, run with a
// stand-in `prisma`, pass shard k/n for JOB_COMPLETION_INDEX = k and every shard folder to the merge.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

import { ROOT } from '../helpers/cli.js';

const SCHEMA = join(ROOT, 'test', 'k8s', 'schema');
const EXAMPLES = join(ROOT, 'examples', 'kubernetes');

interface Container {
  command: string[];
  args: string[];
  env?: { name: string; value: string }[];
}
interface JobDoc {
  kind: string;
  spec: { completionMode?: string; completions?: number; parallelism?: number; template: { spec: { containers: Container[] } } };
}

function jobValidator() {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  ajv.addFormat('int32', true).addFormat('int64', true).addFormat('double', true).addFormat('byte', true).addFormat('date-time', true);
  ajv.addSchema(JSON.parse(readFileSync(join(SCHEMA, '_definitions.json'), 'utf8')) as object);
  return ajv.compile(JSON.parse(readFileSync(join(SCHEMA, 'job-batch-v1.json'), 'utf8')) as object);
}

function readJobs(file: string): JobDoc[] {
  const docs = parseAllDocuments(readFileSync(join(EXAMPLES, file), 'utf8'));
  for (const d of docs) expect(d.errors, `${file}: YAML errors`).toEqual([]);
  return docs.map((d) => d.toJS() as JobDoc);
}

/** Runs a container's command with a stand-in `prisma` that prints its arguments, one per line. */
function runContainer(c: Container, env: Record<string, string>): { status: number | null; args: string[] } {
  const bin = mkdtempSync(join(tmpdir(), 'prisma-k8s-'));
  writeFileSync(join(bin, 'prisma'), '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\nexit "$FAKE_EXIT"\n');
  chmodSync(join(bin, 'prisma'), 0o755);
  const vars = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
  const r = spawnSync(c.command[0]!, [...c.command.slice(1), ...c.args], {
    env: { PATH: `${bin}:${process.env.PATH}`, FAKE_EXIT: '0', ...vars, ...env },
    encoding: 'utf8',
  });
  return { status: r.status, args: r.stdout.split('\n').filter((l) => l.length > 0) };
}

describe('Kubernetes recipe', () => {
  const validate = jobValidator();

  it.each(['shards-job.yaml', 'merge-job.yaml'])('%s is a valid batch/v1 Job (Kubernetes v1.37, strict schema)', (file) => {
    const jobs = readJobs(file);
    expect(jobs.length).toBeGreaterThan(0);
    for (const job of jobs) {
      const ok = validate(job);
      expect(validate.errors ?? [], file).toEqual([]);
      expect(ok).toBe(true);
    }
  });

  it('the schema refuses what Kubernetes would (a misspelt field, a wrong type)', () => {
    const [job] = readJobs('shards-job.yaml') as [JobDoc];
    const misspelt = structuredClone(job) as unknown as { spec: Record<string, unknown> };
    misspelt.spec.completionMod = 'Indexed';
    expect(validate(misspelt)).toBe(false);
    const wrongType = structuredClone(job) as unknown as { spec: Record<string, unknown> };
    wrongType.spec.completions = 'eight';
    expect(validate(wrongType)).toBe(false);
  });

  it('the shard Job is Indexed, with one completion per shard, and pod k runs shard k/n into its own folder', () => {
    const [job] = readJobs('shards-job.yaml') as [JobDoc];
    expect(job.spec.completionMode).toBe('Indexed');
    const container = job.spec.template.spec.containers[0]!;
    const shards = Number(container.env?.find((e) => e.name === 'SHARDS')?.value);
    expect(job.spec.completions).toBe(shards);
    for (const k of [0, 3, shards - 1]) {
      const r = runContainer(container, { JOB_COMPLETION_INDEX: String(k) });
      expect(r.status).toBe(0);
      expect(r.args.slice(r.args.indexOf('--shard'), r.args.indexOf('--shard') + 2)).toEqual(['--shard', `${k}/${shards}`]);
      expect(r.args[r.args.indexOf('--out') + 1]).toBe(`/data/out/shards/${k}`);
      expect(r.args).toContain('--resume');
    }
    // Some inputs failed (exit 3): the pod still succeeds; a real failure fails it.
    expect(runContainer(container, { JOB_COMPLETION_INDEX: '1', FAKE_EXIT: '3' }).status).toBe(0);
    expect(runContainer(container, { JOB_COMPLETION_INDEX: '1', FAKE_EXIT: '1' }).status).toBe(1);
  });

  it('the merge Job passes every shard folder, 0 to n-1, to prisma merge', () => {
    const [shardJob] = readJobs('shards-job.yaml') as [JobDoc];
    const [job] = readJobs('merge-job.yaml') as [JobDoc];
    const container = job.spec.template.spec.containers[0]!;
    const shards = Number(container.env?.find((e) => e.name === 'SHARDS')?.value);
    expect(shards).toBe(shardJob.spec.completions);
    const r = runContainer(container, {});
    expect(r.status).toBe(0);
    expect(r.args).toEqual(['merge', '/data/out/merged', ...Array.from({ length: shards }, (_, k) => `/data/out/shards/${k}`)]);
  });
});

describe('CI matrix recipes', () => {
  it.each(['github-actions.yml', 'gitlab-ci.yml'])('%s is valid YAML', (file) => {
    const docs = parseAllDocuments(readFileSync(join(ROOT, 'examples', 'ci', file), 'utf8'));
    expect(docs.flatMap((d) => d.errors)).toEqual([]);
  });
});
