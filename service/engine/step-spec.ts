/**
 * What a step is and what it reports: the spec runStep takes (and its
 * validation), the sink it reports to, its outcome, and the handle of a
 * running step. The run itself is step-runner.ts; its pipes step-pipes.ts.
 */
import { isAbsolute } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { PreStageError } from '../model/errors.js';
import type { LineBatch } from './line-splitter.js';
import type { StepResult } from '../model/types.js';

/** SIGTERM -> SIGKILL delay when StepSpec.killGraceMs is not given (systemd uses 90 s; hooks are short). */
export const DEFAULT_KILL_GRACE_MS = 5000;
/** After the step's processes are gone, how long output pipes may stay open before we stop reading. */
export const OUTPUT_DRAIN_MS = 1000;
/** notifyIgnored is called at most this often per step; the rest are counted in one warning. */
export const MAX_IGNORED_REPORTS = 100;
/** Exit status meaning "nothing to do" (as in automake's test protocol). */
export const EXIT_SKIPPED = 77;
/**
 * The environment keys that, when present in StepSpec.env, identify a step's
 * processes by default (StepSpec.trackEnv).
 */
export const TRACK_ENV_KEYS = [
  'BOOTC_PRESTAGE_TRANSACTION', 'BOOTC_PRESTAGE_HOOK', 'BOOTC_PRESTAGE_PHASE',
] as const;

export interface StepSpec {
  /** Already expanded; argv[0] must be absolute (PreStageError InvalidHook otherwise). */
  argv: string[];
  /** The complete environment (the caller builds it); nothing from process.env is added. */
  env: Record<string, string>;
  /**
   * Milliseconds; null = no timeout (EXTEND_TIMEOUT_USEC then has no effect).
   * 0 times out at once.
   */
  timeoutMs: number | null;
  /** SIGTERM -> SIGKILL delay, default DEFAULT_KILL_GRACE_MS. */
  killGraceMs?: number;
  /**
   * Environment entries that identify this step's processes: after the main
   * process exits, any process whose environment holds all of them is killed
   * too, even one that left the session with setsid. Default: the
   * TRACK_ENV_KEYS entries of `env` if it has BOOTC_PRESTAGE_TRANSACTION,
   * else none. null disables the scan.
   */
  trackEnv?: Record<string, string> | null;
  /**
   * 'pipe' (default): stdout, stderr and fd 3 are pipes, falling back to
   * socket pairs (with a warning) if pipes cannot be made. 'socket': Node's
   * socket pairs (for tests of that path).
   */
  channels?: 'pipe' | 'socket';
  /**
   * 'own' (default): stderr is a pipe of its own, its lines reported as
   * 'stderr'. 'stdout': fd 2 is the stdout pipe, as a service's stderr is
   * its stdout stream in systemd's journal: the lines of both arrive in the
   * order the step wrote them, reported as 'stdout' (two pipes cannot keep
   * that order: each is read when the event loop gets to it), and a step
   * costs one pipe and one reader less. A line written in parts to both
   * fds comes out joined. With socket pairs (`channels: 'socket'`, or when
   * pipes cannot be made) stderr keeps its own.
   */
  stderr?: 'own' | 'stdout';
  /**
   * Done right before the program is executed, in this order, by whoever
   * starts it (the spawn helper, else the runner itself); a failure makes a
   * step that could not start:
   * - `syncFile`: fdatasync this file: the journal whose `step` record must
   *   be durable before the step runs (journal.ts). The helper syncs it
   *   while the daemon goes on with other work, instead of the event loop
   *   waiting for the disk;
   * - `makeDirectory`: create this directory (mode 0700, and its missing
   *   parents) if it does not exist: the hook's state directory.
   */
  beforeExec?: BeforeExec;
}

export interface BeforeExec {
  syncFile?: string;
  makeDirectory?: string;
}

/** A beforeExec action failed: nothing was started. The message says which and why. */
export class BeforeExecError extends Error {
  override readonly name = 'BeforeExecError';
}

/** The message of a failed beforeExec action ('sync' or 'mkdir') of `path`. */
export function beforeExecMessage(what: 'sync' | 'mkdir', path: string, code: string): string {
  return what === 'sync'
    ? `the journal ${path} could not be made durable before the start (fdatasync: ${code})`
    : `the state directory ${path} could not be created (${code})`;
}

export interface StepSink {
  /**
   * One line of output, without its '\n', decoded; lines over 64 KiB arrive
   * in pieces. Not called when the sink has outputLines.
   */
  output?(stream: 'stdout' | 'stderr', line: string): void;
  /**
   * The same lines undecoded, a read chunk's worth at a time (see
   * LineBatch; `buf` and `lines` are lent for the call only). For a sink
   * that decodes few of many lines.
   */
  outputLines?(stream: 'stdout' | 'stderr', buf: Buffer, lines: LineBatch): void;
  /** Latest value only, coalesced per read chunk. */
  progress(percent: number): void;
  /** Latest value only, coalesced per read chunk. */
  status(text: string): void;
  /** A fd-3 line that was ignored (first 256 bytes), at most MAX_IGNORED_REPORTS per step. */
  notifyIgnored?(line: string, reason: string): void;
  /**
   * The runner's own remarks for the log: leftover processes killed, pipes
   * held open, fallbacks taken. Not part of the step's output.
   */
  warning?(text: string): void;
}

export interface StepOutcome {
  result: StepResult;
  exitCode: number | null;
  signal: string | null;
  /** For people: "exited with status 3", "killed by signal SIGSEGV", "timed out after 5s", ... */
  message: string;
  durationMs: number;
  /** Processes still running after the main process exited, which were then killed. */
  leftovers: number;
}

export interface RunningStep {
  /** Also the process group and session id. 0 until `started`, and when the program could not be started. */
  readonly pid: number;
  /** /proc/<pid>/stat starttime, for PID-reuse guards; null if not started or already gone. */
  readonly startTime: string | null;
  /** Resolves (never rejects) once the process exists, or starting it failed (then `done` says why). */
  readonly started: Promise<void>;
  /** Never rejects. */
  readonly done: Promise<StepOutcome>;
  /** SIGTERM to the group, SIGKILL after the grace; result 'cancelled'. No-op once the main process exited. */
  cancel(): void;
}

/**
 * Throws PreStageError('InvalidHook') when argv or env is unusable (relative
 * program, NUL bytes, a key with '='), RangeError for a bad timeout, grace
 * or trackEnv.
 */
export function validateStepSpec(spec: StepSpec): void {
  const { argv, env } = spec;
  if (!Array.isArray(argv) || argv.length === 0 || typeof argv[0] !== 'string' || !isAbsolute(argv[0])) {
    throw new PreStageError('InvalidHook',
      `the program must be an absolute path, not ${JSON.stringify(Array.isArray(argv) ? argv[0] ?? '' : argv)}`);
  }
  for (const a of argv) {
    if (typeof a !== 'string' || a.includes('\0')) {
      throw new PreStageError('InvalidHook', `command line argument ${JSON.stringify(a)} is not a string without NUL bytes`);
    }
  }
  for (const [k, v] of Object.entries(env)) {
    if (k === '' || k.includes('=') || k.includes('\0') || typeof v !== 'string' || v.includes('\0')) {
      throw new PreStageError('InvalidHook', `invalid environment entry ${JSON.stringify(k)}=${JSON.stringify(v)}`);
    }
  }
  if (spec.timeoutMs !== null && !(Number.isFinite(spec.timeoutMs) && spec.timeoutMs >= 0)) {
    throw new RangeError(`timeoutMs must be null or a finite number >= 0, not ${spec.timeoutMs}`);
  }
  for (const [k, v] of Object.entries(spec.trackEnv ?? {})) {
    if (k === '' || k.includes('=') || k.includes('\0') || typeof v !== 'string' || v.includes('\0')) {
      throw new RangeError(`invalid trackEnv entry ${JSON.stringify(k)}=${JSON.stringify(v)}`);
    }
  }
  const grace = spec.killGraceMs;
  if (grace !== undefined && !(Number.isFinite(grace) && grace >= 0)) {
    throw new RangeError(`killGraceMs must be a finite number >= 0, not ${grace}`);
  }
}

/** The TRACK_ENV_KEYS entries of a step's environment, when it is a transaction's step. */
export function defaultTrackEnv(env: Record<string, string>): Record<string, string> | null {
  if (env.BOOTC_PRESTAGE_TRANSACTION === undefined) return null;
  const out: Record<string, string> = {};
  for (const k of TRACK_ENV_KEYS) if (env[k] !== undefined) out[k] = env[k];
  return out;
}

/** "5s", "0.25s", "1.5s": a duration for messages. */
export function formatDuration(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`;
}

/** "ENOENT (No such file or directory)": an errno for messages. */
export function describeErrno(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const text = typeof err?.errno === 'number' ? getSystemErrorMap().get(err.errno)?.[1] : undefined;
  if (err?.code && text) return `${err.code} (${text})`;
  return err?.code ?? (err instanceof Error ? err.message : String(e));
}
