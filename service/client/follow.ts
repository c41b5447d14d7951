/**
 * Follow one transaction to the end of a phase: yield its events as they
 * come and resolve with its final properties.
 *
 * How nothing is lost (docs/design.md: "a client that subscribes late must lose
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
import { MANAGER_INTERFACE, MANAGER_PATH, PROPERTIES, TRANSACTION_INTERFACE } from '../protocol/members.js';
import { RESTING_STATES, type TransactionState } from '../model/types.js';
import { applyTransactionChanges, unwrapVariants } from './decode.js';
import { ClientError, toClientError } from './errors.js';
import { EventQueue } from './event-queue.js';
import type { PreStageClient } from './pre-stage-client.js';
import type { ServiceWatch, WatchItem } from './service-watch.js';
import type { FollowEvent, TransactionProperties } from './types.js';

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

type FinishedInfo = { state: string; error: string; message?: string };

export function followTransaction(client: PreStageClient, path: string, opts: FollowOptions): TransactionFollow {
  const follower = new Follower(client, path, opts);
  void follower.drive().catch((e) => follower.fail(e));
  return {
    path,
    result: follower.result,
    stop: () => follower.fail(new ClientError('failed', 'stopped following')),
    [Symbol.asyncIterator]: () => follower.queue[Symbol.asyncIterator](),
  };
}

/** One follow's state: the snapshot, what was seen before it, and how it ends. */
class Follower {
  readonly queue = new EventQueue<FollowEvent>();
  readonly result: Promise<TransactionProperties>;
  private settle!: { resolve: (t: TransactionProperties) => void; reject: (e: ClientError) => void };
  private finished = false;
  private readonly cleanups: (() => void | Promise<void>)[] = [];

  private loaded = false;
  private readonly early: WatchItem[] = [];
  private state: TransactionProperties | null = null;
  private owner = '';
  private snapshotSeq = 0;
  private sawPhaseStart = false;
  private finishing = false;
  /**
   * The transaction's Finished signal, which carries the result message
   * (ErrorMessage only explains errors); kept even when the manager's
   * TransactionFinished came first and started the ending.
   */
  private finishedSignal: FinishedInfo | null = null;
  /**
   * The last Finished signal sent before the snapshot: its state is
   * already in the snapshot, but its message is not (a success's summary
   * is only in the signal). A fast phase (a dry run) can finish before
   * the snapshot is read.
   */
  private finishedBefore: FinishedInfo | null = null;

  constructor(
    private readonly client: PreStageClient,
    private readonly path: string,
    private readonly opts: FollowOptions,
  ) {
    this.result = new Promise<TransactionProperties>((resolve, reject) => { this.settle = { resolve, reject }; });
    // The consumer may only iterate; the rejection reaches it through the
    // iterator, so `result` must not count as unhandled.
    this.result.catch(() => undefined);
  }

  fail(e: unknown): void {
    if (this.finished) return;
    this.finished = true;
    const err = toClientError(e, `following transaction ${this.path}`);
    this.cleanup();
    this.queue.fail(err);
    this.settle.reject(err);
  }

  private succeed(tx: TransactionProperties): void {
    if (this.finished) return;
    this.finished = true;
    this.cleanup();
    this.queue.end();
    this.settle.resolve(tx);
  }

  private cleanup(): void {
    for (const c of this.cleanups.splice(0).reverse()) {
      try { void Promise.resolve(c()).catch(() => undefined); } catch { /* keep going */ }
    }
  }

  /** Subscribe, read the snapshot, replay what came before it, and end at once if it is done. */
  async drive(): Promise<void> {
    const watch = this.opts.watch ?? await this.client.watch({ transactionPath: this.path });
    if (!(this.opts.watch && this.opts.shareWatch)) this.cleanups.push(() => watch.close());
    if (this.finished) return;
    const consumer = watch.consume((item) => {
      if (this.loaded) this.handle(item);
      else this.early.push(item);
    }, { retainBacklog: this.opts.shareWatch === true });
    this.cleanups.push(consumer.stop);
    this.cleanups.push(this.client.conn.onLost((e) => this.fail(e)));

    const { tx, reply } = await this.client.transactionPropertiesAt(this.path);
    if (this.finished) return;
    this.state = tx;
    this.owner = reply.sender;
    this.snapshotSeq = reply.seq;
    if (!isResting(tx.state)) this.sawPhaseStart = true;
    this.loaded = true;
    for (const item of [...consumer.backlog, ...this.early]) this.handle(item);
    if (this.finished) return;
    this.queue.push({ type: 'state', transaction: this.state });
    if (!this.finishing && this.isDone(this.state)) {
      // Every signal sent before the snapshot has been handled: the last
      // Finished among them, if it ended in the snapshot's state, ended it.
      const before = this.finishedBefore;
      const ended = before !== null && before.state === this.state.state ? before : undefined;
      this.finishWith(this.state, ended);
    }
  }

  private isDone(tx: TransactionProperties): boolean {
    if (!isResting(tx.state)) return false;
    const goal = this.opts.goal;
    if (goal.kind === 'rest') return true;
    return this.sawPhaseStart || (goal.done !== undefined && tx.state === goal.done);
  }

  private finishWith(tx: TransactionProperties, ev?: FinishedInfo): void {
    this.queue.push({
      type: 'finished',
      state: ev?.state ?? tx.state,
      error: ev?.error ?? tx.error,
      message: ev?.message ?? tx.errorMessage,
      transaction: tx,
    });
    this.succeed(tx);
  }

  /**
   * Finished or TransactionFinished: re-read the properties (changes may
   * be coalesced after the signal), then end. The Finished signal, if it
   * was sent, has arrived by the time the re-read answers (one sender,
   * one connection: order is kept).
   */
  private onFinishedSignal(ev: FinishedInfo): void {
    if (ev.message !== undefined) this.finishedSignal = ev;
    if (this.finishing) return;
    this.finishing = true;
    this.client.transactionProperties(this.path).then((tx) => {
      if (this.finished) return;
      this.state = tx;
      this.queue.push({ type: 'state', transaction: tx });
      this.finishWith(tx, this.finishedSignal ?? ev);
    }, () => {
      // Pruned already, or the daemon went away right after: what the
      // signals said is final.
      const state = this.state;
      if (this.finished || !state) return;
      const info = this.finishedSignal ?? ev;
      const tx = {
        ...state, state: info.state as TransactionState, error: info.error,
        errorMessage: info.error ? (info.message ?? state.errorMessage) : state.errorMessage,
      };
      this.finishWith(tx, info);
    });
  }

  private handle(item: WatchItem): void {
    if (this.finished) return;
    const before = (item.kind === 'owner' ? item.seq : item.signal.seq) < this.snapshotSeq;
    if (item.kind === 'owner') {
      if (!before && this.owner !== '' && item.oldOwner === this.owner) this.daemonLeft();
      return;
    }
    const s = item.signal;
    const args = s.body.map(unwrapVariants);
    if (s.path === MANAGER_PATH) {
      if (s.interface === MANAGER_INTERFACE && args[0] === this.path) this.onManagerSignal(s.member, args, before);
      return;
    }
    if (s.path !== this.path) return;
    if (s.interface === PROPERTIES.name && s.member === 'PropertiesChanged') {
      if (args[0] === TRANSACTION_INTERFACE) this.onPropertiesChanged(args[1] as Record<string, unknown>, before);
      return;
    }
    if (s.interface === TRANSACTION_INTERFACE) this.onTransactionSignal(s.member, args, before);
  }

  /** The daemon's bus name changed hands after the snapshot: end with what to do. */
  private daemonLeft(): void {
    const state = this.state;
    const what = state ? `${state.phase} phase of transaction ${state.id} (${state.state})` : `transaction ${this.path}`;
    this.fail(new ClientError('unreachable',
      `bootc-prestaged left the bus during the ${what}; when it runs again it finishes or rolls back ` +
      `what was interrupted: see 'bootc-prestage status'`,
      'org.freedesktop.DBus.Error.NameHasNoOwner'));
  }

  private onManagerSignal(member: string, args: unknown[], before: boolean): void {
    if (member === 'TransactionStarted') {
      this.sawPhaseStart = true;
      this.queue.push({ type: 'phase-started', phase: String(args[2] ?? '') });
    } else if (member === 'TransactionFinished' && !before) {
      this.onFinishedSignal({ state: String(args[1] ?? ''), error: String(args[2] ?? '') });
    }
  }

  private onPropertiesChanged(changed: Record<string, unknown>, before: boolean): void {
    if (typeof changed?.['State'] === 'string' && !isResting(changed['State'])) this.sawPhaseStart = true;
    if (before || !this.state || this.finishing) return;
    this.state = applyTransactionChanges(this.state, changed);
    this.queue.push({ type: 'state', transaction: this.state });
    // The daemon sends the last property changes just before Finished;
    // ending through a re-read picks up Finished and its message.
    if (this.isDone(this.state)) this.onFinishedSignal({ state: this.state.state, error: this.state.error });
  }

  private onTransactionSignal(member: string, args: unknown[], before: boolean): void {
    const q = this.queue;
    switch (member) {
      case 'HookStarted':
        this.sawPhaseStart = true;
        q.push({ type: 'hook-started', hook: String(args[0]), index: Number(args[1]), count: Number(args[2]) });
        break;
      case 'HookProgress':
        q.push({ type: 'hook-progress', hook: String(args[0]), percent: Number(args[1]), status: String(args[2]) });
        break;
      case 'HookFinished':
        q.push({ type: 'hook-finished', hook: String(args[0]), result: String(args[1]), message: String(args[2]) });
        break;
      case 'Message':
        q.push({ type: 'message', hook: String(args[0]), line: String(args[1]) });
        break;
      case 'Finished': {
        const info = { state: String(args[0]), error: String(args[1]), message: String(args[2]) };
        if (!before) this.onFinishedSignal(info);
        else this.finishedBefore = info;
        break;
      }
      default:
        break;
    }
  }
}
