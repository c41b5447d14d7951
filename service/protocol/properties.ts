/**
 * The typed shapes of what the service's properties and ListHooks entries
 * carry, as a client reads them (decoded by service/client/decode.ts; the
 * daemon builds them in service/bus/). Strings the service may extend in a
 * later version (states, results) keep their model types for the values
 * known today; decoding accepts any string so an older client does not
 * break on a newer daemon.
 */
import type { HookResult, Phase, TransactionState } from '../model/types.js';

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
