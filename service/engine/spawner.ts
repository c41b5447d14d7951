/**
 * The daemon's side of bootc-prestage-spawner (service/spawner/spawner.c):
 * a small helper process that forks and execs hook steps for us, because
 * forking the ~70 MB daemon itself costs more than a trivial step (see the
 * C file for why, and for the wire protocol).
 *
 * The helper is started on first use and closed after SPAWNER_IDLE_MS with
 * nothing running, so an idle daemon holds no extra process. Everything it
 * does is on behalf of the step runner; if it cannot be started or dies,
 * requests fail with SpawnerUnavailable and the runner falls back to Node's
 * own spawn (slower, same semantics). A step already running when the helper
 * dies is reported through its exit callback with `null`: its exit status is
 * lost with the helper, and the runner waits for the process to go away.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants as fsc, existsSync, openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BeforeExecError, beforeExecMessage, type BeforeExec } from './step-spec.js';

/** The helper's file name; installed next to the daemon's code in libexec/. */
export const SPAWNER_NAME = 'bootc-prestage-spawner';
/**
 * Environment variable naming the helper to use; empty disables it (steps
 * are then spawned by Node). Unset: the one built next to this code.
 */
export const SPAWNER_ENV = 'BOOTC_PRESTAGE_SPAWNER';
/** The helper exits after this long with no step running and no request pending. */
export const SPAWNER_IDLE_MS = 30_000;
/** Must match MAX_OUT_FDS in spawner.c. */
const MAX_OUT_FDS = 16;

/** The helper is missing, could not start, or died: use another way to spawn. */
export class SpawnerUnavailable extends Error {
  override readonly name = 'SpawnerUnavailable';
}

/** How a process ended, as Node's 'exit' event reports it. */
export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Called once when the spawned process has been reaped; `null` when the
 * helper died first and the status is unknown.
 */
export type ExitCallback = (status: ExitStatus | null) => void;

export interface Spawned {
  pid: number;
  /** /proc/<pid>/stat start time, read by the helper before the process could be reaped; null if unknown. */
  startTime: string | null;
  /**
   * Our read ends of the pipes on the process's fds 1, 2, ... (as many as
   * asked for), non-blocking and close-on-exec; the caller closes them.
   */
  fds: number[];
}

/** A wait(2) status as Node reports exits: code, or the signal's name. */
export function decodeWaitStatus(status: number): ExitStatus {
  const sig = status & 0x7f;
  if (sig === 0) return { code: (status >> 8) & 0xff, signal: null };
  const name = Object.entries(osConstants.signals).find(([, n]) => n === sig)?.[0];
  return { code: null, signal: (name ?? `SIG${sig}`) as NodeJS.Signals };
}

/** An errno number as the ErrnoException Node's spawn would have given. */
function errnoError(errno: number, argv0: string): NodeJS.ErrnoException {
  const name = Object.entries(osConstants.errno).find(([, n]) => n === errno)?.[0] ?? `E${errno}`;
  const e: NodeJS.ErrnoException = new Error(`spawn ${argv0} ${name}`);
  e.code = name;
  e.errno = -errno;
  e.syscall = `spawn ${argv0}`;
  e.path = argv0;
  return e;
}

/** Where the helper is: $BOOTC_PRESTAGE_SPAWNER, else built next to this code; null when none. */
export function locateSpawner(env: NodeJS.ProcessEnv = process.env): string | null {
  const configured = env[SPAWNER_ENV];
  if (configured !== undefined) return configured === '' ? null : configured;
  // dist/service/engine/spawner.js (tsc) and dist/<bundle>.mjs find dist/libexec/;
  // service/engine/spawner.ts (run from source, as the tests do) finds the build's.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dirs = [path.join(here, '..', '..', 'libexec'), path.join(here, 'libexec'), path.join(here, '..', '..', 'dist', 'libexec')];
  for (const dir of dirs) {
    const p = path.join(dir, SPAWNER_NAME);
    if (existsSync(p)) return p;
  }
  return null;
}

interface Pending {
  resolve: (v: Spawned) => void;
  reject: (e: Error) => void;
  argv0: string;
  pipes: number;
  onExit: ExitCallback;
  before: BeforeExec;
}

/** Spawn request flags and what failed, as spawner.c has them. */
const SPAWN_SYNC = 1;
const SPAWN_MKDIR = 2;
const SPAWN_SHARE_STDERR = 4;
const FAILED_SYNC = 1n;
const FAILED_MKDIR = 2n;
/** A 'C' waits this long for a request to ride with (closeLater). */
const CLOSE_DELAY_MS = 50;

/** One running helper process. */
export class Spawner {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Spawned processes not yet reaped, by pid. */
  private readonly running = new Map<number, ExitCallback>();
  private inbuf: Buffer = Buffer.alloc(0);
  private deadReason: string | null = null;
  /** It has answered a request: it runs on this machine. */
  answered = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private refed = false;
  /** Our copies are open: the helper's may be closed ('C'), with the next request at the latest. */
  private toClose: number[] = [];
  private closeTimer: NodeJS.Timeout | null = null;
  /** Requests made before the hello was checked (null after it). */
  private beforeHello: Buffer[] | null = [];

  constructor(readonly file: string, private readonly onGone: (s: Spawner) => void = () => {}) {
    // Its own environment is empty: it passes on only what each request carries.
    this.child = spawn(file, [], { stdio: ['pipe', 'pipe', 'inherit'], env: {} });
    this.child.on('error', (e) => this.die(`could not start ${file}: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    this.child.on('exit', (code, signal) => this.die(`${file} exited (${signal ?? `status ${code}`})`));
    this.child.stdin!.on('error', () => { /* reported by 'exit' */ });
    this.child.stdout!.on('data', (d: Buffer) => this.onData(d));
    this.updateRef();
  }

  get alive(): boolean {
    return this.deadReason === null;
  }

  /** The helper's pid (0 if it never started), for logs and tests. */
  get pid(): number {
    return this.child.pid ?? 0;
  }

  /**
   * Start `argv` with exactly `env` and fds 1 .. `pipes` on new pipes, whose
   * read ends come back in `fds`; with `shareStderr`, fd 2 is fd 1's pipe
   * and the others are fds 3 .. `pipes` + 1. Resolves once the program is
   * exec'ed; rejects with Node's ErrnoException when it cannot be, or with
   * SpawnerUnavailable when the helper is gone or its pipes cannot be
   * reached. `onExit` runs once, later.
   */
  spawn(
    argv: string[], env: Record<string, string>, pipes: number, onExit: ExitCallback, before: BeforeExec = {},
    shareStderr = false,
  ): Promise<Spawned> {
    if (pipes > MAX_OUT_FDS) throw new RangeError(`at most ${MAX_OUT_FDS} fds`);
    if (this.deadReason !== null) return Promise.reject(new SpawnerUnavailable(this.deadReason));
    const envList = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    const extra: string[] = [];
    let flags = 0;
    if (before.syncFile !== undefined) { flags |= SPAWN_SYNC; extra.push(before.syncFile); }
    if (before.makeDirectory !== undefined) { flags |= SPAWN_MKDIR; extra.push(before.makeDirectory); }
    if (shareStderr) flags |= SPAWN_SHARE_STDERR;
    const id = this.nextId++;
    const head = Buffer.alloc(20);
    head.writeUInt32LE(id, 0);
    head.writeUInt32LE(argv.length, 4);
    head.writeUInt32LE(envList.length, 8);
    head.writeUInt32LE(pipes, 12);
    head.writeUInt32LE(flags, 16);
    const body = Buffer.from([...argv, ...envList, ...extra].map((s) => `${s}\0`).join(''), 'utf8');
    return new Promise<Spawned>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, argv0: argv[0]!, pipes, onExit, before });
      this.updateRef();
      this.sendSpawn(head, body);
    });
  }

  /** Close the pipe: the helper exits; running steps keep running. */
  close(): void {
    this.die('closed');
  }

  /** Send an 'S' frame, with any 'C' that waits (closeLater) in front of it. */
  private sendSpawn(head: Buffer, body: Buffer): void {
    const frame = Buffer.allocUnsafe(5 + head.length + body.length);
    frame.writeUInt32LE(1 + head.length + body.length, 0);
    frame[4] = 'S'.charCodeAt(0);
    head.copy(frame, 5);
    body.copy(frame, 5 + head.length);
    // Nothing is sent before the hello has been checked: a helper that
    // turns out unusable must not have started a step the fallback then
    // starts again.
    if (this.beforeHello !== null) {
      this.beforeHello.push(frame);
      return;
    }
    const close = this.closeFrame();
    this.child.stdin!.write(close === null ? frame : Buffer.concat([close, frame]));
  }

  /**
   * The helper's copies of pipes we have opened are closed by a 'C' that
   * rides in front of the next request (one write and one wake-up of the
   * helper per step instead of two), or after CLOSE_DELAY_MS without one.
   */
  private closeLater(fds: number[]): void {
    this.toClose.push(...fds);
    if (this.closeTimer !== null) return;
    this.closeTimer = setTimeout(() => {
      this.closeTimer = null;
      const close = this.closeFrame();
      if (close !== null && this.deadReason === null) this.child.stdin!.write(close);
    }, CLOSE_DELAY_MS);
    this.closeTimer.unref();
  }

  /** The 'C' frame for what is waiting to be closed (and nothing waits after it), or null. */
  private closeFrame(): Buffer | null {
    if (this.closeTimer !== null) {
      clearTimeout(this.closeTimer);
      this.closeTimer = null;
    }
    const fds = this.toClose;
    if (fds.length === 0) return null;
    this.toClose = [];
    const frame = Buffer.alloc(13 + 4 * fds.length);
    frame.writeUInt32LE(9 + 4 * fds.length, 0);
    frame[4] = 'C'.charCodeAt(0);
    frame.writeUInt32LE(fds.length, 9);
    fds.forEach((fd, i) => frame.writeUInt32LE(fd, 13 + 4 * i));
    return frame;
  }

  /**
   * Our own descriptors of the helper's pipe read ends `theirs`, opened
   * through /proc/<helper>/fd/; then the helper is told to close its
   * copies (always, also when an open failed). Throws the open's error.
   */
  private takePipes(theirs: number[]): number[] {
    const mine: number[] = [];
    try {
      for (const fd of theirs) mine.push(openSync(`/proc/${this.child.pid}/fd/${fd}`, fsc.O_RDONLY | fsc.O_NONBLOCK));
      return mine;
    } catch (e) {
      for (const fd of mine) closeSync(fd);
      throw e;
    } finally {
      if (this.deadReason === null) this.closeLater(theirs);
    }
  }

  private onData(d: Buffer): void {
    this.inbuf = this.inbuf.length === 0 ? d : Buffer.concat([this.inbuf, d]);
    let off = 0;
    while (this.inbuf.length - off >= 4) {
      const len = this.inbuf.readUInt32LE(off);
      if (this.inbuf.length - off - 4 < len) break;
      this.onEvent(this.inbuf.subarray(off + 4, off + 4 + len));
      off += 4 + len;
    }
    this.inbuf = off === this.inbuf.length ? Buffer.alloc(0) : this.inbuf.subarray(off);
    this.updateRef();
  }

  /** Why it is gone; null while alive. */
  get reason(): string | null {
    return this.deadReason;
  }

  private onEvent(f: Buffer): void {
    const type = String.fromCharCode(f[0]!);
    const a = f.readUInt32LE(1);
    if (type === 'H') {
      this.onHello(a);
      return;
    }
    this.answered = true;
    const b = f.readInt32LE(5);
    if (type === 'X') {
      const cb = this.running.get(a);
      this.running.delete(a);
      cb?.(decodeWaitStatus(b));
      return;
    }
    const p = this.pending.get(a);
    if (p === undefined || type !== 'S') return;
    this.pending.delete(a);
    const start = f.readBigUInt64LE(9);
    if (b < 0) {
      const err = errnoError(-b, p.argv0);
      if (start === FAILED_SYNC) p.reject(new BeforeExecError(beforeExecMessage('sync', p.before.syncFile ?? '?', err.code!)));
      else if (start === FAILED_MKDIR) p.reject(new BeforeExecError(beforeExecMessage('mkdir', p.before.makeDirectory ?? '?', err.code!)));
      else p.reject(err);
      return;
    }
    const theirs = Array.from({ length: p.pipes }, (_, i) => f.readUInt32LE(17 + 4 * i));
    let fds: number[];
    try {
      fds = this.takePipes(theirs);
    } catch (e) {
      // The hello's check passed, so this is not expected: the step must not
      // run unobserved. It is in its own process group; its exit still comes.
      try { process.kill(-b, 'SIGKILL'); } catch { /* gone already */ }
      p.reject(new Error(`cannot open the pipes of the started process: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`));
      return;
    }
    // Registered before any later event is read, so its 'X' cannot be missed.
    this.running.set(b, p.onExit);
    p.resolve({ pid: b, startTime: start === 0n ? null : String(start), fds });
  }

  /**
   * The helper's first event: a pipe of its own to open through /proc, as
   * every step's pipes will be. Where that is not allowed (a /proc mounted
   * hidepid, a sandbox), the helper cannot be used at all.
   */
  private onHello(fd: number): void {
    try {
      closeSync(this.takePipes([fd])[0]!);
    } catch (e) {
      this.die(`cannot open its pipes through /proc/${this.child.pid}/fd: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      return;
    }
    this.answered = true;
    const queued = this.beforeHello ?? [];
    this.beforeHello = null;
    // The probe's 'C' first, then what waited for the hello, in one write.
    if (queued.length > 0) this.child.stdin!.write(Buffer.concat([this.closeFrame() ?? Buffer.alloc(0), ...queued]));
  }

  /** Keep the event loop alive only while something waits on the helper; exit after a quiet spell. */
  private updateRef(): void {
    if (this.deadReason !== null) return;
    const busy = this.pending.size > 0 || this.running.size > 0;
    if (busy !== this.refed) {
      this.refed = busy;
      const out = this.child.stdout as unknown as { ref(): void; unref(): void };
      if (busy) { this.child.ref(); out.ref(); } else { this.child.unref(); out.unref(); }
    }
    if (busy) {
      if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    } else if (this.idleTimer === null) {
      this.idleTimer = setTimeout(() => { this.idleTimer = null; this.close(); }, SPAWNER_IDLE_MS);
      this.idleTimer.unref();
    }
  }

  private die(reason: string): void {
    if (this.deadReason !== null) return;
    this.deadReason = reason;
    if (this.idleTimer) { clearTimeout(this.idleTimer); this.idleTimer = null; }
    if (this.closeTimer) { clearTimeout(this.closeTimer); this.closeTimer = null; }
    try { this.child.stdin!.end(); } catch { /* already closed */ }
    (this.child.stdout as unknown as { unref(): void }).unref();
    this.child.unref();
    const err = new SpawnerUnavailable(`the spawn helper is gone: ${reason}`);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    const lost = [...this.running.values()];
    this.running.clear();
    for (const cb of lost) cb(null);
    this.onGone(this);
  }
}

let shared: Spawner | null = null;
let disabled: string | null = null;

/**
 * The shared helper, started if needed; null when there is none to use
 * (not built, disabled by $BOOTC_PRESTAGE_SPAWNER="", or it failed to start
 * before: then Node's spawn is used for the rest of this process's life).
 */
export function sharedSpawner(): Spawner | null {
  if (shared?.alive) return shared;
  if (disabled !== null) return null;
  const file = locateSpawner();
  if (file === null) {
    disabled = 'not found';
    return null;
  }
  const s = new Spawner(file, (gone) => {
    if (shared === gone) shared = null;
    // One that never answered cannot run here (missing, not executable, wrong
    // architecture): do not fork a new one for every step.
    if (!gone.answered) disabled = gone.reason ?? 'failed';
  });
  shared = s;
  return s;
}

/** Never use the helper again in this process (it failed to start). */
export function disableSpawner(reason: string): void {
  disabled = reason;
  shared?.close();
  shared = null;
}

/** Why the helper is not used, or null. For tests and the daemon's start-up log. */
export function spawnerDisabledReason(): string | null {
  return disabled;
}
