/**
 * Plain data shared by the engine, its adapters and the CLI: hook definitions,
 * plans, transaction snapshots and events. No I/O here.
 */
import type { ErrorCode } from './errors.js';

export type Phase = 'prepare' | 'commit' | 'abort';
export const PHASES: readonly Phase[] = ['prepare', 'commit', 'abort'];

/** A hook as its file (or RegisterHook definition) declares it. */
export interface HookDefinition {
  description: string;
  /** argv before ${VAR} expansion; null when the hook has no such step. */
  prepare: string[] | null;
  commit: string[] | null;
  abort: string[] | null;
  after: string[];
  before: string[];
  /** KEY=VALUE entries, in file order (later entries win). */
  environment: string[];
  required: boolean;
  /** Seconds; null means infinity. */
  timeoutSec: number | null;
}

/** Where a hook file was found, highest precedence first. */
export type HookOrigin = 'etc' | 'run' | 'deployment';

/** One effective hook after precedence and masking. */
export interface ResolvedHook {
  name: string;
  definition: HookDefinition;
  /** Absolute path of the file it came from. */
  source: string;
  origin: HookOrigin;
  /** sha256 hex of the file's bytes: part of the transaction fingerprint. */
  digest: string;
  /** Set when the file or a program it names is not trusted; it never runs. */
  refused: string | null;
  /** Non-fatal remarks (unknown keys, ...), each naming file and line. */
  warnings: string[];
}

/** The effective hook set for one deployment. */
export interface HookSet {
  /** Effective hooks in run order (refused ones included, marked). */
  hooks: ResolvedHook[];
  /** Names masked by an empty file or a /dev/null link, with the masking file. */
  masked: { name: string; source: string }[];
  /** Digest over names, sources and digests: equal sets give equal fingerprints. */
  fingerprint: string;
}

export type StepResult = 'success' | 'skipped' | 'failed' | 'timeout' | 'cancelled';
export type HookResult = 'pending' | 'running' | StepResult;

export type TransactionState =
  | 'queued' | 'preparing' | 'cancelling' | 'rolling-back' | 'prepared'
  | 'committing' | 'committed' | 'aborting' | 'aborted' | 'failed' | 'cancelled';

/** States in which no work is running or pending for the transaction. */
export const RESTING_STATES: ReadonlySet<TransactionState> = new Set<TransactionState>([
  'prepared', 'committed', 'aborted', 'failed', 'cancelled',
]);

export interface HookStatus {
  name: string;
  result: HookResult;
  percent: number;
  status: string;
}

/** The full current state of a transaction: what the bus properties expose. */
export interface TransactionSnapshot {
  id: string;
  deployment: string;
  phase: Phase;
  state: TransactionState;
  progress: number;
  currentHook: string;
  hooks: HookStatus[];
  error: ErrorCode | '';
  errorMessage: string;
  startedUsec: number;
  finishedUsec: number;
}

/** Events a transaction emits while it runs, in order. */
export type TransactionEvent =
  | { type: 'phase-started'; phase: Phase }
  | { type: 'hook-started'; hook: string; index: number; count: number }
  | { type: 'hook-progress'; hook: string; percent: number; status: string }
  | { type: 'hook-finished'; hook: string; result: StepResult; message: string }
  | { type: 'message'; hook: string; line: string }
  /**
   * `count` more output lines of `hook` that were written to the log but
   * not emitted as `message` (over the Message cap; see message-limiter.ts).
   * Reported at the end of each window and before the hook's hook-finished.
   */
  | { type: 'messages-suppressed'; hook: string; count: number }
  | { type: 'finished'; state: TransactionState; error: ErrorCode | ''; message: string };
