/**
 * Running the real `bootc-prestage` command (dist/bootc-prestage.mjs, the bundle,
 * built by `npm run build`, which `npm test` runs first) against a test
 * bus: to completion with its output collected, or in the background to
 * interrupt it; and small builders for the hook files the CLI tests use.
 */
import type { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { ensureBuilt } from '../helpers/daemon.js';
import { exited, exitedWithin, lineCollector, spawnTied, terminate, type ExitInfo } from '../helpers/processes.js';
import { FIXTURES_DIR, REPO_ROOT } from '../helpers/tmp.js';
import { quoteCommandLine } from '../../service/model/command-line.js';

export const CLI_ENTRY = path.join(REPO_ROOT, 'dist', 'bootc-prestage.mjs');
/** The directory holding the stand-in `bootc` (put first on PATH). */
export const BOOTC_STANDIN_DIR = path.join(FIXTURES_DIR, 'bootc');

export interface CliOptions {
  /** --address; omitted when null. */
  address: string | null;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Run as this uid (and gid) through setpriv. */
  uid?: number;
  /** Extra descriptors for the child (index 3 onwards), as spawn's stdio. */
  extraFds?: ('pipe' | 'ignore')[];
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function cliArgv(args: string[], opts: CliOptions): { cmd: string; argv: string[] } {
  ensureBuilt(CLI_ENTRY);
  const full = [CLI_ENTRY, ...(opts.address ? ['--address', opts.address] : []), ...args];
  if (opts.uid === undefined) return { cmd: process.execPath, argv: full };
  return {
    cmd: 'setpriv',
    argv: [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', '--', process.execPath, ...full],
  };
}

function cliEnv(opts: CliOptions): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    LANG: 'C.UTF-8',
    HOME: '/root',
  };
  // No fallback to a real bus: a test that forgets --address fails loudly.
  env['DBUS_SYSTEM_BUS_ADDRESS'] = 'unix:path=/nonexistent/bootc-prestage-test-no-bus';
  return { ...env, ...(opts.env ?? {}) };
}

/** A CLI run in the background. */
export interface RunningCli {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  /** Resolves with the exit and the whole output. */
  done: Promise<CliResult>;
  /** The first stdout (or stderr) line, past or future, matching `pred`. */
  waitForLine(pred: (l: string) => boolean, timeoutMs?: number, stream?: 'stdout' | 'stderr'): Promise<string>;
  kill(signal?: NodeJS.Signals): void;
}

export function spawnCli(args: string[], opts: CliOptions): RunningCli {
  const { cmd, argv } = cliArgv(args, opts);
  const child = spawnTied(cmd, argv, {
    env: cliEnv(opts), stdio: ['ignore', 'pipe', 'pipe', ...(opts.extraFds ?? [])], cwd: '/',
  });
  const out = lineCollector(child.stdout);
  const err = lineCollector(child.stderr);
  // 'close', not 'exit': 'exit' can come before the last output is read
  // (under load, by a long way); 'close' comes after every stdio stream ended.
  const closed = new Promise<ExitInfo>((resolve) => {
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal }));
  });
  const done = Promise.all([exited(child), closed]).then(([info]) => (
    { code: info.code, signal: info.signal, stdout: out.lines.join('\n'), stderr: err.lines.join('\n') }));
  return {
    child,
    stdout: out.lines,
    stderr: err.lines,
    done,
    async waitForLine(pred, timeoutMs = 30_000, stream = 'stdout') {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = (stream === 'stdout' ? out : err).lines.find(pred);
        if (hit !== undefined) return hit;
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
          throw new Error(`no matching line from bootc-prestage ${args.join(' ')}\n--- stdout ---\n${
            out.lines.join('\n')}\n--- stderr ---\n${err.lines.join('\n')}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    kill(signal = 'SIGTERM') {
      child.kill(signal);
    },
  };
}

/** Run the CLI to completion (killed after `timeoutMs`, default 60 s). */
export async function runCli(args: string[], opts: CliOptions): Promise<CliResult> {
  const r = spawnCli(args, opts);
  const info = await exitedWithin(r.child, opts.timeoutMs ?? 60_000);
  if (!info) {
    await terminate(r.child, { signal: 'SIGKILL' });
    const res = await r.done;
    throw new Error(`bootc-prestage ${args.join(' ')} did not exit within ${opts.timeoutMs ?? 60_000} ms\n`
      + `--- stdout ---\n${res.stdout}\n--- stderr ---\n${res.stderr}`);
  }
  return r.done;
}

/** Every stdout line parsed as JSON (throws on a line that is not). */
export function jsonLines(stdout: string): Record<string, any>[] {
  return stdout.split('\n').filter((l) => l !== '').map((l, i) => {
    try {
      return JSON.parse(l) as Record<string, any>;
    } catch {
      throw new Error(`stdout line ${i + 1} is not JSON: ${l}`);
    }
  });
}

export interface HookSpec {
  prepare?: string;
  commit?: string;
  abort?: string;
  after?: string;
  required?: boolean;
  timeoutSec?: number;
  environment?: string[];
}

/**
 * A hook file: each step a `/bin/sh -c SCRIPT` (quoted for the hook file
 * syntax). Scripts must not use `${VAR}`: the daemon expands that itself.
 */
export function hookFile(spec: HookSpec): string {
  const sh = (script: string) => quoteCommandLine(['/bin/sh', '-c', script]);
  const lines = ['[Hook]'];
  if (spec.prepare !== undefined) lines.push(`Prepare=${sh(spec.prepare)}`);
  if (spec.commit !== undefined) lines.push(`Commit=${sh(spec.commit)}`);
  if (spec.abort !== undefined) lines.push(`Abort=${sh(spec.abort)}`);
  if (spec.after) lines.push(`After=${spec.after}`);
  if (spec.required === false) lines.push('Required=no');
  if (spec.timeoutSec !== undefined) lines.push(`TimeoutSec=${spec.timeoutSec}`);
  for (const e of spec.environment ?? []) lines.push(`Environment=${e}`);
  return `${lines.join('\n')}\n`;
}

/**
 * A shell loop that waits (10 minutes at most) until the test creates
 * `file`: a hook step that stays in a known state for exactly as long as
 * the test needs, however slow the machine.
 */
export function waitForFile(file: string): string {
  return `i=0; while [ ! -e ${file} ] && [ $i -lt 12000 ]; do sleep 0.05; i=$((i+1)); done`;
}
