/**
 * The boot gate's decision (README, "The boot gate"): may the staged
 * deployment be finalized? Read-only on the daemon's state directory: the
 * journals the engine writes (service/engine/journal.ts), replayed as the
 * engine's own recovery does (service/engine/recovery.ts), and the hooks as
 * the engine discovers them (service/engine/hook-discovery.ts). No daemon
 * is started or asked.
 *
 * Finalize only when the staged deployment's latest (non-dry-run)
 * transaction is `prepared` (or `committed`) with the fingerprint of the
 * hooks as they are now, and was created after the deployment was staged.
 * Anything else is a lock, and anything the gate cannot read or decide is a
 * lock too. The one other answer is "wait": a prepare of that deployment is
 * running (or the trigger is about to start one) in a live daemon.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { discoverHooks } from '../engine/hook-discovery.js';
import { parseJournal, type BeginRecord } from '../engine/journal.js';
import { isSameProcess } from '../engine/process-tree.js';
import { replayJournal, type Replayed } from '../engine/recovery.js';

/** Why a stage is locked: the words of the record `bootc-prestage status` shows. */
export type LockCause = 'failed' | 'never-ran' | 'did-not-finish' | 'hooks-changed' | 'error';

export type Decision =
  | { kind: 'finalize'; transaction: string; state: string; reason: string }
  | { kind: 'wait'; transaction: string | null; reason: string }
  | { kind: 'lock'; cause: LockCause; transaction: string | null; reason: string };

export interface DecideInput {
  stateDir: string;
  /** Where /etc and /run hook directories are ('/' normally). */
  root: string;
  /** The staged deployment's directory. */
  deployment: string;
  /** `<stateroot>-<checksum>.<serial>` */
  key: string;
  /** The trigger has announced a prepare of this deployment (trigger-pending). */
  triggerPending: boolean;
}

/** The latest non-dry-run journal of `key`, and whether unreadable journals could be newer. */
async function latestJournal(stateDir: string, key: string): Promise<
  { ok: true; replay: Replayed | null } | { ok: false; reason: string }
> {
  const dir = path.join(stateDir, 'journal');
  let names: string[];
  try {
    names = (await fsp.readdir(dir)).filter((n) => n.endsWith('.jnl'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { ok: true, replay: null };
    return { ok: false, reason: `cannot list ${dir}: ${err.message}` };
  }
  let best: { begin: BeginRecord; replay: Replayed } | null = null;
  const unreadable: string[] = [];
  for (const n of names) {
    const id = n.slice(0, -'.jnl'.length);
    let text: string;
    try {
      text = await fsp.readFile(path.join(dir, n), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // pruned meanwhile
      unreadable.push(`${n}: ${(e as Error).message}`);
      continue;
    }
    const r = replayJournal(parseJournal(id, text));
    if (!r.ok) {
      unreadable.push(r.reason);
      continue;
    }
    const b = r.value.begin;
    if (b.deploymentKey !== key || b.dryRun) continue;
    if (!best || b.createdUsec > best.begin.createdUsec) best = { begin: b, replay: r.value };
  }
  // A journal we cannot read could be this deployment's latest: the safe
  // answer. (Readable journals of other deployments do not matter.)
  if (unreadable.length > 0) {
    return { ok: false, reason: `unreadable state in ${dir}: ${unreadable.join('; ')}` };
  }
  return { ok: true, replay: best?.replay ?? null };
}

/** True when the daemon that holds the state directory (daemon.lock) is alive. */
export async function daemonAlive(stateDir: string): Promise<boolean> {
  let text: string;
  try {
    text = await fsp.readFile(path.join(stateDir, 'daemon.lock'), 'utf8');
  } catch {
    return false;
  }
  const [pidText, start] = text.trim().split(' ');
  const pid = Number(pidText);
  return Number.isInteger(pid) && pid > 0 && isSameProcess(pid, start || null);
}

export async function decide(input: DecideInput): Promise<Decision> {
  const latest = await latestJournal(input.stateDir, input.key);
  if (!latest.ok) return { kind: 'lock', cause: 'error', transaction: null, reason: latest.reason };
  const tx = latest.replay;

  let stagedUsec: number;
  try {
    const st = await fsp.stat(input.deployment);
    stagedUsec = Math.floor(st.ctimeMs * 1000);
  } catch (e) {
    return { kind: 'lock', cause: 'error', transaction: tx?.begin.id ?? null,
      reason: `cannot stat the staged deployment ${input.deployment}: ${(e as Error).message}` };
  }

  if (tx === null || tx.begin.createdUsec < stagedUsec) {
    const what = tx === null ? 'no pre-stage transaction' : `its latest transaction ${tx.begin.id} predates the staging`;
    if (input.triggerPending && await daemonAliveOrStarting(input)) {
      return { kind: 'wait', transaction: null, reason: `${what}; the trigger is starting its prepare phase` };
    }
    return { kind: 'lock', cause: 'never-ran', transaction: tx?.begin.id ?? null,
      reason: `${what} for ${input.deployment}: the pre-stage never ran` };
  }
  const id = tx.begin.id;

  if (tx.damage) return { kind: 'lock', cause: 'error', transaction: id, reason: tx.damage };

  if (tx.interrupted) {
    if (tx.phase !== 'prepare') {
      // A commit or abort of a staged deployment: nothing we should finalize.
      return { kind: 'lock', cause: 'error', transaction: id, reason: `transaction ${id} is in its ${tx.phase} phase` };
    }
    if (!await daemonAlive(input.stateDir)) {
      return { kind: 'lock', cause: 'did-not-finish', transaction: id,
        reason: `the prepare phase of transaction ${id} was interrupted (${tx.state}) and no daemon is running to finish it` };
    }
    return { kind: 'wait', transaction: id, reason: `the prepare phase of transaction ${id} is running (${tx.state})` };
  }

  if (tx.state !== 'prepared' && tx.state !== 'committed') {
    const err = tx.error ? ` [${tx.error}]` : '';
    return { kind: 'lock', cause: 'failed', transaction: id,
      reason: `transaction ${id} ended ${tx.state}${err}${tx.message ? `: ${tx.message}` : ''}` };
  }

  let fingerprint: string;
  try {
    fingerprint = (await discoverHooks({ root: input.root, deployment: input.deployment })).fingerprint;
  } catch (e) {
    return { kind: 'lock', cause: 'error', transaction: id, reason: `the hooks cannot be read: ${(e as Error).message}` };
  }
  if (fingerprint !== tx.begin.fingerprint) {
    return { kind: 'lock', cause: 'hooks-changed', transaction: id,
      reason: `transaction ${id} is ${tx.state}, but with other hooks than those installed now` };
  }
  return { kind: 'finalize', transaction: id, state: tx.state, reason: `transaction ${id} is ${tx.state} with the current hooks` };
}

/** The trigger starts the daemon through the bus: no daemon.lock yet is not "dead" while it says pending. */
async function daemonAliveOrStarting(input: DecideInput): Promise<boolean> {
  return input.triggerPending || daemonAlive(input.stateDir);
}
