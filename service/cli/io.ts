/**
 * Where the command writes and how it learns of Ctrl-C: the real process,
 * or whatever a test passes in.
 */
export interface OutputStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface CliIo {
  stdout: OutputStream;
  stderr: OutputStream;
  env: NodeJS.ProcessEnv;
  /** Standard input is a terminal: a person is there to answer a password prompt. */
  stdinIsTty?: boolean;
  /** Call `fn` on every SIGINT until the returned function is called. */
  onInterrupt(fn: () => void): () => void;
}

/** The running process's streams, environment and SIGINT. */
export function processIo(): CliIo {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    stdinIsTty: process.stdin.isTTY === true,
    onInterrupt(fn) {
      process.on('SIGINT', fn);
      return () => { process.off('SIGINT', fn); };
    },
  };
}

/** Output mode: a live display, plain lines, or JSON lines. */
export type OutputMode = 'tty' | 'plain' | 'json';

export function outputMode(io: CliIo, json: boolean): OutputMode {
  if (json) return 'json';
  // TERM=dumb terminals cannot move the cursor.
  return io.stdout.isTTY === true && io.env['TERM'] !== 'dumb' ? 'tty' : 'plain';
}

/** True when the locale can show UTF-8 (bar blocks, check marks). */
export function utf8Locale(env: NodeJS.ProcessEnv): boolean {
  const l = env['LC_ALL'] || env['LC_CTYPE'] || env['LANG'] || '';
  return /utf-?8/i.test(l);
}
