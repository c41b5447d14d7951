/**
 * bootc-prestage's other commands (status, hooks, register, unregister,
 * log, monitor, help) and the exit statuses that do not need a transaction
 * to run: bad usage (2), not found (4), cannot reach the daemon or access
 * denied (5).
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { startBus } from '../helpers/bus.js';
import { NOBODY } from '../helpers/busctl.js';
import { deploymentsOf, withDaemon } from '../helpers/daemon.js';
import { tmpDir } from '../helpers/tmp.js';
import { hookFile, jsonLines, runCli, spawnCli } from './cli-harness.js';

const usageCases: [string, string[], RegExp][] = [
  ['no deployment', ['start'], /start: missing DEPLOYMENT \(or --staged\)/],
  ['a deployment and --staged', ['start', '--staged', '/x'], /give a DEPLOYMENT or --staged, not both/],
  ['a bad --timeout', ['start', '--timeout', '1.5', '/x'], /--timeout takes a whole number of seconds, not '1.5'/],
  ['an unknown option', ['status', '--bogus'], /unknown option '--bogus'/],
  ['an unknown command', ['frobnicate'], /unknown command 'frobnicate'/],
  ['a progress fd below 3', ['start', '--progress-fd', '1', '/x'], /--progress-fd cannot be 1/],
  ['a progress fd that is not open', ['start', '--progress-fd', '77', '/x'], /--progress-fd 77 is not an open file descriptor/],
  ['an extra argument', ['commit', '/a', '/b'], /commit: unexpected argument '\/b'/],
  ['register without a step', ['register', 'x'], /give --prepare CMD/],
  ['register with a bad hook name', ['register', '-bad', '--prepare', '/bin/true'], /is not a hook name|unknown option/],
  ['register with an unbalanced quote', ['register', 'x', '--prepare', '/bin/echo "a'], /--prepare: unbalanced double quote/],
  ['register with --file and --prepare', ['register', 'x', '--file', '/f', '--prepare', '/bin/true'], /--file takes the whole definition/],
  ['a transaction that is not an id', ['log', 'a/b'], /is not a transaction id or path/],
  ['--lines 0', ['log', '1', '--lines', '0'], /--lines takes a number of lines/],
];

for (const [what, args, re] of usageCases) {
  test.serial(`usage - ${what} exits 2 with a one-line reason`, async (t) => {
    // No bus at all: a usage error is found before connecting.
    const r = await runCli(args, { address: 'unix:path=/nonexistent/bus' });
    t.is(r.code, 2, `${r.stdout}\n${r.stderr}`);
    t.regex(r.stderr.split('\n')[0]!, /^bootc-prestage: /);
    t.regex(r.stderr, re);
    t.is(r.stdout, '');
  });
}

test.serial('help - --help of every command, and help COMMAND, document the exit statuses', async (t) => {
  const overview = await runCli(['--help'], { address: null });
  t.is(overview.code, 0);
  t.regex(overview.stdout, /^Usage: bootc-prestage/);
  for (const cmd of ['start', 'commit', 'abort', 'reconcile', 'status', 'hooks', 'register', 'unregister',
    'cancel', 'monitor', 'log', 'upgrade']) {
    t.regex(overview.stdout, new RegExp(`\\n  ${cmd}\\b`), `overview lists ${cmd}`);
    const r = await runCli([cmd, '--help'], { address: null });
    t.is(r.code, 0, cmd);
    t.regex(r.stdout, new RegExp(`^Usage: bootc-prestage ${cmd}`), cmd);
    t.regex(r.stdout, /Exit status:\n  0 .*\n  1 .*\n[\s\S]*  3 .*busy[\s\S]*  5 /, cmd);
    t.is((await runCli(['help', cmd], { address: null })).stdout, r.stdout);
  }
  t.regex((await runCli(['--version'], { address: null })).stdout, /^bootc-prestage \d+\.\d+\.\d+/);
});

test.serial('unreachable - no bus at the address exits 5 with the reason', async (t) => {
  const r = await runCli(['status'], { address: 'unix:path=/nonexistent/bus' });
  t.is(r.code, 5);
  t.regex(r.stderr, /^bootc-prestage: .*cannot connect to the bus at unix:path=\/nonexistent\/bus: no bus socket there/);
});

test.serial('unreachable - a bus where the daemon is not running and cannot be activated exits 5', async (t) => {
  const bus = await startBus();
  t.teardown(() => bus.stop());
  const r = await runCli(['status'], { address: bus.address });
  t.is(r.code, 5);
  t.regex(r.stderr, /bootc-prestaged is not running and could not be started by the bus/);
});

test.serial('unreachable - DBUS_SYSTEM_BUS_ADDRESS picks the bus when --address is absent', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 1 } });
  const r = await runCli(['status'], { address: null, env: { DBUS_SYSTEM_BUS_ADDRESS: ctx.bus.address } });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^State: idle/);
});

test.serial('denied - a mutating command as an unprivileged user exits 5; reading works', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['start', staged!], { address: ctx.bus.address, uid: NOBODY, env: { HOME: '/' } });
  t.is(r.code, 5, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stderr, /access denied .*run as root, or as a user polkit authorizes for it/);
  const s = await runCli(['status'], { address: ctx.bus.address, uid: NOBODY, env: { HOME: '/' } });
  t.is(s.code, 0, s.stderr);
  const h = await runCli(['hooks'], { address: ctx.bus.address, uid: NOBODY, env: { HOME: '/' } });
  t.is(h.code, 0, h.stderr);
});

test.serial('register, hooks, unregister - a hook from options round-trips; unknown names exit 4', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const a = ctx.bus.address;
  const reg = await runCli(['register', 'pull-images', '--prepare', '/usr/bin/echo "two words" ${HOME}',
    '--abort', '/usr/bin/true', '--after', 'compat', '--env', 'STORE=/var/x', '--optional', '--timeout', 'infinity',
    '--description', 'Pull images'], { address: a });
  t.is(reg.code, 0, reg.stderr);
  t.is(reg.stdout, 'Registered hook pull-images (/etc/bootc/pre-stage.d/pull-images.hook).');
  const file = await fsp.readFile(path.join(ctx.root, 'etc/bootc/pre-stage.d/pull-images.hook'), 'utf8');
  t.regex(file, /^Prepare=\/usr\/bin\/echo "two words" \$\{HOME\}$/m);
  t.regex(file, /^Required=no$/m);

  const table = await runCli(['hooks'], { address: a });
  t.is(table.code, 0, table.stderr);
  const [header, row] = table.stdout.split('\n');
  t.regex(header!, /^NAME\s+REQUIRED\s+TIMEOUT\s+PREPARE\s+RUNS IN\s+SOURCE$/);
  t.regex(row!, /^pull-images\s+no\s+infinity\s+\/usr\/bin\/echo "two words" \$\{HOME\}\s+host\s+\S+pull-images\.hook$/);

  const json = jsonLines((await runCli(['--json', 'hooks'], { address: a })).stdout);
  t.is(json.length, 1);
  t.like(json[0], {
    name: 'pull-images', description: 'Pull images', prepare: ['/usr/bin/echo', 'two words', '${HOME}'],
    abort: ['/usr/bin/true'], commit: [], after: ['compat'], environment: ['STORE=/var/x'], required: false, timeoutSec: 0,
  });

  t.is((await runCli(['unregister', 'pull-images'], { address: a })).code, 0);
  t.is((await runCli(['hooks'], { address: a })).stdout, 'No hooks on the host.');
  const gone = await runCli(['unregister', 'pull-images'], { address: a });
  t.is(gone.code, 4);
  t.regex(gone.stderr, /no hook 'pull-images'/);
});

test.serial('register --file - takes the definition from a hook file, --runtime puts it in /run; a bad file exits 4', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const dir = await tmpDir(t);
  const good = path.join(dir, 'check.hook');
  await fsp.writeFile(good, '[Hook]\nDescription=Check\nPrepare=/usr/bin/true\nTimeoutSec=30\nFrobnicate=1\n');
  const r = await runCli(['register', 'check', '--file', good, '--runtime'], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /warning: .*check\.hook:5: .*Frobnicate/, 'unknown keys are warned about');
  const written = await fsp.readFile(path.join(ctx.root, 'run/bootc/pre-stage.d/check.hook'), 'utf8');
  t.regex(written, /^TimeoutSec=30$/m);

  const bad = path.join(dir, 'bad.hook');
  await fsp.writeFile(bad, '[Hook]\nPrepare=relative/program\n');
  const b = await runCli(['register', 'bad', '--file', bad], { address: ctx.bus.address });
  t.is(b.code, 4, b.stderr);
  t.regex(b.stderr, /^bootc-prestage: .*absolute/);
  const missing = await runCli(['register', 'x', '--file', path.join(dir, 'nope.hook')], { address: ctx.bus.address });
  t.is(missing.code, 4);
  t.regex(missing.stderr, /cannot read .*nope\.hook/);
});

test.serial('hooks DEPLOYMENT - includes the hooks the image ships, in run order', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2, hooks: { 'image.hook': hookFile({ prepare: 'true' }) } },
    etcHooks: { 'host.hook': hookFile({ prepare: 'true', after: 'image' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['--json', 'hooks', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  const hooks = jsonLines(r.stdout);
  t.deepEqual(hooks.map((h) => h['name']), ['image', 'host']);
  t.true((hooks[0]!['source'] as string).startsWith(staged!));
});

test.serial('status - the state, the active transaction and every transaction; --json is one object', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'f.hook': hookFile({ prepare: 'exit 1' }) },
  });
  const [staged] = deploymentsOf(ctx);
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 1);
  const s = await runCli(['status'], { address: ctx.bus.address });
  t.is(s.code, 0, s.stderr);
  t.regex(s.stdout, /^State: idle\nVersion: \d+\.\d+\.\d+\nActive transaction: none\n\nID +PHASE +STATE +PROGRESS/);
  t.regex(s.stdout, /\n\S+ +prepare +failed +100% +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +HookFailed +\//);
  t.regex(s.stdout, /\nTransaction \S+: required hook f /);
  const j = jsonLines((await runCli(['--json', 'status'], { address: ctx.bus.address })).stdout);
  t.is(j.length, 1);
  t.like(j[0], { state: 'idle', activeTransaction: '/' });
  t.is(j[0]!['transactions'].length, 1);
  t.like(j[0]!['transactions'][0], { phase: 'prepare', state: 'failed', deployment: staged });
});

test.serial('log - a transaction\'s log by id or path, filtered by hook, last N lines; unknown exits 4', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: {
      'a.hook': hookFile({ prepare: 'echo alpha-1; echo alpha-2' }),
      'b.hook': hookFile({ prepare: 'echo beta-1', after: 'a' }),
    },
  });
  const [staged] = deploymentsOf(ctx);
  const run = jsonLines((await runCli(['--json', 'start', staged!], { address: ctx.bus.address })).stdout);
  const txPath = run[0]!['transaction'] as string;
  const id = txPath.split('/').pop()!;
  const all = await runCli(['log', id], { address: ctx.bus.address });
  t.is(all.code, 0, all.stderr);
  t.regex(all.stdout, /alpha-1[\s\S]*alpha-2[\s\S]*beta-1/);
  t.is((await runCli(['log', txPath], { address: ctx.bus.address })).stdout, all.stdout);
  const onlyB = await runCli(['log', id, '--hook', 'b'], { address: ctx.bus.address });
  t.regex(onlyB.stdout, /beta-1/);
  t.notRegex(onlyB.stdout, /alpha/);
  const last = await runCli(['log', id, '--lines', '1'], { address: ctx.bus.address });
  t.is(last.stdout.split('\n').length, 1);
  const j = jsonLines((await runCli(['--json', 'log', id, '--hook', 'a'], { address: ctx.bus.address })).stdout);
  t.true(j.every((l) => l['transaction'] === txPath && typeof l['line'] === 'string'));
  const unknown = await runCli(['log', 'NoSuchTransaction'], { address: ctx.bus.address });
  t.is(unknown.code, 4, unknown.stderr);
});

test.serial('monitor - prints every signal of a transaction until Ctrl-C, then exits 0', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'm.hook': hookFile({ prepare: 'echo monitored-line' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const mon = spawnCli(['--json', 'monitor'], { address: ctx.bus.address });
  // Printed once the subscription is in place.
  await mon.waitForLine((l) => l.startsWith('Monitoring org.containers.bootc.PreStage'), 30_000, 'stderr');
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 0);
  const finished = await mon.waitForLine((l) => l.includes('"member":"TransactionFinished"'));
  t.regex(finished, /"args":\["\/org\/containers\/bootc\/PreStage\/Transaction\/[^"]+","prepared",""\]/);
  mon.kill('SIGINT');
  const res = await mon.done;
  t.is(res.code, 0, res.stderr);
  const sigs = jsonLines(res.stdout);
  const members = sigs.map((s) => s['member']);
  for (const m of ['TransactionStarted', 'HookStarted', 'Message', 'HookFinished', 'Finished', 'PropertiesChanged']) {
    t.true(members.includes(m), `monitor saw ${m}`);
  }
  t.truthy(sigs.find((s) => s['member'] === 'Message' && s['args'][1] === 'monitored-line'));
});
