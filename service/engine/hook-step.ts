/**
 * One hook step of a phase: plan it (argv, environment, state directory,
 * trust), journal it, run it through the step runner, and journal and
 * publish its outcome.
 *
 * What must stay true: the `step` record is durable before the process is
 * spawned (recovery knows every step that may have run), and a step the
 * daemon stops during keeps no `done` record (the next start recovers it).
 */
import { expandArgv, quoteCommandLine } from '../model/command-line.js';
import { PreStageError, toPreStageError } from '../model/errors.js';
import { programTrustProblem } from './hook-discovery.js';
import { nowUsec, type JournalHook } from './journal.js';
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
  /** The daemon is stopping: start nothing, record no outcome. */
  isClosing(): boolean;
}

/** Per-run bookkeeping of a phase, so cancel and deadlines reach the current step. */
export interface PhaseRun {
  current: RunningStep | null;
  deadlineHit: boolean;
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
  /** Why the program may not run as root, or null. */
  distrust: string | null;
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
): Promise<StepOutcome> {
  assertRunning(ctx);
  const planned = planStep(ctx, tx, phase, h);
  await recordStepStart(tx, phase, h, rollback);
  const scope: StepScope = {
    tx, phase, index, hook: h, rollback,
    label: `${rollback ? 'rollback ' : ''}${phase}`,
    fields: { transaction: tx.id, hook: h.name, phase, deployment: tx.deployment },
    lastStatus: '',
  };
  announceStep(ctx, scope, planned.argv);
  // Every line goes to the log as bytes; only those the Message cap lets
  // through are decoded into events, the rest are counted (message-limiter.ts).
  const messages = new MessageLimiter((count) => tx.emit({ type: 'messages-suppressed', hook: h.name, count }));
  const step = spawnStep(ctx, scope, planned, messages);
  const out = await awaitStep(ctx, scope, run, step);
  // The count of the last window goes out before hook-finished.
  messages.flush();
  // Stopping: leave the step without a `done` record so the next start recovers it.
  assertRunning(ctx);
  await recordOutcome(ctx, scope, out);
  return out;
}

function assertRunning(ctx: HookStepContext): void {
  if (ctx.isClosing()) throw new PreStageError('Internal', 'the daemon is shutting down');
}

/**
 * The argv, environment and trust verdict of a step, and its state
 * directory made. The verdict is applied only after the step record, so a
 * refused step is journaled and reported like any failed one.
 */
function planStep(ctx: HookStepContext, tx: Transaction, phase: Phase, h: JournalHook): PlannedStep {
  const argvRaw = (phase === 'prepare' ? h.definition.prepare : phase === 'commit' ? h.definition.commit : h.definition.abort)!;
  const stateDir = ctx.stateDir.hookStateDir(tx.deploymentKey, h.name);
  const env = stepEnv(ctx.stepPath, tx, phase, h, stateDir);
  const argv = expandArgv(argvRaw, env);
  // Trust again, now: a commit may run long after the prepare that
  // checked, and a program others can change must not run as root.
  const distrust = programTrustProblem(argv[0]!, ctx.trustedUid);
  ctx.stateDir.makeHookStateDir(tx.deploymentKey, h.name);
  return { argv, env, distrust };
}

/** The durable `step` record; from here on a rollback undoes this hook's prepare. */
async function recordStepStart(tx: Transaction, phase: Phase, h: JournalHook, rollback: boolean): Promise<void> {
  await tx.journal!.append({ t: 'step', phase, hook: h.name, rollback, usec: nowUsec() }, true);
  if (phase === 'prepare' && !rollback) tx.preparedStarted.add(h.name);
}

function announceStep(ctx: HookStepContext, s: StepScope, argv: string[]): void {
  const { tx, hook: h, index } = s;
  const count = tx.snapshot().hooks.length;
  tx.patch({ currentHook: h.name });
  if (!s.rollback) {
    tx.setHook(index, { result: 'running', percent: 0, status: '' });
    tx.emit({ type: 'hook-started', hook: h.name, index, count });
  } else {
    tx.emit({ type: 'message', hook: h.name, line: `rolling back: running the abort step` });
  }
  tx.log.write(h.name, `${s.label} step: ${quoteCommandLine(argv)}`);
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
    if (planned.distrust) throw new PreStageError('InvalidHook', `not trusted: ${planned.distrust}`);
    return runStep({
      argv: planned.argv, env: planned.env,
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

/** Wait for the step's end, recording its pid and passing on a cancel or deadline. */
async function awaitStep(ctx: HookStepContext, s: StepScope, run: PhaseRun, step: RunningStep): Promise<StepOutcome> {
  const { tx, phase, hook: h } = s;
  // Set before the start completes: a Cancel() meanwhile is applied once the pid is known.
  run.current = step;
  await step.started;
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
