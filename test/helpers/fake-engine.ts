/**
 * An in-memory EngineApi for testing the D-Bus adapter (service/bus/) in
 * isolation. It is a stand-in for OUR OWN engine, not for any external
 * program: it runs no hooks, writes no journal and knows no sysroot. The
 * real engine is tested on its own (test/unit/engine-*, test/integration/
 * engine-*) and end to end through the daemon; here a test drives each
 * transaction event by event, so it can assert exactly what the adapter
 * puts on the bus: signal order, throttling, message capping, error names.
 *
 * It follows the engine's contract where the adapter relies on it:
 * - `added$` fires before the promise of the call that created the
 *   transaction resolves;
 * - nothing is emitted until after that promise settles (`afterStart`
 *   runs from setImmediate, as the engine's pump does);
 * - a transaction's snapshot is updated before the event that reports the
 *   change is emitted.
 */
import { BehaviorSubject, Subject, type Observable } from 'rxjs';
import type { EngineApi, EngineStatus, TransactionHandle } from '../../service/engine/api.js';
import type { LogOptions, PhaseOptions, RegisterOptions, StartOptions } from '../../service/model/options.js';
import { PreStageError, type ErrorCode } from '../../service/model/errors.js';
import type {
  HookDefinition, HookResult, HookSet, Phase, StepResult, TransactionEvent, TransactionSnapshot,
  TransactionState,
} from '../../service/model/types.js';

/** One driveable transaction. */
export class FakeTransaction implements TransactionHandle {
  readonly id: string;
  readonly deployment: string;
  /** Times cancel() was called. */
  cancelCalls = 0;
  /** When set, cancel() throws it (the engine throws Busy for commit/abort). */
  cancelError: Error | null = null;
  /** Lines readLog serves, with the hook each belongs to ('' for the daemon's own). */
  logLines: { hook: string; line: string }[] = [];
  /** Every readLog call's options. */
  readonly logCalls: LogOptions[] = [];
  private readonly state: BehaviorSubject<TransactionSnapshot>;
  private readonly events = new Subject<TransactionEvent>();
  readonly state$: Observable<TransactionSnapshot>;
  readonly events$: Observable<TransactionEvent>;

  constructor(private readonly engine: FakeEngine, id: string, deployment: string, hooks: string[]) {
    this.id = id;
    this.deployment = deployment;
    this.state = new BehaviorSubject<TransactionSnapshot>({
      id, deployment, phase: 'prepare', state: 'queued', progress: 0, currentHook: '',
      hooks: hooks.map((name) => ({ name, result: 'pending' as HookResult, percent: 0, status: '' })),
      error: '', errorMessage: '', startedUsec: 0, finishedUsec: 0,
    });
    this.state$ = this.state.asObservable();
    this.events$ = this.events.asObservable();
  }

  snapshot(): TransactionSnapshot {
    return this.state.getValue();
  }

  cancel(): void {
    this.cancelCalls += 1;
    if (this.cancelError) throw this.cancelError;
  }

  async readLog(opts: LogOptions): Promise<string[]> {
    this.logCalls.push(opts);
    const lines = this.logLines
      .filter((l) => !opts.hook || l.hook === opts.hook)
      .map((l) => (l.hook ? `${l.hook}: ${l.line}` : l.line));
    return lines.slice(Math.max(0, lines.length - opts.maxLines));
  }

  // ---- driving ----------------------------------------------------------------

  /** Change the snapshot (emits on state$). */
  patch(p: Partial<TransactionSnapshot>): void {
    this.state.next({ ...this.state.getValue(), ...p });
  }

  /** Emit a raw event, snapshot untouched. */
  emit(ev: TransactionEvent): void {
    this.events.next(ev);
  }

  private setHook(name: string, p: { result?: HookResult; percent?: number; status?: string }): void {
    const hooks = this.snapshot().hooks.map((h) => (h.name === name ? { ...h, ...p } : h));
    const done = hooks.reduce((n, h) => n + (h.result === 'running' ? h.percent / 100 : (h.result === 'pending' ? 0 : 1)), 0);
    this.patch({ hooks, progress: hooks.length ? Math.floor((100 * done) / hooks.length) : 100 });
  }

  /** A phase starts: state, phase-started event, engine phaseStarted$. */
  beginPhase(phase: Phase, state: TransactionState = phase === 'prepare' ? 'preparing' : phase === 'commit' ? 'committing' : 'aborting'): void {
    this.patch({ phase, state, startedUsec: Date.now() * 1000, finishedUsec: 0, error: '', errorMessage: '' });
    this.emit({ type: 'phase-started', phase });
    this.engine.emitPhaseStarted(this, phase);
  }

  hookStarted(hook: string): void {
    const hooks = this.snapshot().hooks;
    const index = hooks.findIndex((h) => h.name === hook);
    this.patch({ currentHook: hook });
    this.setHook(hook, { result: 'running', percent: 0, status: '' });
    this.emit({ type: 'hook-started', hook, index, count: hooks.length });
  }

  progress(hook: string, percent: number, status = ''): void {
    this.setHook(hook, { percent, status });
    this.emit({ type: 'hook-progress', hook, percent, status });
  }

  message(hook: string, line: string): void {
    this.logLines.push({ hook, line });
    this.emit({ type: 'message', hook, line });
  }

  hookFinished(hook: string, result: StepResult, message = ''): void {
    this.setHook(hook, { result, percent: 100 });
    this.patch({ currentHook: '' });
    this.emit({ type: 'hook-finished', hook, result, message });
  }

  /** The phase ends: snapshot, finished event, engine finished$. */
  finish(state: TransactionState, error: ErrorCode | '' = '', message = ''): void {
    this.patch({ state, error, errorMessage: message, currentHook: '', finishedUsec: Date.now() * 1000 });
    this.emit({ type: 'finished', state, error, message });
    this.engine.emitFinished(this);
  }

  /** Complete the streams (the engine does this when it drops a transaction). */
  complete(): void {
    this.state.complete();
    this.events.complete();
  }
}

type Method = 'start' | 'commit' | 'abort' | 'reconcile' | 'registerHook' | 'unregisterHook' | 'listHooks';

/** A recorded call into the fake. */
export interface FakeCall {
  method: Method;
  args: unknown[];
}

export class FakeEngine implements EngineApi {
  readonly version = '0.0.0-fake';
  /** Hook names every new transaction gets. */
  hooks: string[] = ['alpha', 'beta'];
  /** What listHooks returns. */
  hookSet: HookSet = { hooks: [], masked: [], fingerprint: '' };
  /** Every call, in order. */
  readonly calls: FakeCall[] = [];
  /**
   * Runs from setImmediate after a start/commit/abort promise has
   * resolved: where a test makes the transaction "run".
   */
  afterStart: ((tx: FakeTransaction, method: Method) => void) | null = null;

  private readonly txs = new Map<string, FakeTransaction>();
  private readonly failures = new Map<Method, Error>();
  private seq = 0;
  private readonly statusSubject = new BehaviorSubject<EngineStatus>({ state: 'idle', active: null });
  private readonly addedSubject = new Subject<TransactionHandle>();
  private readonly removedSubject = new Subject<string>();
  private readonly phaseSubject = new Subject<{ transaction: TransactionHandle; phase: Phase }>();
  private readonly finishedSubject = new Subject<{ transaction: TransactionHandle; snapshot: TransactionSnapshot }>();

  readonly status$ = this.statusSubject.asObservable();
  readonly added$ = this.addedSubject.asObservable();
  readonly removed$ = this.removedSubject.asObservable();
  readonly phaseStarted$ = this.phaseSubject.asObservable();
  readonly finished$ = this.finishedSubject.asObservable();

  status(): EngineStatus {
    return this.statusSubject.getValue();
  }

  transactions(): TransactionHandle[] {
    return [...this.txs.values()];
  }

  transaction(id: string): FakeTransaction | undefined {
    return this.txs.get(id);
  }

  /** The next call of `method` throws `error` (once). */
  failNext(method: Method, error: Error): void {
    this.failures.set(method, error);
  }

  /** Add a transaction now (as recovery or another client would), emitting added$. */
  addTransaction(deployment: string, id = `fake${++this.seq}`): FakeTransaction {
    const tx = new FakeTransaction(this, id, deployment, this.hooks);
    this.txs.set(id, tx);
    this.addedSubject.next(tx);
    return tx;
  }

  /** Prune a transaction: removed$, streams completed. */
  removeTransaction(id: string): void {
    const tx = this.txs.get(id);
    if (!tx) return;
    this.txs.delete(id);
    this.removedSubject.next(id);
    tx.complete();
  }

  setStatus(status: EngineStatus): void {
    this.statusSubject.next(status);
  }

  emitPhaseStarted(tx: FakeTransaction, phase: Phase): void {
    this.setStatus({ state: 'busy', active: tx.id });
    this.phaseSubject.next({ transaction: tx, phase });
  }

  emitFinished(tx: FakeTransaction): void {
    this.finishedSubject.next({ transaction: tx, snapshot: tx.snapshot() });
    this.setStatus({ state: 'idle', active: null });
  }

  private enter(method: Method, args: unknown[]): void {
    this.calls.push({ method, args });
    const err = this.failures.get(method);
    if (err) {
      this.failures.delete(method);
      throw err;
    }
  }

  private later(tx: FakeTransaction, method: Method): void {
    const run = this.afterStart;
    if (run) setImmediate(() => run(tx, method));
  }

  /**
   * Rejoins a preparing transaction of `deployment`; with `force`, reuses
   * one at rest (reset to queued); otherwise creates one. Like the engine,
   * it publishes the busy status and the reset snapshot *before* the
   * promise resolves: the adapter must still reply before any signal.
   */
  async start(deployment: string, opts: StartOptions): Promise<TransactionHandle> {
    this.enter('start', [deployment, opts]);
    const mine = [...this.txs.values()].filter((t) => t.deployment === deployment);
    let tx = mine.find((t) => t.snapshot().state === 'preparing');
    if (!tx && opts.force) {
      tx = mine.reverse().find((t) => ['prepared', 'failed', 'cancelled'].includes(t.snapshot().state));
      tx?.patch({ state: 'queued', error: '', errorMessage: '', finishedUsec: 0 });
    }
    tx ??= this.addTransaction(deployment);
    this.setStatus({ state: 'busy', active: tx.id });
    this.later(tx, 'start');
    return tx;
  }

  async commit(deployment: string, opts: PhaseOptions): Promise<TransactionHandle> {
    this.enter('commit', [deployment, opts]);
    const tx = [...this.txs.values()].reverse().find((t) => t.deployment === deployment);
    if (!tx) throw new PreStageError('NotFound', `no transaction for ${deployment}`);
    this.later(tx, 'commit');
    return tx;
  }

  async abort(deployment: string, opts: PhaseOptions): Promise<TransactionHandle> {
    this.enter('abort', [deployment, opts]);
    const tx = [...this.txs.values()].reverse().find((t) => t.deployment === deployment);
    if (!tx) throw new PreStageError('NotFound', `no transaction for ${deployment}`);
    this.later(tx, 'abort');
    return tx;
  }

  async reconcile(): Promise<TransactionHandle[]> {
    this.enter('reconcile', []);
    return [...this.txs.values()];
  }

  async registerHook(name: string, definition: HookDefinition, opts: RegisterOptions): Promise<string> {
    this.enter('registerHook', [name, definition, opts]);
    return `${opts.runtime ? '/run' : '/etc'}/bootc/pre-stage.d/${name}.hook`;
  }

  async unregisterHook(name: string): Promise<void> {
    this.enter('unregisterHook', [name]);
  }

  async listHooks(deployment: string): Promise<HookSet> {
    this.enter('listHooks', [deployment]);
    return this.hookSet;
  }

  async shutdown(): Promise<void> {
    for (const tx of this.txs.values()) tx.complete();
  }
}
