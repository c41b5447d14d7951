/**
 * Runs one hook step (one argv) as docs/design.md "Hooks" specifies: stdin
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
 * - stdout, stderr and fd 3 are real pipes (made by the spawn helper, or
 *   FIFOs created and unlinked at once without it), not the socket pairs
 *   Node makes: with a socket, a script's `echo x >/dev/stderr` fails with
 *   ENXIO. Socket pairs remain a fallback.
 * - A process that keeps an output pipe open after the step's processes are
 *   gone (an escapee that changed its environment) cannot hold the step up
 *   for more than OUTPUT_DRAIN_MS.
 *
 * Steps are forked by the spawn helper (spawner.ts) when it is there: the
 * daemon is large, and forking it costs more than a trivial step. Without
 * it, Node's spawn forks the daemon and blocks the event loop while it
 * does. Either way pid is known once `started` resolves.
 *
 * Over 500 lines on purpose: StepRun is one state machine (start, input,
 * timeout and cancel, end) over shared fields; its parts that hold no state
 * live beside it (step-spec.ts, step-pipes.ts, step-leftovers.ts).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, existsSync, fdatasyncSync, mkdirSync, openSync } from 'node:fs';
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import { SpawnerUnavailable, sharedSpawner, type ExitStatus, type Spawned, type Spawner } from './spawner.js';
import { LineSplitter } from './line-splitter.js';
import { NotifyParser, type NotifyUpdate } from './notify-parser.js';
import { processStartTime, readProcStat, type ProcessRef } from './process-tree.js';
import {
  PID_WINDOW_MAX_MS, describeProcesses, findStepProcesses, terminateStepProcesses,
} from './step-leftovers.js';
import { closeFd, closePipes, pipePool, type PipePair } from './step-pipes.js';
import {
  BeforeExecError, DEFAULT_KILL_GRACE_MS, EXIT_SKIPPED, MAX_IGNORED_REPORTS, OUTPUT_DRAIN_MS,
  beforeExecMessage, defaultTrackEnv, describeErrno, formatDuration, validateStepSpec,
  type BeforeExec, type RunningStep, type StepOutcome, type StepSink, type StepSpec,
} from './step-spec.js';

export {
  DEFAULT_KILL_GRACE_MS, EXIT_SKIPPED, MAX_IGNORED_REPORTS, OUTPUT_DRAIN_MS, TRACK_ENV_KEYS, formatDuration,
  type RunningStep, type StepOutcome, type StepSink, type StepSpec,
} from './step-spec.js';
export { PIPE_BATCH } from './step-pipes.js';

/**
 * StepSpec.beforeExec, here: for steps Node spawns (the helper does the
 * same in C). Synchronous, as the helper's are; throws BeforeExecError.
 */
function runBeforeExec(before: BeforeExec | undefined): void {
  if (before?.syncFile !== undefined) {
    let fd = -1;
    try {
      fd = openSync(before.syncFile, 'r');
      fdatasyncSync(fd);
    } catch (e) {
      throw new BeforeExecError(beforeExecMessage('sync', before.syncFile, (e as NodeJS.ErrnoException).code ?? String(e)));
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }
  if (before?.makeDirectory !== undefined) {
    try {
      mkdirSync(before.makeDirectory, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new BeforeExecError(beforeExecMessage('mkdir', before.makeDirectory, (e as NodeJS.ErrnoException).code ?? String(e)));
    }
  }
}

/** Each pipe reader's buffer: one read takes at most this much (a pipe holds 64 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;
/** The one buffer every pipe reader reads into (fdReader says why that is safe). */
const READ_BUFFER = Buffer.allocUnsafe(READ_BUFFER_BYTES);

/**
 * Start one step. Throws PreStageError('InvalidHook') before starting
 * anything when argv or env is unusable (relative program, NUL bytes, a key
 * with '='), RangeError for a bad timeout or grace; every other failure,
 * including a program that cannot be executed, is reported through `done`.
 */
export function runStep(spec: StepSpec, sink: StepSink): RunningStep {
  validateStepSpec(spec);
  return new StepRun(spec, sink);
}


// ---------------------------------------------------------------------------

type StreamName = 'stdout' | 'stderr' | 'notify';
const STREAMS: readonly StreamName[] = ['stdout', 'stderr', 'notify'];
/** The pipes of a step whose stderr is its stdout (StepSpec.stderr). */
const SHARED_STREAMS: readonly StreamName[] = ['stdout', 'notify'];

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
  /** The pipes asked for, in fd order: STREAMS, or SHARED_STREAMS for StepSpec.stderr 'stdout'. */
  private readonly wanted: readonly StreamName[];
  /** The step's readers, in order, once started: `wanted`, or STREAMS on Node's socket pairs. */
  private streams: readonly StreamName[] = STREAMS;
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
    this.wanted = spec.stderr === 'stdout' ? SHARED_STREAMS : STREAMS;
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
    const started: Spawned = await helper.spawn(this.spec.argv, Object.fromEntries(Object.entries(this.spec.env)),
      this.wanted.length, (status) => this.onHelperExit(status), this.spec.beforeExec, this.wanted === SHARED_STREAMS);
    this.pid = started.pid;
    this.startTime = started.startTime;
    this.streams = this.wanted;
    this.attachReaders(started.fds.map((fd, i) => this.fdReader(fd, this.streams[i]!)), false);
    this.afterStart();
    const early = this.earlyExit;
    this.earlyExit = null;
    if (early !== null) this.onHelperExit(early.status);
  }

  private startWithNode(): void {
    const spec = this.spec;
    try {
      runBeforeExec(spec.beforeExec);
    } catch (e) {
      this.spawnFailed(e);
      return;
    }
    let pipes: PipePair[] | null = null;
    if (spec.channels !== 'socket') {
      const p = pipePool.take(this.wanted.length, this.tmp);
      if (typeof p === 'string') this.warn(`could not create output pipes (${p}); using socket pairs, so the step cannot reopen /dev/stdout or /dev/stderr`);
      else pipes = p;
    }
    this.streams = pipes === null ? STREAMS : this.wanted;
    const stdio: StdioOptions = pipes === null
      ? ['ignore', 'pipe', 'pipe', 'pipe']
      : this.streams === SHARED_STREAMS
        ? ['ignore', pipes[0]!.write, pipes[0]!.write, pipes[1]!.write]
        : ['ignore', pipes[0]!.write, pipes[1]!.write, pipes[2]!.write];

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
    if (pipes) this.attachReaders(pipes.map((p, i) => this.fdReader(p.read, this.streams[i]!)), false);
    else this.attachReaders([child.stdout!, child.stderr!, child.stdio[3] as Readable], true);
    this.afterStart();
  }

  /**
   * A reader of our end of one of the step's pipes. Reads go into one
   * buffer, READ_BUFFER, shared by every pipe reader of the process
   * (net.Socket's `onread`), and reach onData without a stream 'data'
   * event: no Buffer is allocated per read, which halves the daemon's CPU
   * time per byte of a chatty step's output, and none per step (three
   * 64 KiB buffers per step were most of a trivial step's garbage). This is
   * safe because libuv reads one stream at a time on this thread and calls
   * back before the next read, and nothing keeps a chunk past onData: the
   * line splitter and the notify parser copy what they keep, and the log
   * copies lines into its own buffer. EOF, errors and 'close' work as for
   * 'data'.
   */
  private fdReader(fd: number, name: StreamName): Socket {
    // Node reads `onread` in the constructor too; its types only list it for connect().
    const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
      fd, readable: true, writable: false,
      // true: keep reading (false would pause the socket).
      onread: { buffer: READ_BUFFER, callback: (n, buf) => { this.onData(name, (buf as Buffer).subarray(0, n)); return true; } },
    };
    return new Socket(opts);
  }

  /** `dataEvents`: the readers deliver through 'data' (Node's own stdio), not fdReader's onread. */
  private attachReaders(readers: Readable[], dataEvents: boolean): void {
    this.readers = readers;
    this.openReaders = readers.length;
    readers.forEach((r, i) => {
      const name = this.streams[i]!;
      if (dataEvents) r.on('data', (chunk: Buffer) => this.onData(name, chunk));
      r.on('error', (e) => this.warn(`reading the step's ${this.label(name)} failed: ${describeErrno(e)}`));
      r.once('close', () => {
        if (--this.openReaders === 0) this.readersClosed?.();
      });
    });
  }

  /** A pipe as a person names it: the shared one is both stdout and stderr. */
  private label(name: StreamName): string {
    return name === 'stdout' && this.streams === SHARED_STREAMS ? 'stdout and stderr' : name;
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
   * Kill what the step left running, then drain the pipes, then resolve
   * `done`.
   */
  private async cleanUp(): Promise<void> {
    if (this.pid <= 0) {
      // Never scan for "our" processes without a session id: in a pid namespace
      // every process whose session leader is outside reads as session 0.
      this.warn('internal error: the step ended before its pid was known; not looking for leftovers');
    } else {
      await this.killLeftovers(this.remainingGrace());
    }
    await this.drain();
    this.finish();
  }

  /**
   * What is left of the grace started by a timeout or cancel carries over,
   * so a step that ignores SIGTERM does not get a second full grace period.
   */
  private remainingGrace(): number {
    return this.killDeadline === null
      ? this.graceMs
      : Math.max(0, this.killDeadline - performance.now());
  }

  /** The environment entries that identify the step's escaped processes, or null. */
  private trackEnv(): Record<string, string> | null {
    const track = this.spec.trackEnv === undefined ? defaultTrackEnv(this.spec.env) : this.spec.trackEnv;
    return track !== null && Object.keys(track).length > 0 ? track : null;
  }

  /**
   * Up to three rounds of find-and-kill: go round again while anything is
   * found at all, since a process seen in the group may have escaped with
   * setsid before the group kill reached it. Only the first round grants
   * a grace period.
   */
  private async killLeftovers(grace: number): Promise<void> {
    const sid = this.pid;
    const trackEnv = this.trackEnv();
    // Only processes created since the leader can be the step's; a step
    // that lasted under PID_WINDOW_MAX_MS lets the scan skip older pids.
    const leader: ProcessRef = { pid: sid, startTime: this.startTime ?? '0' };
    const seen = new Set<number>();
    for (let round = 0; round < 3; round++) {
      const pidWindow = this.startTime !== null && performance.now() - this.t0 < PID_WINDOW_MAX_MS;
      const found = await findStepProcesses(sid, leader, pidWindow, trackEnv, this.exited !== null && !this.exitUnknown);
      if (found.names.size === 0) break;
      const fresh = [...found.names.keys()];
      for (const p of fresh) seen.add(p);
      this.leftovers = seen.size;
      this.warn(`${round === 0 ? 'killing' : 'killing more'} processes left behind by the step: `
        + describeProcesses(fresh, found.names));
      if (!(await terminateStepProcesses(sid, found, round === 0 ? grace : 0))) {
        this.warn('processes of the step survived SIGKILL (uninterruptible sleep?); leaving them behind');
        break;
      }
    }
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
      const open = this.readers.filter((r) => !r.closed && !r.readableEnded).map((r) => this.label(this.streams[this.readers.indexOf(r)]!));
      this.warn(`the step's ${open.join(', ')} still open ${formatDuration(OUTPUT_DRAIN_MS)} after its processes ended `
        + '(held by a process outside its process group); stopped reading');
    }
  }

  private spawnFailed(e: unknown): void {
    if (e instanceof BeforeExecError) {
      this.resolve({ result: 'failed', exitCode: null, signal: null, message: `could not start: ${e.message}`, leftovers: 0 });
      return;
    }
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
