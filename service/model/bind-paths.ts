/**
 * BindPaths= and BindReadOnlyPaths= entries (README "Hooks",
 * docs/hooks.md): systemd's syntax `[-]SOURCE[:DESTINATION[:OPTIONS]]`.
 * Pure: the hook-file format checks them, the engine turns them into
 * bubblewrap options (service/engine/new-root.ts).
 */
import * as path from 'node:path';
import { CommandLineSyntaxError, splitCommandLine } from './command-line.js';

/** One BindPaths=/BindReadOnlyPaths= entry, systemd syntax `[-]SRC[:DST[:OPTS]]`. */
export interface BindSpec {
  source: string;
  destination: string;
  readOnly: boolean;
  /** `-` prefix: a missing source is skipped, not an error. */
  optional: boolean;
}

/** Thrown for a malformed bind entry; the caller adds file and line. */
export class BindSyntaxError extends Error {}

function isCleanAbsolute(p: string): boolean {
  if (!p.startsWith('/')) return false;
  return p.split('/').every((c) => c !== '..' && c !== '.');
}

/**
 * Parse one entry, as systemd reads BindPaths=: an optional `-`, the
 * source, then optionally `:destination` and `:options` (`rbind`; bwrap's
 * binds are always recursive, so `norbind` cannot be honoured and is
 * refused). The source may start with `${VAR}` (expanded when the step
 * runs); the destination is an absolute path and not `/`.
 */
export function parseBindEntry(entry: string, readOnly: boolean): BindSpec {
  const key = readOnly ? 'BindReadOnlyPaths' : 'BindPaths';
  let rest = entry;
  const optional = rest.startsWith('-');
  if (optional) rest = rest.slice(1);
  const parts = rest.split(':');
  if (parts.length > 3) {
    throw new BindSyntaxError(`${key} entry '${entry}' has more than SOURCE:DESTINATION:OPTIONS (paths with ':' cannot be bound)`);
  }
  const source = parts[0]!;
  const destination = parts[1] ?? source;
  const opts = parts[2];
  if (source === '') throw new BindSyntaxError(`${key} entry '${entry}' has no source path`);
  if (!(source.startsWith('${') || isCleanAbsolute(source))) {
    throw new BindSyntaxError(`${key} source '${source}' must be an absolute path without '.' or '..' components (or start with \${VAR})`);
  }
  if (parts.length >= 2 && destination === '') throw new BindSyntaxError(`${key} entry '${entry}' has an empty destination`);
  if (!isCleanAbsolute(destination) && !(parts.length === 1 && source.startsWith('${'))) {
    throw new BindSyntaxError(`${key} destination '${destination}' must be an absolute path without '.' or '..' components`);
  }
  if (path.posix.normalize(destination) === '/') {
    throw new BindSyntaxError(`${key} destination '/' would replace the root directory; use RootDirectory= for that`);
  }
  if (opts !== undefined && opts !== 'rbind') {
    throw new BindSyntaxError(opts === 'norbind'
      ? `${key} option 'norbind' is not supported: bubblewrap's binds are always recursive`
      : `${key} option '${opts}' is unknown: the only option is rbind`);
  }
  return { source, destination, readOnly, optional };
}

/** A BindPaths=/BindReadOnlyPaths= value: words split like a command line, each an entry. */
export function parseBindValue(value: string, readOnly: boolean): { entries: string[]; binds: BindSpec[] } {
  let words: string[];
  try {
    words = splitCommandLine(value);
  } catch (e) {
    if (e instanceof CommandLineSyntaxError) throw new BindSyntaxError(e.message);
    throw e;
  }
  return { entries: words, binds: words.map((w) => parseBindEntry(w, readOnly)) };
}

