/**
 * The options of the engine's operations, as plain data: what a StartPreStage,
 * CommitPreStage/AbortPreStage, RegisterHook or GetLog caller asked for once
 * its a{sv} dictionary is decoded (service/protocol/options.ts), and what the
 * client library takes.
 */

export interface StartOptions {
  /** Re-run even if already prepared with the same hooks. */
  force?: boolean;
  /** Queue behind a running transaction instead of failing Busy. */
  wait?: boolean;
  /** Resolve and order the hooks, run nothing. */
  dryRun?: boolean;
  /** Deadline for the whole phase, seconds (0 or absent: none). */
  timeoutSec?: number;
}

export interface PhaseOptions {
  wait?: boolean;
  timeoutSec?: number;
}

export interface LogOptions {
  /** Return at most this many lines (the last ones). */
  maxLines: number;
  /** Only lines of this hook ('' for all). */
  hook?: string;
}

export interface RegisterOptions {
  /** Write to the runtime directory (/run/...) instead of /etc. */
  runtime: boolean;
}
