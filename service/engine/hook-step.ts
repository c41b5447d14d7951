/**
 * One hook step of a phase: plan it (argv, environment, state directory,
 * trust), journal it, run it through the step runner, and journal and
 * publish its outcome.
 *
 * What must stay true: the `step` record is durable before the process is
 * spawned (recovery knows every step that may have run; whoever spawns it
 * syncs the journal right before the exec: StepSpec.beforeExec), and a step
 * the daemon stops during keeps no `done` record (the next start recovers it).
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { expandArgv, expandVariables, quoteCommandLine } from '../model/command-line.js';
import { PreStageError, toPreStageError } from '../model/errors.js';
import { programInRootProblem, programTrustProblem, rootDirectoryProblem } from './hook-discovery.js';
import { parseBindEntry, type BindSpec } from '../model/bind-paths.js';
import { retryPolicyOf } from '../model/hook-file.js';
import { nowUsec, type JournalHook } from './journal.js';
import { bwrapArgv, bwrapMissingMessage, programInRoot, stepRoot } from './new-root.js';
import type { RetryWait } from './recovery.js';
import { EXIT_TEMPFAIL, decideRetry, retryStatus } from './retry.js';
import type { Logger } from '../model/logger.js';
import { MessageLimiter } from './message-limiter.js';
import type { StateDir } from './state-dir.js';
import { runStep, type RunningStep, type StepOutcome } from './step-runner.js';
import type { Transaction } from './transaction.js';
import type { Phase } from '../model/types.js';

/** What a hook step needs of the engine. */
export interface HookStepContext {
  readonly log: Logger;
  readonly stateDir: StateDir;
  /** PATH given to steps. */
  readonly stepPath: string;
  readonly killGraceMs: number;
  /** Owner that hook programs must have. */
  readonly trustedUid: number;
  /** The booted deployment's root: its `etc` is a new-root step's /etc. */
  readonly bootedRoot: string;
  /** Where bwrap is (new-root.ts locateBwrap); null: new-root steps fail. */
  bwrap(): string | null;
  /** The daemon is stopping: start nothing, record no outcome. */
  isClosing(): boolean;
}

/** Per-run bookkeeping of a phase, so cancel and deadlines reach the current step. */
export interface PhaseRun {
  current: RunningStep | null;
  deadlineHit: boolean;
  /** When the phase deadline cuts it (epoch µs), null for none: a retry never waits past it. */
  deadlineUsec: number | null;
}

/** One step being run: who, in which phase, and what it reported last. */
interface StepScope {
  readonly tx: Transaction;
  readonly phase: Phase;
  readonly index: number;
  readonly hook: JournalHook;
  readonly rollback: boolean;
  /** 'prepare', 'rollback abort', ...: how logs name the step. */
  readonly label: string;
  readonly fields: Record<string, string>;
  lastStatus: string;
}

interface PlannedStep {
  argv: string[];
  env: Record<string, string>;
  /** The hook's state directory (made right before the start). */
  stateDir: string;
  /** Why the program may not run as root, or null. */
  distrust: string | null;
  /** The root it runs in (`/`: the host's). */
  root: string;
  /** Why it cannot run at all (a root missing, bwrap missing), or null: a failure. */
  failure: string | null;
  /** Why it is skipped without running (its deployment root is gone), or null. */
  skip: string | null;
}

/** What a new-root step gets mounted, and how it is started (new-root.ts). */
export interface StepCommand {
  root: string;
  /** The argv as run: bwrap's when the root is not `/`. */
  argv: string[];
  /** Set when the step cannot start (a root that needs a deployment not given, no bwrap). */
  problem: string | null;
}

/**
 * The command a step runs, as data: the expanded argv, wrapped in bwrap
 * when its root is not the host's. Pure but for locating bwrap; dry runs
 * show it, runs exec it.
 */
export function stepCommand(
  h: JournalHook, phase: Phase, env: Record<string, string>, argv: string[],
  o: { bootedRoot: string; stateDirectory: string | null; bwrap: string | null },
): StepCommand {
  const root = stepRoot(h.definition.rootDirectory, h.origin === 'deployment', phase, env, expandVariables);
  if (root === null) {
    return { root: h.definition.rootDirectory ?? '', argv, problem: `RootDirectory=${h.definition.rootDirectory} does not expand to an absolute path` };
  }
  if (root === '/') return { root, argv, problem: null };
  const binds: BindSpec[] = [];
  for (const [entries, ro] of [[h.definition.bindPaths, false], [h.definition.bindReadOnlyPaths, true]] as const) {
    for (const e of entries ?? []) {
      const b = parseBindEntry(e, ro);
      binds.push({ ...b, source: expandVariables(b.source, env), destination: b.destination.startsWith('${') ? expandVariables(b.destination, env) : b.destination });
    }
  }
  const inner = [programInRoot(argv[0]!, root), ...argv.slice(1)];
  const mounts = {
    root, etc: path.join(o.bootedRoot, 'etc'), var: path.resolve(env.BOOTC_PRESTAGE_DEPLOYMENT ?? '/', '..', '..', 'var'),
    stateDirectory: o.stateDirectory, binds,
  };
  if (o.bwrap === null) return { root, argv: bwrapArgv('bwrap', mounts, inner), problem: bwrapMissingMessage(root) };
  return { root, argv: bwrapArgv(o.bwrap, mounts, inner), problem: null };
}

/** The environment of a step: the hook's own, then the BOOTC_PRESTAGE_* keys (docs/design.md). */
export function stepEnv(
  stepPath: string, tx: Transaction, phase: Phase, h: JournalHook, stateDir: string,
): Record<string, string> {
  const env: Record<string, string> = { PATH: stepPath, LANG: 'C.UTF-8' };
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
export async function runHookStep(
  ctx: HookStepContext, tx: Transaction, run: PhaseRun, phase: Phase, index: number, h: JournalHook, rollback: boolean,
  resume: RetryWait | null = null,
): Promise<StepOutcome> {
  assertRunning(ctx);
  const scope: StepScope = {
    tx, phase, index, hook: h, rollback,
    label: `${rollback ? 'rollback ' : ''}${phase}`,
    fields: { transaction: tx.id, hook: h.name, phase, deployment: tx.deployment },
    lastStatus: '',
  };
  const policy = retryPolicyOf(h.definition);
  // Attempts after a 75 (retry.ts); a resumed wait starts where the journal left it.
  let attempt = resume?.attempt ?? 1;
  let firstUsec = resume?.firstUsec ?? nowUsec();
  let out: StepOutcome;
  if (resume !== null) {
    announceResume(ctx, scope, resume);
    const cut = await waitForRetry(ctx, scope, run, resume.dueUsec, attempt);
    if (cut !== null) {
      assertRunning(ctx);
      await recordOutcome(ctx, scope, cut);
      return cut;
    }
  }
  for (;;) {
    const planned = planStep(ctx, tx, phase, h);
    await recordStepStart(tx, phase, h, rollback);
    if (attempt === 1) firstUsec = nowUsec();
    // Every line goes to the log as bytes; only those the Message cap lets
    // through are decoded into events, the rest are counted (message-limiter.ts).
    const messages = new MessageLimiter((count) => tx.emit({ type: 'messages-suppressed', hook: h.name, count }));
    // The start goes first, the announcement once it is under way: its
    // bus and log work then overlaps the fork and exec instead of delaying
    // them. No output can come before it (the readers are attached in the
    // same run of microtasks that settles `started`).
    const step = spawnStep(ctx, scope, planned, messages);
    out = await awaitStep(ctx, scope, run, step, () => announceStep(ctx, scope, planned, attempt));
    // The count of the last window goes out before hook-finished.
    messages.flush();
    // Stopping: leave the step without a `done` record so the next start recovers it.
    assertRunning(ctx);
    if (out.result !== 'failed' || out.exitCode !== EXIT_TEMPFAIL || out.signal !== null) break;
    const cutByPhase = !rollback && (tx.cancelRequested || run.deadlineHit);
    if (cutByPhase) break;
    // One clock reading for the decision and its record: the record says when it was made.
    const decidedUsec = nowUsec();
    const d = decideRetry(policy, attempt, firstUsec, decidedUsec, run.deadlineUsec);
    if (!d.retry) {
      out = { ...out, message: d.message, ...(d.reason === 'deadline' ? { result: 'timeout' as const } : {}) };
      break;
    }
    await tx.journal!.append({
      t: 'retry', phase, hook: h.name, rollback, attempt: d.attempt, firstUsec,
      dueUsec: d.dueUsec, windowEndUsec: d.windowEndUsec, message: d.status, usec: decidedUsec,
    }, true);
    tx.log.write(h.name, `${scope.label} step exited ${EXIT_TEMPFAIL} (try again later): ${d.status}`);
    ctx.log.info(`${scope.label} step asked to be retried: ${d.status}`, scope.fields);
    attempt = d.attempt;
    const cut = await waitForRetry(ctx, scope, run, d.dueUsec, attempt);
    if (cut !== null) {
      out = cut;
      break;
    }
  }
  await recordOutcome(ctx, scope, out);
  return out;
}

/** After a restart: the hook is shown running again, waiting for its next attempt. */
function announceResume(ctx: HookStepContext, s: StepScope, w: RetryWait): void {
  const { tx, hook: h, index } = s;
  tx.patch({ currentHook: h.name });
  if (!s.rollback) {
    tx.setHook(index, { result: 'running', status: retryStatus(w.dueUsec - nowUsec(), w.attempt) });
    tx.emit({ type: 'hook-started', hook: h.name, index, count: tx.snapshot().hooks.length });
  }
  tx.log.write(h.name, `${s.label} step: resuming the wait for attempt ${w.attempt} after a restart`);
  ctx.log.info(`${s.label} step: resuming the wait for attempt ${w.attempt}`, s.fields);
}

/**
 * Wait until `dueUsec`, showing "retrying in N s (attempt k)" once a
 * second. Returns null when the attempt is due, or the outcome that ends
 * the step when a Cancel or the phase deadline cut the wait (a rollback
 * step only stops for the deadline, as its runs do).
 */
function waitForRetry(
  ctx: HookStepContext, s: StepScope, run: PhaseRun, dueUsec: number, attempt: number,
): Promise<StepOutcome | null> {
  const { tx, hook: h, index } = s;
  const t0 = performance.now();
  const show = () => {
    const status = retryStatus(dueUsec - nowUsec(), attempt);
    s.lastStatus = status;
    if (!s.rollback) tx.setHook(index, { status });
    tx.emit({ type: 'hook-progress', hook: h.name, percent: tx.snapshot().hooks[index]?.percent ?? 0, status });
  };
  return new Promise<StepOutcome | null>((resolve) => {
    let tick: NodeJS.Timeout | null = null;
    let due: NodeJS.Timeout | null = null;
    const end = (v: StepOutcome | null) => {
      if (tick) clearInterval(tick);
      if (due) clearTimeout(due);
      if (run.current === waiter) run.current = null;
      resolve(v);
    };
    const cutOutcome = (): StepOutcome => {
      const timeout = run.deadlineHit;
      return {
        result: timeout ? 'timeout' : 'cancelled', exitCode: EXIT_TEMPFAIL, signal: null, leftovers: 0,
        durationMs: Math.round(performance.now() - t0),
        message: `${timeout ? 'the phase deadline came' : 'cancelled'} while waiting to retry (attempt ${attempt})`,
      };
    };
    const waiter: RunningStep = {
      pid: 0, startTime: null, started: Promise.resolve(), done: Promise.resolve(null as unknown as StepOutcome),
      cancel: () => {
        if (s.rollback && !run.deadlineHit) return;
        end(cutOutcome());
      },
    };
    if (!s.rollback && (tx.cancelRequested || run.deadlineHit)) {
      resolve(cutOutcome());
      return;
    }
    run.current = waiter;
    show();
    tick = setInterval(() => {
      if (ctx.isClosing()) return;
      show();
    }, 1000);
    // Timers may fire a little before the wall clock says: never start an attempt early.
    const arm = () => {
      due = setTimeout(() => (nowUsec() >= dueUsec ? end(null) : arm()), Math.max(1, Math.ceil((dueUsec - nowUsec()) / 1000)));
    };
    arm();
  });
}

function assertRunning(ctx: HookStepContext): void {
  if (ctx.isClosing()) throw new PreStageError('Internal', 'the daemon is shutting down');
}

/**
 * The argv, environment, state directory and trust verdict of a step. The
 * verdict is applied only after the step record, so a refused step is
 * journaled and reported like any failed one. The state directory is made
 * by whoever starts the step, right before it (StepSpec.beforeExec).
 */
function planStep(ctx: HookStepContext, tx: Transaction, phase: Phase, h: JournalHook): PlannedStep {
  const argvRaw = (phase === 'prepare' ? h.definition.prepare : phase === 'commit' ? h.definition.commit : h.definition.abort)!;
  const stateDir = ctx.stateDir.hookStateDir(tx.deploymentKey, h.name);
  const env = stepEnv(ctx.stepPath, tx, phase, h, stateDir);
  const argv = expandArgv(argvRaw, env);
  const root = stepRoot(h.definition.rootDirectory, h.origin === 'deployment', phase, env, expandVariables);
  if (root === '/') {
    // Trust again, now: a commit may run long after the prepare that
    // checked, and a program others can change must not run as root.
    const distrust = programTrustProblem(argv[0]!, ctx.trustedUid);
    return { argv, env, stateDir, distrust, root, failure: null, skip: null };
  }
  let bwrap: string | null = null;
  let cmd: StepCommand;
  try {
    bwrap = ctx.bwrap();
    cmd = stepCommand(h, phase, env, argv, { bootedRoot: ctx.bootedRoot, stateDirectory: stateDir, bwrap });
  } catch (e) {
    return { argv, env, stateDir, distrust: null, root: root ?? '', failure: (e as Error).message, skip: null };
  }
  if (root !== null && !existsSync(root) && root === tx.deployment && phase === 'abort') {
    // The deployment that was this step's root is gone: nothing of it can run.
    return { argv, env, stateDir, distrust: null, root, failure: null, skip: `skipped: its root ${root} (the deployment) is gone` };
  }
  const rootProblem = root === null ? null : rootDirectoryProblem(root, ctx.trustedUid);
  const failure = cmd.problem ?? (rootProblem ? `the root directory ${root} ${rootProblem}` : null);
  const distrust = failure === null ? programInRootProblem(argv[0]!, root!, ctx.trustedUid) : null;
  return { argv: cmd.argv, env, stateDir, distrust, root: cmd.root, failure, skip: null };
}

/**
 * The `step` record; from here on a rollback undoes this hook's prepare.
 * Written here, made durable right before the exec by whoever starts the
 * step (StepSpec.beforeExec.syncFile): the spawn helper syncs it while the
 * event loop goes on, and a step that never starts needs no sync.
 */
function recordStepStart(tx: Transaction, phase: Phase, h: JournalHook, rollback: boolean): Promise<void> {
  const written = tx.journal!.append({ t: 'step', phase, hook: h.name, rollback, usec: nowUsec() }, false);
  if (phase === 'prepare' && !rollback) tx.preparedStarted.add(h.name);
  return written;
}

function announceStep(ctx: HookStepContext, s: StepScope, planned: PlannedStep, attempt: number): void {
  const { tx, hook: h, index } = s;
  const count = tx.snapshot().hooks.length;
  tx.patch({ currentHook: h.name });
  if (attempt > 1) {
    // A retry: the hook is already shown running; HookStarted went out once.
    if (!s.rollback) tx.setHook(index, { status: `attempt ${attempt}` });
  } else if (!s.rollback) {
    tx.setHook(index, { result: 'running', percent: 0, status: '' });
    tx.emit({ type: 'hook-started', hook: h.name, index, count });
  } else {
    tx.emit({ type: 'message', hook: h.name, line: `rolling back: running the abort step` });
  }
  const where = planned.root === '/' ? '' : ` (in ${planned.root})`;
  tx.log.write(h.name, `${s.label} step${attempt > 1 ? `, attempt ${attempt}` : ''}${where}: ${quoteCommandLine(planned.argv)}`);
  ctx.log.debug(`${s.label} step started`, s.fields);
}

/**
 * Start the process, its output and notify lines wired to the log and the
 * transaction's events. A step that cannot start (untrusted program, spawn
 * failure) becomes a step that failed at once.
 */
function spawnStep(ctx: HookStepContext, s: StepScope, planned: PlannedStep, messages: MessageLimiter): RunningStep {
  const { tx, hook: h, index, rollback } = s;
  try {
    if (planned.skip !== null) {
      return {
        pid: 0, startTime: null, cancel() {}, started: Promise.resolve(),
        done: Promise.resolve<StepOutcome>({ result: 'skipped', exitCode: null, signal: null, message: planned.skip, durationMs: 0, leftovers: 0 }),
      };
    }
    if (planned.failure) throw new PreStageError('Internal', planned.failure);
    if (planned.distrust) throw new PreStageError('InvalidHook', `not trusted: ${planned.distrust}`);
    return runStep({
      argv: planned.argv, env: planned.env,
      beforeExec: { syncFile: tx.journal!.file, makeDirectory: planned.stateDir },
      // One stream, in the order written, as journald keeps a service's (docs/design.md, "Hooks").
      stderr: 'stdout',
      timeoutMs: h.definition.timeoutSec === null ? null : h.definition.timeoutSec * 1000,
      killGraceMs: ctx.killGraceMs,
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
        tx.emit({ type: 'hook-progress', hook: h.name, percent, status: s.lastStatus });
      },
      status: (text) => {
        s.lastStatus = text;
        if (!rollback) tx.setHook(index, { status: text });
        tx.emit({ type: 'hook-progress', hook: h.name, percent: tx.snapshot().hooks[index]?.percent ?? 0, status: text });
      },
      warning: (text) => {
        tx.log.write(h.name, `[bootc-prestaged] ${text}`);
        ctx.log.warn(text, s.fields);
      },
      notifyIgnored: (line, reason) => {
        ctx.log.debug(`ignored notify line (${reason}): ${line.slice(0, 200)}`, s.fields);
      },
    });
  } catch (e) {
    const err = toPreStageError(e);
    return {
      pid: 0, startTime: null, cancel() {}, started: Promise.resolve(),
      done: Promise.resolve<StepOutcome>({
        result: 'failed', exitCode: null, signal: null, message: `could not start: ${err.message}`, durationMs: 0, leftovers: 0,
      }),
    };
  }
}

/** Wait for the step's end, announcing it once started, recording its pid and passing on a cancel or deadline. */
async function awaitStep(
  ctx: HookStepContext, s: StepScope, run: PhaseRun, step: RunningStep, announce: () => void,
): Promise<StepOutcome> {
  const { tx, phase, hook: h } = s;
  // Set before the start completes: a Cancel() meanwhile is applied once the pid is known.
  run.current = step;
  await step.started;
  announce();
  if (step.pid > 0) {
    tx.journal!.append({ t: 'pid', phase, hook: h.name, pid: step.pid, start: step.startTime }, false)
      .catch((e) => ctx.log.error(`journal write failed: ${(e as Error).message}`, s.fields));
  }
  // A cancel or deadline that came while the step was starting; rollback
  // steps are never cancelled (they are what a cancel asks for).
  if (!s.rollback && (tx.cancelRequested || run.deadlineHit)) step.cancel();
  const out = await step.done;
  run.current = null;
  return out;
}

/** The `done` record, then the hook's result in the snapshot, the events and the logs. */
async function recordOutcome(ctx: HookStepContext, s: StepScope, out: StepOutcome): Promise<void> {
  const { tx, phase, hook: h, index } = s;
  await tx.journal!.append({
    t: 'done', phase, hook: h.name, rollback: s.rollback, result: out.result, message: out.message, usec: nowUsec(),
  }, false);
  const summary = `${s.label} step ${out.result}${out.message ? `: ${out.message}` : ''}`;
  tx.log.write(h.name, summary);
  if (!s.rollback) {
    tx.setHook(index, { result: out.result, status: out.result === 'success' ? (s.lastStatus || 'done') : out.message });
    tx.emit({ type: 'hook-finished', hook: h.name, result: out.result, message: out.message });
  } else {
    tx.emit({ type: 'message', hook: h.name, line: `rollback ${out.result}${out.message ? `: ${out.message}` : ''}` });
  }
  tx.patch({ currentHook: '' });
  const level = out.result === 'success' || out.result === 'skipped' ? 'info' : 'warn';
  ctx.log[level](summary, s.fields);
}
