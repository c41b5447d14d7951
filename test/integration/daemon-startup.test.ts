/**
 * Start-up failures of the real daemon (dist/bootc-prestaged.mjs): a
 * configuration it cannot run with is reported as one message a person can
 * act on, with a non-zero exit, and no stack trace (the stack is logged at
 * debug level, for a genuine bug); the embedded-bus help of `npm start`
 * names a demo deployment only when one exists.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { embeddedHelp } from '../../service/daemon/main.js';
import { ensureDemoSysroot } from '../../service/daemon/demo-sysroot.js';
import { DAEMON_ENTRY, ensureBuilt, withDaemon } from '../helpers/daemon.js';
import { tmpDir } from '../helpers/tmp.js';

const STACK_LINE = /^\s+at .+[(:]\d+/m;

function runDaemon(args: string[]): { status: number | null; out: string } {
  ensureBuilt(DAEMON_ENTRY);
  const r = spawnSync(process.execPath, [DAEMON_ENTRY, '--bus', 'session', ...args], {
    encoding: 'utf8', timeout: 60_000, env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: 'unix:path=/nonexistent' },
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('start-up - a state directory that cannot be made: the reason, exit 1, no stack trace', async (t) => {
  const dir = await tmpDir(t);
  const file = path.join(dir, 'a-file');
  await fsp.writeFile(file, '');
  const { status, out } = runDaemon(['--state-dir', path.join(file, 'state')]);
  t.is(status, 1, out);
  t.regex(out, /error: cannot start: cannot create the state directory .*a-file\/state: ENOTDIR/);
  t.notRegex(out, STACK_LINE, out);
  t.notRegex(out, /fatal/, out);
});

test('start-up - the stack of a start-up failure is logged at debug level', async (t) => {
  const dir = await tmpDir(t);
  const file = path.join(dir, 'a-file');
  await fsp.writeFile(file, '');
  const { status, out } = runDaemon(['--state-dir', path.join(file, 'state'), '--log-level', 'debug']);
  t.is(status, 1, out);
  t.regex(out, /error: cannot start: cannot create the state directory/);
  t.regex(out, /debug: Error: cannot create the state directory.*\\n\s+at /, out);
});

test('start-up - a bus that cannot be reached: the bus and the reason, exit 1, no stack trace', async (t) => {
  const dir = await tmpDir(t);
  const { status, out } = runDaemon(['--state-dir', path.join(dir, 'state'), '--root', path.join(dir, 'root'),
    '--sysroot', path.join(dir, 'sysroot')]);
  t.is(status, 1, out);
  t.regex(out, /error: cannot serve org\.containers\.bootc\.PreStage on session: \S/);
  t.notRegex(out, STACK_LINE, out);
});

test('start-up - a state directory another daemon holds: the reason, exit 1, no stack trace', async (t) => {
  const ctx = await withDaemon(t);
  const { status, out } = runDaemon(['--state-dir', ctx.stateDir, '--root', ctx.root]);
  t.is(status, 1, out);
  t.regex(out, new RegExp(`cannot start: another bootc-prestaged \\(pid ${ctx.daemon.pid}\\) uses the state directory`));
  t.notRegex(out, STACK_LINE, out);
});

test('start-up - a bad option: the reason and the usage, exit 2, no stack trace', (t) => {
  const { status, out } = runDaemon(['--history', 'many']);
  t.is(status, 2, out);
  t.regex(out, /^bootc-prestaged: --history/m);
  t.regex(out, /^Usage: bootc-prestaged/m);
  t.notRegex(out, STACK_LINE, out);
});

test('start-up - a state directory with no write access for the daemon: the reason, exit 1, no stack trace', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const state = path.join(dir, 'state');
  await fsp.mkdir(state, { mode: 0o755 });
  // As uid 65534 (root could write anywhere): the lock file cannot be written.
  ensureBuilt(DAEMON_ENTRY);
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, DAEMON_ENTRY,
    '--bus', 'session', '--state-dir', state], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
  child.stderr.on('data', (b: Buffer) => { out += b.toString(); });
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.is(status, 1, out);
  t.regex(out, /cannot start: .*EACCES/);
  t.notRegex(out, STACK_LINE, out);
});

test('npm start help - names the demo deployment when the demo sysroot was made', (t) => {
  const dep = '/x/.state/sysroot/ostree/deploy/demo/deploy/' + 'a'.repeat(64) + '.0';
  const text = embeddedHelp('unix:path=/x/bus', { deployments: [dep], error: null });
  t.regex(text, new RegExp(`^Demo deployment \\(a real ostree sysroot under \\.state/\\): ${dep}$`, 'm'));
  t.regex(text, new RegExp(`start ${dep}$`, 'm'));
  t.notRegex(text, /DEPLOYMENT|No demo deployment/);
});

test('npm start help - without a demo sysroot says so and why, and prints no deployment path as if real', (t) => {
  const text = embeddedHelp('unix:path=/x/bus', { deployments: [], error: 'ostree is not installed (scripts/setup demo installs it)' });
  t.regex(text, /^No demo deployment: ostree is not installed \(scripts\/setup demo installs it\)\.$/m);
  t.regex(text, /start DEPLOYMENT$/m);
  t.notRegex(text, /^Demo deployment/m);
  t.notRegex(text, /\/ostree\/deploy\//, 'no path that looks like a deployment');
});

test.serial('demo sysroot - without ostree on PATH: a clear error, nothing made', async (t) => {
  const dir = await tmpDir(t);
  const sysroot = path.join(dir, 'sysroot');
  const oldPath = process.env.PATH;
  // A PATH with no ostree (execFile looks programs up in the current PATH).
  process.env.PATH = dir;
  try {
    const err = await t.throwsAsync(ensureDemoSysroot(sysroot));
    t.is(err!.message, 'ostree is not installed (scripts/setup demo installs it)');
  } finally {
    process.env.PATH = oldPath;
  }
  await t.throwsAsync(fsp.stat(sysroot), { code: 'ENOENT' });
});
