/**
 * busctl as an independent client: it shares no code with the daemon (or
 * with dbus-next), so what it sees is what any other client sees. Runs as
 * root or, through setpriv, as another uid to exercise the bus policy and
 * the daemon's own uid checks.
 */
import { execFile } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { lineCollector, spawnTied, terminate, sleep } from './processes.js';

/** uid (and gid) of the unprivileged caller in policy tests: nobody/nogroup. */
export const NOBODY = 65534;

export interface RunAsOptions {
  /** Run as this uid, with gid equal to it and no supplementary groups. */
  uid?: number;
  /** Kill the command after this long (default 20 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface RunResult {
  /** Exit status; null when killed by a signal (e.g. the timeout). */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run `argv` and collect its output; never rejects on a non-zero exit.
 * With `uid`, through `setpriv --reuid=U --regid=U --clear-groups`.
 */
export function runAs(argv: string[], opts: RunAsOptions = {}): Promise<RunResult> {
  const asSelf = opts.uid === undefined || opts.uid === process.getuid?.();
  const full = asSelf
    ? argv
    : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', '--', ...argv];
  return new Promise((resolve, reject) => {
    execFile(full[0]!, full.slice(1), {
      timeout: opts.timeoutMs ?? 20_000, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024,
      env: opts.env ?? process.env, cwd: '/',
    }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(new Error(`cannot run ${full.join(' ')}: ${err.message}`));
        return;
      }
      const code = err ? ((err as { code?: number }).code ?? null) : 0;
      resolve({ code: err && (err as { killed?: boolean }).killed ? null : code, stdout, stderr });
    });
  });
}

/** `busctl --address=ADDRESS args...` (as `opts.uid` if given). */
export function busctl(address: string, args: string[], opts: RunAsOptions = {}): Promise<RunResult> {
  return runAs(['busctl', `--address=${address}`, ...args], opts);
}

/** One D-Bus value as busctl --json=short prints it. */
export interface BusctlJson {
  type: string;
  data: unknown[];
}

/** A failed busctl call: the D-Bus error as busctl reports it. */
export class BusctlError extends Error {
  readonly result: RunResult;
  constructor(what: string, result: RunResult) {
    super(`${what} failed (exit ${result.code}): ${result.stderr.trim() || result.stdout.trim()}`);
    this.name = 'BusctlError';
    this.result = result;
  }
}

/**
 * `busctl call DEST PATH IFACE MEMBER [SIGNATURE ARGS...]`, returning the
 * result; never rejects on a D-Bus error (look at `code` and `stderr`;
 * busctl prints the error message, not its name: see `isAccessDenied`).
 * `args` are busctl's textual argument syntax (`'as', '2', 'a', 'b'`).
 */
export function busctlCall(
  address: string, dest: string, objPath: string, iface: string, member: string,
  signatureAndArgs: string[] = [], opts: RunAsOptions & { json?: boolean; timeoutSec?: number } = {},
): Promise<RunResult> {
  const flags = [`--timeout=${opts.timeoutSec ?? 10}`];
  if (opts.json) flags.push('--json=short');
  return busctl(address, [...flags, 'call', dest, objPath, iface, member, ...signatureAndArgs], opts);
}

/**
 * Like busctlCall with --json=short, parsed; rejects with BusctlError when
 * the call fails. A method with no return value gives `{ type: '', data: [] }`.
 */
export async function busctlCallJson(
  address: string, dest: string, objPath: string, iface: string, member: string,
  signatureAndArgs: string[] = [], opts: RunAsOptions & { timeoutSec?: number } = {},
): Promise<BusctlJson> {
  const r = await busctlCall(address, dest, objPath, iface, member, signatureAndArgs, { ...opts, json: true });
  if (r.code !== 0) throw new BusctlError(`busctl call ${member}`, r);
  const text = r.stdout.trim();
  if (text === '') return { type: '', data: [] };
  return JSON.parse(text) as BusctlJson;
}

/** `busctl get-property --json=short`, parsed: `{ type, data }` (data is the bare value). */
export async function busctlGetProperty(
  address: string, dest: string, objPath: string, iface: string, property: string,
  opts: RunAsOptions = {},
): Promise<{ type: string; data: unknown }> {
  const r = await busctl(address, ['--json=short', 'get-property', dest, objPath, iface, property], opts);
  if (r.code !== 0) throw new BusctlError(`busctl get-property ${property}`, r);
  return JSON.parse(r.stdout.trim()) as { type: string; data: unknown };
}

/**
 * True when busctl's failure is the bus (or a service) refusing access.
 * busctl prints only the error's message; dbus-daemon's policy denials
 * read "Access denied" / "... rejected send message ..." (ENOACCES
 * from sd-bus prints "Access denied"), and sd-bus maps
 * org.freedesktop.DBus.Error.AccessDenied to EACCES, which prints as
 * "Permission denied" when no message is given.
 */
export function isAccessDenied(r: RunResult): boolean {
  return r.code !== 0 && /access denied|permission denied|rejected send message|not allowed to own/i.test(r.stderr);
}

/**
 * Ask the bus for `name` as a connection of `uid`
 * (RequestName with DO_NOT_QUEUE): resolves with RequestName's reply
 * (1 = primary owner) or rejects with BusctlError (AccessDenied when the
 * policy forbids). The connection, and so the name, goes when busctl exits.
 */
export async function requestNameAs(address: string, name: string, opts: RunAsOptions = {}): Promise<number> {
  const r = await busctlCallJson(address, 'org.freedesktop.DBus', '/org/freedesktop/DBus',
    'org.freedesktop.DBus', 'RequestName', ['su', name, '4'], opts);
  return Number(r.data[0]);
}

/** A running `busctl monitor`. */
export interface BusctlMonitor {
  /** Messages seen so far, parsed from --json=short (one object per message). */
  messages(): Record<string, unknown>[];
  /** Resolve with the first message matching `pred` (also one already seen). */
  waitFor(pred: (m: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
  process: ChildProcess;
}

/**
 * `busctl monitor --json=short [MATCH...]` as root (it becomes a bus
 * monitor, which needs the root policy for org.freedesktop.DBus.Monitoring
 * that startBus adds). Register `stop` in teardown.
 */
export async function busctlMonitor(address: string, matches: string[] = []): Promise<BusctlMonitor> {
  const args = [`--address=${address}`, '--json=short'];
  for (const m of matches) args.push(`--match=${m}`);
  const child = spawnTied('busctl', [...args, 'monitor'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = lineCollector(child.stdout);
  const err = lineCollector(child.stderr);
  const parsed = (): Record<string, unknown>[] => out.lines
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  // busctl logs this line after BecomeMonitor succeeded: from then on no
  // message is missed.
  const deadline = Date.now() + 10_000;
  while (!err.lines.some((l) => l.includes('Monitoring bus message stream'))) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      await terminate(child, { graceMs: 1000 });
      throw new Error(`busctl monitor did not start: ${err.lines.join('\n')}`);
    }
    await sleep(10);
  }
  return {
    messages: parsed,
    async waitFor(pred, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = parsed().find(pred);
        if (hit) return hit;
        if (Date.now() > deadline || child.exitCode !== null) {
          throw new Error(`busctl monitor: no matching message within ${timeoutMs} ms; saw ${out.lines.length} lines; stderr: ${err.lines.join('\n')}`);
        }
        await sleep(20);
      }
    },
    async stop() { await terminate(child, { graceMs: 2000 }); },
    process: child,
  };
}
