/**
 * One sharp pipeline at a time in this process. libvips keeps one error buffer for the process: a
 * pipeline running beside a failing one can clear it, and the failure then reads 'Unknown error'
 * instead of 'vipspng: libpng read error' (seen once inputs were read ahead, 1 run in 3), which would
 * also make a folder's error lines differ from run to run. Decoding still overlaps the forward
 * passes, which run on the libtorch thread.
 */
let tail: Promise<unknown> = Promise.resolve();

export function oneSharpAtATime<T>(fn: () => Promise<T>): Promise<T> {
  const run = tail.then(fn, fn);
  tail = run.catch(() => {});
  return run;
}
