/**
 * start, commit, abort, cancel and reconcile: the commands that make a
 * transaction run and follow it to its end.
 */
import { shortErrorName } from '../client/errors.js';
import { transactionPathOf } from '../client/pre-stage-client.js';
import type { FollowGoal } from '../client/follow.js';
import { isResting } from '../client/follow.js';
import type { FollowEvent, TransactionProperties } from '../client/types.js';
import type { Command } from './args.js';
import { UsageError } from './args.js';
import { BootcProgress, ProgressStream, checkFdOpen, fdLineWriter } from './bootc-progress.js';
import { prepareStaged, restoreLock, type StagedLock } from './bootc.js';
import type { CliContext } from './context.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { Interrupts, followOn, runFollowedCall, type FollowOutcome } from './followed-call.js';
import { txIdOf } from './format.js';
import { jsonLine } from './json-line.js';
import { showDiscarded } from './discarded.js';

type StartCommand = Extract<Command, { name: 'start' }>;
type PhaseCommand = Extract<Command, { name: 'commit' | 'abort' }>;

/** The states that mean a phase did what was asked. */
const SUCCESS: Record<'prepare' | 'dry-run' | 'commit' | 'abort', ReadonlySet<string>> = {
  // `committed`: the deployment was prepared (and since committed) with the same hooks.
  prepare: new Set(['prepared', 'committed']),
  'dry-run': new Set(['aborted']),
  commit: new Set(['committed']),
  abort: new Set(['aborted']),
};

/** "prepare of /sysroot/... failed [HookFailed]: required hook x failed..." */
export function failureText(what: string, tx: TransactionProperties): string {
  const verb = tx.state === 'cancelled' ? 'was cancelled' : tx.state === 'failed' ? 'failed' : `ended ${tx.state}`;
  const err = tx.error ? ` [${shortErrorName(tx.error)}]` : '';
  return `${what} ${verb}${err}${tx.errorMessage ? `: ${tx.errorMessage}` : ''}`;
}

/** Exit status and stderr line for a followed outcome. */
export function reportOutcome(
  ctx: CliContext, outcome: FollowOutcome, kind: keyof typeof SUCCESS, what: string,
): ExitCode {
  if (outcome.kind === 'interrupted') {
    ctx.error(outcome.path
      ? `interrupted; transaction ${txIdOf(outcome.path)} goes on in the daemon (see 'bootc-prestage status')`
      : 'interrupted');
    return EXIT.INTERRUPTED;
  }
  if (SUCCESS[kind].has(outcome.tx.state)) return EXIT.OK;
  ctx.error(failureText(what, outcome.tx));
  return EXIT.FAILED;
}

/** --progress-fd: the command's one progress stream on FD (null without the option). */
export function progressStreamFor(ctx: CliContext, fd: number | null): ProgressStream | null {
  if (fd === null) return null;
  return new ProgressStream(fdLineWriter(fd, (e) => ctx.warn(`--progress-fd ${fd}: ${e.message}; progress output stopped`)));
}

/** The follow-event handler writing one transaction's progress to `stream`. */
export function progressFor(stream: ProgressStream | null): ((ev: FollowEvent) => void) | undefined {
  if (stream === null) return undefined;
  const progress = new BootcProgress(stream);
  return (ev) => progress.event(ev);
}

export function checkProgressFd(fd: number | null, command: string): void {
  if (fd === null) return;
  try {
    checkFdOpen(fd);
  } catch {
    throw new UsageError(`--progress-fd ${fd} is not an open file descriptor`, command);
  }
}

function noFollow(ctx: CliContext, path: string): ExitCode {
  ctx.out(ctx.mode === 'json' ? jsonLine({ transaction: path }) : `${path}\n`);
  return EXIT.OK;
}

export async function startCommand(ctx: CliContext, cmd: StartCommand): Promise<ExitCode> {
  checkProgressFd(cmd.progressFd, 'start');
  let deployment = cmd.deployment!;
  let lock: StagedLock | null = null;
  if (cmd.staged) {
    // The staged deployment must stay locked while its hooks run, or a
    // reboot now would finalize it unprepared (README, "The upgrade flow
    // with bootc"). A dry run runs nothing and needs no lock.
    const staged = await prepareStaged(cmd.sysroot, ctx.io.env, { lock: !cmd.dryRun, warn: (m) => ctx.warn(m) });
    deployment = staged.deployment;
    lock = staged.lock;
    if (ctx.mode !== 'json') ctx.io.stderr.write(`Staged deployment: ${deployment}\n`);
  }
  const options = { force: cmd.force, wait: cmd.wait, dryRun: cmd.dryRun, timeoutSec: cmd.timeoutSec };
  if (cmd.noFollow) {
    const client = await ctx.connect();
    return noFollow(ctx, await client.startPreStage(deployment, options));
  }
  const outcome = await runStart(ctx, deployment, options, progressStreamFor(ctx, cmd.progressFd));
  const code = reportOutcome(ctx, outcome, cmd.dryRun ? 'dry-run' : 'prepare',
    `${cmd.dryRun ? 'the dry run' : 'the prepare phase'} of ${deployment}`);
  if (lock?.lockedByUs) {
    if (code === EXIT.OK) {
      // We locked a stage that bootc had left unlocked: give it back as it
      // was, now that its hooks have run.
      await restoreLock(lock, (m) => ctx.warn(m));
    } else {
      ctx.error(`the staged deployment stays locked (${lock.file}): ostree discards it at the next reboot`);
    }
  }
  return code;
}

/** The followed prepare phase (also step 2 of upgrade). */
export async function runStart(
  ctx: CliContext, deployment: string,
  options: { force?: boolean; wait?: boolean; dryRun?: boolean; timeoutSec?: number },
  stream: ProgressStream | null,
): Promise<FollowOutcome> {
  let progress: ((ev: FollowEvent) => void) | undefined;
  return runFollowedCall(ctx, {
    action: options.dryRun ? 'dry-run' : 'prepare',
    deployment,
    goal: { kind: 'rest' },
    cancellable: !options.dryRun,
    call: async (client) => {
      const path = await client.startPreStage(deployment, options);
      progress = progressFor(stream);
      return path;
    },
    onEvent: (ev) => progress?.(ev),
  });
}

/** True when a prepare outcome means the deployment is prepared. */
export function isPrepared(tx: TransactionProperties): boolean {
  return SUCCESS.prepare.has(tx.state);
}

export async function phaseCommand(ctx: CliContext, cmd: PhaseCommand): Promise<ExitCode> {
  checkProgressFd(cmd.progressFd, cmd.name);
  const stream = progressStreamFor(ctx, cmd.progressFd);
  const options = { wait: cmd.wait, timeoutSec: cmd.timeoutSec };
  const call = (client: Awaited<ReturnType<CliContext['connect']>>) => (cmd.name === 'commit'
    ? client.commitPreStage(cmd.deployment, options)
    : client.abortPreStage(cmd.deployment, options));
  if (cmd.noFollow) return noFollow(ctx, await call(await ctx.connect()));
  const goal: FollowGoal = { kind: 'phase', done: cmd.name === 'commit' ? 'committed' : 'aborted' };
  const outcome = await runFollowedCall(ctx, {
    action: cmd.name, deployment: cmd.deployment, goal, cancellable: false, call,
    ...(stream ? { onEvent: progressFor(stream)! } : {}),
  });
  return reportOutcome(ctx, outcome, cmd.name, `the ${cmd.name} phase of ${cmd.deployment}`);
}

export async function cancelCommand(ctx: CliContext, cmd: Extract<Command, { name: 'cancel' }>): Promise<ExitCode> {
  const path = transactionPathOf(cmd.transaction);
  const client = await ctx.connect();
  const before = await client.transactionProperties(path);
  if (isResting(before.state)) {
    if (before.state === 'cancelled') return EXIT.OK;
    ctx.error(`transaction ${before.id} is already ${before.state}; there is nothing to cancel`);
    return EXIT.FAILED;
  }
  if (cmd.noWait) {
    await client.cancel(path);
    return EXIT.OK;
  }
  const outcome = await runFollowedCall(ctx, {
    action: 'cancel', deployment: before.deployment, goal: { kind: 'rest' }, cancellable: false,
    call: async (c) => { await c.cancel(path); return path; },
  });
  if (outcome.kind === 'interrupted') return reportOutcome(ctx, outcome, 'prepare', '');
  if (outcome.tx.state !== 'cancelled') {
    ctx.error(`transaction ${outcome.tx.id} ended ${outcome.tx.state} before the cancel took effect`);
    return EXIT.FAILED;
  }
  return EXIT.OK;
}

export async function reconcileCommand(ctx: CliContext, cmd: Extract<Command, { name: 'reconcile' }>): Promise<ExitCode> {
  checkProgressFd(cmd.progressFd, 'reconcile');
  const stream = progressStreamFor(ctx, cmd.progressFd);
  const client = await ctx.connect();
  await showDiscarded(ctx, 'previous-boot');
  if (cmd.noFollow) {
    const paths = await client.reconcile();
    if (ctx.mode === 'json') ctx.out(jsonLine({ transactions: paths }));
    else ctx.out(paths.map((p) => `${p}\n`).join(''));
    return EXIT.OK;
  }
  const interrupts = new Interrupts(ctx);
  const watch = await client.watch();
  try {
    interrupts.setFirst(() => ctx.io.stderr.write(
      'Commit and abort steps cannot be cancelled; waiting for them to finish '
      + '(press Ctrl-C again to stop waiting; the daemon carries on)\n'));
    const paths = await client.reconcile();
    let worst: ExitCode = EXIT.OK;
    const followed = new Set<string>();
    const follow = async (path: string, goal: FollowGoal): Promise<ExitCode | null> => {
      followed.add(path);
      const display = ctx.display();
      display.begin({ action: 'reconcile', path, deployment: '' });
      let outcome: FollowOutcome;
      try {
        const onEvent = progressFor(stream);
        outcome = await followOn(client, path, display, goal, interrupts, {
          watch, shareWatch: true, ...(onEvent ? { onEvent } : {}),
        });
      } finally {
        display.close();
      }
      if (outcome.kind === 'interrupted') return reportOutcome(ctx, outcome, 'commit', '');
      const tx = outcome.tx;
      if (tx.state !== 'committed' && tx.state !== 'aborted') {
        ctx.error(failureText(`the ${tx.phase} phase of ${tx.deployment}`, tx));
        worst = EXIT.FAILED;
      }
      return null;
    };
    for (const path of paths) {
      const stop = await follow(path, { kind: 'phase' });
      if (stop !== null) return stop;
    }
    // The daemon also reconciles when it starts, which our call may just
    // have caused: work it queued that way is not in our reply. Follow the
    // commit or abort phases running now too, so that when this command
    // returns (at boot: when bootc-prestage-reconcile.service is done) the
    // booted deployment's commit steps have run.
    for (let i = 0; i < 64; i++) {
      const m = await client.managerProperties();
      if (m.state !== 'busy' || m.activeTransaction === '/') break;
      if (followed.has(m.activeTransaction)) break;
      const tx = await client.transactionProperties(m.activeTransaction);
      // Someone's prepare phase (or its rollback): not reconcile's work.
      if (tx.phase === 'prepare' && !isResting(tx.state)) break;
      // Resting but active: its commit or abort job is just starting.
      const stop = await follow(m.activeTransaction, isResting(tx.state) ? { kind: 'phase' } : { kind: 'rest' });
      if (stop !== null) return stop;
    }
    if (followed.size === 0) {
      if (ctx.mode === 'json') ctx.out(jsonLine({ event: 'finished', transactions: [] }));
      else ctx.out('Nothing to reconcile.\n');
    }
    return worst;
  } finally {
    interrupts.dispose();
    await watch.close();
  }
}
