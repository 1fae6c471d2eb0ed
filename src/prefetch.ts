/**
 * Reading ahead: `fn` is started for the next `depth` items while the caller works on the current
 * one, so that images are decoded and preprocessed (sharp on libuv's threads, the resize in JS)
 * while the previous input or batch runs its forward on the libtorch thread.
 */
export async function* prefetch<T, U>(items: readonly T[], depth: number, fn: (item: T) => Promise<U>): AsyncGenerator<U> {
  const pending: Promise<U>[] = [];
  let next = 0;
  const fill = () => {
    while (pending.length < Math.max(1, depth) && next < items.length) {
      const started = fn(items[next]!);
      next += 1;
      // Awaited in order below; a rejection left behind when the caller stops early is not unhandled.
      started.catch(() => {});
      pending.push(started);
    }
  };
  fill();
  while (pending.length > 0) {
    const first = pending.shift()!;
    fill();
    yield await first;
  }
}
