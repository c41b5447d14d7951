/**
 * What the client reads from the service, as plain typed data: the
 * manager's and a transaction's properties, ListHooks entries, and the
 * events a followed transaction yields. Strings the service may extend in
 * a later version (states, results) keep their engine types for the values
 * known today; decoding accepts any string so an older client does not
 * break on a newer daemon.
 */
import type { HookResult, Phase, StepResult, TransactionState } from '../model/types.js';

export type { HookResult, Phase, StepResult, TransactionState };

/** Properties of org.containers.bootc.PreStage. */
export interface ManagerProperties {
  version: string;
  /** `idle` or `busy`. */
  state: string;
  /** Object path of the running transaction, `/` when none. */
  activeTransaction: string;
}

/** One entry of a transaction's `Hooks` property, `(ssus)`. */
export interface HookRow {
  name: string;
  result: HookResult;
  percent: number;
  status: string;
}

/** Properties of org.containers.bootc.PreStage.Transaction, plus its path. */
export interface TransactionProperties {
  path: string;
  id: string;
  deployment: string;
  phase: Phase;
  state: TransactionState;
  progress: number;
  currentHook: string;
  hooks: HookRow[];
  /** A D-Bus error name, or ''. */
  error: string;
  errorMessage: string;
  /** Microseconds since the epoch (CLOCK_REALTIME); 0 when unset. */
  startedUsec: number;
  finishedUsec: number;
}

/** One ListHooks entry: the definition, where it came from, and any extra keys. */
export interface HookEntry {
  name: string;
  description: string;
  /** argv; empty when the hook has no such step. */
  prepare: string[];
  commit: string[];
  abort: string[];
  after: string[];
  before: string[];
  environment: string[];
  required: boolean;
  /** Seconds; 0 means infinity. */
  timeoutSec: number;
  /** The file it came from. */
  source: string;
  /** Other keys the service sent (Origin, Refused, Digest, ...), values unwrapped. */
  extra: Record<string, unknown>;
}

/** What a followed transaction yields, in order. */
export type FollowEvent =
  /** The full current state: first the snapshot read on joining, then after every change. */
  | { type: 'state'; transaction: TransactionProperties }
  | { type: 'phase-started'; phase: string }
  | { type: 'hook-started'; hook: string; index: number; count: number }
  | { type: 'hook-progress'; hook: string; percent: number; status: string }
  | { type: 'hook-finished'; hook: string; result: string; message: string }
  | { type: 'message'; hook: string; line: string }
  /** Always the last event: the phase ended (or had ended before we looked). */
  | { type: 'finished'; state: string; error: string; message: string; transaction: TransactionProperties };

/** A signal of the service as `monitor` shows it. */
export interface ServiceSignal {
  path: string;
  interface: string;
  member: string;
  signature: string;
  /** Body with Variants unwrapped (64-bit integers stay BigInt). */
  args: unknown[];
}
