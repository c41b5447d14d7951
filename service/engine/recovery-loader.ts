/**
 * The loading half of recovery (recovery.ts is the pure half that folds a
 * journal into a `Replayed`): at start-up, read every journal, rebuild its
 * transaction, and for each one the daemon stopped during, kill what is left
 * of its processes and queue the job that finishes it.
 *
 * What must stay true: no process of an interrupted run survives before its
 * recovery job is queued, and recovery jobs are queued before any new work
 * (`Engine.open` returns only after `loadTransactions` has).
 */
import type { ErrorCode } from '../model/errors.js';
import type { BeginRecord, JournalStore } from './journal.js';
import type { Logger } from '../model/logger.js';
import type { Job } from './phase-runner.js';
import {
  findProcessRefsByEnv, killProcessesByEnv, readProcStat, terminateGroup,
} from './process-tree.js';
import { replayJournal, type Replayed } from './recovery.js';
import type { Transaction } from './transaction.js';
import type { TransactionState } from '../model/types.js';

/** What loading needs of the engine. */
export interface RecoveryContext {
  readonly store: JournalStore;
  readonly log: Logger;
  readonly killGraceMs: number;
  /** Make the in-memory transaction of a journal's begin record. */
  adopt(begin: BeginRecord): Transaction;
  finish(tx: Transaction, state: TransactionState, error: ErrorCode | '', message: string): Promise<void>;
  enqueue(job: Job): void;
}

/**
 * Load every journal of the store; recover the interrupted ones. An
 * unreadable or foreign journal is logged and skipped, never fatal.
 */
export async function loadTransactions(ctx: RecoveryContext): Promise<void> {
  const recover: { tx: Transaction; replayed: Replayed }[] = [];
  for (const id of await ctx.store.list()) {
    const replayed = await readOne(ctx, id);
    if (!replayed) continue;
    const tx = restore(ctx, replayed);
    if (replayed.interrupted) recover.push({ tx, replayed });
  }
  for (const { tx, replayed } of recover) await recoverOne(ctx, tx, replayed);
}

async function readOne(ctx: RecoveryContext, id: string): Promise<Replayed | null> {
  let read;
  try {
    read = await ctx.store.read(id);
  } catch (e) {
    ctx.log.error(`cannot read journal ${id}: ${(e as Error).message}`, { transaction: id });
    return null;
  }
  const r = replayJournal(read);
  if (!r.ok) {
    ctx.log.error(`ignoring journal: ${r.reason}`, { transaction: id });
    return null;
  }
  if (r.value.damage) ctx.log.warn(r.value.damage, { transaction: id });
  return r.value;
}

/** The transaction as its journal left it. */
function restore(ctx: RecoveryContext, v: Replayed): Transaction {
  const tx = ctx.adopt(v.begin);
  for (const h of v.preparedStarted) tx.preparedStarted.add(h);
  tx.patch({
    phase: v.phase, state: v.state, error: v.error, errorMessage: v.message,
    startedUsec: v.startedUsec, finishedUsec: v.finishedUsec,
  });
  tx.setHooks(v.hooks);
  return tx;
}

async function recoverOne(ctx: RecoveryContext, tx: Transaction, v: Replayed): Promise<void> {
  const fields = { transaction: tx.id, deployment: tx.deployment, phase: v.phase };
  ctx.log.warn(`recovering transaction interrupted in state ${v.state}`, fields);
  // 1. No process of the old run may survive.
  const killed = await killLeftovers(tx.id, v.pids, ctx.killGraceMs);
  if (killed.length) ctx.log.warn(`killed ${killed.length} leftover hook process(es): ${killed.join(' ')}`, fields);
  tx.journal = await ctx.store.reopen(tx.id);
  tx.log.write('', `daemon restarted while ${v.state}; recovering`);
  // 2. Queue what finishes it, ahead of any new work.
  if (v.state === 'queued') {
    await ctx.finish(tx, 'cancelled', 'Cancelled', 'the daemon restarted before this transaction ran; start it again');
    return;
  }
  if (v.phase === 'prepare') {
    queueRollback(ctx, tx, v);
    return;
  }
  const phase = v.phase;
  tx.patch({ state: phase === 'commit' ? 'committing' : 'aborting' });
  ctx.enqueue({ tx, kind: phase, timeoutSec: 0, reason: `the daemon stopped during the ${phase} phase; running it again` });
}

/**
 * Kill every process of a transaction's old run; returns the pids killed by
 * the marker scan. First each recorded step's process group, before the
 * marker scan kills its leader: a member that dropped the marker from its
 * environment is found only so. The group id is safe to signal while the
 * pid is still the recorded leader (alive or a zombie) or names no process
 * at all (the kernel never hands out a pid still used as a group id); a pid
 * now used by another process means the group is gone. Then the group of
 * every process that still carries the marker (covers a step whose `pid`
 * record did not reach the file before the crash), then every process with
 * the marker, wherever it went (setsid).
 */
export async function killLeftovers(
  transactionId: string, pids: readonly { pid: number; start: string | null }[], killGraceMs: number,
): Promise<number[]> {
  for (const p of pids) {
    const st = readProcStat(p.pid);
    if (st === null || st.startTime === p.start) await terminateGroup(p.pid, killGraceMs);
  }
  const ownGroup = readProcStat(process.pid)?.pgrp ?? process.pid;
  const groups = new Set<number>();
  for (const r of await findProcessRefsByEnv({ BOOTC_PRESTAGE_TRANSACTION: transactionId })) {
    const st = readProcStat(r.pid);
    if (st && st.startTime === r.startTime && st.pgrp > 1 && st.pgrp !== ownGroup) groups.add(st.pgrp);
  }
  for (const g of groups) await terminateGroup(g, killGraceMs);
  return killProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: transactionId }, killGraceMs);
}

/**
 * An interrupted prepare: the step that was running was killed and those
 * after it will never run, so a finished transaction must not show them
 * running or pending (a live failure marks them the same way); then roll
 * back what ran.
 */
function queueRollback(ctx: RecoveryContext, tx: Transaction, v: Replayed): void {
  const cancelled = v.state === 'cancelling' || v.error === 'Cancelled';
  tx.snapshot().hooks.forEach((h, i) => {
    if (h.result === 'running') tx.setHook(i, { result: 'cancelled', status: 'interrupted: the daemon stopped while it ran' });
    else if (h.result === 'pending') tx.setHook(i, { result: 'cancelled', status: 'not run' });
  });
  tx.patch({ state: 'rolling-back' });
  ctx.enqueue({
    tx, kind: 'rollback', timeoutSec: 0, rollbackState: cancelled ? 'cancelled' : 'failed',
    reason: cancelled ? 'cancelled, and the daemon stopped during the rollback'
      : 'the daemon stopped during the prepare phase',
  });
}
