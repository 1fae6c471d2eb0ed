#!/usr/bin/env node
// Memory of a long --jsonl job: `prisma logit-lens MODEL - --jsonl` over COUNT paths on stdin (the
// photos of PHOTO_DIR listed again and again), the lines counted as they come, the process's
// resident memory (VmRSS) sampled every 0.5 s. Prints one JSON line: peak RSS, and RSS when 10 %,
// 25 %, 50 %, 75 % and 100 % of the lines had come (flat = no growth with the inputs).
// Usage: node bench/folder/rss.mjs MODEL_DIR PHOTO_DIR [COUNT]
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [modelDir, photoDir, countArg] = process.argv.slice(2);
const count = Number(countArg ?? 20000);
const photos = readdirSync(photoDir)
  .filter((f) => f.endsWith('.jpg'))
  .sort()
  .map((f) => join(photoDir, f));
const paths = Array.from({ length: count }, (_, i) => photos[i % photos.length]);
const child = spawn(process.execPath, ['bin/prisma.js', 'logit-lens', modelDir, '-', '--jsonl'], {
  stdio: ['pipe', 'pipe', 'inherit'],
  env: { ...process.env, PRISMA_PROGRESS_INTERVAL: '0' },
});
child.stdin.end(`${paths.join('\n')}\n`);
const rssMb = () => {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
};
let lines = 0;
let peak = 0;
const marks = [0.1, 0.25, 0.5, 0.75];
const at = {};
const started = Date.now();
const timer = setInterval(() => {
  peak = Math.max(peak, rssMb());
}, 500);
for await (const _ of createInterface({ input: child.stdout })) {
  lines += 1;
  if (lines % 2000 === 0) process.stderr.write(`rss: ${lines} lines, ${Math.round(rssMb())} MB, peak ${Math.round(peak)} MB\n`);
  for (const m of marks) if (at[m] === undefined && lines >= m * count) at[m] = Math.round(rssMb());
  if (lines === count - 1) at[1] = Math.round(rssMb());
}
clearInterval(timer);
const code = await new Promise((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)));
console.log(
  JSON.stringify({
    inputs: count,
    lines,
    exit: code,
    seconds: Math.round((Date.now() - started) / 1000),
    peakRssMb: Math.round(peak),
    rssMbAtFractionOfLines: at,
  }),
);
