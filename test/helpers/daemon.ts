/**
 * The real daemon (`node dist/bootc-prestaged.mjs`, the bundle that ships,
 * built by `npm run build`, which `npm test` runs first) on a private test bus, and
 * `withDaemon`, in the shape of got's `withServer`: bus, sysroot, state
 * directory, root directory, daemon and a client, all torn down by the
 * test's teardown, leaving no process behind.
 */
import { existsSync, promises as fsp, readdirSync, statSync } from 'node:fs';
import { execFileSync, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { startBus, type BusPolicy, type TestBus } from './bus.js';
import { TestClient, SERVICE } from './dbus-client.js';
import { makeSysroot, type MakeSysrootOptions, type Sysroot } from './ostree.js';
import {
  exited, exitedWithin, killPids, lineCollector, processesMentioning, spawnTied, terminate,
  type ExitInfo, type FoundProcess,
} from './processes.js';
import { makeTmpDir, removeDir, REPO_ROOT, writeFiles, type FileSpec } from './tmp.js';

/** The daemon's entry point as `npm run build` emits it (packaging/build.mjs bundles tsc's output). */
export const DAEMON_ENTRY = path.join(REPO_ROOT, 'dist', 'bootc-prestaged.mjs');

/**
 * Makes sure the bundle `entry` holds the code tsc last emitted: a bundle
 * older than any file under dist/service (a bare `tsc` since the last
 * `npm run build`, here or by someone sharing the tree) is rebuilt with
 * packaging/build.mjs's bundles step, which derives it from dist/ alone
 * and writes by rename, so concurrent test workers may both do it. Without
 * this a test would pass or fail on yesterday's daemon.
 */
export function ensureBuilt(entry: string): void {
  const tscOutput = path.join(REPO_ROOT, 'dist', 'service');
  if (!existsSync(tscOutput)) throw new Error(`${tscOutput} does not exist: run 'npm run build' (npm test runs it first)`);
  const builtAt = existsSync(entry) ? statSync(entry).mtimeMs : -1;
  const newer = (dir: string): boolean => readdirSync(dir, { withFileTypes: true }).some((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? newer(p) : e.name.endsWith('.js') && statSync(p).mtimeMs > builtAt;
  });
  if (!newer(tscOutput)) return;
  try {
    execFileSync(process.execPath, [path.join(REPO_ROOT, 'packaging', 'build.mjs'), 'bundles'], { stdio: 'pipe' });
  } catch (e) {
    throw new Error(`${entry} is older than tsc's output and rebuilding it failed: ${String((e as { stderr?: Buffer }).stderr ?? e)}`);
  }
}

export interface StartDaemonOptions {
  bus: TestBus;
  /** Journal and logs; made (and removed on stop) when absent. */
  stateDir?: string;
  /** --root: hook directories DIR/etc/bootc/pre-stage.d and DIR/run/...; made (and removed on stop) when absent. */
  root?: string;
  /** A Sysroot or a path; when absent, a makeSysroot() removed on stop. */
  sysroot?: Sysroot | string;
  /** --booted-root; default: the Sysroot's bootedRoot (with a path, the daemon's own default). */
  bootedRoot?: string;
  /** More arguments, after the harness's (a repeated option overrides). */
  args?: string[];
  /** Added to the environment. */
  env?: Record<string, string>;
  /** How long to wait for the daemon to own its name (default 30 s). */
  timeoutMs?: number;
}

export interface TestDaemon {
  pid: number;
  process: ChildProcess;
  /** The daemon's unique name on the bus (":1.N"). */
  uniqueName: string;
  /** Full argv after `node`. */
  argv: string[];
  stateDir: string;
  root: string;
  sysrootPath: string;
  /** Captured stdout lines (JSON log lines with --log-format json). */
  logs(): string[];
  /** Captured stderr lines. */
  stderrLines(): string[];
  /** stdout lines that parse as JSON objects, in order. */
  jsonLogs(): Record<string, unknown>[];
  /** First JSON log entry (past or future) for which `pred` holds. */
  waitForLog(pred: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Send `signal` (default SIGTERM) and wait (up to `timeoutMs`, default 15 s) for the exit. */
  kill(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ExitInfo>;
  /**
   * SIGTERM and wait. If it is still running after `graceMs` (default
   * 10 s) it is SIGKILLed and stop rejects: a daemon must honour SIGTERM.
   * On an exited daemon, returns how it ended.
   */
  stop(graceMs?: number): Promise<ExitInfo>;
  /** Resolves when the process has exited. */
  waitExit(): Promise<ExitInfo>;
  /** True once the process has exited. */
  readonly hasExited: boolean;
}

function lastLines(lines: string[], n = 40): string {
  return lines.slice(-n).join('\n');
}

/**
 * Start the daemon on `opts.bus` and resolve once it is the owner of
 * org.containers.bootc.PreStage (checked by pid, so an older owner does
 * not count). Rejects with the daemon's output if it exits or is not
 * ready in time.
 */
export async function startDaemon(opts: StartDaemonOptions): Promise<TestDaemon> {
  ensureBuilt(DAEMON_ENTRY);
  const owned: { dirs: string[]; sysroot: Sysroot | null } = { dirs: [], sysroot: null };
  const ownDir = async (prefix: string): Promise<string> => {
    const d = await makeTmpDir({ prefix });
    owned.dirs.push(d);
    return d;
  };
  const stateDir: string = opts.stateDir ?? await ownDir('state-');
  const root: string = opts.root ?? await ownDir('root-');
  let sysroot: Sysroot | string;
  if (opts.sysroot === undefined) {
    owned.sysroot = await makeSysroot();
    sysroot = owned.sysroot;
  } else {
    sysroot = opts.sysroot;
  }
  const sysrootPath: string = typeof sysroot === 'string' ? sysroot : sysroot.path;
  const bootedRoot: string | undefined = opts.bootedRoot ?? (typeof sysroot === 'string' ? undefined : sysroot.bootedRoot);
  const cleanupOwned = async () => {
    await owned.sysroot?.remove();
    for (const d of owned.dirs) await removeDir(d);
  };

  const argv = [
    DAEMON_ENTRY,
    '--bus', opts.bus.address,
    '--state-dir', stateDir,
    '--root', root,
    '--sysroot', sysrootPath,
    ...(bootedRoot ? ['--booted-root', bootedRoot] : []),
    '--log-level', 'debug',
    '--log-format', 'json',
    ...(opts.args ?? []),
  ];
  const env: NodeJS.ProcessEnv = { ...process.env };
  // Whatever the daemon does, it can reach no bus but the test's, and does
  // not think it runs under systemd.
  env['DBUS_SYSTEM_BUS_ADDRESS'] = opts.bus.address;
  env['DBUS_SESSION_BUS_ADDRESS'] = opts.bus.address;
  delete env['JOURNAL_STREAM'];
  delete env['NOTIFY_SOCKET'];
  delete env['INVOCATION_ID'];
  Object.assign(env, opts.env ?? {});

  const child = spawnTied(process.execPath, argv, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = lineCollector(child.stdout);
  const err = lineCollector(child.stderr);
  // A holder, not a `let`: TypeScript would keep narrowing a `let` to null.
  const state: { exit: ExitInfo | null } = { exit: null };
  const exitPromise = exited(child).then((info) => { state.exit = info; return info; });
  const describe = () =>
    `bootc-prestaged ${argv.slice(1).join(' ')}\n--- stdout ---\n${lastLines(out.lines)}\n--- stderr ---\n${lastLines(err.lines)}`;

  const jsonLogs = (): Record<string, unknown>[] => {
    const entries: Record<string, unknown>[] = [];
    for (const l of out.lines) {
      if (!l.startsWith('{')) continue;
      try {
        const v = JSON.parse(l) as unknown;
        if (v !== null && typeof v === 'object' && !Array.isArray(v)) entries.push(v as Record<string, unknown>);
      } catch { /* not JSON */ }
    }
    return entries;
  };

  let stopped = false;
  const daemon: TestDaemon = {
    pid: child.pid!,
    process: child,
    uniqueName: '',
    argv,
    stateDir,
    root,
    sysrootPath,
    logs: () => [...out.lines],
    stderrLines: () => [...err.lines],
    jsonLogs,
    async waitForLog(pred, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = jsonLogs().find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`no matching log entry within ${timeoutMs} ms\n${describe()}`);
        const ended = state.exit;
        if (ended) throw new Error(`the daemon exited (${ended.code ?? ended.signal}) before a matching log entry\n${describe()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async kill(signal = 'SIGTERM', timeoutMs = 15_000) {
      if (!state.exit) child.kill(signal);
      const info = await exitedWithin(child, timeoutMs);
      if (!info) throw new Error(`the daemon did not exit within ${timeoutMs} ms of ${signal}\n${describe()}`);
      return info;
    },
    async stop(graceMs = 10_000) {
      const wasRunning = !state.exit;
      const r = await terminate(child, { signal: 'SIGTERM', graceMs });
      if (!stopped) {
        stopped = true;
        await cleanupOwned();
      }
      if (wasRunning && r.killed) {
        throw new Error(`the daemon ignored SIGTERM for ${graceMs} ms and was killed\n${describe()}`);
      }
      return { code: r.code, signal: r.signal };
    },
    waitExit: () => exitPromise,
    get hasExited() { return state.exit !== null; },
  };

  // Ready: the name has an owner and that owner is this process.
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let client: TestClient | null = null;
  try {
    client = await TestClient.connect(opts.bus.address);
    const rec = await client.collectSignals({
      sender: 'org.freedesktop.DBus', interface: 'org.freedesktop.DBus', member: 'NameOwnerChanged', arg0: SERVICE,
    });
    const ownerPid = async (owner: string): Promise<number> => {
      const [pid] = await client!.call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
        'GetConnectionUnixProcessID', 's', [owner]);
      return Number(pid);
    };
    const deadline = Date.now() + timeoutMs;
    let seen = 0;
    let candidate = await client.nameOwner(SERVICE);
    for (;;) {
      if (candidate && await ownerPid(candidate).catch(() => -1) === child.pid) {
        daemon.uniqueName = candidate;
        break;
      }
      const info = state.exit;
      if (info) {
        throw new Error(`the daemon exited (${info.code ?? info.signal}) before owning ${SERVICE}\n${describe()}`);
      }
      if (Date.now() > deadline) throw new Error(`the daemon did not own ${SERVICE} within ${timeoutMs} ms\n${describe()}`);
      const next = rec.signals.slice(seen).find((s) => s.body[2] !== '');
      seen = rec.signals.length;
      candidate = next ? String(next.body[2]) : null;
      if (!candidate) {
        await Promise.race([exitPromise, new Promise((r) => setTimeout(r, 25))]);
      }
    }
    await rec.stop();
  } catch (e) {
    client?.close();
    await daemon.stop(2000).catch(() => undefined);
    throw e;
  }
  client.close();
  return daemon;
}

export interface WithDaemonOptions {
  /** Bus policy (default 'shipped'). */
  policy?: BusPolicy;
  /** Bus activation directory (see bus.ts). */
  servicedir?: string;
  /** More bus configuration (StartBusOptions.extraConfig), e.g. polkit's policy (helpers/polkit.ts). */
  busExtraConfig?: string;
  /** Options for a fresh sysroot, or one to use (removed in teardown either way), or a path (not removed). */
  sysroot?: MakeSysrootOptions | Sysroot | string;
  /** --booted-root (default the sysroot's bootedRoot). */
  bootedRoot?: string;
  /** Files written to <root>/etc/bootc/pre-stage.d before the daemon starts. */
  etcHooks?: Record<string, FileSpec>;
  /** Files written to <root>/run/bootc/pre-stage.d before the daemon starts. */
  runHooks?: Record<string, FileSpec>;
  /** Any files under <root> (relative paths). */
  rootFiles?: Record<string, FileSpec>;
  args?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
}

export interface DaemonContext {
  bus: TestBus;
  sysroot: Sysroot | string;
  /** Per-test directory holding `stateDir` and `root`. */
  dir: string;
  stateDir: string;
  root: string;
  /** The running daemon; replaced by `restart`. */
  daemon: TestDaemon;
  /** A root client on the bus. */
  client: TestClient;
  /**
   * Stop the daemon if it runs (or accept that a test killed it), then start
   * a new one on the same bus, state, root and sysroot. `overrides` replace
   * the options given to withDaemon for this and later restarts.
   */
  restart(overrides?: { args?: string[]; env?: Record<string, string>; bootedRoot?: string }): Promise<TestDaemon>;
}

function isSysroot(v: unknown): v is Sysroot {
  return typeof v === 'object' && v !== null && 'deployments' in v && 'remove' in v;
}

/**
 * Everything an integration test needs, torn down in `t.teardown` (also on
 * failure) in reverse order: client, daemon, sysroot, bus, directories.
 *
 * After the daemon's teardown stop, no process may mention the test's
 * directories or sysroot (hook steps carry them in their environment): if
 * the daemon was stopped gracefully by the teardown and one is left, the
 * teardown kills it and fails the test; if the test itself killed the
 * daemon (a crash test without restart), leftovers are killed quietly.
 */
export async function withDaemon(t: ExecutionContext<unknown>, opts: WithDaemonOptions = {}): Promise<DaemonContext> {
  const dir = await makeTmpDir({ prefix: 'prestage-', mode: 0o755 });
  t.teardown(() => removeDir(dir));
  const stateDir = path.join(dir, 'state');
  const root = path.join(dir, 'root');
  await fsp.mkdir(stateDir, { mode: 0o755 });
  await fsp.mkdir(root, { mode: 0o755 });
  const files: Record<string, FileSpec> = { ...(opts.rootFiles ?? {}) };
  for (const [n, f] of Object.entries(opts.etcHooks ?? {})) files[`etc/bootc/pre-stage.d/${n}`] = f;
  for (const [n, f] of Object.entries(opts.runHooks ?? {})) files[`run/bootc/pre-stage.d/${n}`] = f;
  await writeFiles(root, files);

  const bus = await startBus({
    ...(opts.policy ? { policy: opts.policy } : {}),
    ...(opts.servicedir ? { servicedir: opts.servicedir } : {}),
    ...(opts.busExtraConfig ? { extraConfig: opts.busExtraConfig } : {}),
  });
  t.teardown(() => bus.stop());

  let sysroot: Sysroot | string;
  if (typeof opts.sysroot === 'string') {
    sysroot = opts.sysroot;
  } else {
    const s = isSysroot(opts.sysroot) ? opts.sysroot : await makeSysroot(opts.sysroot ?? {});
    t.teardown(() => s.remove());
    sysroot = s;
  }
  const sysrootPath = typeof sysroot === 'string' ? sysroot : sysroot.path;

  let current = {
    args: opts.args, env: opts.env, bootedRoot: opts.bootedRoot,
  };
  const launch = () => startDaemon({
    bus, stateDir, root, sysroot,
    ...(current.bootedRoot ? { bootedRoot: current.bootedRoot } : {}),
    ...(current.args ? { args: current.args } : {}),
    ...(current.env ? { env: current.env } : {}),
    ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
  });

  const ctx: DaemonContext = {
    bus, sysroot, dir, stateDir, root,
    daemon: undefined as unknown as TestDaemon,
    client: undefined as unknown as TestClient,
    async restart(overrides = {}) {
      if (!ctx.daemon.hasExited) await ctx.daemon.stop();
      current = { ...current, ...overrides };
      ctx.daemon = await launch();
      return ctx.daemon;
    },
  };

  t.teardown(async () => {
    const d = ctx.daemon as TestDaemon | undefined;
    const graceful = d !== undefined && !d.hasExited;
    let stopError: unknown = null;
    if (d) await d.stop().catch((e: unknown) => { stopError = e; });
    const left: FoundProcess[] = [
      ...await processesMentioning(dir),
      ...await processesMentioning(sysrootPath),
    ].filter((p, i, all) => all.findIndex((q) => q.pid === p.pid) === i);
    await killPids(left.map((p) => p.pid));
    if (stopError) throw stopError;
    if (graceful && left.length > 0) {
      throw new Error(`processes left running after the daemon stopped on SIGTERM:\n${
        left.map((p) => `  ${p.pid} ${p.cmdline}`).join('\n')}`);
    }
  });
  ctx.daemon = await launch();

  const client = await TestClient.connect(bus.address);
  t.teardown(() => client.close());
  ctx.client = client;
  return ctx;
}

/**
 * The deployments of the sysroot withDaemon made (newest first: the staged
 * one is [0]); throws when the test passed a sysroot path of its own.
 */
export function deploymentsOf(ctx: DaemonContext): string[] {
  if (!isSysroot(ctx.sysroot)) throw new Error(`deploymentsOf: the sysroot ${ctx.sysroot} was given as a path`);
  return ctx.sysroot.deployments;
}
