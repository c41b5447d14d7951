/**
 * Follow one transaction to the end of a phase: yield its events as they
 * come and resolve with its final properties.
 *
 * How nothing is lost (DESIGN.md: "a client that subscribes late must lose
 * nothing it needs"):
 *
 * 1. The signal subscription exists before the properties are read (for a
 *    method that returns the path, before that method is even called: the
 *    caller opens a ServiceWatch first and hands it over).
 * 2. The properties are then read with GetAll. Signals that arrived before
 *    that reply are already reflected in it: their property changes are
 *    skipped (applying them would move the state backwards) and only their
 *    events are passed on; signals after the reply are applied in order.
 *    "Before" is decided by arrival order on our connection (connection.ts
 *    numbers every message), which is the daemon's sending order.
 * 3. A transaction that had already finished when we looked ends at once;
 *    one whose next phase is merely queued (a commit waiting behind
 *    another transaction) is followed until that phase has run.
 *
 * The daemon going away (its bus name changing hands) ends the follow with
 * a ClientError of kind `unreachable` naming what to do; a daemon that
 * restarted *before* we read the properties is simply the one we follow.
 */
import { MANAGER_INTERFACE, MANAGER_PATH, TRANSACTION_INTERFACE } from '../bus/members.js';
import { RESTING_STATES, type TransactionState } from '../model/types.js';
import { applyTransactionChanges, unwrapVariants } from './decode.js';
import { ClientError, toClientError } from './errors.js';
import { EventQueue } from './event-queue.js';
import type { PreStageClient } from './pre-stage-client.js';
import type { ServiceWatch, WatchItem } from './service-watch.js';
import type { FollowEvent, TransactionProperties } from './types.js';

const PROPERTIES = 'org.freedesktop.DBus.Properties';

/**
 * When following ends:
 * - `rest`: at the first resting state (prepared, committed, aborted,
 *   failed, cancelled). Right for StartPreStage, which always returns a
 *   transaction that is queued, running, or finished with nothing to do,
 *   and for Cancel.
 * - `phase`: once a phase has started and come to rest, or at once when
 *   the transaction already rests in `done` (CommitPreStage and
 *   AbortPreStage return a transaction that still rests in `prepared` while
 *   their phase is queued; Reconcile likewise, with no `done`).
 */
export type FollowGoal = { kind: 'rest' } | { kind: 'phase'; done?: TransactionState };

export interface FollowOptions {
  goal: FollowGoal;
  /**
   * A watch opened before the call that returned the path; the follow takes
   * it over and closes it when done. Without one, the follow opens its own,
   * scoped to the transaction.
   */
  watch?: ServiceWatch;
  /**
   * The watch is shared with other follows: leave it open and keep its
   * backlog (the caller closes it).
   */
  shareWatch?: boolean;
}

export function isResting(state: string): boolean {
  return RESTING_STATES.has(state as TransactionState);
}

/** A transaction being followed. Iterate it for events; await `result` for the end. */
export interface TransactionFollow extends AsyncIterable<FollowEvent> {
  readonly path: string;
  /** The final properties; rejects with a ClientError (daemon gone, connection lost...). */
  readonly result: Promise<TransactionProperties>;
  /** Stop following now (the transaction itself goes on); `result` rejects. */
  stop(): void;
}

export function followTransaction(client: PreStageClient, path: string, opts: FollowOptions): TransactionFollow {
  const queue = new EventQueue<FollowEvent>();
  let settle!: { resolve: (t: TransactionProperties) => void; reject: (e: ClientError) => void };
  const result = new Promise<TransactionProperties>((resolve, reject) => { settle = { resolve, reject }; });
  // The consumer may only iterate; the rejection reaches it through the
  // iterator, so `result` must not count as unhandled.
  result.catch(() => undefined);

  let finished = false;
  const cleanups: (() => void | Promise<void>)[] = [];
  const cleanup = () => {
    for (const c of cleanups.splice(0).reverse()) {
      try { void Promise.resolve(c()).catch(() => undefined); } catch { /* keep going */ }
    }
  };
  const fail = (e: unknown) => {
    if (finished) return;
    finished = true;
    const err = toClientError(e, `following transaction ${path}`);
    cleanup();
    queue.fail(err);
    settle.reject(err);
  };
  const succeed = (tx: TransactionProperties) => {
    if (finished) return;
    finished = true;
    cleanup();
    queue.end();
    settle.resolve(tx);
  };

  void drive().catch(fail);

  async function drive(): Promise<void> {
    const watch = opts.watch ?? await client.watch({ transactionPath: path });
    if (!(opts.watch && opts.shareWatch)) cleanups.push(() => watch.close());
    if (finished) return;

    let loaded = false;
    const early: WatchItem[] = [];
    let state: TransactionProperties | null = null;
    let owner = '';
    let snapshotSeq = 0;
    let sawPhaseStart = false;
    let finishing = false;

    const seqOf = (item: WatchItem) => (item.kind === 'owner' ? item.seq : item.signal.seq);

    const isDone = (tx: TransactionProperties): boolean => {
      if (!isResting(tx.state)) return false;
      const goal = opts.goal;
      if (goal.kind === 'rest') return true;
      return sawPhaseStart || (goal.done !== undefined && tx.state === goal.done);
    };

    type FinishedInfo = { state: string; error: string; message?: string };
    const finishWith = (tx: TransactionProperties, ev?: FinishedInfo) => {
      queue.push({
        type: 'finished',
        state: ev?.state ?? tx.state,
        error: ev?.error ?? tx.error,
        message: ev?.message ?? tx.errorMessage,
        transaction: tx,
      });
      succeed(tx);
    };

    /**
     * The transaction's Finished signal, which carries the result message
     * (ErrorMessage only explains errors); kept even when the manager's
     * TransactionFinished came first and started the ending.
     */
    let finishedSignal: FinishedInfo | null = null;
    /**
     * The last Finished signal sent before the snapshot: its state is
     * already in the snapshot, but its message is not (a success's summary
     * is only in the signal). A fast phase (a dry run) can finish before
     * the snapshot is read.
     */
    let finishedBefore: FinishedInfo | null = null;

    /**
     * Finished or TransactionFinished: re-read the properties (changes may
     * be coalesced after the signal), then end. The Finished signal, if it
     * was sent, has arrived by the time the re-read answers (one sender,
     * one connection: order is kept).
     */
    const onFinishedSignal = (ev: FinishedInfo) => {
      if (ev.message !== undefined) finishedSignal = ev;
      if (finishing) return;
      finishing = true;
      client.transactionProperties(path).then((tx) => {
        if (finished) return;
        state = tx;
        queue.push({ type: 'state', transaction: tx });
        finishWith(tx, finishedSignal ?? ev);
      }, () => {
        // Pruned already, or the daemon went away right after: what the
        // signals said is final.
        if (finished || !state) return;
        const info = finishedSignal ?? ev;
        const tx = {
          ...state, state: info.state as TransactionState, error: info.error,
          errorMessage: info.error ? (info.message ?? state.errorMessage) : state.errorMessage,
        };
        finishWith(tx, info);
      });
    };

    const handle = (item: WatchItem) => {
      if (finished) return;
      const before = seqOf(item) < snapshotSeq;
      if (item.kind === 'owner') {
        if (!before && owner !== '' && item.oldOwner === owner) {
          const what = state ? `${state.phase} phase of transaction ${state.id} (${state.state})` : `transaction ${path}`;
          fail(new ClientError('unreachable',
            `bootc-prestaged left the bus during the ${what}; when it runs again it finishes or rolls back ` +
            `what was interrupted: see 'bootc-prestage status'`,
            'org.freedesktop.DBus.Error.NameHasNoOwner'));
        }
        return;
      }
      const s = item.signal;
      const args = s.body.map(unwrapVariants);
      if (s.path === MANAGER_PATH) {
        if (s.interface !== MANAGER_INTERFACE || args[0] !== path) return;
        if (s.member === 'TransactionStarted') {
          sawPhaseStart = true;
          queue.push({ type: 'phase-started', phase: String(args[2] ?? '') });
        } else if (s.member === 'TransactionFinished' && !before) {
          onFinishedSignal({ state: String(args[1] ?? ''), error: String(args[2] ?? '') });
        }
        return;
      }
      if (s.path !== path) return;
      if (s.interface === PROPERTIES && s.member === 'PropertiesChanged') {
        if (args[0] !== TRANSACTION_INTERFACE) return;
        const changed = args[1] as Record<string, unknown>;
        if (typeof changed?.['State'] === 'string' && !isResting(changed['State'])) sawPhaseStart = true;
        if (before || !state || finishing) return;
        state = applyTransactionChanges(state, changed);
        queue.push({ type: 'state', transaction: state });
        // The daemon sends the last property changes just before Finished;
        // ending through a re-read picks up Finished and its message.
        if (isDone(state)) onFinishedSignal({ state: state.state, error: state.error });
        return;
      }
      if (s.interface !== TRANSACTION_INTERFACE) return;
      switch (s.member) {
        case 'HookStarted':
          sawPhaseStart = true;
          queue.push({ type: 'hook-started', hook: String(args[0]), index: Number(args[1]), count: Number(args[2]) });
          break;
        case 'HookProgress':
          queue.push({ type: 'hook-progress', hook: String(args[0]), percent: Number(args[1]), status: String(args[2]) });
          break;
        case 'HookFinished':
          queue.push({ type: 'hook-finished', hook: String(args[0]), result: String(args[1]), message: String(args[2]) });
          break;
        case 'Message':
          queue.push({ type: 'message', hook: String(args[0]), line: String(args[1]) });
          break;
        case 'Finished': {
          const info = { state: String(args[0]), error: String(args[1]), message: String(args[2]) };
          if (!before) onFinishedSignal(info);
          else finishedBefore = info;
          break;
        }
        default:
          break;
      }
    };

    const consumer = watch.consume((item) => {
      if (loaded) handle(item);
      else early.push(item);
    }, { retainBacklog: opts.shareWatch === true });
    cleanups.push(consumer.stop);
    cleanups.push(client.conn.onLost((e) => fail(e)));

    const { tx, reply } = await client.transactionPropertiesAt(path);
    if (finished) return;
    state = tx;
    owner = reply.sender;
    snapshotSeq = reply.seq;
    if (!isResting(tx.state)) sawPhaseStart = true;
    loaded = true;
    for (const item of [...consumer.backlog, ...early]) handle(item);
    if (finished) return;
    queue.push({ type: 'state', transaction: state });
    if (!finishing && isDone(state)) {
      // Every signal sent before the snapshot has been handled: the last
      // Finished among them, if it ended in the snapshot's state, ended it.
      // (Set by `handle`, which TypeScript cannot see through: widen it back.)
      const before = finishedBefore as FinishedInfo | null;
      const ended = before !== null && before.state === state.state ? before : undefined;
      finishWith(state, ended);
    }
  }

  return {
    path,
    result,
    stop: () => fail(new ClientError('failed', 'stopped following')),
    [Symbol.asyncIterator]: () => queue[Symbol.asyncIterator](),
  };
}
