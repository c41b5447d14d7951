/**
 * The live display in a real pseudo-terminal: each test runs bootc-prestage
 * in its own tmux server (a real pty with a known size), reads the screen
 * with `tmux capture-pane`, and presses keys with `tmux send-keys`, so
 * Ctrl-C arrives as a terminal would send it (SIGINT to the foreground
 * process group).
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { deploymentsOf, withDaemon } from '../helpers/daemon.js';
import { tmpDir } from '../helpers/tmp.js';
import { CLI_ENTRY, hookFile, waitForFile } from './cli-harness.js';

const WIDTH = 220;
const HEIGHT = 40;

function tmux(socket: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('tmux', ['-L', socket, '-f', '/dev/null', ...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`tmux ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

interface Terminal {
  /** The visible screen, wrapped lines joined, trailing blank lines removed. */
  screen(): Promise<string>;
  /** Resolves with the screen once `re` matches it. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  keys(...keys: string[]): Promise<void>;
}

/**
 * Run `node bootc-prestage.mjs ARGS` in a fresh tmux server; after it exits
 * the pane shows `EXIT=<status>` and stays open for inspection.
 */
async function inTerminal(t: ExecutionContext, args: string[], env: Record<string, string> = {}): Promise<Terminal> {
  const socket = `bootc-prestage-test-${process.pid}-${Math.random().toString(16).slice(2)}`;
  const envWords = Object.entries({ LANG: 'C.UTF-8', TERM: 'xterm-256color', ...env })
    .map(([k, v]) => shellQuote(`${k}=${v}`)).join(' ');
  const cmd = `env -u DBUS_SYSTEM_BUS_ADDRESS ${envWords} ${shellQuote(process.execPath)} ${shellQuote(CLI_ENTRY)} `
    + `${args.map(shellQuote).join(' ')}; echo EXIT=$?; sleep 600`;
  await tmux(socket, ['new-session', '-d', '-x', String(WIDTH), '-y', String(HEIGHT), cmd]);
  t.teardown(() => tmux(socket, ['kill-server']).catch(() => undefined));
  const screen = async () => (await tmux(socket, ['capture-pane', '-p', '-J'])).replace(/\s+$/, '');
  return {
    screen,
    async waitFor(re, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const s = await screen();
        if (re.test(s)) return s;
        if (Date.now() > deadline) throw new Error(`the screen never matched ${re}:\n${s}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async keys(...keys) {
      await tmux(socket, ['send-keys', ...keys]);
    },
  };
}

/** Lines of the live progress line: "[" bar "]" then a percentage. */
const BAR_LINE = /^\[[█░#-]+\] +\d+%/;

test.serial('tty - the live display redraws one progress line in place and ends with a clean summary', async (t) => {
  const gate = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: {
      'fetch.hook': hookFile({ prepare: `echo PROGRESS=50 >&3; echo STATUS=fetching layer 1 >&3; ${waitForFile(`${gate}/go`)}; echo fetched` }),
      'verify.hook': hookFile({ prepare: 'echo STATUS=checking >&3; sleep 0.5', after: 'fetch' }),
    },
  });
  const [staged] = deploymentsOf(ctx);
  const term = await inTerminal(t, ['--address', ctx.bus.address, 'start', staged!]);

  // While fetch runs: its status text in the one live line, at the bottom.
  const live = await term.waitFor(/fetching layer 1/);
  const liveLines = live.split('\n');
  t.is(liveLines.filter((l) => BAR_LINE.test(l)).length, 1, live);
  t.regex(liveLines[liveLines.length - 1]!, /^\[█+░+\] +\d+% +\[1\/2\] fetch: fetching layer 1$/);
  await fsp.writeFile(path.join(gate, 'go'), '');

  const end = await term.waitFor(/EXIT=\d+/);
  const lines = end.split('\n');
  t.is(lines[lines.length - 1], 'EXIT=0', end);
  t.is(lines[0], `Preparing ${staged} (transaction ${/transaction (\S+)\)/.exec(lines[0]!)![1]})`);
  t.deepEqual(lines.slice(1, -1), [
    '      fetch: fetched',
    '  ✔ fetch  success',
    '  ✔ verify success',
    lines[lines.length - 2]!,
  ]);
  t.regex(lines[lines.length - 2]!, /^✔ Prepared in \d+(\.\d)?s: 2 hook\(s\) prepared$/);
  t.false(lines.some((l) => BAR_LINE.test(l)), 'no progress line is left behind');
});

test.serial('tty - a failure ends with the reason on the screen and exit 1', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'broken.hook': hookFile({ prepare: 'echo cannot reach registry >&2; exit 4' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const term = await inTerminal(t, ['--address', ctx.bus.address, 'start', staged!]);
  const end = await term.waitFor(/EXIT=\d+/);
  const lines = end.split('\n');
  t.is(lines[lines.length - 1], 'EXIT=1', end);
  t.true(lines.includes('      broken: cannot reach registry'), end);
  t.true(lines.some((l) => /^ {2}✘ broken +failed: /.test(l)), end);
  t.true(lines.some((l) => /^✘ Failed \[HookFailed\] in \S+: required hook broken /.test(l)), end);
  t.true(lines.some((l) => /^bootc-prestage: the prepare phase of \S+ failed \[HookFailed\]/.test(l)), end);
  t.false(lines.some((l) => BAR_LINE.test(l)));
});

test.serial('tty - Ctrl-C typed in the terminal cancels, shows the rollback, and leaves a clean screen', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'long.hook': hookFile({ prepare: 'echo STATUS=working >&3; sleep 30', abort: 'echo undoing' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const term = await inTerminal(t, ['--address', ctx.bus.address, 'start', staged!]);
  await term.waitFor(/long: working/);
  await term.keys('C-c');
  const end = await term.waitFor(/EXIT=\d+/);
  const lines = end.split('\n');
  t.is(lines[lines.length - 1], 'EXIT=1', end);
  t.true(lines.some((l) => /^Cancelling transaction \S+; waiting for the rollback to finish/.test(l)), end);
  t.true(lines.some((l) => /^ {2}✘ long +cancelled/.test(l)), end);
  t.true(lines.some((l) => /long: undoing/.test(l)), end);
  t.true(lines.some((l) => /^✘ Cancelled \[Cancelled\]/.test(l)), end);
  t.false(lines.some((l) => BAR_LINE.test(l)));
});

test.serial('tty - without a UTF-8 locale the display draws in ASCII', async (t) => {
  const gate = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'a.hook': hookFile({ prepare: `echo STATUS=halfway >&3; echo PROGRESS=50 >&3; ${waitForFile(`${gate}/go`)}` }) },
  });
  const [staged] = deploymentsOf(ctx);
  const term = await inTerminal(t, ['--address', ctx.bus.address, 'start', staged!], { LANG: 'C', LC_ALL: 'C' });
  const live = await term.waitFor(/a: halfway/);
  t.regex(live.split('\n').pop()!, /^\[#+-+\] +50% +\[1\/1\] a: halfway$/);
  await fsp.writeFile(path.join(gate, 'go'), '');
  const end = await term.waitFor(/EXIT=\d+/);
  t.regex(end, /\n {2}\+ a +success\n\+ Prepared /);
});
