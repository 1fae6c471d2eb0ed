// The Slurm recipe end to end (examples/slurm): a single-node Slurm on localhost, started here from
// Debian's slurm-wlm and munge packages (a generated slurm.conf: one node, no cgroups,
// proctrack/linuxproc, its own ports, state and munge socket under a temporary folder), runs
// submit.sh: an array of 3 shard tasks (sbatch --array=0-2) and a merge job after them
// (--dependency=afterok). The merged folder must be byte for byte a one-process run's. Skips, saying
// why, where Slurm is not installed or does not start (.ci/run installs both packages). The Slurm
// logs are printed, for the CI log. Needs the built addon and CLI; runs as the user who can start
// the daemons (root in CI).
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, hostname, tmpdir } from 'node:os';
import { join } from 'node:path';

import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { BIN, FIXTURES, prisma, requireBuilt, ROOT } from '../helpers/cli.js';
import { fileTree } from '../helpers/files.js';

const CLS = join(FIXTURES, 'models', 'vit-tiny-cls');
const SHARDS = 3;
const DAEMONS = ['munged', 'slurmctld', 'slurmd', 'sbatch', 'squeue', 'sinfo'];

let dir = '';
let env: NodeJS.ProcessEnv = {};
/** Why the test cannot run here (undefined: Slurm is up). */
let unavailable: string | undefined;
const pidFiles: string[] = [];

const sh = (cmd: string, args: string[], extra: NodeJS.ProcessEnv = {}) =>
  spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env, ...extra }, timeout: 60_000 });

const which = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd} || test -x /usr/sbin/${cmd}`], { encoding: 'utf8' }).status === 0;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts munged, slurmctld and slurmd; returns why not, or undefined. */
async function startSlurm(): Promise<string | undefined> {
  const missing = DAEMONS.filter((d) => !which(d));
  if (missing.length > 0) return `Slurm is not installed (${missing.join(', ')} not found; apt-get install slurm-wlm munge)`;
  if (!existsSync('/etc/munge/munge.key')) return 'munge has no key (/etc/munge/munge.key)';
  const munge = join(dir, 'munge');
  mkdirSync(munge, { mode: 0o700 });
  chmodSync(dir, 0o755);
  copyFileSync('/etc/munge/munge.key', join(munge, 'key'));
  chmodSync(join(munge, 'key'), 0o600);
  const socket = join(munge, 'sock');
  const m = sh('munged', [
    '--force',
    `--socket=${socket}`,
    `--key-file=${join(munge, 'key')}`,
    `--pid-file=${join(munge, 'pid')}`,
    `--log-file=${join(munge, 'log')}`,
    `--seed-file=${join(munge, 'seed')}`,
  ]);
  if (m.status !== 0) return `munged did not start: ${(m.stderr || m.stdout).trim().split('\n')[0]}`;
  pidFiles.push(join(munge, 'pid'));
  const host = hostname().split('.')[0]!;
  const port = 20000 + Math.floor(Math.random() * 20000);
  for (const d of ['state', 'spool']) mkdirSync(join(dir, d));
  const conf = join(dir, 'slurm.conf');
  writeFileSync(
    conf,
    [
      'ClusterName=prisma-test',
      `SlurmctldHost=${host}(127.0.0.1)`,
      'SlurmUser=root',
      'SlurmdUser=root',
      `SlurmctldPort=${port}`,
      `SlurmdPort=${port + 1}`,
      'AuthType=auth/munge',
      'CredType=cred/munge',
      `AuthInfo=socket=${socket}`,
      `StateSaveLocation=${join(dir, 'state')}`,
      `SlurmdSpoolDir=${join(dir, 'spool')}`,
      `SlurmctldPidFile=${join(dir, 'slurmctld.pid')}`,
      `SlurmdPidFile=${join(dir, 'slurmd.pid')}`,
      `SlurmctldLogFile=${join(dir, 'slurmctld.log')}`,
      `SlurmdLogFile=${join(dir, 'slurmd.log')}`,
      // No cgroups: a container or CI runner rarely lets slurmd use them.
      'ProctrackType=proctrack/linuxproc',
      'TaskPlugin=task/none',
      'JobAcctGatherType=jobacct_gather/none',
      'AccountingStorageType=accounting_storage/none',
      'SelectType=select/cons_tres',
      'SelectTypeParameters=CR_CPU',
      'SchedulerType=sched/backfill',
      'MpiDefault=none',
      'ReturnToService=2',
      `NodeName=${host} NodeAddr=127.0.0.1 CPUs=${Math.max(1, cpus().length)} State=UNKNOWN`,
      'PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES',
      '',
    ].join('\n'),
  );
  env = { SLURM_CONF: conf };
  const ctld = sh('slurmctld', ['-f', conf]);
  if (ctld.status !== 0) return `slurmctld did not start: ${(ctld.stderr || ctld.stdout).trim().split('\n')[0]}`;
  pidFiles.push(join(dir, 'slurmctld.pid'));
  const slurmd = sh('slurmd', ['-f', conf, '-N', host]);
  if (slurmd.status !== 0) return `slurmd did not start: ${(slurmd.stderr || slurmd.stdout).trim().split('\n')[0]}`;
  pidFiles.push(join(dir, 'slurmd.pid'));
  for (let i = 0; i < 60; i++) {
    const state = sh('sinfo', ['-h', '-o', '%t']).stdout.trim();
    if (state === 'idle' || state === 'mix') return undefined;
    await sleep(1000);
  }
  const log = existsSync(join(dir, 'slurmd.log')) ? readFileSync(join(dir, 'slurmd.log'), 'utf8').trim().split('\n').at(-1) : '';
  return `the Slurm node did not become idle within 60 s (sinfo: '${sh('sinfo', ['-h', '-o', '%t']).stdout.trim()}'; slurmd: ${log})`;
}

function stopSlurm(): void {
  // The daemons this test started, by the pids they wrote, last started first.
  for (const file of [...pidFiles].reverse()) {
    try {
      process.kill(Number(readFileSync(file, 'utf8').trim()), 'SIGTERM');
    } catch {
      // already gone
    }
  }
}

beforeAll(async () => {
  requireBuilt();
  dir = mkdtempSync(join(tmpdir(), 'prisma-slurm-'));
  unavailable = await startSlurm();
}, 120_000);

afterAll(() => stopSlurm());

describe('Slurm (examples/slurm)', () => {
  it('an array of 3 shard tasks and a dependent merge job give the one-process folder', async (ctx) => {
    if (unavailable) {
      console.log(`slurm test skipped: ${unavailable}`);
      ctx.skip(unavailable);
    }
    const images = join(dir, 'images');
    mkdirSync(images);
    const sources = ['astronaut.png', 'chelsea.jpg', 'coffee.png'].map((n) => join(FIXTURES, 'images', n));
    for (let i = 0; i < 9; i++) {
      await sharp(sources[i % 3]!)
        .resize(56 + 8 * i, 64, { fit: 'cover' })
        .png()
        .toFile(join(images, `img-${i}.png`));
    }
    copyFileSync(join(FIXTURES, 'bad', 'truncated.png'), join(images, 'truncated.png'));
    // `prisma` on the tasks' PATH: this clone's CLI.
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'prisma'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 });
    const out = join(dir, 'out');
    const args = '--site resid_pre,resid_post --top-k 3';
    const submit = sh(join(ROOT, 'examples', 'slurm', 'submit.sh'), [], {
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      MODEL: CLS,
      IMAGES: images,
      OUT: out,
      SHARDS: String(SHARDS),
      PRISMA_ARGS: args,
      PRISMA_PROGRESS_INTERVAL: '0',
      // The test node has few CPUs; the script asks for 4 per task.
      SBATCH_ARGS: '--cpus-per-task=1',
    });
    expect(submit.status, submit.stderr).toBe(0);
    console.log(submit.stdout.trim());
    expect(submit.stdout).toMatch(/^shards: job \d+ \(tasks 0-2\); merge: job \d+; merged output: /);

    // Wait until no job of ours is queued or running.
    let queue = '';
    for (let i = 0; i < 240; i++) {
      queue = sh('squeue', ['-h', '-o', '%i %T']).stdout.trim();
      if (queue === '') break;
      await sleep(1000);
    }
    expect(queue, 'jobs still queued after 240 s').toBe('');
    const logs = join(out, 'logs');
    for (const name of readdirSync(logs).sort()) console.log(`--- ${name}\n${readFileSync(join(logs, name), 'utf8').trim()}`);
    for (let k = 0; k < SHARDS; k++) {
      expect(readFileSync(join(logs, `shard-${k}.log`), 'utf8')).toMatch(new RegExp(`shard ${k}/${SHARDS} ended with status 0`));
    }
    expect(readFileSync(join(logs, 'merge.log'), 'utf8')).toMatch(
      new RegExp(`merged ${SHARDS} logit-lens shards into ${join(out, 'merged')}: 10 inputs, 9 results, 1 failed`),
    );

    const one = join(dir, 'one');
    expect(prisma(['logit-lens', CLS, images, ...args.split(' '), '--out', one]).code).toBe(3);
    const a = fileTree(join(out, 'merged'));
    const e = fileTree(one);
    expect([...a.keys()]).toEqual([...e.keys()]);
    for (const [name, bytes] of e) expect(a.get(name)?.equals(bytes), `${name} differs`).toBe(true);
  }, 600_000);
});
