/**
 * The phase runner: runs one queued job (a prepare, commit or abort phase, a
 * dry run, or the rollback that recovers an interrupted prepare) step by
 * step, and journals and publishes how the transaction ends.
 *
 * What must stay true: a state change is journaled before it is published;
 * a failed or cancelled prepare rolls back every hook whose prepare step
 * started, in reverse order; commit and abort steps always run to the end
 * (a failing one is reported, the rest still run), and a hook's state
 * directory is removed only once its last step succeeded.
 */
import { quoteCommandLine } from '../model/command-line.js';
import type { ErrorCode } from '../model/errors.js';
import { runHookStep, type HookStepContext, type PhaseRun } from './hook-step.js';
import { nowUsec, type JournalStore } from './journal.js';
import { locateSpawner } from './spawner.js';
import type { RunningStep } from './step-runner.js';
import { phaseOrder, type Transaction } from './transaction.js';
import type { Phase, TransactionSnapshot, TransactionState } from '../model/types.js';

export type JobKind = 'prepare' | 'commit' | 'abort' | 'rollback' | 'dry-run';

/** One unit of queued work. */
export interface Job {
  tx: Transaction;
  kind: JobKind;
  timeoutSec: number;
  /** Why a recovery job runs (for logs and messages). */
  reason?: string;
  /** The state to end in after a recovery rollback. */
  rollbackState?: 'failed' | 'cancelled';
}

/** What the phase runner needs of the engine. */
export interface PhaseRunnerContext extends HookStepContext {
  readonly store: JournalStore;
  /** Every transaction in memory (a new prepare supersedes older ones). */
  transactions(): Iterable<Transaction>;
  phaseStarted(tx: Transaction, phase: Phase): void;
  finished(tx: Transaction, snapshot: TransactionSnapshot): void;
}

type TimedRun = PhaseRun & { timer?: NodeJS.Timeout };

export class PhaseRunner {
  private readonly ctx: PhaseRunnerContext;
  private current: TimedRun | null = null;
  /** Whether the spawn helper's presence was logged (at the first phase). */
  private spawnerChecked = false;

  constructor(ctx: PhaseRunnerContext) {
    this.ctx = ctx;
  }

  /** The step process running now, if any (shutdown stops its group). */
  currentStep(): RunningStep | null {
    return this.current?.current ?? null;
  }

  /** Cancel the running step, if any (a Cancel() of the running prepare). */
  cancelCurrentStep(): void {
    this.current?.current?.cancel();
  }

  /** Forget the run state (the queue's job ended). */
  reset(): void {
    this.current = null;
  }

  /** Run one job to its end. */
  async run(job: Job): Promise<void> {
    // Transactions loaded from disk at start-up keep no journal open until
    // they have work again (a commit at boot, an abort after undeploy).
    job.tx.journal ??= await this.ctx.store.reopen(job.tx.id);
    switch (job.kind) {
      case 'dry-run': return this.runDryRun(job.tx);
      case 'prepare': return this.runPrepare(job);
      case 'commit':
      case 'abort': return this.runFinalPhase(job, job.kind);
      case 'rollback': return this.runRecoveryRollback(job);
    }
  }

  /** Journal and publish the end of a transaction (or of its phase). */
  async finish(tx: Transaction, state: TransactionState, error: ErrorCode | '', message: string): Promise<void> {
    const usec = nowUsec();
    await tx.journal?.append({ t: 'state', state, error, message, usec }, true);
    // ErrorMessage explains an Error; a success's summary goes only to Finished and the log.
    tx.patch({ state, error, errorMessage: error ? message : '', currentHook: '', finishedUsec: usec });
    tx.log.write('', `finished: ${state}${error ? ` (${error})` : ''}${message ? `: ${message}` : ''}`);
    tx.log.flush();
    const fields = { transaction: tx.id, deployment: tx.deployment, phase: tx.snapshot().phase };
    if (state === 'failed') this.ctx.log.error(`transaction ${state}: ${message}`, fields);
    else this.ctx.log.info(`transaction ${state}${message ? `: ${message}` : ''}`, fields);
    tx.emit({ type: 'finished', state, error, message });
    this.ctx.finished(tx, tx.snapshot());
  }

  private async beginPhase(tx: Transaction, phase: Phase, state: TransactionState, timeoutSec: number): Promise<void> {
    const usec = nowUsec();
    await tx.journal!.append({ t: 'phase', phase, usec, timeoutSec }, false);
    await tx.journal!.append({ t: 'state', state, error: '', message: '', usec }, true);
    tx.beginPhase(phase, state, usec);
    tx.log.write('', `phase ${phase} started`);
    this.ctx.log.info(`${phase} phase started`, { transaction: tx.id, deployment: tx.deployment, phase });
    this.logSpawnerOnce();
    tx.emit({ type: 'phase-started', phase });
    this.ctx.phaseStarted(tx, phase);
  }

  private logSpawnerOnce(): void {
    if (this.spawnerChecked) return;
    this.spawnerChecked = true;
    const helper = locateSpawner();
    if (helper === null) {
      this.ctx.log.warn('no spawn helper (bootc-prestage-spawner not built, or disabled): steps are forked from the daemon itself, which is slower', {});
    } else {
      this.ctx.log.debug(`steps are started by ${helper}`, {});
    }
  }

  private async runDryRun(tx: Transaction): Promise<void> {
    tx.beginPhase('prepare', 'preparing', nowUsec());
    tx.emit({ type: 'phase-started', phase: 'prepare' });
    this.ctx.phaseStarted(tx, 'prepare');
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
    let failure = await this.runPrepareSteps(tx, run);
    this.stopRun(run);
    if (!failure && tx.cancelRequested) failure = { code: 'Cancelled', message: 'cancelled' };
    if (!failure && run.deadlineHit) failure = { code: 'Timeout', message: `the prepare phase exceeded its ${job.timeoutSec}s deadline` };
    const count = tx.hooks.length;
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

  /**
   * Every prepare step in plan order, until a required one fails or a
   * cancel or the deadline stops the phase. Returns the required failure.
   */
  private async runPrepareSteps(tx: Transaction, run: PhaseRun): Promise<{ code: ErrorCode; message: string } | null> {
    const count = tx.hooks.length;
    for (let i = 0; i < count; i++) {
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
      const out = await runHookStep(this.ctx, tx, run, 'prepare', i, h, false);
      if (out.result === 'success' || out.result === 'skipped') continue;
      if (tx.cancelRequested || run.deadlineHit) break;
      if (!h.definition.required) {
        this.ctx.log.warn(`optional hook ${h.name} ${out.message}; continuing`, { transaction: tx.id, hook: h.name });
        tx.log.write(h.name, `optional hook failed (${out.message}); continuing`);
        continue;
      }
      return {
        code: out.result === 'timeout' ? 'Timeout' : 'HookFailed',
        message: `required hook ${h.name} ${out.message}`,
      };
    }
    return null;
  }

  /** A newer prepare of the same deployment replaces an older prepared transaction. */
  private async supersede(tx: Transaction): Promise<void> {
    for (const old of this.ctx.transactions()) {
      if (old === tx || old.deployment !== tx.deployment || old.dryRun) continue;
      if (old.state !== 'prepared') continue;
      const usec = nowUsec();
      const message = `superseded by transaction ${tx.id}`;
      old.journal ??= await this.ctx.store.reopen(old.id);
      await old.journal.append({ t: 'state', state: 'aborted', error: '', message, usec }, true);
      old.patch({ state: 'aborted', finishedUsec: usec });
      old.log.write('', message);
      old.log.flush();
      this.ctx.log.info(message, { transaction: old.id, deployment: old.deployment });
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
    this.ctx.log.info('rolling back', { transaction: tx.id, deployment: tx.deployment });
    const run = this.startRun(tx, 0);
    const errors: string[] = [];
    const order = tx.hooks.map((h, i) => ({ h, i })).reverse();
    for (const { h, i } of order) {
      if (!tx.preparedStarted.has(h.name)) continue;
      if (!h.definition.abort) {
        await this.ctx.stateDir.removeHookState(tx.deploymentKey, h.name);
        continue;
      }
      const out = await runHookStep(this.ctx, tx, run, 'abort', i, h, true);
      if (out.result === 'success' || out.result === 'skipped') {
        await this.ctx.stateDir.removeHookState(tx.deploymentKey, h.name);
        tx.setHook(i, { status: appendStatus(tx.snapshot().hooks[i]?.status, 'rolled back') });
      } else {
        errors.push(`abort of ${h.name} ${out.message}`);
        tx.setHook(i, { status: appendStatus(tx.snapshot().hooks[i]?.status, `rollback failed: ${out.message}`) });
      }
    }
    this.stopRun(run);
    await this.ctx.stateDir.cleanDeploymentState(tx.deploymentKey);
    return errors;
  }

  /** Commit (plan order) or abort (reverse order): every step runs; failures are reported. */
  private async runFinalPhase(job: Job, phase: 'commit' | 'abort'): Promise<void> {
    const tx = job.tx;
    if (job.reason) tx.log.write('', job.reason);
    await this.beginPhase(tx, phase, phase === 'commit' ? 'committing' : 'aborting', job.timeoutSec);
    const run = this.startRun(tx, job.timeoutSec);
    const { failures, requiredFailed, timedOut } = await this.runFinalSteps(tx, run, phase);
    this.stopRun(run);
    await this.ctx.stateDir.cleanDeploymentState(tx.deploymentKey);
    if (requiredFailed) {
      await this.finish(tx, 'failed', timedOut ? 'Timeout' : 'HookFailed',
        `${phase} incomplete: ${failures.join('; ')}; hook state is kept, run ${phase === 'commit' ? 'CommitPreStage' : 'AbortPreStage'} again to retry`);
    } else {
      await this.finish(tx, phase === 'commit' ? 'committed' : 'aborted', '',
        failures.length ? `done with warnings: ${failures.join('; ')}` : '');
    }
  }

  private async runFinalSteps(
    tx: Transaction, run: PhaseRun, phase: 'commit' | 'abort',
  ): Promise<{ failures: string[]; requiredFailed: boolean; timedOut: boolean }> {
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
        await this.ctx.stateDir.removeHookState(tx.deploymentKey, h.name);
        continue;
      }
      const out = await runHookStep(this.ctx, tx, run, phase, i, h, false);
      if (out.result === 'success' || out.result === 'skipped') {
        await this.ctx.stateDir.removeHookState(tx.deploymentKey, h.name);
        continue;
      }
      failures.push(`${h.name} ${out.message}`);
      if (h.definition.required) requiredFailed = true;
      if (out.result === 'timeout') timedOut = true;
      this.ctx.log.warn(`${phase} step of ${h.name} ${out.message}; continuing with the rest`,
        { transaction: tx.id, hook: h.name, phase });
    }
    return { failures, requiredFailed, timedOut };
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

  private startRun(tx: Transaction, timeoutSec: number): TimedRun {
    const run: TimedRun = { current: null, deadlineHit: false };
    if (timeoutSec > 0) {
      run.timer = setTimeout(() => {
        run.deadlineHit = true;
        tx.log.write('', `phase deadline of ${timeoutSec}s reached`);
        run.current?.cancel();
      }, timeoutSec * 1000);
    }
    this.current = run;
    return run;
  }

  private stopRun(run: TimedRun): void {
    if (run.timer) clearTimeout(run.timer);
    if (this.current === run) this.current = null;
  }
}

function appendStatus(prev: string | undefined, more: string): string {
  return prev ? `${prev}; ${more}` : more;
}
