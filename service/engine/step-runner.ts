/**
 * Runs one hook step (one argv) as DESIGN.md "Hooks" specifies: stdin
 * /dev/null, cwd `/`, exactly the environment given, its own session and
 * process group, stdout/stderr delivered line by line, sd_notify-style lines
 * on fd 3, a timeout that EXTEND_TIMEOUT_USEC can push back, and SIGTERM then
 * SIGKILL to the whole group at the timeout or on cancel.
 *
 * What must stay true:
 * - `done` never rejects and resolves exactly once, after the main process
 *   has exited, every process of its group (and of its session, and any
 *   process carrying its identifying environment entries, which is how a
 *   setsid'd escapee is found) is gone or has survived SIGKILL, and the
 *   output has been drained. No sink callback is made after that.
 * - The outcome follows the first cause: a step that timed out or was
 *   cancelled reports so even if it then exits 0.
 * - stdout, stderr and fd 3 are real pipes (FIFOs created and unlinked at
 *   once), not the socket pairs Node makes: with a socket, a script's
 *   `echo x >/dev/stderr` fails with ENXIO. Socket pairs remain a fallback.
 * - A process that keeps an output pipe open after the step's processes are
 *   gone (an escapee that changed its environment) cannot hold the step up
 *   for more than OUTPUT_DRAIN_MS.
 *
 * Steps are forked by the spawn helper (spawner.ts) when it is there: the
 * daemon is large, and forking it costs more than a trivial step. Without
 * it, Node's spawn forks the daemon and blocks the event loop while it
 * does. Either way pid is known once `started` resolves.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, constants as fsConstants, existsSync, mkdtempSync, openSync, rmSync, rmdirSync, unlinkSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import type { Readable } from 'node:stream';
import { getSystemErrorMap } from 'node:util';
import { PreStageError } from './errors.js';
import { SpawnerUnavailable, sharedSpawner, type ExitStatus, type Spawned, type Spawner } from './spawner.js';
import { LineSplitter, type LineBatch } from './line-splitter.js';
import { NotifyParser, type NotifyUpdate } from './notify-parser.js';
import {
  filterByEnv, processStartTime, processesSince, readProcStat, terminateGroup, terminateProcesses, type ProcessRef,
} from './process-tree.js';
import type { StepResult } from './types.js';

/** SIGTERM -> SIGKILL delay when StepSpec.killGraceMs is not given (systemd uses 90 s; hooks are short). */
export const DEFAULT_KILL_GRACE_MS = 5000;
/** After the step's processes are gone, how long output pipes may stay open before we stop reading. */
export const OUTPUT_DRAIN_MS = 1000;
/** Each pipe reader's buffer: one read takes at most this much (a pipe holds 64 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;
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
 * Start one step. Throws PreStageError('InvalidHook') before starting
 * anything when argv or env is unusable (relative program, NUL bytes, a key
 * with '='), RangeError for a bad timeout or grace; every other failure,
 * including a program that cannot be executed, is reported through `done`.
 */
export function runStep(spec: StepSpec, sink: StepSink): RunningStep {
  validate(spec);
  return new StepRun(spec, sink);
}

function validate(spec: StepSpec): void {
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

function defaultTrackEnv(env: Record<string, string>): Record<string, string> | null {
  if (env.BOOTC_PRESTAGE_TRANSACTION === undefined) return null;
  const out: Record<string, string> = {};
  for (const k of TRACK_ENV_KEYS) if (env[k] !== undefined) out[k] = env[k];
  return out;
}

/** "5s", "0.25s", "1.5s": a duration for messages. */
export function formatDuration(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`;
}

function describeErrno(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const text = typeof err?.errno === 'number' ? getSystemErrorMap().get(err.errno)?.[1] : undefined;
  if (err?.code && text) return `${err.code} (${text})`;
  return err?.code ?? (err instanceof Error ? err.message : String(e));
}

// ---------------------------------------------------------------------------
// Pipes

interface PipePair { read: number; write: number }

const MKFIFO = ['/usr/bin/mkfifo', '/bin/mkfifo'];

/** Pipes made per mkfifo run: enough for PIPE_BATCH / 3 steps. */
export const PIPE_BATCH = 24;
/** Below this many pooled pipes a refill starts in the background. */
const PIPE_LOW_WATER = 12;
/** Pooled pipes are closed after this long without a step (an idle daemon holds no spare fds). */
const PIPE_IDLE_MS = 30_000;

function mkfifoBinary(): string | undefined {
  return MKFIFO.find((p) => existsSync(p));
}

/**
 * Open the FIFOs at `paths` as pipes and unlink them. The read ends are
 * non-blocking for libuv; the write ends, which a step inherits, are
 * blocking, as a program expects its stdout to be. Every fd is close-on-exec
 * (libuv opens so), so a pooled pipe never leaks into another step.
 */
function openFifos(paths: string[]): PipePair[] {
  const pairs: PipePair[] = [];
  try {
    for (const p of paths) {
      const read = openSync(p, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
      pairs.push({ read, write: -1 });
      // Cannot block: the read end is open.
      pairs[pairs.length - 1]!.write = openSync(p, fsConstants.O_WRONLY);
    }
    return pairs;
  } catch (e) {
    closePipes(pairs);
    throw e;
  }
}

/**
 * `n` anonymous pipes, made as FIFOs in a private directory of `base` that
 * is removed before returning (Node cannot call pipe(2)). Blocks on one
 * mkfifo run. Returns the reason on failure.
 */
function makePipesSync(n: number, base: string): PipePair[] | string {
  const bin = mkfifoBinary();
  if (bin === undefined) return 'mkfifo not found';
  let dir: string;
  try {
    dir = mkdtempSync(join(base, 'bootc-prestage-step-'));
  } catch (e) {
    return `cannot create a directory in ${base}: ${describeErrno(e)}`;
  }
  try {
    const paths = Array.from({ length: n }, (_, i) => join(dir, String(i)));
    const r = spawnSync(bin, ['-m', '600', '--', ...paths], { stdio: 'ignore', env: {}, timeout: 10_000 });
    if (r.status !== 0) return `mkfifo failed (${r.error ? describeErrno(r.error) : `status ${r.status}`})`;
    return openFifos(paths);
  } catch (e) {
    return `cannot open pipes: ${describeErrno(e)}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** makePipesSync without blocking the event loop; rejects on failure. */
async function makePipes(n: number, base: string): Promise<PipePair[]> {
  const bin = mkfifoBinary();
  if (bin === undefined) throw new Error('mkfifo not found');
  const dir = await mkdtemp(join(base, 'bootc-prestage-step-'));
  try {
    const paths = Array.from({ length: n }, (_, i) => join(dir, String(i)));
    await new Promise<void>((resolve, reject) => {
      const child = spawn(bin, ['-m', '600', '--', ...paths], { stdio: 'ignore', env: {} });
      child.once('error', reject);
      child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`mkfifo exited with ${code}`))));
    });
    return openFifos(paths);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Pipes made ahead of need. Forking mkfifo for every step cost more than
 * the step itself (tens of milliseconds on a loaded machine); the pool makes
 * PIPE_BATCH at a time, synchronously only when it is empty, otherwise in
 * the background once it runs low, so a run of steps forks nothing but the
 * steps. Pipes have no state before use, so a pooled pair is as good as a
 * fresh one. The pool follows the temporary directory: when TMPDIR changes,
 * the pipes made in the old one are dropped and the new one is used (and a
 * directory that cannot be used makes runStep fall back, as before).
 */
class PipePool {
  private pairs: PipePair[] = [];
  private base: string | null = null;
  private refilling = false;
  private idleTimer: NodeJS.Timeout | null = null;

  take(n: number, base: string = tmpdir()): PipePair[] | string {
    if (base !== this.base) {
      this.drop();
      this.base = base;
    }
    if (this.pairs.length < n) {
      const made = makePipesSync(Math.max(n, PIPE_BATCH), base);
      if (typeof made === 'string') return made;
      this.pairs.push(...made);
    }
    const out = this.pairs.splice(0, n);
    if (this.pairs.length < PIPE_LOW_WATER) this.refill(base);
    this.armIdle();
    return out;
  }

  private refill(base: string): void {
    if (this.refilling) return;
    this.refilling = true;
    makePipes(PIPE_BATCH, base).then((made) => {
      if (base === this.base) {
        this.pairs.push(...made);
        this.armIdle();
      } else {
        closePipes(made);
      }
    }, () => {
      // The next take() makes pipes synchronously and reports why it cannot.
    }).finally(() => { this.refilling = false; });
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => { this.idleTimer = null; this.drop(); }, PIPE_IDLE_MS);
    this.idleTimer.unref();
  }

  private drop(): void {
    closePipes(this.pairs);
    this.pairs = [];
  }
}

const pipePool = new PipePool();

/** A FIFO whose read end we hold; the helper opens its write end by path. */
interface Fifo { read: number; path: string }

/**
 * The pipe pool for the spawn helper: FIFOs made by the helper (mkfifo(3),
 * no fork) in batches, read ends opened here, write ends opened by the
 * helper when it starts the step, which then unlinks them. As with
 * PipePool, a refill runs in the background once the pool runs low, and
 * pooled FIFOs are released after PIPE_IDLE_MS without a step.
 */
class HelperPipePool {
  private fifos: Fifo[] = [];
  private base: string | null = null;
  private refilling: { base: string; done: Promise<void> } | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private serial = 0;
  private exitHook = false;

  async take(n: number, helper: Spawner, base: string = tmpdir()): Promise<Fifo[]> {
    // Re-checked after every wait: a take for another directory may have run meanwhile.
    for (;;) {
      if (base !== this.base) {
        this.drop();
        this.base = base;
      }
      if (this.fifos.length >= n) break;
      await this.refill(base, helper);
    }
    const out = this.fifos.splice(0, n);
    if (this.fifos.length < PIPE_LOW_WATER) this.refill(base, helper).catch(() => { /* the next take retries and reports */ });
    this.armIdle();
    return out;
  }

  /** The refill in flight for `base`, or a new one (after any for another directory). */
  private refill(base: string, helper: Spawner): Promise<void> {
    const inFlight = this.refilling;
    if (inFlight !== null && inFlight.base === base) return inFlight.done;
    const done = (inFlight?.done.catch(() => {}) ?? Promise.resolve())
      .then(() => this.make(base, helper))
      .finally(() => { if (this.refilling?.done === done) this.refilling = null; });
    this.refilling = { base, done };
    return done;
  }

  private async make(base: string, helper: Spawner): Promise<void> {
    const dir = mkdtempSync(join(base, 'bootc-prestage-step-'));
    const paths = Array.from({ length: PIPE_BATCH }, () => join(dir, String(this.serial++)));
    fifoDirs.set(dir, PIPE_BATCH);
    const made: Fifo[] = [];
    try {
      await helper.mkfifos(paths);
      // The read end first and non-blocking: opening cannot wait for a writer.
      for (const p of paths) made.push({ read: openSync(p, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK), path: p });
    } catch (e) {
      for (const f of made) closeFd(f.read);
      fifoDirs.delete(dir);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    if (base === this.base) {
      this.fifos.push(...made);
      this.armIdle();
      // Pooled FIFOs have names in the temporary directory: remove them when
      // the daemon exits (a stop, or `npm start` ended), not only when idle.
      if (!this.exitHook) {
        this.exitHook = true;
        process.once('exit', () => this.drop());
      }
    } else {
      releaseFifos(made, true);
    }
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => { this.idleTimer = null; this.drop(); }, PIPE_IDLE_MS);
    this.idleTimer.unref();
  }

  private drop(): void {
    releaseFifos(this.fifos, true);
    this.fifos = [];
  }
}

const helperPipePool = new HelperPipePool();

/**
 * Done with FIFOs' names: the helper unlinks the ones it opened; `unused`
 * ones (a failed start, a dropped pool) are unlinked and their read ends
 * closed here. A batch's directory goes with its last FIFO.
 */
function releaseFifos(fifos: Fifo[], unused: boolean): void {
  for (const f of fifos) {
    if (unused) {
      closeFd(f.read);
      f.read = -1;
      try { unlinkSync(f.path); } catch { /* the helper did, or never made it */ }
    }
    const dir = dirname(f.path);
    const left = (fifoDirs.get(dir) ?? 1) - 1;
    if (left > 0) {
      fifoDirs.set(dir, left);
      continue;
    }
    fifoDirs.delete(dir);
    try { rmdirSync(dir); } catch { /* not ours to remove after all */ }
  }
}

/** FIFOs not yet released, by batch directory: the last one's release removes it (one rmdir per batch, not per FIFO). */
const fifoDirs = new Map<string, number>();

function closeFd(fd: number): void {
  if (fd < 0) return;
  try { closeSync(fd); } catch { /* already closed */ }
}

function closePipes(pairs: PipePair[]): void {
  for (const p of pairs) { closeFd(p.read); closeFd(p.write); p.read = -1; p.write = -1; }
}

// ---------------------------------------------------------------------------

type StreamName = 'stdout' | 'stderr' | 'notify';
const STREAMS: readonly StreamName[] = ['stdout', 'stderr', 'notify'];

/**
 * A step that ended within this long is cleaned up by looking only at the
 * pids allocated since its own (see processesSince): going round the whole
 * pid space in that time takes over 32,000 process creations.
 */
const PID_WINDOW_MAX_MS = 1000;

function readComm(pid: number): string {
  return readProcStat(pid)?.comm ?? '?';
}

/** The largest delay setTimeout honours; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

class StepRun implements RunningStep {
  pid = 0;
  startTime: string | null = null;
  readonly started: Promise<void>;
  readonly done: Promise<StepOutcome>;

  private readonly spec: StepSpec;
  private readonly sink: StepSink;
  private readonly graceMs: number;
  private readonly t0 = performance.now();
  /** Where pipes are made: $TMPDIR when runStep was called (the start itself is asynchronous). */
  private readonly tmp = tmpdir();
  private resolveDone!: (o: StepOutcome) => void;
  private finished = false;

  private readers: Readable[] = [];
  private openReaders = 0;
  private readersClosed: (() => void) | null = null;
  private readonly out: LineSplitter;
  private readonly err: LineSplitter;
  private readonly notify: NotifyParser;
  private ignoredReports = 0;
  private sinkError: unknown = null;

  /** performance.now() value at which the step times out; null = never. */
  private deadline: number | null;
  private timer: NodeJS.Timeout | null = null;
  private timerCheck: NodeJS.Immediate | null = null;
  private killReason: 'timeout' | 'cancelled' | null = null;
  /** A kill asked for before the pid was known. */
  private pendingKill: 'timeout' | 'cancelled' | null = null;
  /** The spawn helper died while the step ran: its exit status is unknown. */
  private exitUnknown = false;
  /** An exit reported before the start completed (see onHelperExit). */
  private earlyExit: { status: ExitStatus | null } | null = null;
  private killDeadline: number | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private sigkillSent = false;
  private exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private leftovers = 0;

  constructor(spec: StepSpec, sink: StepSink) {
    this.spec = spec;
    this.sink = sink;
    this.graceMs = spec.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    this.deadline = spec.timeoutMs === null ? null : this.t0 + spec.timeoutMs;
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    this.out = this.lineSplitter('stdout');
    this.err = this.lineSplitter('stderr');
    this.notify = new NotifyParser({
      onIgnored: sink.notifyIgnored ? (line, reason) => this.ignored(line, reason) : undefined,
    });

    this.started = this.start().catch((e: unknown) => this.spawnFailed(e));
    this.armTimer();
  }

  /**
   * Start the process: through the spawn helper when there is one (a
   * small process whose fork is cheap), else with Node's spawn. Never
   * rejects: a failure resolves `done`.
   */
  private async start(): Promise<void> {
    if (this.spec.channels !== 'socket') {
      const helper = sharedSpawner();
      if (helper !== null) {
        try {
          await this.startWithHelper(helper);
          return;
        } catch (e) {
          if (!(e instanceof SpawnerUnavailable)) {
            this.spawnFailed(e);
            return;
          }
          if (e.message !== '') this.warn(`${e.message}; starting the step without it`);
        }
      }
    }
    this.startWithNode();
  }

  private async startWithHelper(helper: Spawner): Promise<void> {
    let fifos: Fifo[];
    try {
      fifos = await helperPipePool.take(STREAMS.length, helper, this.tmp);
    } catch (e) {
      if (e instanceof SpawnerUnavailable) throw e;
      // No pipes this way: the fallback tries its own and says why it cannot.
      throw new SpawnerUnavailable('', { cause: e });
    }
    let started: Spawned;
    try {
      started = await helper.spawn(this.spec.argv, Object.fromEntries(Object.entries(this.spec.env)),
        fifos.map((f) => f.path), (status) => this.onHelperExit(status));
    } catch (e) {
      releaseFifos(fifos, true);
      throw e;
    }
    releaseFifos(fifos, false);
    this.pid = started.pid;
    this.startTime = started.startTime;
    this.attachReaders(fifos.map((f, i) => this.fdReader(f.read, STREAMS[i]!)), false);
    this.afterStart();
    const early = this.earlyExit;
    this.earlyExit = null;
    if (early !== null) this.onHelperExit(early.status);
  }

  private startWithNode(): void {
    const spec = this.spec;
    let pipes: PipePair[] | null = null;
    if (spec.channels !== 'socket') {
      const p = pipePool.take(STREAMS.length, this.tmp);
      if (typeof p === 'string') this.warn(`could not create output pipes (${p}); using socket pairs, so the step cannot reopen /dev/stdout or /dev/stderr`);
      else pipes = p;
    }
    const stdio: StdioOptions = pipes
      ? ['ignore', pipes[0]!.write, pipes[1]!.write, pipes[2]!.write]
      : ['ignore', 'pipe', 'pipe', 'pipe'];

    let child: ChildProcess;
    try {
      child = spawn(spec.argv[0]!, spec.argv.slice(1), {
        cwd: '/',
        // A plain copy: spawn() would also pick up inherited enumerable keys.
        env: Object.fromEntries(Object.entries(spec.env)),
        stdio,
        // setsid(): own session and process group, no controlling terminal.
        detached: true,
      });
    } catch (e) {
      // Errors other than ENOENT/EACCES/EAGAIN/EMFILE/ENFILE throw synchronously.
      if (pipes) closePipes(pipes);
      this.spawnFailed(e);
      return;
    } finally {
      // The step holds the write ends now; ours would keep EOF from ever coming.
      if (pipes) for (const p of pipes) { closeFd(p.write); p.write = -1; }
    }

    const pid = child.pid ?? 0;
    if (pid === 0) {
      // Node reports exec failures asynchronously through 'error'.
      if (pipes) closePipes(pipes);
      for (const s of [child.stdout, child.stderr, child.stdio[3]]) (s as Readable | null)?.destroy();
      child.once('error', (e) => this.spawnFailed(e));
      return;
    }
    this.pid = pid;
    this.startTime = processStartTime(pid);
    child.on('error', () => { /* only kill() reports here, and we do not use it */ });
    child.once('exit', (code, signal) => this.onExit(code, signal));
    if (pipes) this.attachReaders(pipes.map((p, i) => this.fdReader(p.read, STREAMS[i]!)), false);
    else this.attachReaders([child.stdout!, child.stderr!, child.stdio[3] as Readable], true);
    this.afterStart();
  }

  /**
   * A reader of our end of one of the step's pipes. Reads go into one buffer
   * of its own, reused for every read (net.Socket's `onread`), and reach
   * onData without a stream 'data' event: no Buffer is allocated per read,
   * which halves the daemon's CPU time per byte of a chatty step's output.
   * This is safe because nothing keeps a chunk past onData: the line
   * splitter and the notify parser copy what they keep, and the log copies
   * lines into its own buffer. EOF, errors and 'close' work as for 'data'.
   */
  private fdReader(fd: number, name: StreamName): Socket {
    const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    // Node reads `onread` in the constructor too; its types only list it for connect().
    const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd, readable: true, writable: false,
      // true: keep reading (false would pause the socket).
      onread: { buffer, callback: (n, buf) => { this.onData(name, (buf as Buffer).subarray(0, n)); return true; } },
    };
    return new Socket(opts);
  }

  /** `dataEvents`: the readers deliver through 'data' (Node's own stdio), not fdReader's onread. */
  private attachReaders(readers: Readable[], dataEvents: boolean): void {
    this.readers = readers;
    this.openReaders = readers.length;
    readers.forEach((r, i) => {
      const name = STREAMS[i]!;
      if (dataEvents) r.on('data', (chunk: Buffer) => this.onData(name, chunk));
      r.on('error', (e) => this.warn(`reading the step's ${name} failed: ${describeErrno(e)}`));
      r.once('close', () => {
        if (--this.openReaders === 0) this.readersClosed?.();
      });
    });
  }

  /** A cancel or timeout that came while the process was being started applies now. */
  private afterStart(): void {
    const reason = this.pendingKill;
    this.pendingKill = null;
    if (reason !== null) this.startKill(reason);
  }

  /** The helper reaped the process, or (null) died before it could tell us. */
  private onHelperExit(status: ExitStatus | null): void {
    if (this.pid === 0) {
      // A fast step's exit can be read in the same chunk as its start, before
      // startWithHelper has the pid and the readers: keep it until then.
      this.earlyExit = { status };
      return;
    }
    if (status !== null) {
      this.onExit(status.code, status.signal);
      return;
    }
    // The status went with the helper. Wait for the process itself to go
    // (it is no longer our child: poll), then clean up as usual.
    this.exitUnknown = true;
    const poll = (): void => {
      const st = readProcStat(this.pid);
      if (st !== null && st.startTime === this.startTime && st.state !== 'Z') {
        setTimeout(poll, 100);
        return;
      }
      this.onExit(null, null);
    };
    poll();
  }

  cancel(): void {
    this.startKill('cancelled');
  }

  // -- input ---------------------------------------------------------------

  /** Lines in batches for sink.outputLines if it has it, else one by one decoded for sink.output. */
  private lineSplitter(stream: 'stdout' | 'stderr'): LineSplitter {
    const sink = this.sink;
    if (sink.outputLines === undefined) return new LineSplitter((line) => this.call(() => sink.output?.(stream, line)));
    return LineSplitter.batches((buf, lines) => this.call(() => sink.outputLines!(stream, buf, lines)));
  }

  private onData(name: StreamName, chunk: Buffer): void {
    if (this.finished) return;
    if (name === 'stdout') this.out.push(chunk);
    else if (name === 'stderr') this.err.push(chunk);
    else this.applyNotify(this.notify.push(chunk), true);
  }

  private applyNotify(u: NotifyUpdate | null, live: boolean): void {
    if (u === null) return;
    if (u.progress !== null) { const p = u.progress; this.call(() => this.sink.progress(p)); }
    if (u.status !== null) { const s = u.status; this.call(() => this.sink.status(s)); }
    if (live && u.extendTimeoutUsec !== null && this.deadline !== null
        && this.killReason === null && this.exited === null) {
      // systemd semantics: the deadline becomes at least now + n; never earlier.
      // The pending timer notices the later deadline when it fires and re-arms.
      this.deadline = Math.max(this.deadline, performance.now() + u.extendTimeoutUsec / 1000);
    }
  }

  private ignored(line: string, reason: string): void {
    if (++this.ignoredReports <= MAX_IGNORED_REPORTS) {
      this.call(() => this.sink.notifyIgnored!(line, reason));
    }
  }

  // -- timeout and cancel --------------------------------------------------

  private armTimer(): void {
    if (this.deadline === null) return;
    const left = Math.max(0, Math.ceil(this.deadline - performance.now()));
    this.timer = setTimeout(() => {
      // Timers run before I/O in each loop turn: after a stall of the event
      // loop an EXTEND_TIMEOUT_USEC the step wrote in time may still be
      // unread. setImmediate runs after the next I/O poll, so it is seen.
      this.timer = null;
      this.timerCheck = setImmediate(() => {
        this.timerCheck = null;
        if (this.deadline !== null && performance.now() < this.deadline) this.armTimer();
        else this.startKill('timeout');
      });
    }, Math.min(left, MAX_TIMER_MS));
  }

  private startKill(reason: 'timeout' | 'cancelled'): void {
    if (this.killReason !== null || this.exited !== null || this.finished) return;
    if (this.pid === 0) {
      this.pendingKill ??= reason;
      return;
    }
    this.killReason = reason;
    this.clearTimers();
    this.killDeadline = performance.now() + this.graceMs;
    if (this.graceMs === 0) {
      this.sigkill();
      return;
    }
    this.signalGroup('SIGTERM');
    this.signalGroup('SIGCONT'); // a stopped process acts on SIGTERM only once continued
    this.killTimer = setTimeout(() => {
      this.killTimer = null;
      if (this.exited === null) this.sigkill();
    }, this.graceMs);
  }

  private sigkill(): void {
    this.sigkillSent = true;
    this.signalGroup('SIGKILL');
  }

  private signalGroup(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') this.warn(`could not send ${signal} to process group ${this.pid}: ${describeErrno(e)}`);
    }
  }

  private clearTimers(): void {
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.timerCheck) { clearImmediate(this.timerCheck); this.timerCheck = null; }
    if (this.killTimer) { clearTimeout(this.killTimer); this.killTimer = null; }
  }

  // -- end -----------------------------------------------------------------

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.exited = { code, signal };
    this.clearTimers();
    this.cleanUp().catch((e) => {
      this.warn(`cleaning up after the step failed: ${e instanceof Error ? e.message : String(e)}`);
      this.finish();
    });
  }

  /**
   * Kill what the step left running, then drain the pipes. What is left
   * of the grace started by a timeout or cancel carries over, so a step that
   * ignores SIGTERM does not get a second full grace period.
   */
  private async cleanUp(): Promise<void> {
    const grace = this.killDeadline === null
      ? this.graceMs
      : Math.max(0, this.killDeadline - performance.now());
    const sid = this.pid;
    if (sid <= 0) {
      // Never scan for "our" processes without a session id: in a pid namespace
      // every process whose session leader is outside reads as session 0.
      this.warn('internal error: the step ended before its pid was known; not looking for leftovers');
      await this.drain();
      this.finish();
      return;
    }
    const track = this.spec.trackEnv === undefined ? defaultTrackEnv(this.spec.env) : this.spec.trackEnv;
    const trackEnv = track !== null && Object.keys(track).length > 0 ? track : null;

    // Only processes created since the leader can be the step's; a step
    // that lasted under PID_WINDOW_MAX_MS lets the scan skip older pids.
    const leader: ProcessRef = { pid: sid, startTime: this.startTime ?? '0' };
    const seen = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const pidWindow = this.startTime !== null && performance.now() - this.t0 < PID_WINDOW_MAX_MS;
      // One pass over /proc: the group, and the session (members that moved
      // to another group, e.g. jobs of a shell with `set -m`).
      let inGroup = false;
      const stray: ProcessRef[] = [];
      const others: ProcessRef[] = [];
      const names = new Map<number, string>();
      for (const p of processesSince(leader, { pidWindow })) {
        if (p.pgrp === sid) inGroup = true;
        else if (p.session === sid) stray.push({ pid: p.pid, startTime: p.startTime });
        else {
          if (p.pid !== process.pid) others.push({ pid: p.pid, startTime: p.startTime });
          continue;
        }
        names.set(p.pid, p.comm);
      }
      if (trackEnv !== null && others.length > 0) {
        // Escaped with setsid: only the environment still tells.
        for (const r of await filterByEnv(others, trackEnv)) {
          stray.push(r);
          names.set(r.pid, readComm(r.pid));
        }
      }
      // Go round again while anything is found at all: a process seen in the
      // group may have escaped with setsid before the group kill reached it.
      if (names.size === 0) break;
      const fresh = [...names.keys()];
      for (const p of fresh) seen.add(p);
      this.leftovers = seen.size;
      this.warn(`${round === 0 ? 'killing' : 'killing more'} processes left behind by the step: `
        + fresh.slice(0, 10).map((p) => `${p} (${names.get(p)})`).join(', ')
        + (fresh.length > 10 ? `, and ${fresh.length - 10} more` : ''));
      const [groupGone, strayGone] = await Promise.all([
        inGroup ? terminateGroup(sid, round === 0 ? grace : 0) : true,
        stray.length > 0 ? terminateProcesses(stray, round === 0 ? grace : 0) : true,
      ]);
      if (!groupGone || !strayGone) {
        this.warn('processes of the step survived SIGKILL (uninterruptible sleep?); leaving them behind');
        break;
      }
    }
    await this.drain();
    this.finish();
  }

  private async drain(): Promise<void> {
    if (this.openReaders === 0) return;
    const closed = new Promise<void>((resolve) => { this.readersClosed = resolve; });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => {
        // Timers run before I/O in each loop turn: after a stall of the
        // event loop (a starved machine), output and EOF the step wrote in
        // time may still be unread. setImmediate runs after the next poll;
        // a stream that has seen its EOF has delivered all its data.
        setImmediate(() => resolve(this.readers.some((r) => !r.closed && !r.readableEnded)));
      }, OUTPUT_DRAIN_MS);
    });
    const late = await Promise.race([closed.then(() => false), timedOut]);
    clearTimeout(timer);
    if (late) {
      const open = this.readers.filter((r) => !r.closed && !r.readableEnded).map((r) => STREAMS[this.readers.indexOf(r)]);
      this.warn(`the step's ${open.join(', ')} still open ${formatDuration(OUTPUT_DRAIN_MS)} after its processes ended `
        + '(held by a process outside its process group); stopped reading');
    }
  }

  private spawnFailed(e: unknown): void {
    const argv0 = this.spec.argv[0]!;
    let message = `could not start: ${describeErrno(e)}: ${argv0}`;
    if ((e as NodeJS.ErrnoException)?.code === 'ENOENT' && existsSync(argv0)) {
      message += ' (the interpreter named on its #! line does not exist)';
    }
    this.resolve({ result: 'failed', exitCode: null, signal: null, message, leftovers: 0 });
  }

  private finish(): void {
    if (this.finished) return;
    this.out.end();
    this.err.end();
    this.applyNotify(this.notify.end(), false);
    const dropped = this.ignoredReports - MAX_IGNORED_REPORTS;
    if (dropped > 0) this.warn(`${dropped} more ignored notify lines were not reported`);
    for (const r of this.readers) r.destroy();
    this.resolve(this.outcome());
  }

  private outcome(): Omit<StepOutcome, 'durationMs'> {
    const { code, signal } = this.exited!;
    const how = signal !== null ? `killed by signal ${signal}` : `exited with status ${code}`;
    const base = { exitCode: code, signal, leftovers: this.leftovers };
    if (this.killReason !== null) {
      let message = this.killReason === 'timeout'
        ? `timed out after ${formatDuration(this.deadline! - this.t0)}`
        : 'cancelled';
      if (this.sigkillSent) {
        message += this.graceMs === 0
          ? ' (killed with SIGKILL)'
          : ` (killed with SIGKILL, still running ${formatDuration(this.graceMs)} after SIGTERM)`;
      }
      return { ...base, result: this.killReason, message };
    }
    if (this.exitUnknown) return { ...base, result: 'failed', message: 'exit status unknown: the spawn helper died while the step ran' };
    if (signal !== null) return { ...base, result: 'failed', message: how };
    if (code === 0) return { ...base, result: 'success', message: how };
    if (code === EXIT_SKIPPED) return { ...base, result: 'skipped', message: `skipped (${how})` };
    return { ...base, result: 'failed', message: how };
  }

  private resolve(o: Omit<StepOutcome, 'durationMs'>): void {
    if (this.finished) return;
    if (this.sinkError !== null) {
      const e = this.sinkError;
      this.sinkError = null;
      this.warn(`a step sink callback threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    }
    this.finished = true;
    this.clearTimers();
    this.resolveDone({ ...o, durationMs: Math.round(performance.now() - this.t0) });
  }

  /** Sink callbacks must not break the runner: the first error is kept and reported. */
  private call(f: () => void): void {
    if (this.finished) return;
    try {
      f();
    } catch (e) {
      this.sinkError ??= e;
    }
  }

  private warn(text: string): void {
    const w = this.sink.warning;
    if (w === undefined || this.finished) return;
    try { w.call(this.sink, text); } catch { /* a failing logger must not stop the runner */ }
  }
}
