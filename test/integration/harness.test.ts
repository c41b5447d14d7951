/**
 * The test harness against real processes: a private dbus-daemon with the
 * shipped policy, busctl as root and as uid 65534, a real ostree sysroot,
 * bus activation, and the daemon helper. If these fail, every other
 * integration test's result means nothing.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp, statSync } from 'node:fs';
import * as path from 'node:path';
import { sessionBus, Message, NameFlag, type MessageBus } from 'dbus-next';
import { runNodeAs } from '../helpers/as-user.js';
import {
  busConfig, SHIPPED_SERVICE_FILE, startBus, withBus, writeActivationFile, type TestBus,
} from '../helpers/bus.js';
import {
  busctl, busctlCall, busctlCallJson, busctlMonitor, isAccessDenied, NOBODY, requestNameAs,
} from '../helpers/busctl.js';
import {
  MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, withClient,
} from '../helpers/dbus-client.js';
import { DAEMON_ENTRY, startDaemon, withDaemon } from '../helpers/daemon.js';
import { buildSysroot, listDeployments, makeSysroot, withSysroot } from '../helpers/ostree.js';
import { isAlive, processesMentioning, killPids } from '../helpers/processes.js';
import { REPO_ROOT, tmpDir } from '../helpers/tmp.js';

const TX_PATH = `${MANAGER_PATH}/Transaction/1`;
const DEPLOY_RE = /^(.+)\/ostree\/deploy\/([^/]+)\/deploy\/([0-9a-f]{64})\.(\d+)$/;

/**
 * A stand-in service owning org.containers.bootc.PreStage that answers every
 * method call on its object paths with success ('s', "ok:<member>"), so
 * whether a call arrives depends on the bus policy alone.
 */
async function startStandIn(address: string): Promise<{ bus: MessageBus; close(): void }> {
  const bus = sessionBus({ busAddress: address });
  await new Promise<void>((resolve, reject) => {
    bus.once('connect', resolve);
    bus.once('error', reject);
  });
  bus.on('error', () => undefined);
  const reply = await bus.requestName(SERVICE, NameFlag.DO_NOT_QUEUE);
  if (reply !== 1) throw new Error(`stand-in did not become primary owner (${reply})`);
  bus.addMethodHandler((msg: Message) => {
    if (!msg.path.startsWith(MANAGER_PATH) && msg.path !== '/') return false;
    bus.send(Message.newMethodReturn(msg, 's', [`ok:${msg.member}`]));
    return true;
  });
  return { bus, close: () => bus.disconnect() };
}

// One shipped-policy bus and stand-in shared by the policy matrix (read-only use).
let shared: { bus: TestBus; standIn: { bus: MessageBus; close(): void } } | undefined;

test.before(async () => {
  const bus = await startBus({ policy: 'shipped' });
  try {
    shared = { bus, standIn: await startStandIn(bus.address) };
  } catch (e) {
    await bus.stop();
    throw e;
  }
});

test.after.always(async () => {
  shared?.standIn.close();
  await shared?.bus.stop();
});

test('bus - starts, and busctl lists its names as root and as uid 65534', async (t) => {
  const bus = await withBus(t);
  t.regex(bus.address, /^unix:path=\/.+\/bus$/);
  t.is((statSync(bus.dir).mode & 0o777), 0o755);
  for (const uid of [0, NOBODY]) {
    const r = await busctl(bus.address, ['list', '--no-pager', '--no-legend'], { uid });
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, /^org\.freedesktop\.DBus\s/m);
    t.notRegex(r.stdout, /org\.freedesktop\.systemd1/);
  }
});

test('bus - config has the system default policy, the shipped policy, and nothing of the host system.d', async (t) => {
  const shipped = await busConfig('/x/bus', { policy: 'shipped' });
  t.regex(shipped, /<type>system<\/type>/);
  t.regex(shipped, /<deny send_type="method_call"\/>/);
  t.regex(shipped, /<deny own="\*"\/>/);
  t.regex(shipped, /org\.freedesktop\.DBus\.Monitoring/);
  t.true(shipped.includes(`<include>${path.join(REPO_ROOT, 'dbus', 'org.containers.bootc.PreStage.conf')}</include>`));
  t.notRegex(shipped, /includedir|system\.d|servicehelper/);
  const permissive = await busConfig('/x/bus', { policy: 'permissive' });
  t.notRegex(permissive, /org\.containers\.bootc\.PreStage\.conf/);
  t.regex(permissive, /<allow own="\*"\/>/);
});

test('bus - stop ends dbus-daemon and removes its directory', async (t) => {
  const bus = await startBus();
  t.true(await isAlive(bus.pid));
  await bus.stop();
  t.false(await isAlive(bus.pid));
  await t.throwsAsync(fsp.stat(bus.dir), { code: 'ENOENT' });
  await bus.stop(); // idempotent
});

test('bus - busctl monitor works as root', async (t) => {
  const bus = await withBus(t);
  const mon = await busctlMonitor(bus.address, ["type='signal',interface='org.example.Harness'"]);
  t.teardown(() => mon.stop());
  const r = await busctl(bus.address, ['emit', '/org/example', 'org.example.Harness', 'Ping', 's', 'hello']);
  t.is(r.code, 0, r.stderr);
  const m = await mon.waitFor((msg) => msg['member'] === 'Ping');
  t.deepEqual(m['payload'], { type: 's', data: ['hello'] });
});

test('policy - root may own org.containers.bootc.PreStage, uid 65534 may not', async (t) => {
  const bus = await withBus(t, { policy: 'shipped' });
  t.is(await requestNameAs(bus.address, SERVICE), 1);
  const denied = await busctlCall(bus.address, 'org.freedesktop.DBus', '/org/freedesktop/DBus',
    'org.freedesktop.DBus', 'RequestName', ['su', SERVICE, '4'], { uid: NOBODY });
  t.true(isAccessDenied(denied), denied.stderr);
  // The same uid may not own other names either: the bus default is deny.
  const other = await busctlCall(bus.address, 'org.freedesktop.DBus', '/org/freedesktop/DBus',
    'org.freedesktop.DBus', 'RequestName', ['su', 'org.example.Other', '4'], { uid: NOBODY });
  t.true(isAccessDenied(other), other.stderr);
});

test('policy - the permissive policy lets uid 65534 own the name', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  t.is(await requestNameAs(bus.address, SERVICE, { uid: NOBODY }), 1);
});

interface Row { iface: string; member: string; objPath?: string; args?: string[]; nobody: 'allowed' | 'denied'; }

const callMacro = test.macro({
  async exec(t: ExecutionContext, row: Row) {
    const objPath = row.objPath ?? MANAGER_PATH;
    for (const [who, uid] of [['root', 0], ['nobody', NOBODY]] as const) {
      const r = await busctlCall(shared!.bus.address, SERVICE, objPath, row.iface, row.member, row.args ?? [], { uid });
      const expected = who === 'root' ? 'allowed' : row.nobody;
      if (expected === 'allowed') {
        t.is(r.code, 0, `${who}: ${r.stderr}`);
        t.true(r.stdout.includes(`ok:${row.member}`), `${who} reached the service: ${r.stdout}`);
      } else {
        t.true(isAccessDenied(r), `${who} must be refused by the bus: code ${r.code} ${r.stderr}`);
      }
    }
  },
  title: (_ = '', row: Row) =>
    `policy - ${row.iface.replace('org.freedesktop.DBus.', '').replace(MANAGER_IFACE, 'PreStage')}.${row.member}` +
    `${row.objPath === TX_PATH ? ' (transaction)' : ''}: root allowed, uid 65534 ${row.nobody}`,
});

const rows: Row[] = [
  { iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect', nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect', objPath: TX_PATH, nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Peer', member: 'Ping', nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Properties', member: 'Get', args: ['ss', MANAGER_IFACE, 'State'], nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Properties', member: 'GetAll', args: ['s', MANAGER_IFACE], nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Properties', member: 'GetAll', objPath: TX_PATH, args: ['s', TRANSACTION_IFACE], nobody: 'allowed' },
  { iface: 'org.freedesktop.DBus.Properties', member: 'Set', args: ['ssv', MANAGER_IFACE, 'State', 's', 'idle'], nobody: 'denied' },
  { iface: MANAGER_IFACE, member: 'ListHooks', args: ['s', ''], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'ListTransactions', nobody: 'allowed' },
  // The members that change something (and GetLog) reach the service for
  // everyone, so that polkit can decide: the daemon is the gate
  // (test/integration/security-access.test.ts, security-polkit.test.ts).
  { iface: MANAGER_IFACE, member: 'StartPreStage', args: ['sa{sv}', '/sysroot/x', '0'], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'CommitPreStage', args: ['sa{sv}', '/sysroot/x', '0'], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'AbortPreStage', args: ['sa{sv}', '/sysroot/x', '0'], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'Reconcile', args: ['a{sv}', '0'], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'RegisterHook', args: ['sa{sv}a{sv}', 'x', '0', '0'], nobody: 'allowed' },
  { iface: MANAGER_IFACE, member: 'UnregisterHook', args: ['s', 'x'], nobody: 'allowed' },
  { iface: TRANSACTION_IFACE, member: 'Cancel', objPath: TX_PATH, nobody: 'allowed' },
  { iface: TRANSACTION_IFACE, member: 'GetLog', objPath: TX_PATH, args: ['a{sv}', '0'], nobody: 'allowed' },
  // The allowed member names are tied to their interface.
  { iface: TRANSACTION_IFACE, member: 'ListHooks', objPath: TX_PATH, args: ['s', ''], nobody: 'denied' },
  { iface: 'org.example.Other', member: 'ListTransactions', nobody: 'denied' },
];
for (const row of rows) test(callMacro, row);

test('policy - a call with no interface field is refused to uid 65534 even for an allowed member; root\'s is delivered', async (t) => {
  const address = shared!.bus.address;
  // dbus-next sends no interface header when `interface` is absent.
  // ListHooks is open to everyone, but only on its interface: a call that
  // names none cannot be checked against the rule, so the bus refuses it.
  const script = `
    import { sessionBus, Message } from 'dbus-next';
    const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
    bus.on('error', () => {});
    await new Promise((r) => bus.once('connect', r));
    const out = {};
    for (const [label, iface] of [['none', undefined], ['manager', '${MANAGER_IFACE}']]) {
      try {
        const reply = await bus.call(new Message({ destination: '${SERVICE}', path: '${MANAGER_PATH}',
          ...(iface ? { interface: iface } : {}), member: 'ListHooks', signature: 's', body: [''] }));
        out[label] = 'reply:' + reply.body[0];
      } catch (e) { out[label] = 'error:' + e.type; }
    }
    console.log(JSON.stringify(out));
    bus.disconnect();
  `;
  const expected: Record<number, Record<string, string>> = {
    0: { none: 'reply:ok:ListHooks', manager: 'reply:ok:ListHooks' },
    [NOBODY]: { none: 'error:org.freedesktop.DBus.Error.AccessDenied', manager: 'reply:ok:ListHooks' },
  };
  for (const uid of [0, NOBODY]) {
    const r = await runNodeAs(script, { uid, busAddress: address });
    t.is(r.code, 0, r.stderr);
    t.deepEqual(JSON.parse(r.stdout.trim()), expected[uid], `uid ${uid}`);
  }
});

test('policy - uid 65534 receives the service\'s signals', async (t) => {
  const { bus: standIn } = shared!.standIn;
  const iface = TRANSACTION_IFACE;
  const script = `
    import { sessionBus, Message } from 'dbus-next';
    const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
    bus.on('error', () => {});
    await new Promise((r) => bus.once('connect', r));
    await bus.call(new Message({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus',
      interface: 'org.freedesktop.DBus', member: 'AddMatch', signature: 's',
      body: ["type='signal',interface='${iface}',member='Finished'"] }));
    bus.on('message', (m) => {
      if (m.member !== 'Finished') return;
      console.log(JSON.stringify({ path: m.path, body: m.body }));
      bus.disconnect();
      process.exit(0);
    });
  `;
  // Emit until the subscriber, which may still be starting, has seen one.
  const timer = setInterval(() => {
    standIn.send(Message.newSignal(TX_PATH, iface, 'Finished', 'sss', ['prepared', '', '']));
  }, 50);
  try {
    const r = await runNodeAs(script, { uid: NOBODY, busAddress: shared!.bus.address, timeoutMs: 20_000 });
    t.is(r.code, 0, r.stderr);
    t.deepEqual(JSON.parse(r.stdout.trim().split('\n')[0]!), { path: TX_PATH, body: ['prepared', '', ''] });
  } finally {
    clearInterval(timer);
  }
});

test('client - calls, reads properties and records signals through its own match rules', async (t) => {
  const bus = await withBus(t);
  const standIn = await startStandIn(bus.address);
  t.teardown(() => standIn.close());
  const client = await withClient(t, bus.address);
  t.deepEqual(await client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions'), ['ok:ListTransactions']);
  t.is(await client.nameOwner(SERVICE), await client.waitForName(SERVICE));
  t.is(await client.nameOwner('org.example.Nobody'), null);
  const rec = await client.collectSignals({ pathNamespace: MANAGER_PATH, interface: TRANSACTION_IFACE });
  standIn.bus.send(Message.newSignal('/org/elsewhere', TRANSACTION_IFACE, 'Finished', 'sss', ['x', '', '']));
  standIn.bus.send(Message.newSignal(TX_PATH, TRANSACTION_IFACE, 'HookStarted', 'suu', ['a', 0, 2]));
  standIn.bus.send(Message.newSignal(TX_PATH, TRANSACTION_IFACE, 'Finished', 'sss', ['prepared', '', '']));
  const fin = await rec.waitFor((s) => s.member === 'Finished');
  t.deepEqual(fin.body, ['prepared', '', '']);
  t.deepEqual(rec.signals.map((s) => [s.path, s.member]), [[TX_PATH, 'HookStarted'], [TX_PATH, 'Finished']]);
  await t.throwsAsync(rec.waitFor((s) => s.member === 'Never', 100), { message: /no signal matching/ });
  await rec.stop();
});

test('sysroot - N deployments at <sysroot>/ostree/deploy/<os>/deploy/<checksum>.<serial>, newest first', async (t) => {
  const s = await withSysroot(t, { osname: 'fedora', deployments: 3, hooks: { 'a.hook': '[Hook]\nPrepare=/bin/true\n' } });
  t.is(s.deployments.length, 3);
  t.deepEqual(await listDeployments(s.path), s.deployments);
  for (const d of s.deployments) {
    const m = DEPLOY_RE.exec(d);
    t.truthy(m, d);
    t.is(m![1], s.path);
    t.is(m![2], 'fedora');
    t.true((await fsp.stat(d)).isDirectory());
    const hook = await fsp.stat(path.join(d, 'usr/lib/bootc/pre-stage.d/a.hook'));
    t.is(hook.uid, 0);
    t.is(hook.mode & 0o777, 0o644);
    t.regex(await fsp.readFile(path.join(d, 'etc/os-release'), 'utf8'), /^ID="fedora"$/m);
  }
  t.is(new Set(s.deployments).size, 3);
  // The booted root is the oldest deployment, by device and inode.
  const booted = await fsp.stat(s.bootedRoot);
  const oldest = await fsp.stat(s.deployments[2]!);
  t.deepEqual([booted.dev, booted.ino], [oldest.dev, oldest.ino]);
});

test('sysroot - deploy adds the newest deployment, undeploy removes one, remove clears all', async (t) => {
  const s = await makeSysroot({ deployments: 1 });
  try {
    const first = s.deployments[0]!;
    const staged = await s.deploy({
      hooks: { 'b.hook': '[Hook]\nPrepare=${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/b\n' },
      files: { 'usr/libexec/b': { content: '#!/bin/sh\nexit 0\n', mode: 0o755 } },
    });
    t.deepEqual(s.deployments, [staged, first]);
    t.is((await fsp.stat(path.join(staged, 'usr/libexec/b'))).mode & 0o777, 0o755);
    await t.throwsAsync(fsp.stat(path.join(first, 'usr/libexec/b')), { code: 'ENOENT' });
    await s.undeploy(1);
    t.deepEqual(s.deployments, [staged]);
    await t.throwsAsync(fsp.stat(first), { code: 'ENOENT' });
  } finally {
    await s.remove();
  }
  await t.throwsAsync(fsp.stat(s.path), { code: 'ENOENT' });
});

test('sysroot - built from nothing has the same shape as a template copy', async (t) => {
  const built = await buildSysroot({ deployments: 2 });
  t.teardown(() => built.remove());
  const copied = await withSysroot(t, { deployments: 2 });
  t.is(built.deployments.length, 2);
  t.deepEqual(built.deployments.map((d) => path.relative(built.path, d).replace(/[0-9a-f]{64}/, 'C')),
    copied.deployments.map((d) => path.relative(copied.path, d).replace(/[0-9a-f]{64}/, 'C')));
  // Deployed files share inodes with the repository in both.
  for (const s of [built, copied]) {
    const st = await fsp.stat(path.join(s.deployments[0]!, 'usr/lib/os-release'));
    t.true(st.nlink > 1);
  }
});

test('activation - the bus starts the service from the servicedir, and stop ends it', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const servicedir = path.join(dir, 'services');
  const script = path.join(dir, 'stand-in.mjs');
  await fsp.writeFile(script, `
    import dbus from ${JSON.stringify(path.join(REPO_ROOT, 'node_modules', 'dbus-next', 'index.js'))};
    const bus = dbus.sessionBus({ busAddress: process.env.DBUS_STARTER_ADDRESS });
    bus.on('error', () => process.exit(1));
    await new Promise((r) => bus.once('connect', r));
    bus.addMethodHandler((msg) => {
      bus.send(dbus.Message.newMethodReturn(msg, 'ss', [process.env.DBUS_STARTER_BUS_TYPE ?? '', String(process.getuid())]));
      return true;
    });
    await bus.requestName(${JSON.stringify(SERVICE)}, dbus.NameFlag.DO_NOT_QUEUE);
  `);
  const file = await writeActivationFile(servicedir, { exec: [process.execPath, script] });
  const text = await fsp.readFile(file, 'utf8');
  t.regex(text, /^Name=org\.containers\.bootc\.PreStage$/m);
  t.regex(text, /^User=root$/m);
  t.regex(text, /^SystemdService=bootc-prestaged\.service$/m);

  const bus = await startBus({ servicedir });
  let stopped = false;
  t.teardown(async () => { if (!stopped) await bus.stop(); });
  // Auto-start on a method call to the (not yet owned) name.
  const r = await busctlCallJson(bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListTransactions', [], { timeoutSec: 20 });
  t.deepEqual(r, { type: 'ss', data: ['system', '0'] });
  const running = await processesMentioning(script);
  t.is(running.length, 1);
  await bus.stop();
  stopped = true;
  t.false(await isAlive(running[0]!.pid));
});

test('activation - the shipped activation file, copied verbatim, is accepted by dbus-daemon', async (t) => {
  const servicedir = await tmpDir(t, { mode: 0o755 });
  await fsp.copyFile(SHIPPED_SERVICE_FILE, path.join(servicedir, path.basename(SHIPPED_SERVICE_FILE)));
  const bus = await withBus(t, { servicedir });
  const client = await withClient(t, bus.address);
  const [names] = await client.call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
    'ListActivatableNames');
  t.true((names as string[]).includes(SERVICE));
});

test('processes - leftovers are found by a path in their environment and killed', async (t) => {
  const dir = await tmpDir(t);
  const child = spawn('sleep', ['30'], { env: { ...process.env, BOOTC_PRESTAGE_STATE_DIRECTORY: `${dir}/x` }, stdio: 'ignore' });
  t.teardown(() => { child.kill('SIGKILL'); });
  await new Promise((r) => child.once('spawn', r));
  // 'spawn' fires before exec; the new environment shows once sleep runs.
  let found = await processesMentioning(dir);
  for (let i = 0; i < 100 && found.length === 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
    found = await processesMentioning(dir);
  }
  t.deepEqual(found.map((p) => p.pid), [child.pid]);
  await killPids([child.pid!]);
  t.false(await isAlive(child.pid!));
});

test('daemon - startDaemon reports the output of a daemon that exits at start', async (t) => {
  const bus = await withBus(t);
  const err = await t.throwsAsync(startDaemon({ bus, sysroot: '/nonexistent', args: ['--log-level', 'loud'] }));
  t.regex(err!.message, /exited \(2\) before owning org\.containers\.bootc\.PreStage/);
  t.regex(err!.message, /--log-level/);
});

test('daemon - withDaemon starts the real daemon, which owns the name; teardown leaves nothing', async (t) => {
  t.true(DAEMON_ENTRY.endsWith('dist/bootc-prestaged.mjs'), 'the bundle that ships is what is tested');
  const ctx = await withDaemon(t);
  const owner = await ctx.client.nameOwner(SERVICE);
  t.is(owner, ctx.daemon.uniqueName);
  const [pid] = await ctx.client.call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
    'GetConnectionUnixProcessID', 's', [owner]);
  t.is(Number(pid), ctx.daemon.pid);
  t.true(ctx.daemon.jsonLogs().length > 0, 'the daemon logs JSON lines on stdout');
  // A restart keeps the bus and directories and gives a new process.
  const before = ctx.daemon.pid;
  await ctx.restart();
  t.not(ctx.daemon.pid, before);
  t.false(await isAlive(before));
  t.is(await ctx.client.nameOwner(SERVICE), ctx.daemon.uniqueName);
});
