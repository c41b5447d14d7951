/**
 * "The state" of a running daemon, captured so a test can assert that a
 * call changed nothing: what is on disk (hook files in the /etc and /run
 * hook directories, the state directory's journal/, logs/ and hooks/, any
 * directory a test hook records into), what the daemon says on the bus (its
 * transactions, their State, the manager's State and ActiveTransaction), and
 * which hook processes are running (found by the state directory in their
 * environment, which every step carries).
 *
 * Files are compared by type, mode, owner and a digest of their contents,
 * so a rewrite with the same bytes (an atomic replace of a hook file) still
 * counts as unchanged, while any new, removed or modified file does not.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, type TestClient } from './dbus-client.js';
import { sleep } from './processes.js';

/** Hook directories under --root, as docs/design.md "Hooks" names them. */
export const HOOK_DIRS = ['etc/bootc/pre-stage.d', 'run/bootc/pre-stage.d'] as const;
/** What the engine keeps under the state directory. */
export const STATE_SUBDIRS = ['journal', 'logs', 'hooks'] as const;

export interface StateSnapshot {
  /** `<hook dir>/<entry>` relative to the root -> description (see describeEntry). */
  hookFiles: Record<string, string>;
  /** `<journal|logs|hooks>/<...>` relative to the state directory -> description. */
  stateFiles: Record<string, string>;
  /** Entries of the watched directories, `<watched dir>/<...>` -> description. */
  watched: Record<string, string>;
  /** ListTransactions, sorted; null when no client was given. */
  transactions: string[] | null;
  /** State of each listed transaction, by path; null when not read. */
  transactionStates: Record<string, string> | null;
  /** The manager's State and ActiveTransaction; null when no client was given. */
  manager: { State: string; ActiveTransaction: string } | null;
  /** Hook processes: "pid cmdline", sorted; null when not captured. */
  processes: string[] | null;
}

export interface CaptureOptions {
  /** The daemon's --root (hook directories below it). */
  root: string;
  /** The daemon's --state-dir. */
  stateDir: string;
  /** A root client to ask the daemon with; without it the bus part is null. */
  client?: TestClient;
  /** More directories to list recursively (a record a hook program writes). */
  watch?: readonly string[];
  /** Scan /proc for hook processes (default true; it costs a full /proc walk). */
  processes?: boolean;
  /**
   * Read each transaction's State (default true; one call per transaction).
   * A state change is also a journal record, so the files alone catch it.
   */
  transactionStates?: boolean;
  /** Per-call timeout for the bus queries (default 10 s). */
  timeoutMs?: number;
}

/**
 * Digests by path, reused while inode, size, mtime and ctime (nanoseconds)
 * are all the same: any write changes mtime and ctime, so a file is only
 * read again when it may have changed. Captures taken after every call of
 * a fuzz run would otherwise re-read every journal and log each time.
 */
const digestCache = new Map<string, { stamp: string; digest: string }>();

async function fileDigest(p: string, st: import('node:fs').BigIntStats): Promise<string> {
  const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  const hit = digestCache.get(p);
  if (hit && hit.stamp === stamp) return hit.digest;
  const digest = createHash('sha256').update(await fsp.readFile(p)).digest('hex');
  if (digestCache.size > 10_000) digestCache.clear();
  digestCache.set(p, { stamp, digest });
  return digest;
}

/**
 * One entry as compared: `file <mode> <uid>:<gid> <sha256>`,
 * `dir <mode> <uid>:<gid>`, `link -> <target>`, or `other <mode>`.
 */
async function describeEntry(p: string): Promise<string> {
  const st = await fsp.lstat(p, { bigint: true });
  const mode = (Number(st.mode) & 0o7777).toString(8).padStart(4, '0');
  const owner = `${st.uid}:${st.gid}`;
  if (st.isSymbolicLink()) return `link -> ${await fsp.readlink(p)}`;
  if (st.isDirectory()) return `dir ${mode} ${owner}`;
  if (st.isFile()) return `file ${mode} ${owner} ${await fileDigest(p, st)}`;
  return `other ${mode} ${owner}`;
}

/** Every entry below `dir` (recursively, links not followed), keyed by `prefix/relative`. */
async function listTree(dir: string, prefix: string, out: Record<string, string>): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') {
      out[prefix] = await describeEntry(dir).catch(() => 'vanished');
      return;
    }
    throw e;
  }
  names.sort();
  for (const n of names) {
    const p = path.join(dir, n);
    const key = `${prefix}/${n}`;
    let d: string;
    try {
      d = await describeEntry(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed while listing
      throw e;
    }
    out[key] = d;
    if (d.startsWith('dir ')) await listTree(p, key, out);
  }
}

/**
 * Hook processes of the daemon using `stateDir` ("pid cmdline", sorted):
 * every step has BOOTC_PRESTAGE_STATE_DIRECTORY=<state>/hooks/... in its
 * environment, which survives setsid and double forks. One read of
 * /proc/PID/environ per process (a zombie's is empty, so it does not count).
 */
export async function hookProcesses(stateDir: string): Promise<string[]> {
  const marker = Buffer.from(`\0BOOTC_PRESTAGE_STATE_DIRECTORY=${path.join(stateDir, 'hooks')}/`);
  const out: string[] = [];
  for (const name of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let environ: Buffer;
    try {
      environ = Buffer.concat([Buffer.from([0]), await fsp.readFile(`/proc/${name}/environ`)]);
    } catch {
      continue; // gone, or a kernel thread
    }
    if (!environ.includes(marker)) continue;
    const cmdline = await fsp.readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    out.push(`${name} ${cmdline.split('\0').filter(Boolean).join(' ')}`);
  }
  return out.sort();
}

async function busState(
  client: TestClient, timeoutMs: number, states: boolean,
): Promise<Pick<StateSnapshot, 'transactions' | 'transactionStates' | 'manager'>> {
  const opts = { timeoutMs };
  const [paths] = await client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions', '', [], opts);
  const transactions = [...(paths as string[])].sort();
  const transactionStates: Record<string, string> | null = states ? {} : null;
  for (const p of transactionStates ? transactions : []) {
    try {
      transactionStates![p] = String(await client.getProperty(SERVICE, p, TRANSACTION_IFACE, 'State', opts));
    } catch (e) {
      // Pruned between the two calls: that is a change, shown as such.
      transactionStates![p] = `unreadable: ${(e as Error).message}`;
    }
  }
  const props = await client.getAllProperties(SERVICE, MANAGER_PATH, MANAGER_IFACE, opts);
  return {
    transactions,
    transactionStates,
    manager: { State: String(props['State']), ActiveTransaction: String(props['ActiveTransaction']) },
  };
}

/** Capture the state now (see StateSnapshot). */
export async function captureState(opts: CaptureOptions): Promise<StateSnapshot> {
  const hookFiles: Record<string, string> = {};
  for (const d of HOOK_DIRS) await listTree(path.join(opts.root, d), d, hookFiles);
  const stateFiles: Record<string, string> = {};
  for (const d of STATE_SUBDIRS) await listTree(path.join(opts.stateDir, d), d, stateFiles);
  const watched: Record<string, string> = {};
  for (const d of opts.watch ?? []) await listTree(d, d, watched);
  const bus = opts.client
    ? await busState(opts.client, opts.timeoutMs ?? 10_000, opts.transactionStates !== false)
    : { transactions: null, transactionStates: null, manager: null };
  const processes = opts.processes === false ? null : await hookProcesses(opts.stateDir);
  return { hookFiles, stateFiles, watched, ...bus, processes };
}

function diffRecord(what: string, a: Record<string, string>, b: Record<string, string>, out: string[]): void {
  for (const k of Object.keys(a)) {
    if (!(k in b)) out.push(`${what}: removed ${k} (${a[k]})`);
    else if (a[k] !== b[k]) out.push(`${what}: changed ${k}: ${a[k]} -> ${b[k]}`);
  }
  for (const k of Object.keys(b)) if (!(k in a)) out.push(`${what}: added ${k} (${b[k]})`);
}

function diffList(what: string, a: readonly string[] | null, b: readonly string[] | null, out: string[]): void {
  if (a === null || b === null) return;
  for (const x of a) if (!b.includes(x)) out.push(`${what}: gone ${x}`);
  for (const x of b) if (!a.includes(x)) out.push(`${what}: new ${x}`);
}

/**
 * What differs from `before` to `after`, one readable line per difference;
 * empty when nothing changed. Parts missing from either capture (no client,
 * no process scan) are not compared.
 */
export function diffStates(before: StateSnapshot, after: StateSnapshot): string[] {
  const out: string[] = [];
  diffRecord('hook files', before.hookFiles, after.hookFiles, out);
  diffRecord('state directory', before.stateFiles, after.stateFiles, out);
  diffRecord('watched', before.watched, after.watched, out);
  diffList('transactions', before.transactions, after.transactions, out);
  if (before.transactionStates && after.transactionStates) {
    diffRecord('transaction State', before.transactionStates, after.transactionStates, out);
  }
  if (before.manager && after.manager) {
    for (const k of ['State', 'ActiveTransaction'] as const) {
      if (before.manager[k] !== after.manager[k]) out.push(`manager ${k}: ${before.manager[k]} -> ${after.manager[k]}`);
    }
  }
  diffList('hook processes', before.processes, after.processes, out);
  return out;
}

export interface QuietOptions {
  /** Give up after this long (default 30 s). */
  timeoutMs?: number;
  /** Two captures this far apart must be equal (default 250 ms: over the log's 100 ms flush). */
  stableMs?: number;
}

/**
 * Wait until the daemon is idle (manager State `idle`, no hook process) and
 * the state stays the same for `stableMs`; resolves with that state. Use it
 * after a call that may start work, before taking a baseline.
 */
export async function waitForQuietState(opts: CaptureOptions, q: QuietOptions = {}): Promise<StateSnapshot> {
  const deadline = Date.now() + (q.timeoutMs ?? 30_000);
  const stableMs = q.stableMs ?? 250;
  const capture = () => captureState({ ...opts, processes: true, transactionStates: true });
  let last = await capture();
  for (;;) {
    await sleep(stableMs);
    const now = await capture();
    const idle = (now.manager === null || now.manager.State === 'idle') && (now.processes ?? []).length === 0;
    if (idle && diffStates(last, now).length === 0) return now;
    if (Date.now() > deadline) {
      throw new Error(`the daemon's state did not settle within ${q.timeoutMs ?? 30_000} ms: ` +
        `manager ${JSON.stringify(now.manager)}, still changing: ${diffStates(last, now).slice(0, 10).join('; ') || '(none)'}`);
    }
    last = now;
  }
}
