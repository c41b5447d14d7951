/**
 * What the benchmarks run against, without ava: a private dbus-daemon with
 * the system bus's default policy plus the project's own policy file, a
 * real ostree sysroot, the real daemon built by `npm run build`, and a
 * low-level dbus-next client (no proxy objects: they leak match rules).
 *
 * These are small standalone equivalents of test/helpers/{bus,ostree,
 * daemon,dbus-client}.ts, which import ava's types and carry test-only
 * machinery the benchmarks do not need.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, promises as fsp, readFileSync, readdirSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MessageBus } from 'dbus-next';
import {
  BUS_DAEMON, BUS_DAEMON_PATH, CoreConnection, Message, MessageType, openMessageBus,
} from '../../service/connection/core.js';
import {
  BUS_NAME, MANAGER_PATH, TRANSACTION_INTERFACE, TRANSACTION_PATH_PREFIX,
} from '../../service/protocol/members.js';

/** The repository root: dist/test/bench/../../.. or test/bench/../.. */
export const REPO_ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root');
    dir = up;
  }
  return dir;
})();

/** The daemon as it ships: packaging/build.mjs's bundle of tsc's output. */
export const DAEMON_ENTRY = path.join(REPO_ROOT, 'dist', 'bootc-prestaged.mjs');
export const SERVICE = BUS_NAME;
export { MANAGER_PATH };
export const TX_IFACE = TRANSACTION_INTERFACE;
export const TX_PREFIX = TRANSACTION_PATH_PREFIX;
const DBUS = BUS_DAEMON;
const DBUS_PATH = BUS_DAEMON_PATH;

/** What an interrupted run must not leave behind: live children and temporary directories. */
const liveChildren = new Set<ChildProcess>();
const liveDirs = new Set<string>();

/** Remember a child so an interrupted run kills it (cleanUpOnSignal). */
export function track(child: ChildProcess): ChildProcess {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  return child;
}

/**
 * On SIGINT or SIGTERM: kill every daemon, bus and load process this run
 * started, remove its directories, and exit 130.
 */
export function cleanUpOnSignal(): void {
  const handler = () => {
    for (const c of liveChildren) c.kill('SIGKILL');
    for (const dir of liveDirs) {
      try {
        const base = path.join(dir, 'ostree', 'deploy');
        const roots = existsSync(base) ? readdirSync(base).flatMap((os) => {
          const d = path.join(base, os, 'deploy');
          return existsSync(d) ? readdirSync(d).filter((n) => /^[0-9a-f]{64}\.\d+$/.test(n)).map((n) => path.join(d, n)) : [];
        }) : [];
        if (roots.length > 0) execFileSync('chattr', ['-i', ...roots], { stdio: 'ignore' });
      } catch { /* best effort */ }
      rmSync(dir, { recursive: true, force: true });
    }
    process.exit(130);
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
}

export function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, env: { ...process.env, LANG: 'C.UTF-8' } }, (err, out, errOut) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${errOut}`));
      else resolve(out);
    });
  });
}

/** A fresh directory under the system temporary directory (canonical path). */
export async function makeDir(prefix: string, mode = 0o755): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(await fsp.realpath(os.tmpdir()), `bootc-prestage-bench-${prefix}-`));
  liveDirs.add(dir);
  await fsp.chmod(dir, mode);
  return dir;
}

/** Remove a tree that may hold an ostree sysroot (deployment roots are chattr +i). */
export async function removeTree(dir: string): Promise<void> {
  const base = path.join(dir, 'ostree', 'deploy');
  const roots: string[] = [];
  for (const osname of await fsp.readdir(base).catch(() => [] as string[])) {
    for (const n of await fsp.readdir(path.join(base, osname, 'deploy')).catch(() => [] as string[])) {
      if (/^[0-9a-f]{64}\.\d+$/.test(n)) roots.push(path.join(base, osname, 'deploy', n));
    }
  }
  if (roots.length > 0) await run('chattr', ['-i', ...roots]).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 });
  liveDirs.delete(dir);
}

// ---------------------------------------------------------------------------
// Files

/** Write `content` with `mode` exactly (the umask does not apply). */
export async function writeFile(file: string, content: string, mode = 0o644): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
  await fsp.writeFile(file, content, { mode });
  await fsp.chmod(file, mode);
}

/** A hook file for <root>/etc/bootc/pre-stage.d. */
export function hookFile(prepare: string, extra = ''): string {
  return `[Hook]\nPrepare=${prepare}\n${extra}`;
}

export function hookDir(root: string): string {
  return path.join(root, 'etc', 'bootc', 'pre-stage.d');
}

// ---------------------------------------------------------------------------
// Bus

export interface Bus {
  address: string;
  pid: number;
  dir: string;
  stop(): Promise<void>;
}

function policies(): string {
  const conf = readFileSync('/usr/share/dbus-1/system.conf', 'utf8').replace(/<!--[\s\S]*?-->/g, '');
  return (conf.match(/<policy\b[\s\S]*?<\/policy>/g) ?? []).join('\n');
}

/** dbus-daemon with a system-like configuration and the project's policy. */
export async function startBus(): Promise<Bus> {
  const dir = await makeDir('bus');
  const socket = path.join(dir, 'bus');
  const config = path.join(dir, 'bus.conf');
  await writeFile(config, [
    '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
    ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
    '<busconfig>', '  <type>system</type>', '  <auth>EXTERNAL</auth>',
    `  <listen>unix:path=${socket}</listen>`,
    policies(),
    // A bare Node.js process owns a name of its own in the start-up baseline.
    '  <policy user="root"><allow own="org.containers.bootc.BenchBaseline"/></policy>',
    `  <include>${path.join(REPO_ROOT, 'dbus', 'org.containers.bootc.PreStage.conf')}</include>`,
    '</busconfig>', '',
  ].join('\n'));
  const child = track(spawn('dbus-daemon', [`--config-file=${config}`, '--nofork', '--print-address=1', '--nopidfile', '--nosyslog'],
    { stdio: ['ignore', 'pipe', 'inherit'] }));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dbus-daemon printed no address in 10 s')), 10_000);
    child.stdout!.once('data', () => { clearTimeout(timer); resolve(); });
    child.once('exit', (c) => { clearTimeout(timer); reject(new Error(`dbus-daemon exited (${c})`)); });
  });
  child.stdout!.resume();
  return {
    address: `unix:path=${socket}`,
    pid: child.pid!,
    dir,
    async stop() {
      await stopChild(child, 5000);
      await removeTree(dir);
    },
  };
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------
// Client

export interface Signal {
  path: string;
  member: string;
  body: unknown[];
  /** performance.now() at arrival. */
  at: number;
}

/** A bus connection with timed calls and a signal log, on the project's connection core. */
export class Client {
  private readonly core: CoreConnection;

  private constructor(readonly bus: MessageBus) {
    this.core = new CoreConnection(bus, () => { /* reported by the calls that fail */ });
  }

  static async connect(address: string): Promise<Client> {
    try {
      return new Client(await openMessageBus(address, 10_000));
    } catch (e) {
      if ((e as { kind?: string }).kind === 'timeout') throw new Error(`no connection to ${address} in 10 s`);
      throw e;
    }
  }

  get uniqueName(): string {
    return this.core.uniqueName;
  }

  async call(dest: string, objPath: string, iface: string, member: string, signature = '', body: unknown[] = [],
    timeoutMs = 120_000): Promise<any[]> {
    const msg = new Message({ destination: dest, path: objPath, interface: iface, member, signature, body: body as any[] });
    const reply = await this.core.call(msg, timeoutMs, () => new Error(`${iface}.${member}: no reply in ${timeoutMs} ms`));
    return reply?.body ?? [];
  }

  /** Record signals matching `rule` (an AddMatch rule) from now on. */
  async record(rule: string, filter: (m: Message) => boolean = () => true): Promise<Recorder> {
    const signals: Signal[] = [];
    // Each waiter sees each new signal once: rescanning the whole log per
    // arrival made the recorder quadratic (a dry run of 3,000 hooks sends
    // 6,000 signals).
    const waiters = new Set<(s: Signal) => void>();
    const onMessage = (m: Message) => {
      if (m.type !== MessageType.SIGNAL || !filter(m)) return;
      const sig = { path: m.path, member: m.member, body: m.body, at: performance.now() };
      signals.push(sig);
      for (const w of waiters) w(sig);
    };
    this.bus.on('message', onMessage);
    await this.call(DBUS, DBUS_PATH, DBUS, 'AddMatch', 's', [rule]);
    return {
      signals,
      waitFor: (pred, timeoutMs = 600_000) => new Promise<Signal>((resolve, reject) => {
        const past = signals.find(pred);
        if (past) {
          resolve(past);
          return;
        }
        const check = (s: Signal) => {
          if (pred(s)) { done(); resolve(s); }
        };
        const timer = setTimeout(() => { done(); reject(new Error(`no matching signal for ${rule} in ${timeoutMs} ms`)); }, timeoutMs);
        const done = () => { clearTimeout(timer); waiters.delete(check); };
        waiters.add(check);
      }),
      stop: async () => {
        this.bus.off('message', onMessage);
        await this.call(DBUS, DBUS_PATH, DBUS, 'RemoveMatch', 's', [rule]).catch(() => undefined);
      },
    };
  }

  close(): void {
    this.core.disconnect();
  }
}

export interface Recorder {
  readonly signals: Signal[];
  waitFor(pred: (s: Signal) => boolean, timeoutMs?: number): Promise<Signal>;
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------
// ostree sysroot

export interface Sysroot {
  path: string;
  /** Newest first. */
  deployments: string[];
  /** The oldest deployment, standing in for the booted one. */
  bootedRoot: string;
  remove(): Promise<void>;
}

/** A real sysroot with two deployments, made with ostree as tests do. */
export async function makeSysroot(): Promise<Sysroot> {
  const dir = await makeDir('sysroot');
  const osname = 'benchos';
  const repo = path.join(dir, 'ostree', 'repo');
  await run('ostree', ['admin', 'init-fs', dir]);
  await run('ostree', ['admin', 'os-init', `--sysroot=${dir}`, osname]);
  for (let gen = 1; gen <= 2; gen++) {
    const tree = await makeDir('tree');
    const rel = `ID=${osname}\nPRETTY_NAME="bench OS"\n`;
    await writeFile(path.join(tree, 'usr/lib/os-release'), rel);
    await writeFile(path.join(tree, 'usr/etc/os-release'), rel);
    await writeFile(path.join(tree, 'usr/lib/modules/6.0.0-bench/vmlinuz'), 'not a kernel\n');
    await writeFile(path.join(tree, 'usr/lib/bench-generation'), `${gen}\n`);
    await run('ostree', [`--repo=${repo}`, 'commit', `--branch=${osname}/stable`, `--tree=dir=${tree}`,
      '--owner-uid=0', '--owner-gid=0', `--subject=bench ${gen}`]);
    await removeTree(tree);
    await run('ostree', ['admin', 'deploy', `--sysroot=${dir}`, `--os=${osname}`, '--retain', `${osname}/stable`]);
  }
  const status = await run('ostree', ['admin', 'status', `--sysroot=${dir}`]);
  const deployments: string[] = [];
  for (const line of status.split('\n')) {
    const m = /^\s*(?:[*]\s+)?(\S+)\s+([0-9a-f]{64})\.(\d+)(?:\s|$)/.exec(line);
    if (m) deployments.push(path.join(dir, 'ostree', 'deploy', m[1]!, 'deploy', `${m[2]}.${m[3]}`));
  }
  if (deployments.length !== 2) throw new Error(`expected 2 deployments, ostree admin status says:\n${status}`);
  return { path: dir, deployments, bootedRoot: deployments[1]!, remove: () => removeTree(dir) };
}

// ---------------------------------------------------------------------------
// The daemon

export interface Daemon {
  pid: number;
  child: ChildProcess;
  stateDir: string;
  root: string;
  /** ms from spawn to owning the name, as seen by a client on the bus. */
  startMs: number;
  stop(): Promise<void>;
}

export interface DaemonOptions {
  bus: Bus;
  sysroot: Sysroot;
  stateDir: string;
  root: string;
  args?: string[];
  /** Where the daemon's stdout (its log) goes; default /dev/null. */
  logFile?: string;
  /** The daemon's entry point; default this tree's build (DAEMON_ENTRY). */
  entry?: string;
}

/**
 * Spawn `argv` (after node) and resolve once the process owns `name`:
 * the time is measured from just before spawn to the NameOwnerChanged
 * signal naming a connection of this very process.
 */
export async function spawnOwner(address: string, name: string, argv: string[], logFile?: string):
  Promise<{ child: ChildProcess; startMs: number }> {
  const watcher = await Client.connect(address);
  try {
    const rec = await watcher.record(`type='signal',sender='${DBUS}',member='NameOwnerChanged',arg0='${name}'`);
    const out = logFile ? openSync(logFile, 'a') : 'ignore';
    const t0 = performance.now();
    const child = track(spawn(process.execPath, argv, { stdio: ['ignore', out, 'pipe'], env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: address } }));
    if (typeof out === 'number') closeSync(out);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<never>((_, reject) => child.once('exit', (c, s) =>
      reject(new Error(`${argv.join(' ')} exited (${c ?? s}) before owning ${name}:\n${stderr}`))));
    exited.catch(() => undefined);
    for (let seen = 0; ;) {
      const sig = await Promise.race([rec.waitFor((s, ) => rec.signals.indexOf(s) >= seen && s.body[2] !== '', 60_000), exited]);
      seen = rec.signals.indexOf(sig) + 1;
      const [pid] = await watcher.call(DBUS, DBUS_PATH, DBUS, 'GetConnectionUnixProcessID', 's', [sig.body[2]]).catch(() => [-1]);
      if (Number(pid) === child.pid) {
        await rec.stop();
        return { child, startMs: sig.at - t0 };
      }
    }
  } finally {
    watcher.close();
  }
}

export async function startDaemon(o: DaemonOptions): Promise<Daemon> {
  const argv = [
    o.entry ?? DAEMON_ENTRY, '--bus', o.bus.address, '--state-dir', o.stateDir, '--root', o.root,
    '--sysroot', o.sysroot.path, '--booted-root', o.sysroot.bootedRoot, ...(o.args ?? []),
  ];
  const { child, startMs } = await spawnOwner(o.bus.address, SERVICE, argv, o.logFile);
  return {
    pid: child.pid!, child, stateDir: o.stateDir, root: o.root, startMs,
    stop: () => stopChild(child, 15_000),
  };
}

/** VmRSS (or another "Vm" field) of a process, in kB. */
export function vmField(pid: number, field = 'VmRSS'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** CPU time (user + system) a process has used, in ms (clock ticks of 10 ms). */
export function cpuMs(pid: number): number {
  const { user, system } = cpuSplitMs(pid);
  return user + system;
}

/** CPU time a process has used in user and in system (kernel) mode, in ms (clock ticks of 10 ms). */
export function cpuSplitMs(pid: number): { user: number; system: number } {
  const text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) are f[11] and f[12].
  return { user: Number(f[11]) * 10, system: Number(f[12]) * 10 };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
