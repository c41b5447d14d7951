/**
 * Exit statuses of bootc-prestage. Scripts depend on them: change none.
 * Documented in the `--help` text (usage.ts) and the README.
 */
import type { ClientErrorKind } from '../client/errors.js';

export const EXIT = {
  /** Done: the phase succeeded, or the query answered. */
  OK: 0,
  /** The work ran and did not succeed: a hook failed or timed out, the transaction was cancelled, bootc failed. */
  FAILED: 1,
  /** Bad command line, or arguments the daemon refused as malformed (InvalidArgs). */
  USAGE: 2,
  /** Another transaction is running (Busy); retry later or pass --wait. */
  BUSY: 3,
  /** No such deployment, transaction or hook, or an invalid deployment or hook definition. */
  NOT_FOUND: 4,
  /** The bus or the daemon cannot be reached (not running, not activatable, went away), or access was denied. */
  UNREACHABLE: 5,
  /** A second Ctrl-C: stopped waiting; the transaction goes on or is being cancelled in the daemon. */
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The exit status for a client error kind. */
export function exitCodeFor(kind: ClientErrorKind): ExitCode {
  switch (kind) {
    case 'failed': return EXIT.FAILED;
    case 'usage': return EXIT.USAGE;
    case 'busy': return EXIT.BUSY;
    case 'not-found': return EXIT.NOT_FOUND;
    case 'unreachable': return EXIT.UNREACHABLE;
    case 'denied': return EXIT.UNREACHABLE;
  }
}
