/**
 * Process plumbing for the harness: spawn helpers that cannot outlive the
 * test worker, wait for exits with a deadline, and find processes a test
 * left behind (hooks, activated services) through /proc.
 *
 * Invariant the harness keeps: every process a helper starts is stopped by
 * that helper's teardown, and as a last resort dies with the thread that
 * spawned it (PR_SET_PDEATHSIG via setpriv), so a crashed or timed-out test
 * worker leaves nothing running.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';

/** How a process ended. */
export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Spawn `cmd args` through `setpriv --pdeathsig SIGKILL`, so the process is
 * killed if the thread that spawned it (the ava worker) dies without
 * running teardown. setpriv execs the command: the pid is the command's.
 */
export function spawnTied(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', cmd, ...args], opts);
}

/** Resolves when `child` has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<ExitInfo> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** Resolves with the exit, or with null after `ms`. */
export async function exitedWithin(child: ChildProcess, ms: number): Promise<ExitInfo | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>((resolve) => { timer = setTimeout(() => resolve(null), ms); });
  try {
    return await Promise.race([exited(child), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stop a child: `signal` (SIGTERM by default), then SIGKILL after
 * `graceMs`. Returns how it ended and whether it had to be killed.
 */
export async function terminate(
  child: ChildProcess, opts: { signal?: NodeJS.Signals; graceMs?: number } = {},
): Promise<ExitInfo & { killed: boolean }> {
  const done = child.exitCode !== null || child.signalCode !== null;
  if (!done) child.kill(opts.signal ?? 'SIGTERM');
  const info = await exitedWithin(child, opts.graceMs ?? 5000);
  if (info) return { ...info, killed: false };
  child.kill('SIGKILL');
  return { ...(await exited(child)), killed: true };
}

interface ProcStat { pid: number; ppid: number; state: string; }

async function readStat(pid: number): Promise<ProcStat | null> {
  try {
    const s = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: fields start after the last ')'.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { pid, state: rest[0] ?? '?', ppid: Number(rest[1]) };
  } catch {
    return null;
  }
}

async function allPids(): Promise<number[]> {
  const names = await fsp.readdir('/proc');
  return names.filter((n) => /^\d+$/.test(n)).map(Number);
}

/** True while `pid` exists and is not a zombie. */
export async function isAlive(pid: number): Promise<boolean> {
  const st = await readStat(pid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
}

/** Every live descendant of `pid` (children, grandchildren, ...). */
export async function descendants(pid: number): Promise<number[]> {
  const stats = (await Promise.all((await allPids()).map(readStat)))
    .filter((s): s is ProcStat => s !== null && s.state !== 'Z');
  const byParent = new Map<number, number[]>();
  for (const s of stats) {
    const list = byParent.get(s.ppid) ?? [];
    list.push(s.pid);
    byParent.set(s.ppid, list);
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    for (const c of byParent.get(p) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** A live process found by `processesMentioning`. */
export interface FoundProcess {
  pid: number;
  /** argv joined with spaces. */
  cmdline: string;
}

/**
 * Live processes (other than this one) whose argv or environment contains
 * `needle`. Hooks run with BOOTC_PRESTAGE_STATE_DIRECTORY and
 * BOOTC_PRESTAGE_DEPLOYMENT in their environment, so a test's temporary
 * directory finds every hook process it started, even after the daemon that
 * spawned it is gone.
 */
export async function processesMentioning(needle: string): Promise<FoundProcess[]> {
  const out: FoundProcess[] = [];
  for (const pid of await allPids()) {
    if (pid === process.pid || !(await isAlive(pid))) continue;
    let cmdline: Buffer;
    let environ: Buffer;
    try {
      cmdline = await fsp.readFile(`/proc/${pid}/cmdline`);
      environ = await fsp.readFile(`/proc/${pid}/environ`).catch(() => Buffer.alloc(0));
    } catch {
      continue;
    }
    if (cmdline.includes(needle) || environ.includes(needle)) {
      out.push({ pid, cmdline: cmdline.toString('utf8').split('\0').filter(Boolean).join(' ') });
    }
  }
  return out;
}

/**
 * Send `signal` to each pid, then SIGKILL those still alive after
 * `graceMs`, and wait until all are gone (or zombies awaiting their reaper).
 */
export async function killPids(
  pids: number[], opts: { signal?: NodeJS.Signals; graceMs?: number } = {},
): Promise<void> {
  const send = (pid: number, sig: NodeJS.Signals) => {
    try { process.kill(pid, sig); } catch { /* already gone */ }
  };
  pids.forEach((p) => send(p, opts.signal ?? 'SIGTERM'));
  const deadline = Date.now() + (opts.graceMs ?? 3000);
  let alive = pids;
  while (alive.length > 0 && Date.now() < deadline) {
    await sleep(25);
    alive = (await Promise.all(alive.map(async (p) => ((await isAlive(p)) ? p : -1)))).filter((p) => p > 0);
  }
  alive.forEach((p) => send(p, 'SIGKILL'));
  while (alive.length > 0) {
    await sleep(10);
    alive = (await Promise.all(alive.map(async (p) => ((await isAlive(p)) ? p : -1)))).filter((p) => p > 0);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Collect a stream's output as lines (the partial last line is kept until
 * the stream ends). `lines` grows as data arrives.
 */
export function lineCollector(stream: NodeJS.ReadableStream | null | undefined): { lines: string[] } {
  const lines: string[] = [];
  let partial = '';
  if (!stream) return { lines };
  stream.setEncoding?.('utf8');
  stream.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  stream.on('end', () => {
    if (partial !== '') lines.push(partial);
    partial = '';
  });
  return { lines };
}
