/**
 * The shape every following command shares (start, commit, abort, cancel,
 * reconcile, upgrade): subscribe, make the call that returns a transaction,
 * follow it on the display, and handle Ctrl-C the way rpm-ostree does:
 *
 * - the first Ctrl-C cancels a cancellable phase (a prepare) and keeps
 *   following until the rollback is done, so the command still exits with
 *   the transaction's real outcome; for a phase that cannot be cancelled
 *   (commit, abort) it says so and keeps waiting;
 * - a second Ctrl-C stops waiting at once (exit 130); the daemon carries
 *   on, and `status` shows how it ends.
 */
import { followTransaction, type FollowGoal } from '../client/follow.js';
import type { PreStageClient } from '../client/pre-stage-client.js';
import type { ServiceWatch } from '../client/service-watch.js';
import type { FollowEvent, TransactionProperties } from '../client/types.js';
import type { CliContext } from './context.js';
import type { FollowAction, FollowDisplay } from './follow-display.js';
import { txIdOf } from './format.js';

export interface FollowedCall {
  action: FollowAction;
  deployment: string;
  goal: FollowGoal;
  /** Ctrl-C cancels the transaction (prepare phases only). */
  cancellable: boolean;
  /** The D-Bus call; resolves with the transaction path. */
  call(client: PreStageClient): Promise<string>;
  /** Also sees every event (bootc progress). */
  onEvent?: (ev: FollowEvent) => void;
}

export type FollowOutcome =
  | { kind: 'finished'; tx: TransactionProperties }
  | { kind: 'interrupted'; path: string | null };

/** A Ctrl-C handler for one command: counts presses and says what the first one did. */
export class Interrupts {
  count = 0;
  private onFirst: () => void = () => {};
  private readonly second: Promise<void>;
  private fireSecond: () => void = () => {};
  private readonly remove: () => void;

  constructor(ctx: CliContext) {
    this.second = new Promise<void>((resolve) => { this.fireSecond = resolve; });
    this.remove = ctx.io.onInterrupt(() => {
      this.count++;
      if (this.count === 1) this.onFirst();
      else this.fireSecond();
    });
  }

  /** What the first Ctrl-C does (called at once if it already came). */
  setFirst(fn: () => void): void {
    this.onFirst = fn;
    if (this.count >= 1) fn();
  }

  /** Resolves on the second Ctrl-C. */
  get stopWaiting(): Promise<void> {
    return this.second;
  }

  dispose(): void {
    this.remove();
  }
}

/** Follow `path` on `display` until the goal, a second Ctrl-C, or an error (rejects with ClientError). */
export async function followOn(
  client: PreStageClient, path: string, display: FollowDisplay, goal: FollowGoal, interrupts: Interrupts,
  opts: { watch?: ServiceWatch; shareWatch?: boolean; onEvent?: (ev: FollowEvent) => void } = {},
): Promise<FollowOutcome> {
  const follow = followTransaction(client, path, {
    goal, ...(opts.watch ? { watch: opts.watch } : {}), ...(opts.shareWatch ? { shareWatch: true } : {}),
  });
  const iterate = (async () => {
    for await (const ev of follow) {
      display.event(ev);
      opts.onEvent?.(ev);
    }
    return follow.result;
  })();
  const winner = await Promise.race([
    iterate.then((tx) => ({ kind: 'finished' as const, tx })),
    interrupts.stopWaiting.then(() => ({ kind: 'interrupted' as const, path })),
  ]);
  if (winner.kind === 'interrupted') {
    iterate.catch(() => undefined);
    follow.stop();
  }
  return winner;
}

/** Run a followed call on a fresh display. The caller decides the exit status from the outcome. */
export async function runFollowedCall(ctx: CliContext, spec: FollowedCall): Promise<FollowOutcome> {
  const client = await ctx.connect();
  const interrupts = new Interrupts(ctx);
  const display = ctx.display();
  let watch: ServiceWatch | null = null;
  try {
    // Subscribed before the call: nothing the transaction signals is missed.
    watch = await client.watch();
    let path: string | null = null;
    let cancelWanted = false;
    const cancel = () => {
      if (!path) return;
      client.cancel(path).catch((e: Error) => display.note(`Cannot cancel: ${e.message}`));
    };
    interrupts.setFirst(() => {
      if (spec.cancellable) {
        display.note(`Cancelling${path ? ` transaction ${txIdOf(path)}` : ''}; waiting for the rollback to finish `
          + '(press Ctrl-C again to stop waiting)');
        cancelWanted = true;
        cancel();
      } else {
        display.note(`The ${spec.action} steps cannot be cancelled; waiting for them to finish `
          + '(press Ctrl-C again to stop waiting; the daemon carries on)');
      }
    });
    const called = await Promise.race([
      spec.call(client).then((p) => ({ path: p })),
      interrupts.stopWaiting.then(() => null),
    ]);
    if (called === null) return { kind: 'interrupted', path: null };
    path = called.path;
    display.begin({ action: spec.action, path, deployment: spec.deployment });
    if (cancelWanted) cancel();
    const w = watch;
    watch = null; // the follow owns it now
    return await followOn(client, path, display, spec.goal, interrupts, {
      watch: w, ...(spec.onEvent ? { onEvent: spec.onEvent } : {}),
    });
  } finally {
    display.close();
    interrupts.dispose();
    await watch?.close().catch(() => undefined);
  }
}
