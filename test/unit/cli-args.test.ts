/**
 * The command line of bootc-prestage: what each command parses to, global
 * options anywhere, every usage error with its reason, and the mapping from
 * errors to exit statuses.
 */
import test from 'ava';
import * as path from 'node:path';
import { parseCommandLine, UsageError } from '../../service/cli/args.js';
import { EXIT, exitCodeFor } from '../../service/cli/exit-codes.js';
import { COMMANDS, COMMAND_HELP, EXIT_STATUS_HELP } from '../../service/cli/usage.js';
import { ClientError, kindOfErrorName, toClientError } from '../../service/client/errors.js';
import { DBusError } from 'dbus-next';

test('global options may come before or after the command', (t) => {
  const a = parseCommandLine(['--address', 'unix:path=/x', '--json', 'status']);
  const b = parseCommandLine(['status', '--json', '--address=unix:path=/x']);
  t.deepEqual(a, b);
  t.deepEqual(a.global, { address: 'unix:path=/x', json: true, askPassword: true });
  t.deepEqual(a.command, { name: 'status' });
});

test('--no-ask-password: polkit may never ask for a password (default: it may, on a terminal)', (t) => {
  t.false(parseCommandLine(['--no-ask-password', 'start', '/d']).global.askPassword);
  t.false(parseCommandLine(['reconcile', '--no-ask-password']).global.askPassword);
  t.true(parseCommandLine(['reconcile']).global.askPassword);
});

test('no command, --help and help COMMAND show help; --version wins', (t) => {
  t.deepEqual(parseCommandLine([]).command, { name: 'help', topic: null });
  t.deepEqual(parseCommandLine(['--help']).command, { name: 'help', topic: null });
  t.deepEqual(parseCommandLine(['start', '-h']).command, { name: 'help', topic: 'start' });
  t.deepEqual(parseCommandLine(['help', 'log']).command, { name: 'help', topic: 'log' });
  t.deepEqual(parseCommandLine(['status', '--version']).command, { name: 'version' });
});

test('start - a relative deployment becomes absolute; options map to the D-Bus options', (t) => {
  const { command } = parseCommandLine(['start', 'dep', '--force', '--wait', '--dry-run', '--timeout', '90', '--progress-fd', '5']);
  t.deepEqual(command, {
    name: 'start', staged: false, deployment: path.resolve('dep'), sysroot: '/sysroot', force: true, wait: true,
    dryRun: true, timeoutSec: 90, progressFd: 5, noFollow: false,
  });
  const staged = parseCommandLine(['start', '--staged', '--sysroot', '/mnt/sysroot', '--no-follow']).command;
  t.like(staged, { name: 'start', staged: true, deployment: null, sysroot: '/mnt/sysroot', noFollow: true });
});

test('commit, abort, cancel, log, hooks, reconcile, upgrade parse to their commands', (t) => {
  t.like(parseCommandLine(['commit', '/d', '--wait']).command, { name: 'commit', deployment: '/d', wait: true, timeoutSec: 0 });
  t.like(parseCommandLine(['abort', '/d', '--timeout', '5', '--no-follow']).command, { name: 'abort', timeoutSec: 5, noFollow: true });
  t.deepEqual(parseCommandLine(['cancel', '7', '--no-wait']).command, { name: 'cancel', transaction: '7', noWait: true });
  t.deepEqual(parseCommandLine(['log', '7', '--lines', '20', '--hook', 'h']).command, { name: 'log', transaction: '7', lines: 20, hook: 'h' });
  t.deepEqual(parseCommandLine(['hooks']).command, { name: 'hooks', deployment: '' });
  t.deepEqual(parseCommandLine(['hooks', '/d']).command, { name: 'hooks', deployment: '/d' });
  t.deepEqual(parseCommandLine(['reconcile']).command, { name: 'reconcile', progressFd: null, noFollow: false });
  t.like(parseCommandLine(['reconcile', '--progress-fd', '4']).command, { name: 'reconcile', progressFd: 4 });
  t.like(parseCommandLine(['commit', '/d', '--progress-fd', '3']).command, { name: 'commit', progressFd: 3 });
  t.like(parseCommandLine(['abort', '/d', '--progress-fd', '5']).command, { name: 'abort', progressFd: 5 });
  t.deepEqual(parseCommandLine(['upgrade', '--apply']).command,
    { name: 'upgrade', apply: true, sysroot: '/sysroot', force: false, timeoutSec: 0, progressFd: null });
  t.deepEqual(parseCommandLine(['monitor']).command, { name: 'monitor' });
});

test('register - options and repeated options', (t) => {
  const { command } = parseCommandLine(['register', 'h', '--prepare', '/bin/a b', '--after', 'x', '--after', 'y',
    '--env', 'A=1', '--env', 'B=', '--optional', '--timeout', 'infinity', '--runtime']);
  t.like(command, {
    name: 'register', hook: 'h', prepare: '/bin/a b', after: ['x', 'y'], before: [], environment: ['A=1', 'B='],
    optional: true, timeout: 'infinity', runtime: true, file: null,
  });
});

const bad: [string, string[], RegExp, string | null][] = [
  ['unknown command', ['frob'], /unknown command 'frob'/, null],
  ['help of an unknown command', ['help', 'frob'], /unknown command 'frob'/, null],
  ['unknown option', ['start', '--frob', '/d'], /unknown option '--frob'/, 'start'],
  ['option of another command', ['status', '--force'], /unknown option '--force'/, 'status'],
  ['missing deployment', ['commit'], /commit: missing DEPLOYMENT/, 'commit'],
  ['extra argument', ['status', 'x'], /status: unexpected argument 'x'/, 'status'],
  ['seconds with a unit', ['start', '/d', '--timeout', '5s'], /--timeout takes a whole number of seconds, not '5s'/, 'start'],
  ['seconds over 2^32-1', ['start', '/d', '--timeout', '4294967296'], /whole number of seconds/, 'start'],
  ['progress fd 2', ['upgrade', '--progress-fd', '2'], /--progress-fd cannot be 2/, 'upgrade'],
  ['progress fd not a number', ['upgrade', '--progress-fd', 'x'], /file descriptor number, not 'x'/, 'upgrade'],
  ['progress fd with --no-follow', ['start', '/d', '--no-follow', '--progress-fd', '3'], /drop --no-follow/, 'start'],
  ['sysroot without --staged', ['start', '/d', '--sysroot', '/s'], /--sysroot goes with --staged/, 'start'],
  ['empty deployment', ['commit', ''], /DEPLOYMENT cannot be empty/, 'commit'],
  ['register: --file and --after', ['register', 'h', '--file', 'f', '--after', 'x'], /drop --after/, 'register'],
  ['register: a bad --env', ['register', 'h', '--prepare', '/bin/x', '--env', '1A=b'], /--env takes KEY=VALUE, not '1A=b'/, 'register'],
  ['register: a bad --timeout', ['register', 'h', '--prepare', '/bin/x', '--timeout', 'forever'], /--timeout takes a whole number/, 'register'],
  ['log: --lines too big', ['log', '1', '--lines', '1000000'], /--lines takes a number of lines from 1 to 100000/, 'log'],
];

for (const [what, argv, re, cmd] of bad) {
  test(`usage error - ${what}`, (t) => {
    const e = t.throws(() => parseCommandLine(argv), { instanceOf: UsageError });
    t.regex(e!.message, re);
    t.false(e!.message.includes('\n'), 'one line');
    t.is(e!.command, cmd);
  });
}

test('every command has help that documents every exit status', (t) => {
  for (const c of COMMANDS.filter((x) => x !== 'help')) {
    t.true(COMMAND_HELP[c]!.startsWith(`Usage: bootc-prestage ${c}`), c);
    t.true(COMMAND_HELP[c]!.includes(EXIT_STATUS_HELP), c);
  }
  for (const code of Object.values(EXIT)) t.regex(EXIT_STATUS_HELP, new RegExp(`\\n {2}${code} +\\S`), String(code));
});

test('exit statuses - each error kind has its own documented status', (t) => {
  t.is(exitCodeFor('failed'), 1);
  t.is(exitCodeFor('usage'), 2);
  t.is(exitCodeFor('busy'), 3);
  t.is(exitCodeFor('not-found'), 4);
  t.is(exitCodeFor('unreachable'), 5);
  t.is(exitCodeFor('denied'), 5);
});

test('error names - the service\'s errors and the bus\'s map to kinds', (t) => {
  const p = 'org.containers.bootc.PreStage.Error.';
  t.is(kindOfErrorName(`${p}Busy`), 'busy');
  for (const n of ['NotFound', 'InvalidDeployment', 'InvalidHook']) t.is(kindOfErrorName(`${p}${n}`), 'not-found', n);
  for (const n of ['HookFailed', 'Cancelled', 'Timeout', 'Internal', 'SomethingNew']) t.is(kindOfErrorName(`${p}${n}`), 'failed', n);
  t.is(kindOfErrorName('org.freedesktop.DBus.Error.InvalidArgs'), 'usage');
  t.is(kindOfErrorName('org.freedesktop.DBus.Error.AccessDenied'), 'denied');
  t.is(kindOfErrorName('org.freedesktop.DBus.Error.UnknownObject'), 'not-found');
  for (const n of ['ServiceUnknown', 'NameHasNoOwner', 'NoReply', 'Disconnected', 'Spawn.ChildExited', 'Spawn.ExecFailed']) {
    t.is(kindOfErrorName(`org.freedesktop.DBus.Error.${n}`), 'unreachable', n);
  }
});

test('error messages - one line, no stack, and a hint where one helps', (t) => {
  const denied = toClientError(new DBusError('org.freedesktop.DBus.Error.AccessDenied', 'Rejected send message'), 'StartPreStage');
  t.is(denied.message, 'StartPreStage: access denied (Rejected send message); run as root, or as a user polkit authorizes for it');
  const unknown = toClientError(new DBusError('org.freedesktop.DBus.Error.ServiceUnknown', 'The name is not activatable'), 'x');
  t.regex(unknown.message, /^bootc-prestaged is not running and could not be started by the bus/);
  const busy = toClientError(new DBusError('org.containers.bootc.PreStage.Error.Busy', 'transaction 3 is running\nmore'), 'x');
  t.is(busy.message, 'transaction 3 is running');
  t.is(busy.errorName, 'org.containers.bootc.PreStage.Error.Busy');
  const plain = toClientError(new Error('boom'), 'reading');
  t.true(plain instanceof ClientError);
  t.is(plain.kind, 'failed');
  t.is(plain.message, 'reading: boom');
});
