/**
 * One transaction in memory: the hooks it was planned with (captured at
 * creation, so an abort still works after the deployment that shipped them
 * is gone), its current snapshot and its event stream. Every change of state
 * goes through `patch`/`setHook`, which publish a new immutable snapshot; the
 * engine is the only writer.
 */
import { BehaviorSubject, Subject, type Observable } from 'rxjs';
import type { TransactionHandle } from './api.js';
import type { LogOptions } from '../model/options.js';
import type { JournalHook, TransactionJournal } from './journal.js';
import { TransactionLog } from './transaction-log.js';
import type {
  HookStatus, Phase, TransactionEvent, TransactionSnapshot, TransactionState,
} from '../model/types.js';
import { RESTING_STATES } from '../model/types.js';

export interface TransactionInit {
  id: string;
  deployment: string;
  deploymentKey: string;
  hooks: JournalHook[];
  fingerprint: string;
  createdUsec: number;
  dryRun: boolean;
  logFile: string;
}

const FINISHED_RESULTS = new Set(['success', 'skipped', 'failed', 'timeout', 'cancelled']);

/** Hooks in the order a phase runs them: abort undoes in reverse. */
export function phaseOrder<T>(hooks: readonly T[], phase: Phase): T[] {
  return phase === 'abort' ? [...hooks].reverse() : [...hooks];
}

export class Transaction implements TransactionHandle {
  readonly id: string;
  readonly deployment: string;
  readonly deploymentKey: string;
  readonly hooks: readonly JournalHook[];
  readonly fingerprint: string;
  readonly createdUsec: number;
  readonly dryRun: boolean;
  readonly log: TransactionLog;

  journal: TransactionJournal | null = null;
  /** Hooks whose prepare step started (durably journaled): what a rollback undoes. */
  readonly preparedStarted = new Set<string>();
  /** Set by cancel(); the runner checks it between and during steps. */
  cancelRequested = false;
  /** The phase it last ran; with the state it says what a retry means. */
  private percentSum = 0;
  private snap: TransactionSnapshot;
  private readonly stateSubject: BehaviorSubject<TransactionSnapshot>;
  private readonly eventSubject = new Subject<TransactionEvent>();
  readonly state$: Observable<TransactionSnapshot>;
  readonly events$: Observable<TransactionEvent>;
  private onCancel: (tx: Transaction) => void = () => {};

  constructor(init: TransactionInit) {
    this.id = init.id;
    this.deployment = init.deployment;
    this.deploymentKey = init.deploymentKey;
    this.hooks = init.hooks;
    this.fingerprint = init.fingerprint;
    this.createdUsec = init.createdUsec;
    this.dryRun = init.dryRun;
    this.log = new TransactionLog(init.logFile);
    this.snap = {
      id: init.id,
      deployment: init.deployment,
      phase: 'prepare',
      state: 'queued',
      progress: 0,
      currentHook: '',
      hooks: init.hooks.map((h) => ({ name: h.name, result: 'pending', percent: 0, status: '' })),
      error: '',
      errorMessage: '',
      startedUsec: init.createdUsec,
      finishedUsec: 0,
    };
    this.stateSubject = new BehaviorSubject(this.snap);
    this.state$ = this.stateSubject.asObservable();
    this.events$ = this.eventSubject.asObservable();
  }

  setCancelHandler(fn: (tx: Transaction) => void): void {
    this.onCancel = fn;
  }

  snapshot(): TransactionSnapshot {
    return this.snap;
  }

  get state(): TransactionState {
    return this.snap.state;
  }

  get resting(): boolean {
    return RESTING_STATES.has(this.snap.state);
  }

  patch(p: Partial<Omit<TransactionSnapshot, 'id' | 'deployment' | 'hooks'>>): void {
    this.snap = { ...this.snap, ...p };
    this.stateSubject.next(this.snap);
  }

  /** Start a phase: the hook list becomes the phase's order, all pending. */
  beginPhase(phase: Phase, state: TransactionState, startedUsec: number): void {
    const hooks = phaseOrder(this.hooks, phase);
    this.percentSum = 0;
    this.snap = {
      ...this.snap,
      phase, state, progress: 0, currentHook: '', error: '', errorMessage: '',
      hooks: hooks.map((h) => ({ name: h.name, result: 'pending', percent: 0, status: '' })),
      startedUsec, finishedUsec: 0,
    };
    this.stateSubject.next(this.snap);
  }

  /** Replace the whole hook list (recovery rebuilds it from the journal). */
  setHooks(hooks: HookStatus[]): void {
    this.percentSum = hooks.reduce((s, h) => s + effectivePercent(h), 0);
    this.snap = { ...this.snap, hooks, progress: this.progressOf(hooks.length) };
    this.stateSubject.next(this.snap);
  }

  /** Update one hook's status; Progress follows. */
  setHook(index: number, p: Partial<Omit<HookStatus, 'name'>>): void {
    const old = this.snap.hooks[index];
    if (!old) return;
    const next: HookStatus = { ...old, ...p };
    if (FINISHED_RESULTS.has(next.result)) next.percent = 100;
    if (next.percent === old.percent && next.result === old.result && next.status === old.status) return;
    this.percentSum += effectivePercent(next) - effectivePercent(old);
    const hooks = this.snap.hooks.slice();
    hooks[index] = next;
    this.snap = { ...this.snap, hooks, progress: this.progressOf(hooks.length) };
    this.stateSubject.next(this.snap);
  }

  private progressOf(count: number): number {
    if (count === 0) return this.snap.state === 'preparing' ? 0 : 100;
    return Math.max(0, Math.min(100, Math.floor(this.percentSum / count)));
  }

  emit(ev: TransactionEvent): void {
    this.eventSubject.next(ev);
  }

  cancel(): void {
    this.onCancel(this);
  }

  readLog(opts: LogOptions): Promise<string[]> {
    return this.log.tail(opts.maxLines, opts.hook ?? '');
  }

  /** Pruned from history: complete the streams, close files. */
  dispose(): void {
    this.log.close();
    this.eventSubject.complete();
    this.stateSubject.complete();
  }
}

function effectivePercent(h: HookStatus): number {
  return FINISHED_RESULTS.has(h.result) ? 100 : h.percent;
}
