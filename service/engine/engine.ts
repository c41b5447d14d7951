/**
 * The engine: transactions, the one-at-a-time work queue, the phases, and
 * recovery. No D-Bus here: adapters use the EngineApi surface.
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
import { mkdirSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { BehaviorSubject, Subject, type Observable } from 'rxjs';
import type {
  EngineApi, EngineStatus, PhaseOptions, RegisterOptions, StartOptions, TransactionHandle,
} from './api.js';
import { expandArgv, quoteCommandLine } from './command-line.js';
import { Sysroot } from './deployments.js';
import { PreStageError, toPreStageError, type ErrorCode } from './errors.js';
import { discoverHooks, programTrustProblem } from './hook-discovery.js';
import { isValidHookName } from './hook-name.js';
import { validateDefinition } from './hook-file.js';
import { registerHookFile, unregisterHookFile } from './hook-store.js';
import {
  JournalStore, nowUsec, type BeginRecord, type JournalHook,
} from './journal.js';
import type { Logger } from './logger.js';
import { orderHooks } from './plan.js';
import {
  findProcessRefsByEnv, isSameProcess, killProcessesByEnv, processStartTime, readProcStat, terminateGroup,
} from './process-tree.js';
import { mkdirp, writeFileAtomic } from './fs-atomic.js';
import { replayJournal } from './recovery.js';
import { MessageLimiter } from './message-limiter.js';
import { locateSpawner } from './spawner.js';
import { runStep, type RunningStep, type StepOutcome } from './step-runner.js';
import { Transaction, phaseOrder } from './transaction.js';
import type {
  HookDefinition, HookSet, Phase, TransactionSnapshot, TransactionState,
} from './types.js';

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

type JobKind = 'prepare' | 'commit' | 'abort' | 'rollback' | 'dry-run';

interface Job {
  tx: Transaction;
  kind: JobKind;
  timeoutSec: number;
  /** Why a recovery job runs (for logs and messages). */
  reason?: string;
  /** The state to end in after a recovery rollback. */
  rollbackState?: 'failed' | 'cancelled';
}

/** Per-run bookkeeping of a phase, so cancel and deadlines reach the current step. */
interface PhaseRun {
  current: RunningStep | null;
  deadlineHit: boolean;
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
  private readonly store: JournalStore;
  private readonly txs = new Map<string, Transaction>();
  private readonly queue: Job[] = [];
  private running: Job | null = null;
  private runState: PhaseRun | null = null;
  private closing = false;
  /** Whether the spawn helper's presence was logged (at the first phase). */
  private spawnerChecked = false;
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
    this.store = new JournalStore(path.join(this.opts.stateDir, 'journal'));
  }

  /**
   * Open the state directory and recover: load every journal, kill leftover
   * processes of unfinished transactions, and queue their recovery ahead of
   * any new work. Returns once recovery is queued; `whenIdle()` waits for it.
   */
  static async open(o: EngineOptions): Promise<Engine> {
    const e = new Engine(o);
    await mkdirp(e.opts.stateDir, 0o700).catch((err: Error) => {
      throw new Error(`cannot create the state directory ${e.opts.stateDir}: ${err.message}`);
    });
    await e.lockStateDir();
    await fsp.mkdir(e.logDir(), { recursive: true, mode: 0o700 });
    await fsp.mkdir(e.hookStateRoot(), { recursive: true, mode: 0o700 });
    await e.store.init();
    await e.load();
    return e;
  }

  /**
   * One daemon per state directory: a second one would recover (roll back)
   * transactions the first is running. The lock names its holder by pid and
   * start time, so a lock left by a killed daemon is taken over, never one
   * held by a live daemon.
   */
  private async lockStateDir(): Promise<void> {
    const file = path.join(this.opts.stateDir, 'daemon.lock');
    const me = `${process.pid} ${processStartTime(process.pid) ?? ''}\n`;
    const held = await fsp.readFile(file, 'utf8').catch(() => '');
    const [pidText, start] = held.trim().split(' ');
    const pid = Number(pidText);
    if (pid > 0 && pid !== process.pid && isSameProcess(pid, start || null)) {
      throw new PreStageError('Busy', `another bootc-prestaged (pid ${pid}) uses the state directory ${this.opts.stateDir}`);
    }
    await writeFileAtomic(file, me, 0o600);
    this.lockFile = file;
  }

  private lockFile: string | null = null;

  // ---- paths ---------------------------------------------------------------

  private logDir(): string {
    return path.join(this.opts.stateDir, 'logs');
  }

  private hookStateRoot(): string {
    return path.join(this.opts.stateDir, 'hooks');
  }

  private hookStateDir(tx: Transaction, hook: string): string {
    return path.join(this.hookStateRoot(), tx.deploymentKey, hook);
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
    const set = await this.resolveHooks(dep.path);
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
    if (!isValidHookName(name)) {
      throw new PreStageError('InvalidArgs', `invalid hook name '${name.slice(0, 80)}': expected [A-Za-z0-9][A-Za-z0-9_.@-]{0,63}`);
    }
    validateDefinition(definition, `definition of hook '${name}'`);
    // Refuse a definition that would make the host hooks unorderable.
    const host = await discoverHooks({ root: this.opts.root, deployment: null, trustedUid: this.opts.trustedUid, logger: this.log });
    const nodes = host.hooks.filter((h) => h.name !== name)
      .map((h) => ({ name: h.name, after: h.definition.after, before: h.definition.before, source: h.source }));
    nodes.push({ name, after: definition.after, before: definition.before, source: `definition of hook '${name}'` });
    orderHooks(nodes);
    const file = await registerHookFile(this.opts.root, name, definition, o.runtime);
    this.log.info(`registered hook ${name}`, { hook: name, file });
    return file;
  }

  async unregisterHook(name: string): Promise<void> {
    this.assertOpen();
    if (!isValidHookName(name)) {
      throw new PreStageError('InvalidArgs', `invalid hook name '${name.slice(0, 80)}'`);
    }
    const removed = await unregisterHookFile(this.opts.root, name);
    this.log.info(`unregistered hook ${name}`, { hook: name, files: removed.join(' ') });
  }

  async listHooks(deployment: string): Promise<HookSet> {
    this.assertOpen();
    const dep = deployment === '' ? null : (await this.sysroot.resolve(deployment, { mustExist: true })).path;
    // Refused hooks are listed, marked, even required ones (which make
    // StartPreStage fail): ListHooks is where an admin sees why.
    return discoverHooks({ root: this.opts.root, deployment: dep, trustedUid: this.opts.trustedUid, logger: this.log });
  }

  private async resolveHooks(deployment: string | null): Promise<HookSet> {
    const set = await discoverHooks({
      root: this.opts.root, deployment, trustedUid: this.opts.trustedUid, logger: this.log,
    });
    const refusedRequired = set.hooks.filter((h) => h.refused && h.definition.required);
    if (refusedRequired.length > 0) {
      throw new PreStageError('InvalidHook', refusedRequired
        .map((h) => `required hook ${h.name} (${h.source}) is refused: ${h.refused}`).join('; '));
    }
    return set;
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
      dryRun: begin.dryRun, logFile: path.join(this.logDir(), `${begin.id}.log`),
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
    // beside it (they touch neither `running` nor `runState`).
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
      await this.runJob(job);
    } catch (e) {
      const err = toPreStageError(e);
      this.log.error(`transaction failed internally: ${err.message}`, { transaction: job.tx.id });
      if (!this.closing) {
        await this.finish(job.tx, 'failed', 'Internal', `internal error: ${err.message}`).catch(() => {});
      }
    } finally {
      if (this.running === job) {
        this.running = null;
        this.runState = null;
      }
      this.publishStatus();
      if (!this.closing) {
        await this.prune().catch((e) => this.log.warn(`pruning history failed: ${(e as Error).message}`));
        this.schedulePump();
      }
    }
  }

  private async runJob(job: Job): Promise<void> {
    // Transactions loaded from disk at start-up keep no journal open until
    // they have work again (a commit at boot, an abort after undeploy).
    job.tx.journal ??= await this.store.reopen(job.tx.id);
    switch (job.kind) {
      case 'dry-run': return this.runDryRun(job.tx);
      case 'prepare': return this.runPrepare(job);
      case 'commit':
      case 'abort': return this.runFinalPhase(job, job.kind);
      case 'rollback': return this.runRecoveryRollback(job);
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
        void this.finish(tx, 'cancelled', 'Cancelled', 'cancelled before it started')
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
    this.runState?.current?.cancel();
  }

  // ---- phases -----------------------------------------------------------------------

  private async beginPhase(tx: Transaction, phase: Phase, state: TransactionState, timeoutSec: number): Promise<void> {
    const usec = nowUsec();
    await tx.journal!.append({ t: 'phase', phase, usec, timeoutSec }, false);
    await tx.journal!.append({ t: 'state', state, error: '', message: '', usec }, true);
    tx.beginPhase(phase, state, usec);
    tx.log.write('', `phase ${phase} started`);
    this.log.info(`${phase} phase started`, { transaction: tx.id, deployment: tx.deployment, phase });
    if (!this.spawnerChecked) {
      this.spawnerChecked = true;
      const helper = locateSpawner();
      if (helper === null) {
        this.log.warn('no spawn helper (bootc-prestage-spawner not built, or disabled): steps are forked from the daemon itself, which is slower', {});
      } else {
        this.log.debug(`steps are started by ${helper}`, {});
      }
    }
    tx.emit({ type: 'phase-started', phase });
    this.phaseStartedSubject.next({ transaction: tx, phase });
  }

  private async finish(tx: Transaction, state: TransactionState, error: ErrorCode | '', message: string): Promise<void> {
    const usec = nowUsec();
    await tx.journal?.append({ t: 'state', state, error, message, usec }, true);
    // ErrorMessage explains an Error; a success's summary goes only to Finished and the log.
    tx.patch({ state, error, errorMessage: error ? message : '', currentHook: '', finishedUsec: usec });
    tx.log.write('', `finished: ${state}${error ? ` (${error})` : ''}${message ? `: ${message}` : ''}`);
    tx.log.flush();
    const fields = { transaction: tx.id, deployment: tx.deployment, phase: tx.snapshot().phase };
    if (state === 'failed') this.log.error(`transaction ${state}: ${message}`, fields);
    else this.log.info(`transaction ${state}${message ? `: ${message}` : ''}`, fields);
    tx.emit({ type: 'finished', state, error, message });
    this.finishedSubject.next({ transaction: tx, snapshot: tx.snapshot() });
  }

  private async runDryRun(tx: Transaction): Promise<void> {
    tx.beginPhase('prepare', 'preparing', nowUsec());
    tx.emit({ type: 'phase-started', phase: 'prepare' });
    this.phaseStartedSubject.next({ transaction: tx, phase: 'prepare' });
    const count = tx.hooks.length;
    tx.hooks.forEach((h, i) => {
      const argv = h.definition.prepare;
      const msg = h.refused ? `refused: ${h.refused}`
        : argv ? `would run: ${quoteCommandLine(argv)}` : 'no Prepare step';
      tx.emit({ type: 'hook-started', hook: h.name, index: i, count });
      tx.setHook(i, { result: 'skipped', status: msg });
      tx.log.write(h.name, msg);
      tx.emit({ type: 'hook-finished', hook: h.name, result: 'skipped', message: msg });
    });
    await this.finish(tx, 'aborted', '', `dry run: ${count} hook(s) planned, nothing was run`);
  }

  private async runPrepare(job: Job): Promise<void> {
    const tx = job.tx;
    if (tx.cancelRequested) return;
    await this.supersede(tx);
    await this.beginPhase(tx, 'prepare', 'preparing', job.timeoutSec);
    const run = this.startRun(tx, job.timeoutSec);
    let failure: { code: ErrorCode; message: string } | null = null;
    const count = tx.hooks.length;
    let i = 0;
    for (; i < count; i++) {
      if (tx.cancelRequested || run.deadlineHit) break;
      const h = tx.hooks[i]!;
      if (h.refused) {
        this.skipHook(tx, i, count, `refused: ${h.refused}`, true);
        continue;
      }
      if (!h.definition.prepare) {
        this.skipHook(tx, i, count, 'no Prepare step', false);
        continue;
      }
      const out = await this.runHookStep(tx, run, 'prepare', i, h, false);
      if (out.result === 'success' || out.result === 'skipped') continue;
      if (tx.cancelRequested || run.deadlineHit) break;
      if (!h.definition.required) {
        this.log.warn(`optional hook ${h.name} ${out.message}; continuing`, { transaction: tx.id, hook: h.name });
        tx.log.write(h.name, `optional hook failed (${out.message}); continuing`);
        continue;
      }
      failure = {
        code: out.result === 'timeout' ? 'Timeout' : 'HookFailed',
        message: `required hook ${h.name} ${out.message}`,
      };
      i++;
      break;
    }
    this.stopRun(run);
    if (!failure && tx.cancelRequested) failure = { code: 'Cancelled', message: 'cancelled' };
    if (!failure && run.deadlineHit) failure = { code: 'Timeout', message: `the prepare phase exceeded its ${job.timeoutSec}s deadline` };
    if (!failure) {
      await this.finish(tx, 'prepared', '', `${count} hook(s) prepared`);
      return;
    }
    // Mark what never ran, then undo what did.
    for (let k = 0; k < count; k++) {
      if (tx.snapshot().hooks[k]?.result === 'pending') tx.setHook(k, { result: 'cancelled', status: 'not run' });
    }
    const rollbackErrors = await this.rollback(tx, failure.code === 'Cancelled' ? 'cancelled' : 'failed');
    const msg = failure.message + (rollbackErrors.length
      ? `; rollback incomplete: ${rollbackErrors.join('; ')}` : '; rolled back');
    await this.finish(tx, failure.code === 'Cancelled' ? 'cancelled' : 'failed', failure.code, msg);
  }

  /** A newer prepare of the same deployment replaces an older prepared transaction. */
  private async supersede(tx: Transaction): Promise<void> {
    for (const old of this.txs.values()) {
      if (old === tx || old.deployment !== tx.deployment || old.dryRun) continue;
      if (old.state !== 'prepared') continue;
      const usec = nowUsec();
      const message = `superseded by transaction ${tx.id}`;
      old.journal ??= await this.store.reopen(old.id);
      await old.journal.append({ t: 'state', state: 'aborted', error: '', message, usec }, true);
      old.patch({ state: 'aborted', finishedUsec: usec });
      old.log.write('', message);
      old.log.flush();
      this.log.info(message, { transaction: old.id, deployment: old.deployment });
    }
  }

  private skipHook(tx: Transaction, index: number, count: number, why: string, signal: boolean): void {
    const h = tx.snapshot().hooks[index]!;
    if (signal) tx.emit({ type: 'hook-started', hook: h.name, index, count });
    tx.setHook(index, { result: 'skipped', status: why });
    tx.log.write(h.name, why);
    if (signal) tx.emit({ type: 'hook-finished', hook: h.name, result: 'skipped', message: why });
  }

  /**
   * Roll back a failed or cancelled prepare: the abort step of every hook
   * whose prepare started, in reverse order. A failing abort is reported and
   * the rest still run. Returns the failures.
   */
  private async rollback(tx: Transaction, endState: 'failed' | 'cancelled'): Promise<string[]> {
    const usec = nowUsec();
    // The record says why it rolls back: recovery after a crash in the
    // rollback must still end a cancel `cancelled`, not `failed`.
    const why = endState === 'cancelled' ? { error: 'Cancelled' as const, message: 'cancelled' } : { error: '' as const, message: '' };
    await tx.journal!.append({ t: 'state', state: 'rolling-back', ...why, usec }, true);
    tx.patch({ state: 'rolling-back', currentHook: '' });
    tx.log.write('', `rolling back (${tx.preparedStarted.size} hook(s) to undo) before ending ${endState}`);
    this.log.info('rolling back', { transaction: tx.id, deployment: tx.deployment });
    const run = this.startRun(tx, 0);
    const errors: string[] = [];
    const order = tx.hooks.map((h, i) => ({ h, i })).reverse();
    for (const { h, i } of order) {
      if (!tx.preparedStarted.has(h.name)) continue;
      if (!h.definition.abort) {
        await this.removeHookState(tx, h.name);
        continue;
      }
      const out = await this.runHookStep(tx, run, 'abort', i, h, true);
      if (out.result === 'success' || out.result === 'skipped') {
        await this.removeHookState(tx, h.name);
        tx.setHook(i, { status: appendStatus(tx.snapshot().hooks[i]?.status, 'rolled back') });
      } else {
        errors.push(`abort of ${h.name} ${out.message}`);
        tx.setHook(i, { status: appendStatus(tx.snapshot().hooks[i]?.status, `rollback failed: ${out.message}`) });
      }
    }
    this.stopRun(run);
    await this.cleanDeploymentState(tx);
    return errors;
  }

  /** Commit (plan order) or abort (reverse order): every step runs; failures are reported. */
  private async runFinalPhase(job: Job, phase: 'commit' | 'abort'): Promise<void> {
    const tx = job.tx;
    if (job.reason) tx.log.write('', job.reason);
    await this.beginPhase(tx, phase, phase === 'commit' ? 'committing' : 'aborting', job.timeoutSec);
    const run = this.startRun(tx, job.timeoutSec);
    const order = phaseOrder(tx.hooks, phase);
    const failures: string[] = [];
    let requiredFailed = false;
    let timedOut = false;
    const count = order.length;
    for (let i = 0; i < count; i++) {
      const h = order[i]!;
      if (h.refused) {
        this.skipHook(tx, i, count, `refused: ${h.refused}`, true);
        continue;
      }
      const argv = phase === 'commit' ? h.definition.commit : h.definition.abort;
      if (!argv) {
        this.skipHook(tx, i, count, `no ${phase === 'commit' ? 'Commit' : 'Abort'} step`, false);
        await this.removeHookState(tx, h.name);
        continue;
      }
      const out = await this.runHookStep(tx, run, phase, i, h, false);
      if (out.result === 'success' || out.result === 'skipped') {
        await this.removeHookState(tx, h.name);
        continue;
      }
      failures.push(`${h.name} ${out.message}`);
      if (h.definition.required) requiredFailed = true;
      if (out.result === 'timeout') timedOut = true;
      this.log.warn(`${phase} step of ${h.name} ${out.message}; continuing with the rest`,
        { transaction: tx.id, hook: h.name, phase });
    }
    this.stopRun(run);
    await this.cleanDeploymentState(tx);
    if (requiredFailed) {
      await this.finish(tx, 'failed', timedOut ? 'Timeout' : 'HookFailed',
        `${phase} incomplete: ${failures.join('; ')}; hook state is kept, run ${phase === 'commit' ? 'CommitPreStage' : 'AbortPreStage'} again to retry`);
    } else {
      await this.finish(tx, phase === 'commit' ? 'committed' : 'aborted', '',
        failures.length ? `done with warnings: ${failures.join('; ')}` : '');
    }
  }

  /** Recovery of an interrupted prepare: roll back, then end failed or cancelled. */
  private async runRecoveryRollback(job: Job): Promise<void> {
    const tx = job.tx;
    const end = job.rollbackState ?? 'failed';
    const errors = await this.rollback(tx, end);
    const base = job.reason ?? 'the daemon stopped during the prepare phase';
    await this.finish(tx, end, end === 'cancelled' ? 'Cancelled' : 'Internal',
      base + (errors.length ? `; rollback incomplete: ${errors.join('; ')}` : '; the steps that ran were rolled back'));
  }

  private startRun(tx: Transaction, timeoutSec: number): PhaseRun & { timer?: NodeJS.Timeout } {
    const run: PhaseRun & { timer?: NodeJS.Timeout } = { current: null, deadlineHit: false };
    if (timeoutSec > 0) {
      run.timer = setTimeout(() => {
        run.deadlineHit = true;
        tx.log.write('', `phase deadline of ${timeoutSec}s reached`);
        run.current?.cancel();
      }, timeoutSec * 1000);
    }
    this.runState = run;
    return run;
  }

  private stopRun(run: PhaseRun & { timer?: NodeJS.Timeout }): void {
    if (run.timer) clearTimeout(run.timer);
    if (this.runState === run) this.runState = null;
  }

  private stepEnv(tx: Transaction, phase: Phase, h: JournalHook, stateDir: string): Record<string, string> {
    const env: Record<string, string> = { PATH: this.opts.stepPath, LANG: 'C.UTF-8' };
    for (const kv of h.definition.environment) {
      const eq = kv.indexOf('=');
      if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    env.BOOTC_PRESTAGE_PHASE = phase;
    env.BOOTC_PRESTAGE_DEPLOYMENT = tx.deployment;
    env.BOOTC_PRESTAGE_TRANSACTION = tx.id;
    env.BOOTC_PRESTAGE_HOOK = h.name;
    env.BOOTC_PRESTAGE_STATE_DIRECTORY = stateDir;
    env.BOOTC_PRESTAGE_NOTIFY_FD = '3';
    return env;
  }

  /**
   * Run one step. `index` is the hook's place in the snapshot's list; a
   * rollback step (`rollback`) reports through Message lines only, since the
   * visible hook list still shows the prepare results.
   */
  private async runHookStep(
    tx: Transaction, run: PhaseRun, phase: Phase, index: number, h: JournalHook, rollback: boolean,
  ): Promise<StepOutcome> {
    if (this.closing) throw new PreStageError('Internal', 'the daemon is shutting down');
    const argvRaw = (phase === 'prepare' ? h.definition.prepare : phase === 'commit' ? h.definition.commit : h.definition.abort)!;
    const stateDir = this.hookStateDir(tx, h.name);
    const env = this.stepEnv(tx, phase, h, stateDir);
    const argv = expandArgv(argvRaw, env);
    // Trust again, now: a commit may run long after the prepare that
    // checked, and a program others can change must not run as root. Its
    // verdict is applied below, after the step record, as before.
    const distrust = programTrustProblem(argv[0]!, this.opts.trustedUid);
    // Synchronous: a few local mkdir(2) calls cost less than a trip through
    // the thread pool, which waits for a time slice on a busy machine.
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const count = tx.snapshot().hooks.length;
    await tx.journal!.append({ t: 'step', phase, hook: h.name, rollback, usec: nowUsec() }, true);
    if (phase === 'prepare' && !rollback) tx.preparedStarted.add(h.name);
    const fields = { transaction: tx.id, hook: h.name, phase, deployment: tx.deployment };
    if (!rollback) {
      tx.patch({ currentHook: h.name });
      tx.setHook(index, { result: 'running', percent: 0, status: '' });
      tx.emit({ type: 'hook-started', hook: h.name, index, count });
    } else {
      tx.patch({ currentHook: h.name });
      tx.emit({ type: 'message', hook: h.name, line: `rolling back: running the abort step` });
    }
    tx.log.write(h.name, `${rollback ? 'rollback ' : ''}${phase} step: ${quoteCommandLine(argv)}`);
    this.log.debug(`${rollback ? 'rollback ' : ''}${phase} step started`, fields);
    let lastStatus = '';
    // Every line goes to the log as bytes; only those the Message cap lets
    // through are decoded into events, the rest are counted (message-limiter.ts).
    const messages = new MessageLimiter((count) => tx.emit({ type: 'messages-suppressed', hook: h.name, count }));
    let step: RunningStep;
    try {
      if (distrust) throw new PreStageError('InvalidHook', `not trusted: ${distrust}`);
      step = runStep({
        argv, env,
        timeoutMs: h.definition.timeoutSec === null ? null : h.definition.timeoutSec * 1000,
        killGraceMs: this.opts.killGraceMs,
      }, {
        outputLines: (_stream, buf, lines) => {
          tx.log.writeLines(h.name, buf, lines);
          const shown = messages.admit(lines.count);
          for (let i = 0; i < shown; i++) {
            tx.emit({ type: 'message', hook: h.name, line: buf.toString('utf8', lines.starts[i], lines.ends[i]) });
          }
        },
        progress: (percent) => {
          if (!rollback) tx.setHook(index, { percent });
          tx.emit({ type: 'hook-progress', hook: h.name, percent, status: lastStatus });
        },
        status: (text) => {
          lastStatus = text;
          if (!rollback) tx.setHook(index, { status: text });
          tx.emit({ type: 'hook-progress', hook: h.name, percent: tx.snapshot().hooks[index]?.percent ?? 0, status: text });
        },
        warning: (text) => {
          tx.log.write(h.name, `[bootc-prestaged] ${text}`);
          this.log.warn(text, fields);
        },
        notifyIgnored: (line, reason) => {
          this.log.debug(`ignored notify line (${reason}): ${line.slice(0, 200)}`, fields);
        },
      });
    } catch (e) {
      const err = toPreStageError(e);
      step = {
        pid: 0, startTime: null, cancel() {}, started: Promise.resolve(),
        done: Promise.resolve<StepOutcome>({
          result: 'failed', exitCode: null, signal: null, message: `could not start: ${err.message}`, durationMs: 0, leftovers: 0,
        }),
      };
    }
    // Set before the start completes: a Cancel() meanwhile is applied once the pid is known.
    run.current = step;
    await step.started;
    if (step.pid > 0) {
      tx.journal!.append({ t: 'pid', phase, hook: h.name, pid: step.pid, start: step.startTime }, false)
        .catch((e) => this.log.error(`journal write failed: ${(e as Error).message}`, fields));
    }
    // A cancel or deadline that came while the step was starting; rollback
    // steps are never cancelled (they are what a cancel asks for).
    if (!rollback && (tx.cancelRequested || run.deadlineHit)) step.cancel();
    const out = await step.done;
    run.current = null;
    // The count of the last window goes out before hook-finished.
    messages.flush();
    // Stopping: leave the step without a `done` record so the next start recovers it.
    if (this.closing) throw new PreStageError('Internal', 'the daemon is shutting down');
    await tx.journal!.append({
      t: 'done', phase, hook: h.name, rollback, result: out.result, message: out.message, usec: nowUsec(),
    }, false);
    tx.log.write(h.name, `${rollback ? 'rollback ' : ''}${phase} step ${out.result}${out.message ? `: ${out.message}` : ''}`);
    if (!rollback) {
      tx.setHook(index, { result: out.result, status: out.result === 'success' ? (lastStatus || 'done') : out.message });
      tx.emit({ type: 'hook-finished', hook: h.name, result: out.result, message: out.message });
    } else {
      tx.emit({ type: 'message', hook: h.name, line: `rollback ${out.result}${out.message ? `: ${out.message}` : ''}` });
    }
    tx.patch({ currentHook: '' });
    const level = out.result === 'success' || out.result === 'skipped' ? 'info' : 'warn';
    this.log[level](`${rollback ? 'rollback ' : ''}${phase} step ${out.result}${out.message ? `: ${out.message}` : ''}`, fields);
    return out;
  }

  private async removeHookState(tx: Transaction, hook: string): Promise<void> {
    await fsp.rm(this.hookStateDir(tx, hook), { recursive: true, force: true });
  }

  private async cleanDeploymentState(tx: Transaction): Promise<void> {
    // Removes the deployment's directory only when every hook's is gone.
    await fsp.rmdir(path.join(this.hookStateRoot(), tx.deploymentKey)).catch(() => {});
  }

  // ---- history ----------------------------------------------------------------

  private async prune(): Promise<void> {
    const finished = [...this.txs.values()]
      .filter((tx) => tx.resting && !owesWork(tx) && !this.jobFor(tx.deployment))
      .sort((a, b) => a.createdUsec - b.createdUsec);
    const excess = finished.length - this.opts.historyLimit;
    for (let k = 0; k < excess; k++) {
      const tx = finished[k]!;
      await tx.journal?.close();
      await this.store.remove(tx.id);
      await fsp.rm(path.join(this.logDir(), `${tx.id}.log`), { force: true });
      this.txs.delete(tx.id);
      tx.dispose();
      this.removedSubject.next(tx.id);
    }
  }

  // ---- recovery ----------------------------------------------------------------

  private async load(): Promise<void> {
    const ids = await this.store.list();
    const recover: { tx: Transaction; replay: ReturnType<typeof replayJournal> & { ok: true } }[] = [];
    for (const id of ids) {
      let read;
      try {
        read = await this.store.read(id);
      } catch (e) {
        this.log.error(`cannot read journal ${id}: ${(e as Error).message}`, { transaction: id });
        continue;
      }
      const r = replayJournal(read);
      if (!r.ok) {
        this.log.error(`ignoring journal: ${r.reason}`, { transaction: id });
        continue;
      }
      const v = r.value;
      if (v.damage) this.log.warn(v.damage, { transaction: id });
      const tx = this.adopt(v.begin);
      for (const h of v.preparedStarted) tx.preparedStarted.add(h);
      tx.patch({
        phase: v.phase, state: v.state, error: v.error, errorMessage: v.message,
        startedUsec: v.startedUsec, finishedUsec: v.finishedUsec,
      });
      tx.setHooks(v.hooks);
      if (v.interrupted) recover.push({ tx, replay: r });
    }
    for (const { tx, replay } of recover) await this.recoverOne(tx, replay.value);
    // Finished transactions keep no open journal; interrupted ones reopened theirs.
    await this.prune();
  }

  private async recoverOne(tx: Transaction, v: import('./recovery.js').Replayed): Promise<void> {
    const fields = { transaction: tx.id, deployment: tx.deployment, phase: v.phase };
    this.log.warn(`recovering transaction interrupted in state ${v.state}`, fields);
    // 1. No process of the old run may survive. First each recorded step's
    //    process group, before the marker scan kills its leader: a member
    //    that dropped the marker from its environment is found only so.
    //    The group id is safe to signal while the pid is still the recorded
    //    leader (alive or a zombie) or names no process at all (the kernel
    //    never hands out a pid still used as a group id); a pid now used by
    //    another process means the group is gone. Then every process with
    //    the marker, wherever it went (setsid).
    for (const p of v.pids) {
      const st = readProcStat(p.pid);
      if (st === null || st.startTime === p.start) await terminateGroup(p.pid, this.opts.killGraceMs);
    }
    // Also the group of every process that still carries the marker: covers
    // a step whose `pid` record did not reach the file before the crash.
    const ownGroup = readProcStat(process.pid)?.pgrp ?? process.pid;
    const groups = new Set<number>();
    for (const r of await findProcessRefsByEnv({ BOOTC_PRESTAGE_TRANSACTION: tx.id })) {
      const st = readProcStat(r.pid);
      if (st && st.startTime === r.startTime && st.pgrp > 1 && st.pgrp !== ownGroup) groups.add(st.pgrp);
    }
    for (const g of groups) await terminateGroup(g, this.opts.killGraceMs);
    const killed = await killProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: tx.id }, this.opts.killGraceMs);
    if (killed.length) this.log.warn(`killed ${killed.length} leftover hook process(es): ${killed.join(' ')}`, fields);
    tx.journal = await this.store.reopen(tx.id);
    tx.log.write('', `daemon restarted while ${v.state}; recovering`);
    // 2. Queue what finishes it, ahead of any new work.
    if (v.state === 'queued') {
      await this.finish(tx, 'cancelled', 'Cancelled', 'the daemon restarted before this transaction ran; start it again');
      return;
    }
    if (v.phase === 'prepare') {
      const cancelled = v.state === 'cancelling' || v.error === 'Cancelled';
      // The step that was running was killed above and those after it will
      // never run: a finished transaction must not show them running or
      // pending (a live failure marks them the same way).
      tx.snapshot().hooks.forEach((h, i) => {
        if (h.result === 'running') tx.setHook(i, { result: 'cancelled', status: 'interrupted: the daemon stopped while it ran' });
        else if (h.result === 'pending') tx.setHook(i, { result: 'cancelled', status: 'not run' });
      });
      tx.patch({ state: 'rolling-back' });
      this.enqueue({
        tx, kind: 'rollback', timeoutSec: 0, rollbackState: cancelled ? 'cancelled' : 'failed',
        reason: cancelled ? 'cancelled, and the daemon stopped during the rollback'
          : 'the daemon stopped during the prepare phase',
      });
      return;
    }
    const phase = v.phase;
    tx.patch({ state: phase === 'commit' ? 'committing' : 'aborting' });
    this.enqueue({ tx, kind: phase, timeoutSec: 0, reason: `the daemon stopped during the ${phase} phase; running it again` });
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
    const step = this.runState?.current;
    if (step && step.pid > 0) await terminateGroup(step.pid, Math.min(this.opts.killGraceMs, 3000)).catch(() => {});
    for (const tx of this.txs.values()) {
      await tx.journal?.close().catch(() => {});
      tx.log.close();
    }
    if (this.lockFile) await fsp.rm(this.lockFile, { force: true }).catch(() => {});
  }
}

function appendStatus(prev: string | undefined, more: string): string {
  return prev ? `${prev}; ${more}` : more;
}
