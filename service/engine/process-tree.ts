/**
 * Finding and killing the processes of a hook step, from /proc.
 *
 * A step runs as the leader of its own session and process group (pid ==
 * pgid == sid), so a signal to the group reaches every process it forked,
 * unless one moved to another group (a shell with `set -m`) or escaped the
 * session with setsid(2). Those are found by session id, or by an
 * environment entry every step carries (BOOTC_PRESTAGE_TRANSACTION=<id>).
 *
 * Invariants this module keeps:
 * - Never signal pid/pgid 0 or 1 (kill(2) would hit our own group or every
 *   process on the machine); such arguments throw RangeError.
 * - Zombies count as gone: they hold no files and cannot be killed, and where
 *   PID 1 does not reap orphans (some containers) they never disappear.
 * - A pid signalled individually is first checked against the start time it
 *   had when found, so a recycled pid is never hit. Node has no pidfd, so a
 *   tiny window between the check and kill(2) remains.
 * - Every "wait until gone" is bounded: a process stuck in uninterruptible
 *   sleep survives SIGKILL, and the caller must not hang on it forever.
 */
import { closeSync, openSync, readFileSync, readSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** The fields of /proc/<pid>/stat this module uses. */
export interface ProcStat {
  pid: number;
  /** Executable name as the kernel truncates it (may contain spaces and ')'). */
  comm: string;
  /** One letter: R, S, D, Z, T, t, X, ... */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Field 22, clock ticks since boot: with the pid, identifies one process. */
  startTime: string;
}

/** A process found by a scan, with what is needed to signal it safely later. */
export interface ProcessRef {
  pid: number;
  startTime: string;
}

/** How long terminateGroup / terminateProcesses wait after SIGKILL before giving up. */
export const DEFAULT_KILL_WAIT_MS = 10_000;

export interface TerminateOptions {
  /** Bound on the wait after SIGKILL (default DEFAULT_KILL_WAIT_MS). */
  killWaitMs?: number;
}

/**
 * Parse the text of /proc/<pid>/stat. comm is enclosed in parentheses and may
 * itself contain spaces and ')', so the fields are counted from the LAST ')'.
 * Returns null for text that is not a stat line.
 */
export function parseProcStat(text: string): ProcStat | null {
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open) return null;
  const pid = Number(text.slice(0, open));
  // After ") ": field 3 (state) is rest[0], so field N is rest[N - 3].
  const rest = text.slice(close + 2).split(' ');
  if (!Number.isInteger(pid) || rest.length < 20) return null;
  const startTime = rest[19]!;
  if (!/^[0-9]+$/.test(startTime)) return null;
  return {
    pid,
    comm: text.slice(open + 2, close),
    state: rest[0]!,
    ppid: Number(rest[1]),
    pgrp: Number(rest[2]),
    session: Number(rest[3]),
    startTime,
  };
}

/** /proc/<pid>/stat parsed, or null when the process does not exist (or vanished). */
export function readProcStat(pid: number): ProcStat | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  const text = readSmallProcFile(`/proc/${pid}/stat`);
  return text === null ? null : parseProcStat(text);
}

/**
 * One reused buffer for stat files: readFileSync would fstat, find size 0
 * (procfs does not know it), and allocate as it reads; a clean-up scan
 * reads many of them. A stat line is far below 4 KiB (comm is at most 64
 * bytes).
 */
const statBuf = Buffer.allocUnsafe(4096);

/** The text of a /proc file shorter than 4 KiB (latin1), or null when it cannot be read. */
function readSmallProcFile(file: string): string | null {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return null;
  }
  try {
    const n = readSync(fd, statBuf, 0, statBuf.length, null);
    return statBuf.toString('latin1', 0, n);
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/**
 * Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or null
 * when there is no such process. Stored next to a pid, it guards against pid
 * reuse: the pair names one process for the lifetime of the boot.
 */
export function processStartTime(pid: number): string | null {
  return readProcStat(pid)?.startTime ?? null;
}

function isDead(stat: ProcStat | null): boolean {
  return stat === null || stat.state === 'Z' || stat.state === 'X' || stat.state === 'x';
}

/**
 * True when `pid` is a live (not zombie) process that started at `startTime`,
 * that is, the same process that was recorded, not a recycled pid.
 */
export function isSameProcess(pid: number, startTime: string | null): boolean {
  if (startTime === null) return false;
  const stat = readProcStat(pid);
  return !isDead(stat) && stat!.startTime === startTime;
}

/** Every process in /proc, parsed; processes that vanish during the scan are skipped. */
export function listProcesses(): ProcStat[] {
  const out: ProcStat[] = [];
  for (const name of readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const stat = readProcStat(Number(name));
    if (stat !== null) out.push(stat);
  }
  return out;
}

/**
 * The pid most recently allocated in our pid namespace
 * (/proc/sys/kernel/ns_last_pid), or null where the kernel does not say.
 */
export function lastAllocatedPid(): number | null {
  // Kept open and read at offset 0 each time: one pread(2) per step's
  // clean-up instead of an open, a read and a close (procfs opens are
  // slow on a VM). Reopened if a read fails.
  try {
    nsLastPidFd ??= openSync('/proc/sys/kernel/ns_last_pid', 'r');
    const n = Number(statBuf.toString('latin1', 0, readSync(nsLastPidFd, statBuf, 0, 32, 0)).trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    if (nsLastPidFd !== null) {
      try { closeSync(nsLastPidFd); } catch { /* already closed */ }
      nsLastPidFd = null;
    }
    return null;
  }
}

let nsLastPidFd: number | null = null;

/** Clock ticks as a number, for comparing start times (they fit: 2^53 ticks is 2.8 million years at 100 Hz). */
function ticks(startTime: string): number {
  return Number(startTime);
}

/**
 * Every live process created no earlier than `leader` (by start time, which
 * exec never changes), leader included if alive. Every descendant of a
 * process, and every process that inherited an environment entry first
 * given to it, is such a process, so this is what a step's clean-up must
 * look at; older processes cannot be its leftovers.
 *
 * With `pidWindow`, only the pids allocated since the leader's are read:
 * pids are handed out cyclically (wrapping at pid_max), so a process created
 * after the leader has a pid in (leader, ns_last_pid], or, after a wrap,
 * above the leader's or at most ns_last_pid. That is exact unless the pid
 * space went round a full cycle meanwhile (at least pid_max - 300 = 32,468
 * process and thread creations), so callers pass it only for a short
 * interval; without it, or when ns_last_pid cannot be read, every process's
 * stat is read (a few milliseconds per few hundred processes).
 *
 * With `leaderReaped` (its exit status was collected, so its pid is free)
 * the leader's own pid is not probed: a step that started nothing costs no
 * read of /proc at all (a failed open of a gone pid's stat cost ~70 µs
 * here, most of a trivial step's clean-up).
 */
export function processesSince(leader: ProcessRef, opts: { pidWindow?: boolean; leaderReaped?: boolean } = {}): ProcStat[] {
  const since = ticks(leader.startTime);
  const last = opts.pidWindow ? lastAllocatedPid() : null;
  const out: ProcStat[] = [];
  const take = (pid: number, probed: boolean) => {
    if (pid === leader.pid && opts.leaderReaped) return;
    const stat = readProcStat(pid);
    if (stat === null || isDead(stat) || ticks(stat.startTime) < since) return;
    // A probe of /proc/<tid> also answers for a thread (readdir lists
    // only processes): count each process once, by its main thread.
    if (probed && !isThreadGroupLeader(pid)) return;
    out.push(stat);
  };
  if (last !== null && last >= leader.pid && last - leader.pid <= MAX_WINDOW_PROBES) {
    // Probing the few pids allocated since is cheaper than listing /proc,
    // which walks every task of the machine.
    for (let pid = leader.pid; pid <= last; pid++) take(pid, true);
    return out;
  }
  const inWindow = last === null
    ? () => true
    : last >= leader.pid
      ? (pid: number) => pid >= leader.pid && pid <= last
      : (pid: number) => pid >= leader.pid || pid <= last;
  for (const name of readdirSync('/proc')) {
    const c = name.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const pid = Number(name);
    if (inWindow(pid)) take(pid, false);
  }
  return out;
}

/** filterByEnv reads up to this many environments synchronously. */
const SYNC_ENV_READS = 16;

/** processesSince probes pids one by one up to this many, then lists /proc. */
const MAX_WINDOW_PROBES = 256;

/** True unless `pid` names a thread other than its process's main one. */
function isThreadGroupLeader(pid: number): boolean {
  try {
    const m = /^Tgid:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m === null || Number(m[1]) === pid;
  } catch {
    return false;
  }
}

/**
 * Those of `candidates` (still the same processes) whose environment holds
 * every KEY=VALUE of `entries`; this process is skipped. Throws RangeError
 * for an empty or malformed `entries`.
 */
export async function filterByEnv(candidates: readonly ProcessRef[], entries: Record<string, string>): Promise<ProcessRef[]> {
  const needles = entryNeedles(entries);
  const found: ProcessRef[] = [];
  // Few candidates (processes created during one step): read them at once
  // rather than through the thread pool, one event-loop round trip each.
  const sync = candidates.length <= SYNC_ENV_READS;
  await Promise.all(candidates.map(async (ref) => {
    if (ref.pid === process.pid) return;
    let environ: Buffer;
    try {
      environ = sync ? readFileSync(`/proc/${ref.pid}/environ`) : await readFile(`/proc/${ref.pid}/environ`);
    } catch {
      return; // vanished, or a process we may not inspect
    }
    // Read after environ: a recycled pid shows another start time.
    if (isSameProcess(ref.pid, ref.startTime) && needles.every((n) => hasEntry(environ, n))) found.push(ref);
  }));
  return found.sort((a, b) => a.pid - b.pid);
}

function checkId(id: number, what: string): void {
  if (!Number.isInteger(id) || id <= 1) {
    // kill(-0) is our own group, kill(-1) every process we may signal.
    throw new RangeError(`refusing to signal ${what} ${id}`);
  }
}

/** Live (not zombie) members of process group `pgid`. */
export function groupMembers(pgid: number): number[] {
  checkId(pgid, 'process group');
  return listProcesses().filter((p) => p.pgrp === pgid && !isDead(p)).map((p) => p.pid);
}

/**
 * True while process group `pgid` has a live member. A group whose only
 * members are zombies is empty for our purposes.
 */
export function groupAlive(pgid: number): boolean {
  checkId(pgid, 'process group');
  try {
    process.kill(-pgid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    // EPERM: the group exists but we may not signal it; look at /proc.
  }
  return groupMembers(pgid).length > 0;
}

/**
 * Send `signal` to every process of group `pgid`. Returns false when the
 * group no longer exists (ESRCH), true when sent. Other errors throw.
 */
export function killGroup(pgid: number, signal: NodeJS.Signals | number): boolean {
  checkId(pgid, 'process group');
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

/**
 * Poll `alive` until it returns false or `ms` elapse; `each` runs before every
 * check (used to repeat SIGKILL at members forked meanwhile). Returns true
 * when `alive` turned false.
 */
async function waitGone(alive: () => boolean, ms: number, each?: () => void): Promise<boolean> {
  const end = performance.now() + ms;
  let interval = 5;
  for (;;) {
    each?.();
    if (!alive()) return true;
    const left = end - performance.now();
    if (left <= 0) return false;
    await sleep(Math.min(interval, left));
    interval = Math.min(interval * 2, 100);
  }
}

/**
 * Stop a whole process group the way systemd stops a unit: SIGTERM (and
 * SIGCONT, so stopped members can act on it), up to `graceMs` for it to
 * empty, then SIGKILL, repeated until the group is empty or
 * `opts.killWaitMs` elapse. Resolves true when the group is empty, false when
 * members survived SIGKILL (uninterruptible sleep); never rejects for a
 * vanished group.
 */
export async function terminateGroup(
  pgid: number, graceMs: number, opts: TerminateOptions = {},
): Promise<boolean> {
  checkId(pgid, 'process group');
  if (!groupAlive(pgid)) return true;
  if (graceMs > 0) {
    killGroup(pgid, 'SIGTERM');
    killGroup(pgid, 'SIGCONT');
    if (await waitGone(() => groupAlive(pgid), graceMs)) return true;
  }
  return waitGone(() => groupAlive(pgid), opts.killWaitMs ?? DEFAULT_KILL_WAIT_MS,
    () => { killGroup(pgid, 'SIGKILL'); });
}

function signalIfSame(ref: ProcessRef, signal: NodeJS.Signals): void {
  if (!isSameProcess(ref.pid, ref.startTime)) return;
  try {
    process.kill(ref.pid, signal);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
  }
}

/**
 * terminateGroup for individual processes: SIGTERM + SIGCONT to each that is
 * still the process recorded, `graceMs` to exit, then SIGKILL until gone or
 * `opts.killWaitMs` elapse. Resolves true when all are gone.
 */
export async function terminateProcesses(
  refs: readonly ProcessRef[], graceMs: number, opts: TerminateOptions = {},
): Promise<boolean> {
  for (const r of refs) checkId(r.pid, 'process');
  const alive = () => refs.some((r) => isSameProcess(r.pid, r.startTime));
  if (!alive()) return true;
  if (graceMs > 0) {
    for (const r of refs) signalIfSame(r, 'SIGTERM');
    for (const r of refs) signalIfSame(r, 'SIGCONT');
    if (await waitGone(alive, graceMs)) return true;
  }
  return waitGone(alive, opts.killWaitMs ?? DEFAULT_KILL_WAIT_MS,
    () => { for (const r of refs) signalIfSame(r, 'SIGKILL'); });
}

/** Live processes of session `sid` (the step's pid), whatever their group. */
export function sessionMembers(sid: number): ProcessRef[] {
  checkId(sid, 'session');
  return listProcesses()
    .filter((p) => p.session === sid && !isDead(p))
    .map((p) => ({ pid: p.pid, startTime: p.startTime }));
}

/** True when NUL-separated `environ` holds exactly the entry `needle` ("KEY=VALUE"). */
function hasEntry(environ: Buffer, needle: Buffer): boolean {
  let from = 0;
  for (;;) {
    const i = environ.indexOf(needle, from);
    if (i < 0) return false;
    const end = i + needle.length;
    if ((i === 0 || environ[i - 1] === 0) && (end === environ.length || environ[end] === 0)) return true;
    from = i + 1;
  }
}

function entryNeedles(entries: Record<string, string>): Buffer[] {
  const keys = Object.keys(entries);
  // An empty filter would match every process on the machine.
  if (keys.length === 0) throw new RangeError('findProcessesByEnv needs at least one entry');
  return keys.map((k) => {
    if (k === '' || k.includes('=') || k.includes('\0') || entries[k]!.includes('\0')) {
      throw new RangeError(`invalid environment entry ${JSON.stringify(k)}`);
    }
    return Buffer.from(`${k}=${entries[k]}`);
  });
}

/** How many /proc/<pid>/environ files are read at once. */
const SCAN_CONCURRENCY = 32;

async function scanByEnv(needles: Buffer[]): Promise<ProcessRef[]> {
  const pids = readdirSync('/proc')
    .filter((n) => { const c = n.charCodeAt(0); return c >= 48 && c <= 57; })
    .map(Number)
    .filter((pid) => pid !== process.pid);
  const found: ProcessRef[] = [];
  const check = async (pid: number) => {
    // Start time before environ: if the pid is recycled in between, the new
    // process's environ will not match or its start time will not, later.
    const before = readProcStat(pid);
    if (isDead(before)) return;
    let environ: Buffer;
    try {
      environ = await readFile(`/proc/${pid}/environ`);
    } catch {
      return; // vanished, or a process we may not inspect
    }
    if (needles.every((n) => hasEntry(environ, n))) {
      found.push({ pid, startTime: before!.startTime });
    }
  };
  for (let i = 0; i < pids.length; i += SCAN_CONCURRENCY) {
    await Promise.all(pids.slice(i, i + SCAN_CONCURRENCY).map(check));
  }
  return found.sort((a, b) => a.pid - b.pid);
}

/**
 * Pids of live processes whose environment (as exec'd: /proc/<pid>/environ)
 * contains every KEY=VALUE of `entries`. Skips this process, zombies and
 * processes that vanish during the scan. Throws RangeError for an empty or
 * malformed `entries`.
 */
export async function findProcessesByEnv(entries: Record<string, string>): Promise<number[]> {
  return (await scanByEnv(entryNeedles(entries))).map((r) => r.pid);
}

/** findProcessesByEnv with the start time of each process, for later signalling. */
export async function findProcessRefsByEnv(entries: Record<string, string>): Promise<ProcessRef[]> {
  return scanByEnv(entryNeedles(entries));
}

/** Scans after the first, to catch processes forked by those being killed. */
const MAX_RESCANS = 5;

/**
 * Kill every process whose environment contains all of `entries` (crash
 * recovery: every step's environment has BOOTC_PRESTAGE_TRANSACTION=<id>, so
 * this finds a transaction's leftovers even if they left its process group
 * and session). SIGTERM, `graceMs`, SIGKILL; rescans afterwards for
 * processes forked meanwhile. Resolves with every pid found and signalled
 * (sorted); processes that survive SIGKILL (uninterruptible sleep) are
 * included and left behind.
 */
export async function killProcessesByEnv(
  entries: Record<string, string>, graceMs: number, opts: TerminateOptions = {},
): Promise<number[]> {
  const needles = entryNeedles(entries);
  const all = new Set<number>();
  for (let round = 0; round <= MAX_RESCANS; round++) {
    const refs = await scanByEnv(needles);
    const fresh = refs.filter((r) => !all.has(r.pid));
    if (fresh.length === 0) break;
    for (const r of refs) all.add(r.pid);
    // Later rounds only mop up stragglers: no second grace period.
    await terminateProcesses(refs, round === 0 ? graceMs : 0, opts);
  }
  return [...all].sort((a, b) => a - b);
}
