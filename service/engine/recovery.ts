/**
 * Rebuilding a transaction from its journal after a restart. Pure: the
 * reducer folds records into what the engine needs to decide the recovery
 * action; the engine performs it.
 *
 * What must stay true: every hook whose prepare step record is in the
 * journal is in `preparedStarted` (the step record is durable before the
 * process is spawned), so a rollback after a crash undoes everything that
 * may have run. When the journal is damaged mid-file we cannot know which
 * steps started and assume they all did (abort steps are idempotent).
 */
import type { ErrorCode } from '../model/errors.js';
import type { BeginRecord, ReadJournal } from './journal.js';
import { JOURNAL_VERSION } from './journal.js';
import { phaseOrder } from './transaction.js';
import type { HookStatus, Phase, TransactionState } from '../model/types.js';
import { RESTING_STATES } from '../model/types.js';

export interface Replayed {
  begin: BeginRecord;
  phase: Phase;
  state: TransactionState;
  error: ErrorCode | '';
  message: string;
  startedUsec: number;
  finishedUsec: number;
  hooks: HookStatus[];
  preparedStarted: Set<string>;
  /** Processes recorded as started whose step has no `done` record. */
  pids: { pid: number; start: string | null }[];
  /** Not in a resting state: the daemon stopped while it was running. */
  interrupted: boolean;
  /** Why the journal could not be trusted in full, or null. */
  damage: string | null;
}

export type ReplayResult = { ok: true; value: Replayed } | { ok: false; reason: string };

export function replayJournal(j: ReadJournal): ReplayResult {
  const first = j.records[0];
  if (!first || first.t !== 'begin') {
    return { ok: false, reason: `journal ${j.id} has no begin record` };
  }
  if (first.v !== JOURNAL_VERSION) {
    return { ok: false, reason: `journal ${j.id} has version ${first.v}; this daemon reads version ${JOURNAL_VERSION}` };
  }
  const begin = first;
  let phase: Phase = 'prepare';
  let state: TransactionState = 'queued';
  let error: ErrorCode | '' = '';
  let message = '';
  let startedUsec = begin.createdUsec;
  let finishedUsec = 0;
  let order = phaseOrder(begin.hooks, 'prepare').map((h) => h.name);
  let hooks: HookStatus[] = order.map((name) => ({ name, result: 'pending', percent: 0, status: '' }));
  const preparedStarted = new Set<string>();
  const running = new Map<string, { pid: number; start: string | null }>();

  const setHook = (name: string, p: Partial<HookStatus>) => {
    const i = order.indexOf(name);
    if (i >= 0) hooks[i] = { ...hooks[i]!, ...p };
  };

  for (const r of j.records.slice(1)) {
    switch (r.t) {
      case 'begin':
        break;
      case 'phase':
        phase = r.phase;
        startedUsec = r.usec;
        finishedUsec = 0;
        error = '';
        message = '';
        order = phaseOrder(begin.hooks, r.phase).map((h) => h.name);
        hooks = order.map((name) => ({ name, result: 'pending', percent: 0, status: '' }));
        // A commit or abort that has started is running from its `phase`
        // record on, even if the daemon died before its state record: it
        // was asked for (and answered), so recovery must run it, not leave
        // the transaction `prepared` (or `failed`) in that phase. A prepare
        // stays `queued` until `preparing`: nothing of it has run.
        if (r.phase !== 'prepare') state = r.phase === 'commit' ? 'committing' : 'aborting';
        break;
      case 'state':
        state = r.state;
        error = r.error;
        message = r.message;
        if (RESTING_STATES.has(r.state)) finishedUsec = r.usec;
        break;
      case 'step':
        if (r.phase === 'prepare' && !r.rollback) preparedStarted.add(r.hook);
        if (!r.rollback) setHook(r.hook, { result: 'running', percent: 0 });
        running.set(`${r.phase}/${r.hook}`, { pid: 0, start: null });
        break;
      case 'pid':
        running.set(`${r.phase}/${r.hook}`, { pid: r.pid, start: r.start });
        break;
      case 'done':
        running.delete(`${r.phase}/${r.hook}`);
        if (!r.rollback) setHook(r.hook, { result: r.result, percent: 100, status: r.message });
        break;
    }
  }

  let damage: string | null = null;
  if (j.corruptLine !== null) {
    damage = `journal ${j.id} is damaged at line ${j.corruptLine}`;
    if (phase === 'prepare') for (const h of begin.hooks) preparedStarted.add(h.name);
  }
  const interrupted = !RESTING_STATES.has(state);
  const pids = [...running.values()].filter((p) => p.pid > 0);
  return {
    ok: true,
    value: {
      begin, phase, state, error, message, startedUsec, finishedUsec, hooks,
      preparedStarted, pids, interrupted, damage,
    },
  };
}
