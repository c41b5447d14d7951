/**
 * The engine's façade: transactions, the one-at-a-time work queue, and the
 * EngineApi operations. No D-Bus here: adapters use the EngineApi surface.
 * The phases run in phase-runner.ts (one step: hook-step.ts), start-up
 * recovery in recovery-loader.ts and recovery.ts, the hook operations in
 * hook-registry.ts, and the state directory's files are state-dir.ts's.
 *
 * Crash-safety argument, in short:
 * - A transaction exists only once its `begin` record (with the full hook
 *   definitions) is durable, so recovery never meets a transaction it cannot
 *   describe, and an abort works after the deployment that shipped the hooks
 *   is gone.
 * - Each step's `step` record is durable before its process is spawned, so
 *   recovery knows every step that may have run (see journal.ts).
 * - A state change is journaled before it is published, so nothing a client
 *   saw can be forgotten by a crash.
 * - On start, before any new work, leftover processes of unfinished
 *   transactions are killed (by their environment marker, which survives
 *   setsid, and by recorded process group with a start-time guard), then an
 *   interrupted prepare is rolled back and an interrupted commit or abort is
 *   run again, through the same queue new work waits in.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { BehaviorSubject, Subject, type Observable } from 'rxjs';
import type { EngineApi, EngineStatus, TransactionHandle } from './api.js';
import type { PhaseOptions, RegisterOptions, StartOptions } from '../model/options.js';
import { Sysroot } from './deployments.js';
import { PreStageError, toPreStageError } from '../model/errors.js';
import { HookRegistry } from './hook-registry.js';
import {
  JournalStore, nowUsec, type BeginRecord, type JournalHook,
} from './journal.js';
import type { Logger } from '../model/logger.js';
import { PhaseRunner, type Job } from './phase-runner.js';
import { terminateGroup } from './process-tree.js';
import { loadTransactions } from './recovery-loader.js';
import { StateDir, historyToPrune } from './state-dir.js';
import { Transaction } from './transaction.js';
import type {
  HookDefinition, HookSet, Phase, TransactionSnapshot,
} from '../model/types.js';

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
export const MIN_HISTORY = 20;

export interface EngineOptions {
  stateDir: string;
  /** Hook directories /etc/bootc/pre-stage.d and /run/bootc/pre-stage.d live under this. */
  root: string;
  sysroot: string;
  bootedRoot: string;
  logger: Logger;
  version: string;
  /** Finished transactions kept (at least MIN_HISTORY). Default 50. */
  historyLimit?: number;
  /** Transactions that may wait in the queue. Default 16. */
  queueLimit?: number;
  /** SIGTERM -> SIGKILL delay for steps. Default 5000 ms. */
  killGraceMs?: number;
  /** Owner that hook files and programs must have. Default 0 (root). */
  trustedUid?: number;
  /** PATH given to steps. */
  stepPath?: string;
}

const MAX_QUEUE = 16;

function newId(): string {
  const d = new Date();
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const stamp = `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}` +
    `T${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}`;
  return `${stamp}_${randomBytes(4).toString('hex')}`;
}

/** States a transaction can rest in with work still owed to it. */
function owesWork(tx: Transaction): boolean {
  const s = tx.snapshot();
  return s.state === 'prepared' || (s.state === 'failed' && s.phase !== 'prepare');
}

export class Engine implements EngineApi {
  readonly version: string;
  private readonly opts: Required<Omit<EngineOptions, 'logger'>>;
  private readonly log: Logger;
  private readonly sysroot: Sysroot;
  private readonly stateDir: StateDir;
  private readonly store: JournalStore;
  private readonly runner: PhaseRunner;
  private readonly hooks: HookRegistry;
  private readonly txs = new Map<string, Transaction>();
  private readonly queue: Job[] = [];
  private running: Job | null = null;
  private closing = false;
  private pumpScheduled = false;
  private idleWaiters: (() => void)[] = [];

  private readonly statusSubject = new BehaviorSubject<EngineStatus>({ state: 'idle', active: null });
  private readonly addedSubject = new Subject<TransactionHandle>();
  private readonly removedSubject = new Subject<string>();
  private readonly phaseStartedSubject = new Subject<{ transaction: TransactionHandle; phase: Phase }>();
  private readonly finishedSubject = new Subject<{ transaction: TransactionHandle; snapshot: TransactionSnapshot }>();
  readonly status$: Observable<EngineStatus> = this.statusSubject.asObservable();
  readonly added$: Observable<TransactionHandle> = this.addedSubject.asObservable();
  readonly removed$: Observable<string> = this.removedSubject.asObservable();
  readonly phaseStarted$ = this.phaseStartedSubject.asObservable();
  readonly finished$ = this.finishedSubject.asObservable();

  private constructor(o: EngineOptions) {
    this.version = o.version;
    this.log = o.logger;
    this.opts = {
      stateDir: path.resolve(o.stateDir),
      root: path.resolve(o.root),
      sysroot: o.sysroot,
      bootedRoot: o.bootedRoot,
      version: o.version,
      historyLimit: Math.max(MIN_HISTORY, o.historyLimit ?? 50),
      queueLimit: Math.max(1, Math.min(o.queueLimit ?? MAX_QUEUE, 1024)),
      killGraceMs: o.killGraceMs ?? 5000,
      trustedUid: o.trustedUid ?? 0,
      stepPath: o.stepPath ?? DEFAULT_PATH,
    };
    this.sysroot = new Sysroot(o.sysroot, o.bootedRoot);
    this.stateDir = new StateDir(this.opts.stateDir);
    this.hooks = new HookRegistry(this.opts.root, this.opts.trustedUid, this.log);
    this.store = new JournalStore(this.stateDir.journalDir);
    this.runner = new PhaseRunner({
      log: this.log,
      stateDir: this.stateDir,
      store: this.store,
      stepPath: this.opts.stepPath,
      killGraceMs: this.opts.killGraceMs,
      trustedUid: this.opts.trustedUid,
      isClosing: () => this.closing,
      transactions: () => this.txs.values(),
      phaseStarted: (tx, phase) => this.phaseStartedSubject.next({ transaction: tx, phase }),
      finished: (tx, snapshot) => this.finishedSubject.next({ transaction: tx, snapshot }),
    });
  }

  /**
   * Open the state directory and recover: load every journal, kill leftover
   * processes of unfinished transactions, and queue their recovery ahead of
   * any new work. Returns once recovery is queued; `whenIdle()` waits for it.
   */
  static async open(o: EngineOptions): Promise<Engine> {
    const e = new Engine(o);
    await e.stateDir.open();
    await e.store.init();
    await loadTransactions({
      store: e.store,
      log: e.log,
      killGraceMs: e.opts.killGraceMs,
      adopt: (begin) => e.adopt(begin),
      finish: (tx, state, error, message) => e.runner.finish(tx, state, error, message),
      enqueue: (job) => e.enqueue(job),
    });
    // Finished transactions keep no open journal; interrupted ones reopened theirs.
    await e.prune();
    return e;
  }

  // ---- status ----------------------------------------------------------------

  status(): EngineStatus {
    return this.statusSubject.getValue();
  }

  private publishStatus(): void {
    const busy = this.running !== null || this.queue.length > 0;
    const next: EngineStatus = { state: busy ? 'busy' : 'idle', active: this.running?.tx.id ?? null };
    const cur = this.statusSubject.getValue();
    if (cur.state !== next.state || cur.active !== next.active) this.statusSubject.next(next);
    if (!busy) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves when no work is running or queued. */
  whenIdle(): Promise<void> {
    if (this.running === null && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  transactions(): TransactionHandle[] {
    return [...this.txs.values()].sort((a, b) => a.createdUsec - b.createdUsec);
  }

  transaction(id: string): TransactionHandle | undefined {
    return this.txs.get(id);
  }

  /** The newest real (not dry-run) transaction of a deployment. */
  private latestFor(deployment: string): Transaction | undefined {
    let best: Transaction | undefined;
    for (const tx of this.txs.values()) {
      if (tx.deployment !== deployment || tx.dryRun) continue;
      if (!best || tx.createdUsec > best.createdUsec) best = tx;
    }
    return best;
  }

  private jobFor(deployment: string): Job | undefined {
    if (this.running?.tx.deployment === deployment) return this.running;
    return this.queue.find((j) => j.tx.deployment === deployment);
  }

  private busyError(what: string): PreStageError {
    const cur = this.running ?? this.queue[0];
    const who = cur ? `transaction ${cur.tx.id} (${cur.kind} of ${cur.tx.deployment})` : 'another transaction';
    return new PreStageError('Busy', `${what}: ${who} is running; retry later or pass 'wait'`);
  }

  private checkCapacity(wait: boolean | undefined, what: string): void {
    const busy = this.running !== null || this.queue.length > 0;
    if (!busy) return;
    if (!wait) throw this.busyError(what);
    if (this.queue.length >= this.opts.queueLimit) {
      throw new PreStageError('Busy', `${what}: the queue is full (${this.opts.queueLimit} transactions waiting)`);
    }
  }

  // ---- public operations ---------------------------------------------------------

  async start(deployment: string, o: StartOptions): Promise<TransactionHandle> {
    this.assertOpen();
    const dep = await this.sysroot.resolve(deployment, { mustExist: true });
    const job = this.jobFor(dep.path);
    if (job) {
      if (job.kind === 'prepare') return job.tx; // rejoin
      throw new PreStageError('Busy',
        `transaction ${job.tx.id} for ${dep.path} is in its ${job.kind} phase; wait for it to finish`);
    }
    const set = await this.hooks.forTransaction(dep.path);
    const hooks = set.hooks.map<JournalHook>((h) => ({
      name: h.name, definition: h.definition, source: h.source, digest: h.digest, refused: h.refused,
    }));
    if (o.dryRun) {
      const tx = await this.create(dep.path, dep.key, hooks, set.fingerprint, true);
      this.enqueue({ tx, kind: 'dry-run', timeoutSec: 0 }, true);
      return tx;
    }
    const latest = this.latestFor(dep.path);
    if (!o.force && latest && latest.fingerprint === set.fingerprint &&
        (latest.state === 'prepared' || latest.state === 'committed')) {
      this.log.info('already prepared with the same hooks; nothing to do',
        { transaction: latest.id, deployment: dep.path });
      return latest;
    }
    this.checkCapacity(o.wait, `cannot start the prepare phase of ${dep.path}`);
    const tx = await this.create(dep.path, dep.key, hooks, set.fingerprint, false);
    this.enqueue({ tx, kind: 'prepare', timeoutSec: o.timeoutSec ?? 0 });
    return tx;
  }

  async commit(deployment: string, o: PhaseOptions): Promise<TransactionHandle> {
    this.assertOpen();
    const dep = await this.sysroot.resolve(deployment, { mustExist: true });
    return this.requestPhase(dep.path, 'commit', o);
  }

  async abort(deployment: string, o: PhaseOptions): Promise<TransactionHandle> {
    this.assertOpen();
    const dep = await this.sysroot.resolve(deployment, { mustExist: false });
    return this.requestPhase(dep.path, 'abort', o);
  }

  private requestPhase(deployment: string, phase: 'commit' | 'abort', o: PhaseOptions): Transaction {
    const job = this.jobFor(deployment);
    if (job) {
      if (job.kind === phase) return job.tx; // rejoin
      throw new PreStageError('Busy',
        `transaction ${job.tx.id} for ${deployment} is in its ${job.kind === 'rollback' ? 'recovery' : job.kind} phase; wait for it to finish`);
    }
    const tx = this.latestFor(deployment);
    if (!tx) throw new PreStageError('NotFound', `no pre-stage transaction exists for ${deployment}`);
    const s = tx.snapshot();
    const done = phase === 'commit' ? 'committed' : 'aborted';
    if (s.state === done) return tx; // idempotent
    const retry = s.state === 'failed' && s.phase === phase;
    if (s.state !== 'prepared' && !retry) {
      throw new PreStageError('NotFound',
        `no prepared transaction for ${deployment}: the latest, ${tx.id}, is ${s.state}` +
        (s.state === 'failed' ? ` in its ${s.phase} phase` : '') +
        (phase === 'commit' ? '; run StartPreStage first' : ''));
    }
    this.checkCapacity(o.wait, `cannot ${phase} ${deployment}`);
    this.enqueue({ tx, kind: phase, timeoutSec: o.timeoutSec ?? 0 });
    return tx;
  }

  async reconcile(): Promise<TransactionHandle[]> {
    this.assertOpen();
    const booted = await this.sysroot.booted();
    const acted: Transaction[] = [];
    const latest = new Map<string, Transaction>();
    for (const tx of this.txs.values()) {
      if (tx.dryRun) continue;
      const cur = latest.get(tx.deployment);
      if (!cur || tx.createdUsec > cur.createdUsec) latest.set(tx.deployment, tx);
    }
    for (const tx of latest.values()) {
      const job = this.jobFor(tx.deployment);
      if (job) {
        // Already queued (e.g. by the start-up reconcile): report it, as a rejoin.
        if (job.tx === tx && (job.kind === 'commit' || job.kind === 'abort')) acted.push(tx);
        continue;
      }
      const s = tx.snapshot();
      if (!owesWork(tx)) continue;
      if (tx.deployment === booted && (s.state === 'prepared' || s.phase === 'commit')) {
        this.enqueue({ tx, kind: 'commit', timeoutSec: 0, reason: 'reconcile: the deployment is booted' });
        acted.push(tx);
      } else if (!(await this.sysroot.exists(tx.deployment)) && (s.state === 'prepared' || s.phase === 'abort')) {
        this.enqueue({ tx, kind: 'abort', timeoutSec: 0, reason: 'reconcile: the deployment is gone' });
        acted.push(tx);
      }
    }
    if (acted.length) this.log.info(`reconcile queued ${acted.length} transaction(s)`, {});
    return acted;
  }

  async registerHook(name: string, definition: HookDefinition, o: RegisterOptions): Promise<string> {
    this.assertOpen();
    return this.hooks.register(name, definition, o.runtime);
  }

  async unregisterHook(name: string): Promise<void> {
    this.assertOpen();
    await this.hooks.unregister(name);
  }

  async listHooks(deployment: string): Promise<HookSet> {
    this.assertOpen();
    const dep = deployment === '' ? null : (await this.sysroot.resolve(deployment, { mustExist: true })).path;
    return this.hooks.list(dep);
  }

  private assertOpen(): void {
    if (this.closing) throw new PreStageError('Internal', 'the daemon is shutting down');
  }

  // ---- creation, queue ------------------------------------------------------------

  private async create(
    deployment: string, key: string, hooks: JournalHook[], fingerprint: string, dryRun: boolean,
  ): Promise<Transaction> {
    const id = newId();
    const begin: BeginRecord = {
      t: 'begin', v: 1, id, deployment, deploymentKey: key, createdUsec: nowUsec(),
      fingerprint, dryRun, hooks,
    };
    const journal = await this.store.create(begin);
    const tx = this.adopt(begin);
    tx.journal = journal;
    tx.log.write('', `created: ${dryRun ? 'dry run of ' : ''}${hooks.length} hook(s) for ${deployment}`);
    this.log.info(`transaction created${dryRun ? ' (dry run)' : ''}`, { transaction: id, deployment });
    this.addedSubject.next(tx);
    return tx;
  }

  private adopt(begin: BeginRecord): Transaction {
    const tx = new Transaction({
      id: begin.id, deployment: begin.deployment, deploymentKey: begin.deploymentKey,
      hooks: begin.hooks, fingerprint: begin.fingerprint, createdUsec: begin.createdUsec,
      dryRun: begin.dryRun, logFile: this.stateDir.logFile(begin.id),
    });
    tx.setCancelHandler((t) => this.cancel(t));
    this.txs.set(tx.id, tx);
    return tx;
  }

  /** Queue work; it starts after the current macrotask, so callers reply first. */
  private enqueue(job: Job, front = false): void {
    if (front) this.queue.unshift(job); else this.queue.push(job);
    this.publishStatus();
    this.schedulePump();
  }

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.closing) return;
    // Dry runs execute nothing; they never wait behind real work, and run
    // beside it (they touch neither `running` nor the phase runner's current run).
    const dry = this.queue.findIndex((j) => j.kind === 'dry-run');
    if (this.running && dry < 0) return;
    const idx = dry >= 0 ? dry : 0;
    const job = this.queue.splice(idx, 1)[0];
    if (!job) {
      this.publishStatus();
      return;
    }
    if (job.kind !== 'dry-run') this.running = job;
    this.publishStatus();
    try {
      await this.runner.run(job);
    } catch (e) {
      const err = toPreStageError(e);
      this.log.error(`transaction failed internally: ${err.message}`, { transaction: job.tx.id });
      if (!this.closing) {
        await this.runner.finish(job.tx, 'failed', 'Internal', `internal error: ${err.message}`).catch(() => {});
      }
    } finally {
      if (this.running === job) {
        this.running = null;
        this.runner.reset();
      }
      this.publishStatus();
      if (!this.closing) {
        await this.prune().catch((e) => this.log.warn(`pruning history failed: ${(e as Error).message}`));
        this.schedulePump();
      }
    }
  }

  // ---- cancel ---------------------------------------------------------------------

  private cancel(tx: Transaction): void {
    const s = tx.snapshot();
    if (tx.resting || tx.cancelRequested) return;
    const queued = this.queue.findIndex((j) => j.tx === tx);
    if (queued >= 0 && this.running?.tx !== tx) {
      const [job] = this.queue.splice(queued, 1);
      this.publishStatus();
      if (job!.kind === 'prepare') {
        tx.cancelRequested = true;
        void this.runner.finish(tx, 'cancelled', 'Cancelled', 'cancelled before it started')
          .catch((e) => this.log.error(`journal write failed: ${(e as Error).message}`, { transaction: tx.id }));
        return;
      }
      // A queued commit/abort: the transaction stays where it was.
      this.log.info(`queued ${job!.kind} cancelled`, { transaction: tx.id });
      return;
    }
    if (s.phase !== 'prepare' || s.state !== 'preparing') {
      throw new PreStageError('Busy',
        `transaction ${tx.id} is ${s.state}: only a prepare phase can be cancelled; ` +
        'commit, abort and rollback steps always run to the end');
    }
    tx.cancelRequested = true;
    tx.patch({ state: 'cancelling' });
    tx.log.write('', 'cancel requested');
    this.log.info('cancel requested', { transaction: tx.id });
    void tx.journal?.append({ t: 'state', state: 'cancelling', error: '', message: 'cancel requested', usec: nowUsec() }, true)
      .catch((e) => this.log.error(`journal write failed: ${(e as Error).message}`, { transaction: tx.id }));
    this.runner.cancelCurrentStep();
  }
  // ---- history ----------------------------------------------------------------

  /** Drop the oldest finished transactions beyond the history limit, with their files. */
  private async prune(): Promise<void> {
    const finished = [...this.txs.values()]
      .filter((tx) => tx.resting && !owesWork(tx) && !this.jobFor(tx.deployment));
    for (const tx of historyToPrune(finished, this.opts.historyLimit)) {
      await tx.journal?.close();
      await this.store.remove(tx.id);
      await this.stateDir.removeLog(tx.id);
      this.txs.delete(tx.id);
      tx.dispose();
      this.removedSubject.next(tx.id);
    }
  }

  // ---- shutdown ------------------------------------------------------------------

  /**
   * Stop: take no more work, stop the running step's process group (the
   * journal says it started, so the next start recovers it exactly as after a
   * crash), and close files.
   */
  async shutdown(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const step = this.runner.currentStep();
    if (step && step.pid > 0) await terminateGroup(step.pid, Math.min(this.opts.killGraceMs, 3000)).catch(() => {});
    for (const tx of this.txs.values()) {
      await tx.journal?.close().catch(() => {});
      tx.log.close();
    }
    await this.stateDir.release();
  }
}
