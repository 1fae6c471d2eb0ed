/** Colour only on a TTY, never when NO_COLOR is set (https://no-color.org) or output is JSON. */
export interface StreamLike {
  write(chunk: string): unknown;
  isTTY?: boolean;
}

export function useColor(stream: StreamLike, env: NodeJS.ProcessEnv): boolean {
  if (env['NO_COLOR'] !== undefined && env['NO_COLOR'] !== '') return false;
  return stream.isTTY === true;
}

const wrap =
  (open: number, close: number) =>
  (text: string, on: boolean): string =>
    on ? `\u001b[${open}m${text}\u001b[${close}m` : text;

export const red = wrap(31, 39);
export const dim = wrap(2, 22);
export const bold = wrap(1, 22);
