/**
 * What the engine offers its adapters (the D-Bus layer, tests). The engine
 * imports no D-Bus; the bus layer imports only this file from the engine
 * (plain data types, errors and options are service/model/'s;
 * test/unit/layers.test.ts checks both).
 */
import type { Observable } from 'rxjs';
import type { LogOptions, PhaseOptions, RegisterOptions, StartOptions } from '../model/options.js';
import type {
  HookDefinition, HookSet, Phase, TransactionEvent, TransactionSnapshot,
} from '../model/types.js';

/**
 * The Message signal cap the bus applies per transaction, which the engine's
 * message limiter applies per step too (message-limiter.ts says why).
 */
export { MESSAGE_LINES_PER_WINDOW, MESSAGE_WINDOW_MS } from './message-limiter.js';

/** A live transaction, exported on the bus as one object. */
export interface TransactionHandle {
  readonly id: string;
  readonly deployment: string;
  /** The full current state; always complete. */
  snapshot(): TransactionSnapshot;
  /** Emits the current snapshot at once, then on every change. */
  readonly state$: Observable<TransactionSnapshot>;
  /** Hook and phase events, in order; never replays past ones. */
  readonly events$: Observable<TransactionEvent>;
  /**
   * Cancel: a queued transaction is cancelled at once; a running prepare
   * stops its current step and rolls back. Commit and abort phases are not
   * cancellable (Busy). On a resting transaction it does nothing.
   */
  cancel(): void;
  /** The transaction's full log, every line the hooks wrote and every event. */
  readLog(opts: LogOptions): Promise<string[]>;
}

export interface EngineStatus {
  state: 'idle' | 'busy';
  /** Id of the running transaction, or null. */
  active: string | null;
}

export interface EngineApi {
  readonly version: string;
  /** Emits the current status at once, then on every change. */
  readonly status$: Observable<EngineStatus>;
  status(): EngineStatus;
  /** Every known transaction, oldest first. */
  transactions(): TransactionHandle[];
  transaction(id: string): TransactionHandle | undefined;
  /** A transaction became known (emitted before the call that made it returns). */
  readonly added$: Observable<TransactionHandle>;
  /** A transaction was pruned from history. */
  readonly removed$: Observable<string>;
  /** A phase of a transaction started running. */
  readonly phaseStarted$: Observable<{ transaction: TransactionHandle; phase: Phase }>;
  /** A transaction reached a resting state after running a phase. */
  readonly finished$: Observable<{ transaction: TransactionHandle; snapshot: TransactionSnapshot }>;

  /**
   * Validate, resolve and plan; then create (or rejoin, or reuse) the
   * transaction and return it. The work starts only after the returned
   * promise settles, so a caller can reply before any event is emitted.
   */
  start(deployment: string, opts: StartOptions): Promise<TransactionHandle>;
  commit(deployment: string, opts: PhaseOptions): Promise<TransactionHandle>;
  abort(deployment: string, opts: PhaseOptions): Promise<TransactionHandle>;
  /** Commit the booted deployment's prepared transaction; abort those whose deployment is gone. */
  reconcile(): Promise<TransactionHandle[]>;

  registerHook(name: string, definition: HookDefinition, opts: RegisterOptions): Promise<string>;
  unregisterHook(name: string): Promise<void>;
  /** deployment '' means host hooks only. */
  listHooks(deployment: string): Promise<HookSet>;

  /** Stop taking work, stop running steps (they are recovered on the next start), close files. */
  shutdown(): Promise<void>;
}
