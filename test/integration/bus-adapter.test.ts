/**
 * The D-Bus adapter (service/bus/) on a real private dbus-daemon, driven by
 * the fake engine (test/helpers/fake-engine.ts, a stand-in for our own
 * engine only) and observed by independent clients: busctl (sd-bus), a
 * dbus-next client, and dbus-next clients running as uid 65534.
 *
 * The bus runs the permissive test policy, so every refusal seen here is
 * the daemon's own check, not the bus policy's (the shipped policy is
 * tested with the daemon elsewhere).
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DBusError, Message, MessageType, Variant } from 'dbus-next';
import { connectBus, type BusConnection } from '../../service/bus/connection.js';
import { DBUS_ERROR, ERROR_NAMES } from '../../service/protocol/errors.js';
import { parseIntrospectionXml, type IntrospectedInterface } from '../../service/bus/introspection.js';
import {
  BUS_NAME, MANAGER, MANAGER_PATH, STANDARD_INTERFACES, TRANSACTION, signatureOf, transactionPath,
  type InterfaceSpec,
} from '../../service/protocol/members.js';
import { exportService, type ExportOptions, type ServiceHandle } from '../../service/bus/service.js';
import type { RateLimits } from '../../service/bus/transaction-object.js';
import { ERROR_CODES, PreStageError } from '../../service/model/errors.js';
import type { LogFields, Logger } from '../../service/model/logger.js';
import { runNodeAs } from '../helpers/as-user.js';
import { withBus, type TestBus } from '../helpers/bus.js';
import { busctl, busctlCall, busctlGetProperty, NOBODY } from '../helpers/busctl.js';
import { withClient, unwrapVariants, type TestClient } from '../helpers/dbus-client.js';
import { FakeEngine } from '../helpers/fake-engine.js';
import { REPO_ROOT } from '../helpers/tmp.js';

const STANDARD = new Set(STANDARD_INTERFACES.map((s) => s.name));
const DEPLOYMENT = '/sysroot/ostree/deploy/os/deploy/0123abc.0';

class RecordingLogger implements Logger {
  readonly lines: { level: string; message: string; fields?: LogFields }[] = [];
  error(message: string, fields?: LogFields) { this.lines.push({ level: 'error', message, fields }); }
  warn(message: string, fields?: LogFields) { this.lines.push({ level: 'warn', message, fields }); }
  info(message: string, fields?: LogFields) { this.lines.push({ level: 'info', message, fields }); }
  debug(message: string, fields?: LogFields) { this.lines.push({ level: 'debug', message, fields }); }
}

interface Served {
  bus: TestBus;
  conn: BusConnection;
  engine: FakeEngine;
  service: ServiceHandle;
  client: TestClient;
  log: RecordingLogger;
}

async function serve(t: ExecutionContext, opts: { rateLimits?: Partial<RateLimits>; engine?: FakeEngine } = {}): Promise<Served> {
  const bus = await withBus(t, { policy: 'permissive' });
  const conn = await connectBus(bus.address);
  t.teardown(() => conn.close());
  const engine = opts.engine ?? new FakeEngine();
  const log = new RecordingLogger();
  const exportOpts: ExportOptions = opts.rateLimits ? { rateLimits: opts.rateLimits } : {};
  const service = await exportService(conn, engine, log, exportOpts);
  t.teardown(() => service.close());
  const client = await withClient(t, bus.address);
  return { bus, conn, engine, service, client, log };
}

/** dbus-next's typings lack MessageBus.name (our unique name, set after Hello). */
const uniqueName = (c: TestClient): string => (c.bus as unknown as { name: string }).name;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function call(client: TestClient, objPath: string, iface: string, member: string, signature = '', body: unknown[] = []) {
  return client.call(BUS_NAME, objPath, iface, member, signature, body);
}

async function dbusError(t: ExecutionContext, p: Promise<unknown>, name: string, ...needles: string[]): Promise<DBusError> {
  const e = await t.throwsAsync(p) as unknown as DBusError;
  t.true(e instanceof DBusError, `expected a D-Bus error, got ${String(e)}`);
  t.is(e.type, name);
  for (const n of needles) t.true(e.text.includes(n), `'${e.text}' should mention '${n}'`);
  return e;
}

function xmlInterfaces(spec: InterfaceSpec): IntrospectedInterface[] {
  const file = path.join(REPO_ROOT, 'interfaces', `${spec.name}.xml`);
  return parseIntrospectionXml(readFileSync(file, 'utf8')).interfaces;
}

const ours = (ifaces: IntrospectedInterface[]) => ifaces.filter((i) => !STANDARD.has(i.name));

// ---- introspection -------------------------------------------------------------

test('introspection - the live objects equal the XML files (Introspect)', async (t) => {
  const { engine, client } = await serve(t);
  const tx = engine.addTransaction(DEPLOYMENT, 'tx_1');
  const manager = parseIntrospectionXml(await client.introspect(BUS_NAME, MANAGER_PATH));
  t.deepEqual(ours(manager.interfaces), xmlInterfaces(MANAGER));
  t.deepEqual(manager.interfaces.filter((i) => STANDARD.has(i.name)).map((i) => i.name).sort(), [...STANDARD].sort());
  t.deepEqual(manager.children, ['Transaction']);
  const txNode = parseIntrospectionXml(await client.introspect(BUS_NAME, transactionPath(tx.id)));
  t.deepEqual(ours(txNode.interfaces), xmlInterfaces(TRANSACTION));
  const parent = parseIntrospectionXml(await client.introspect(BUS_NAME, `${MANAGER_PATH}/Transaction`));
  t.deepEqual(ours(parent.interfaces), []);
  t.deepEqual(parent.children, ['tx_1']);
});

test('introspection - busctl reads the XML the objects serve as the files say', async (t) => {
  const { bus, engine } = await serve(t);
  engine.addTransaction(DEPLOYMENT, 'tx_1');
  for (const [objPath, spec] of [[MANAGER_PATH, MANAGER], [transactionPath('tx_1'), TRANSACTION]] as const) {
    const r = await busctl(bus.address, ['--xml-interface', 'introspect', BUS_NAME, objPath]);
    t.is(r.code, 0, r.stderr);
    t.deepEqual(ours(parseIntrospectionXml(r.stdout).interfaces), xmlInterfaces(spec));
  }
});

test('introspection - busctl\'s own parser sees every member with its signature', async (t) => {
  const { bus, engine } = await serve(t);
  engine.addTransaction(DEPLOYMENT, 'tx_1');
  for (const [objPath, spec] of [[MANAGER_PATH, MANAGER], [transactionPath('tx_1'), TRANSACTION]] as const) {
    const r = await busctl(bus.address, ['--no-legend', 'introspect', BUS_NAME, objPath, spec.name]);
    t.is(r.code, 0, r.stderr);
    const rows = new Map(r.stdout.trim().split('\n').map((l) => l.split(/\s+/))
      .filter((c) => c[0]!.startsWith('.')).map((c) => [c[0]!.slice(1), c]));
    const expected = new Map<string, string[]>();
    for (const m of spec.methods) expected.set(m.name, ['method', signatureOf(m.in) || '-', signatureOf(m.out) || '-']);
    for (const s of spec.signals) expected.set(s.name, ['signal', signatureOf(s.args) || '-']);
    for (const p of spec.properties) expected.set(p.name, ['property', p.type]);
    t.deepEqual([...rows.keys()].sort(), [...expected.keys()].sort());
    for (const [name, want] of expected) {
      const row = rows.get(name)!;
      t.deepEqual(row.slice(1, 1 + want.length), want, name);
      if (want[0] === 'property') t.is(row.at(-1), 'emits-change', `${name} is read-only and emits changes`);
    }
  }
});

test('introspection - busctl tree lists the manager and every transaction', async (t) => {
  const { bus, engine } = await serve(t);
  engine.addTransaction(DEPLOYMENT, 'tx_1');
  engine.addTransaction(DEPLOYMENT, 'tx_2');
  const r = await busctl(bus.address, ['--list', 'tree', BUS_NAME]);
  t.is(r.code, 0, r.stderr);
  const paths = r.stdout.trim().split('\n');
  for (const p of [MANAGER_PATH, transactionPath('tx_1'), transactionPath('tx_2')]) t.true(paths.includes(p), p);
});

// ---- properties ----------------------------------------------------------------

test('properties - anyone reads them, busctl included', async (t) => {
  const { bus, engine, client } = await serve(t);
  const tx = engine.addTransaction(DEPLOYMENT, 'tx_1');
  tx.patch({ startedUsec: 1_700_000_000_000_000 });
  t.deepEqual(await busctlGetProperty(bus.address, BUS_NAME, MANAGER_PATH, MANAGER.name, 'State', { uid: NOBODY }),
    { type: 's', data: 'idle' });
  t.deepEqual(await busctlGetProperty(bus.address, BUS_NAME, MANAGER_PATH, MANAGER.name, 'ActiveTransaction', { uid: NOBODY }),
    { type: 'o', data: '/' });
  t.deepEqual(await busctlGetProperty(bus.address, BUS_NAME, transactionPath(tx.id), TRANSACTION.name, 'StartedUsec', { uid: NOBODY }),
    { type: 't', data: 1_700_000_000_000_000 });
  const all = await client.getAllProperties(BUS_NAME, transactionPath('tx_1'), TRANSACTION.name);
  t.deepEqual(Object.keys(all).sort(), TRANSACTION.properties.map((p) => p.name).sort());
  t.is(all.StartedUsec, 1_700_000_000_000_000n);
  t.deepEqual(all.Hooks, [['alpha', 'pending', 0, ''], ['beta', 'pending', 0, '']]);
  engine.setStatus({ state: 'busy', active: 'tx_1' });
  t.is(await client.getProperty(BUS_NAME, MANAGER_PATH, MANAGER.name, 'ActiveTransaction'), transactionPath('tx_1'));
});

test('properties - Set is PropertyReadOnly and the value does not change', async (t) => {
  const { client, engine } = await serve(t);
  engine.addTransaction(DEPLOYMENT, 'tx_1');
  await dbusError(t, client.setProperty(BUS_NAME, MANAGER_PATH, MANAGER.name, 'State', new Variant('s', 'busy')),
    DBUS_ERROR.PropertyReadOnly, 'State');
  t.is(await client.getProperty(BUS_NAME, MANAGER_PATH, MANAGER.name, 'State'), 'idle');
  await dbusError(t, client.setProperty(BUS_NAME, transactionPath('tx_1'), TRANSACTION.name, 'State', new Variant('s', 'committed')),
    DBUS_ERROR.PropertyReadOnly);
  t.is(await client.getProperty(BUS_NAME, transactionPath('tx_1'), TRANSACTION.name, 'State'), 'queued');
  await dbusError(t, client.getProperty(BUS_NAME, MANAGER_PATH, MANAGER.name, 'Nope'), DBUS_ERROR.InvalidArgs, 'Nope');
  await dbusError(t, client.getAllProperties(BUS_NAME, MANAGER_PATH, 'org.example.Nope'), DBUS_ERROR.UnknownInterface);
});

// ---- access control ------------------------------------------------------------

/** Every method of both interfaces with a body that passes the signature check. */
const SAMPLE_CALLS: { spec: InterfaceSpec; member: string; signature: string; body: string }[] = [
  { spec: MANAGER, member: 'StartPreStage', signature: 'sa{sv}', body: `['${DEPLOYMENT}', {}]` },
  { spec: MANAGER, member: 'CommitPreStage', signature: 'sa{sv}', body: `['${DEPLOYMENT}', {}]` },
  { spec: MANAGER, member: 'AbortPreStage', signature: 'sa{sv}', body: `['${DEPLOYMENT}', {}]` },
  { spec: MANAGER, member: 'Reconcile', signature: 'a{sv}', body: '[{}]' },
  { spec: MANAGER, member: 'RegisterHook', signature: 'sa{sv}a{sv}', body: "['h', {}, {}]" },
  { spec: MANAGER, member: 'UnregisterHook', signature: 's', body: "['h']" },
  { spec: MANAGER, member: 'ListHooks', signature: 's', body: "['']" },
  { spec: MANAGER, member: 'ListTransactions', signature: '', body: '[]' },
  { spec: TRANSACTION, member: 'Cancel', signature: '', body: '[]' },
  { spec: TRANSACTION, member: 'GetLog', signature: 'a{sv}', body: '[{}]' },
];

test('access - as uid 65534 every privileged method is AccessDenied, the rest answer', async (t) => {
  const { bus, engine } = await serve(t);
  engine.addTransaction(DEPLOYMENT, 'tx_1');
  const methods = [...MANAGER.methods.map((m) => ({ spec: MANAGER as InterfaceSpec, m })),
    ...TRANSACTION.methods.map((m) => ({ spec: TRANSACTION as InterfaceSpec, m }))];
  t.deepEqual(SAMPLE_CALLS.map((c) => c.member).sort(), methods.map((x) => x.m.name).sort(), 'every method is sampled');
  const script = `
import { sessionBus, Message } from 'dbus-next';
const bus = sessionBus({ busAddress: process.env.BUS_ADDRESS });
const out = {};
for (const c of ${JSON.stringify(SAMPLE_CALLS.map((c) => ({
    path: c.spec === MANAGER ? MANAGER_PATH : transactionPath('tx_1'), iface: c.spec.name, member: c.member, signature: c.signature, body: c.body,
  })))}) {
  try {
    await bus.call(new Message({ destination: '${BUS_NAME}', path: c.path, interface: c.iface, member: c.member,
      signature: c.signature, body: eval(c.body) }));
    out[c.member] = 'ok';
  } catch (e) { out[c.member] = e.type + ': ' + e.text; }
}
console.log(JSON.stringify(out));
bus.disconnect();
`;
  const r = await runNodeAs(script, { busAddress: bus.address, uid: NOBODY });
  t.is(r.code, 0, r.stderr);
  const results = JSON.parse(r.stdout.trim()) as Record<string, string>;
  for (const { m } of methods) {
    if (m.privileged) {
      t.true(results[m.name]!.startsWith(`${DBUS_ERROR.AccessDenied}: ${m.name} requires root`), `${m.name}: ${results[m.name]}`);
    } else {
      t.is(results[m.name], 'ok', m.name);
    }
  }
  t.deepEqual(engine.calls.map((c) => c.method), ['listHooks'], 'only the unprivileged call reached the engine');
  // busctl, as that user too.
  const b = await busctlCall(bus.address, BUS_NAME, MANAGER_PATH, MANAGER.name, 'StartPreStage', ['sa{sv}', DEPLOYMENT, '0'], { uid: NOBODY });
  t.not(b.code, 0);
  t.regex(b.stderr, /access denied|requires root/i);
  t.is(engine.calls.length, 1);
});

// ---- dispatch errors -----------------------------------------------------------

test('errors - unknown object, interface, method; wrong signature; bad options', async (t) => {
  const { bus, client, engine } = await serve(t);
  await dbusError(t, call(client, transactionPath('nope'), TRANSACTION.name, 'Cancel'), DBUS_ERROR.UnknownObject, 'nope');
  await dbusError(t, call(client, MANAGER_PATH, 'org.example.Nope', 'StartPreStage', 'sa{sv}', [DEPLOYMENT, {}]),
    DBUS_ERROR.UnknownInterface, 'org.example.Nope');
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPrestage', 'sa{sv}', [DEPLOYMENT, {}]),
    DBUS_ERROR.UnknownMethod, 'StartPrestage');
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 's', [DEPLOYMENT]),
    DBUS_ERROR.InvalidArgs, "expected signature 'sa{sv}'", "got 's'");
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', [DEPLOYMENT, { Force: new Variant('b', true) }]),
    DBUS_ERROR.InvalidArgs, "'Force'", "'force' (b)");
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', [DEPLOYMENT, { force: new Variant('s', 'yes') }]),
    DBUS_ERROR.InvalidArgs, "'force' must have type 'b', not 's'");
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', [`/${'x'.repeat(5000)}`, {}]),
    DBUS_ERROR.InvalidArgs, '4096');
  // dbus-next cannot send the key __proto__; busctl can.
  const r = await busctlCall(bus.address, BUS_NAME, MANAGER_PATH, MANAGER.name, 'StartPreStage',
    ['sa{sv}', DEPLOYMENT, '1', '__proto__', 'b', 'true']);
  t.not(r.code, 0);
  t.regex(r.stderr, /unknown key '__proto__'/);
  t.deepEqual(engine.calls, [], 'no invalid call reached the engine');
});

test('errors - engine errors keep their name and message; unexpected ones are Internal without a stack', async (t) => {
  const { client, engine, log } = await serve(t);
  for (const code of ERROR_CODES) {
    engine.failNext('listHooks', new PreStageError(code, `listing failed: ${code}`));
    await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'ListHooks', 's', ['']), ERROR_NAMES[code], `listing failed: ${code}`);
  }
  const boom = new Error('EACCES: permission denied, open \'/etc/x\'');
  engine.failNext('start', boom);
  const e = await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', [DEPLOYMENT, {}]),
    ERROR_NAMES.Internal, 'EACCES');
  t.false(e.text.includes('\n'));
  t.false(e.text.includes('bus-adapter.test'), 'no stack frames');
  t.true(log.lines.some((l) => l.level === 'error' && l.message.includes('bus-adapter.test')), 'the stack is logged');
  // The service still answers.
  t.deepEqual(await call(client, MANAGER_PATH, MANAGER.name, 'ListTransactions'), [[]]);
});

// ---- transactions --------------------------------------------------------------

/** Every message the client receives, in arrival order. */
function recordAll(client: TestClient): Message[] {
  const all: Message[] = [];
  client.bus.on('message', (m: Message) => all.push(m));
  return all;
}

test('StartPreStage - reply first, then the signals in order; final properties before Finished', async (t) => {
  const { client, engine } = await serve(t);
  const rec = await client.collectSignals({ pathNamespace: MANAGER_PATH });
  const all = recordAll(client);
  let finishedSeen: Promise<Record<string, unknown>> | null = null;
  client.bus.on('message', (m: Message) => {
    if (m.type === MessageType.SIGNAL && m.member === 'Finished' && m.interface === TRANSACTION.name) {
      // A client reacting to Finished by reading properties sees the end state.
      finishedSeen ??= client.getAllProperties(BUS_NAME, m.path, TRANSACTION.name);
    }
  });
  engine.afterStart = (tx) => {
    tx.beginPhase('prepare');
    tx.hookStarted('alpha');
    for (let i = 1; i <= 5; i++) tx.progress('alpha', i * 20, `step ${i}`);
    tx.message('alpha', 'pulling');
    tx.hookFinished('alpha', 'success', '');
    tx.hookStarted('beta');
    tx.progress('beta', 50);
    tx.hookFinished('beta', 'failed', 'exit status 3');
    tx.finish('failed', 'HookFailed', 'beta failed: exit status 3');
  };
  const [txPath] = await call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}',
    [DEPLOYMENT, { force: new Variant('b', true), 'timeout-sec': new Variant('u', 60) }]);
  t.regex(txPath as string, /^\/org\/containers\/bootc\/PreStage\/Transaction\/fake\d+$/);
  t.deepEqual(engine.calls[0], { method: 'start', args: [DEPLOYMENT, { force: true, wait: false, dryRun: false, timeoutSec: 60 }] });
  await rec.waitFor((s) => s.member === 'TransactionFinished');
  await sleep(100);

  const replyAt = all.findIndex((m) => m.type === MessageType.METHOD_RETURN && m.body[0] === txPath);
  const firstSignal = all.findIndex((m) => m.type === MessageType.SIGNAL && m.path.startsWith(MANAGER_PATH));
  t.true(replyAt >= 0 && replyAt < firstSignal, `reply at ${replyAt}, first signal at ${firstSignal}`);

  const seq = rec.signals.filter((s) => s.member !== 'PropertiesChanged').map((s) => `${s.member}${s.member.startsWith('Hook') ? `:${s.body[0] as string}` : ''}`);
  t.deepEqual(seq, [
    'TransactionStarted',
    'HookStarted:alpha', 'HookProgress:alpha', 'Message', 'HookProgress:alpha', 'HookFinished:alpha',
    'HookStarted:beta', 'HookProgress:beta', 'HookFinished:beta',
    'Finished', 'TransactionFinished',
  ]);
  const progress = rec.signals.filter((s) => s.member === 'HookProgress' && s.body[0] === 'alpha');
  t.deepEqual(progress.at(-1)!.body, ['alpha', 100, 'step 5'], 'the last progress value is delivered');
  t.deepEqual(rec.signals.find((s) => s.member === 'TransactionStarted')!.body, [txPath, DEPLOYMENT, 'prepare']);
  t.deepEqual(rec.signals.find((s) => s.member === 'Finished')!.body,
    ['failed', 'org.containers.bootc.PreStage.Error.HookFailed', 'beta failed: exit status 3']);
  t.deepEqual(rec.signals.find((s) => s.member === 'TransactionFinished')!.body,
    [txPath, 'failed', 'org.containers.bootc.PreStage.Error.HookFailed']);

  const finishedAt = rec.signals.findIndex((s) => s.member === 'Finished');
  const txChanges = rec.signals.slice(0, finishedAt)
    .filter((s) => s.member === 'PropertiesChanged' && s.path === txPath)
    .map((s) => s.body[1] as Record<string, unknown>);
  const merged = Object.assign({}, ...txChanges) as Record<string, unknown>;
  t.is(merged.State, 'failed');
  t.is(merged.Error, 'org.containers.bootc.PreStage.Error.HookFailed');
  t.is(merged.ErrorMessage, 'beta failed: exit status 3');
  t.false(rec.signals.slice(finishedAt).some((s) => s.member === 'PropertiesChanged' && s.path === txPath && (s.body[1] as Record<string, unknown>).State !== undefined));
  const managerChanges = rec.signals.filter((s) => s.member === 'PropertiesChanged' && s.path === MANAGER_PATH);
  t.true(managerChanges.some((s) => (s.body[1] as Record<string, unknown>).State === 'busy'));
  const seen = await finishedSeen!;
  t.is(seen.State, 'failed');
  t.is(seen.ErrorMessage, 'beta failed: exit status 3');
  await rec.stop();
});

test('StartPreStage - property changes the engine makes before replying still follow the reply', async (t) => {
  const { client, engine } = await serve(t);
  const old = engine.addTransaction(DEPLOYMENT, 'old');
  old.beginPhase('prepare');
  old.finish('failed', 'HookFailed', 'x');
  await sleep(100);
  const rec = await client.collectSignals({ pathNamespace: MANAGER_PATH });
  const all = recordAll(client);
  // force on a failed transaction: the fake engine, like the real one,
  // resets its snapshot and turns busy before start() resolves.
  const [p] = await call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', [DEPLOYMENT, { force: new Variant('b', true) }]);
  t.is(p, transactionPath('old'));
  await rec.waitFor((s) => s.member === 'PropertiesChanged' && s.path === p && (s.body[1] as Record<string, unknown>).State === 'queued');
  await rec.waitFor((s) => s.member === 'PropertiesChanged' && s.path === MANAGER_PATH && (s.body[1] as Record<string, unknown>).State === 'busy');
  const replyAt = all.findIndex((m) => m.type === MessageType.METHOD_RETURN && m.body[0] === p);
  const firstSignal = all.findIndex((m) => m.type === MessageType.SIGNAL && m.path.startsWith(MANAGER_PATH));
  t.true(replyAt >= 0 && replyAt < firstSignal, `reply at ${replyAt}, first signal at ${firstSignal}`);
  await rec.stop();
});

test('HookProgress over the bus - 10,000 events: at most ~20 signals per second, the last value delivered', async (t) => {
  const { client, engine } = await serve(t);
  const tx = engine.addTransaction(DEPLOYMENT, 'tx_1');
  const rec = await client.collectSignals({ path: transactionPath('tx_1'), member: 'HookProgress' });
  tx.hookStarted('alpha');
  const start = Date.now();
  for (let batch = 0; batch < 100; batch++) {
    for (let j = 0; j < 100; j++) {
      const i = batch * 100 + j;
      tx.progress('alpha', i / 100, `event ${i}`);
    }
    await sleep(10);
  }
  await rec.waitFor((s) => s.body[2] === 'event 9999', 2000);
  const seconds = (Date.now() - start) / 1000;
  t.log(`${rec.signals.length} HookProgress signals in ${seconds.toFixed(2)} s`);
  t.true(rec.signals.length <= Math.ceil(seconds * 20) + 2, `${rec.signals.length} signals in ${seconds} s`);
  t.deepEqual(rec.signals.at(-1)!.body, ['alpha', 100, 'event 9999']);
  await rec.stop();
});

test('Message over the bus - 50 lines per second, then the count of the rest', async (t) => {
  const { client, engine } = await serve(t, { rateLimits: { messageWindowMs: 300 } });
  const tx = engine.addTransaction(DEPLOYMENT, 'tx_1');
  const rec = await client.collectSignals({ path: transactionPath('tx_1'), member: 'Message' });
  for (let i = 0; i < 1000; i++) tx.message('alpha', `line ${i}`);
  const notice = await rec.waitFor((s) => String(s.body[1]).includes('suppressed'), 3000);
  t.deepEqual(notice.body, ['alpha', '[950 lines suppressed; see GetLog]']);
  t.is(rec.signals.length, 51);
  t.deepEqual(rec.signals.slice(0, 50).map((s) => s.body[1]), Array.from({ length: 50 }, (_, i) => `line ${i}`));
  // The log still has every line.
  const [lines] = await call(client, transactionPath('tx_1'), TRANSACTION.name, 'GetLog', 'a{sv}',
    [{ 'max-lines': new Variant('u', 100_000) }]);
  t.is((lines as string[]).length, 1000);
  await rec.stop();
});

test('transactions - exported when added, before the call returns; unexported when removed', async (t) => {
  const { client, engine } = await serve(t);
  const existing = engine.addTransaction(DEPLOYMENT, 'early');
  engine.afterStart = null;
  const [p] = await call(client, MANAGER_PATH, MANAGER.name, 'StartPreStage', 'sa{sv}', ['/sysroot/other.0', {}]);
  t.is(await client.getProperty(BUS_NAME, p as string, TRANSACTION.name, 'Deployment'), '/sysroot/other.0');
  t.deepEqual(await call(client, MANAGER_PATH, MANAGER.name, 'ListTransactions'), [[transactionPath(existing.id), p]]);
  engine.removeTransaction(existing.id);
  await dbusError(t, client.getProperty(BUS_NAME, transactionPath('early'), TRANSACTION.name, 'State'), DBUS_ERROR.UnknownObject);
  t.deepEqual(await call(client, MANAGER_PATH, MANAGER.name, 'ListTransactions'), [[p]]);
  const [reconciled] = await call(client, MANAGER_PATH, MANAGER.name, 'Reconcile', 'a{sv}', [{}]);
  t.deepEqual(reconciled, [p]);
});

test('transactions - existing before export are served; commit and abort reply with their path', async (t) => {
  const engine = new FakeEngine();
  const tx = engine.addTransaction(DEPLOYMENT, 'recovered');
  const { client } = await serve(t, { engine });
  t.is(await client.getProperty(BUS_NAME, transactionPath('recovered'), TRANSACTION.name, 'Id'), 'recovered');
  t.deepEqual(await call(client, MANAGER_PATH, MANAGER.name, 'CommitPreStage', 'sa{sv}', [DEPLOYMENT, { wait: new Variant('b', true) }]),
    [transactionPath(tx.id)]);
  t.deepEqual(engine.calls.at(-1), { method: 'commit', args: [DEPLOYMENT, { wait: true, timeoutSec: 0 }] });
  t.deepEqual(await call(client, MANAGER_PATH, MANAGER.name, 'AbortPreStage', 'sa{sv}', [DEPLOYMENT, {}]), [transactionPath(tx.id)]);
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'AbortPreStage', 'sa{sv}', ['/nowhere', {}]),
    ERROR_NAMES.NotFound, '/nowhere');
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'CommitPreStage', 'sa{sv}', [DEPLOYMENT, { force: new Variant('b', true) }]),
    DBUS_ERROR.InvalidArgs, "'force'");
});

test('Cancel and GetLog - reach the transaction; Busy is mapped', async (t) => {
  const { client, engine } = await serve(t);
  const tx = engine.addTransaction(DEPLOYMENT, 'tx_1');
  for (let i = 0; i < 5; i++) tx.message('alpha', `out ${i}`);
  await call(client, transactionPath('tx_1'), TRANSACTION.name, 'Cancel');
  t.is(tx.cancelCalls, 1);
  tx.cancelError = new PreStageError('Busy', 'transaction tx_1 is committing: only a prepare phase can be cancelled');
  await dbusError(t, call(client, transactionPath('tx_1'), TRANSACTION.name, 'Cancel'), ERROR_NAMES.Busy, 'committing');
  t.deepEqual(await call(client, transactionPath('tx_1'), TRANSACTION.name, 'GetLog', 'a{sv}', [{ 'max-lines': new Variant('u', 2) }]),
    [['alpha: out 3', 'alpha: out 4']]);
  await dbusError(t, call(client, transactionPath('tx_1'), TRANSACTION.name, 'GetLog', 'a{sv}', [{ 'max-lines': new Variant('u', 100_001) }]),
    DBUS_ERROR.InvalidArgs, 'max-lines');
});

test('hooks - RegisterHook decodes the definition; ListHooks encodes every key; UnregisterHook', async (t) => {
  const { bus, client, engine } = await serve(t);
  await call(client, MANAGER_PATH, MANAGER.name, 'RegisterHook', 'sa{sv}a{sv}', ['bound-images', {
    Description: new Variant('s', 'Pull bound images'),
    Prepare: new Variant('as', ['/usr/libexec/bound-images', 'prepare']),
    After: new Variant('as', ['compat-check']),
    Required: new Variant('b', false),
    TimeoutSec: new Variant('u', 0),
  }, { runtime: new Variant('b', true) }]);
  t.deepEqual(engine.calls.at(-1), { method: 'registerHook', args: ['bound-images', {
    description: 'Pull bound images', prepare: ['/usr/libexec/bound-images', 'prepare'], commit: null, abort: null,
    after: ['compat-check'], before: [], environment: [], required: false, timeoutSec: null,
  }, { runtime: true }] });
  await dbusError(t, call(client, MANAGER_PATH, MANAGER.name, 'RegisterHook', 'sa{sv}a{sv}', ['x', { Exec: new Variant('s', '/bin/true') }, {}]),
    DBUS_ERROR.InvalidArgs, "'Exec'");
  await call(client, MANAGER_PATH, MANAGER.name, 'UnregisterHook', 's', ['bound-images']);
  t.deepEqual(engine.calls.at(-1), { method: 'unregisterHook', args: ['bound-images'] });

  engine.hookSet = {
    hooks: [{
      name: 'compat-check',
      definition: { description: 'Check', prepare: ['/usr/bin/check'], commit: null, abort: null, after: [], before: [],
        environment: ['A=1'], required: true, timeoutSec: 300 },
      source: `${DEPLOYMENT}/usr/lib/bootc/pre-stage.d/compat-check.hook`, origin: 'deployment',
      digest: 'f'.repeat(64), refused: null, warnings: [],
    }],
    masked: [], fingerprint: 'x',
  };
  const [hooks] = await call(client, MANAGER_PATH, MANAGER.name, 'ListHooks', 's', [DEPLOYMENT]);
  t.deepEqual(unwrapVariants(hooks), [['compat-check', {
    Description: 'Check', Prepare: ['/usr/bin/check'], Commit: [], Abort: [], After: [], Before: [],
    Environment: ['A=1'], Required: true, TimeoutSec: 300,
    Source: `${DEPLOYMENT}/usr/lib/bootc/pre-stage.d/compat-check.hook`, Origin: 'deployment', Refused: '', Digest: 'f'.repeat(64),
  }]]);
  // Anyone may list hooks: busctl as nobody decodes the same reply.
  const r = await busctlCall(bus.address, BUS_NAME, MANAGER_PATH, MANAGER.name, 'ListHooks', ['s', ''], { uid: NOBODY, json: true });
  t.is(r.code, 0, r.stderr);
  t.is((JSON.parse(r.stdout) as { type: string }).type, 'a(sa{sv})');
});

// ---- service and connection ----------------------------------------------------

test('exportService - a second service cannot take the name and leaves nothing behind', async (t) => {
  const { bus, client, conn } = await serve(t);
  const other = await connectBus(bus.address);
  t.teardown(() => other.close());
  const err = await t.throwsAsync(exportService(other, new FakeEngine(), new RecordingLogger()));
  t.regex(err!.message, /cannot own the bus name org\.containers\.bootc\.PreStage: another connection owns it/);
  t.is(await client.nameOwner(BUS_NAME), conn.uniqueName);
  // The loser stopped answering for our paths.
  await dbusError(t, client.call(other.uniqueName, MANAGER_PATH, MANAGER.name, 'ListTransactions'), DBUS_ERROR.UnknownMethod);
});

test('connection - callerUid comes from the bus and is forgotten when the caller leaves', async (t) => {
  const { bus, conn } = await serve(t);
  const other = await withClient(t, bus.address);
  const name = uniqueName(other);
  t.is(await conn.callerUid(name), 0);
  const rec = await withClient(t, bus.address);
  const gone = await rec.collectSignals({ member: 'NameOwnerChanged', arg0: name });
  other.close();
  await gone.waitFor(() => true);
  await sleep(50);
  const e = await t.throwsAsync(conn.callerUid(name));
  t.regex(e!.message, /NameHasNoOwner|not.*connect|Could not get/i);
  await t.throwsAsync(conn.callerUid('org.example.NotUnique'), { message: /not a unique bus name/ });
});

test('connection - a call with no answer times out with NoReply', async (t) => {
  const { bus, conn } = await serve(t);
  const silent = await withClient(t, bus.address);
  silent.bus.addMethodHandler(() => true); // takes every call, never answers
  const started = Date.now();
  const e = await t.throwsAsync(conn.call(new Message({
    destination: uniqueName(silent), path: '/', interface: 'org.example.Silent', member: 'Wait',
  }), 300)) as unknown as DBusError;
  t.is(e.type, DBUS_ERROR.NoReply);
  t.true(Date.now() - started >= 290);
});

test('connection - onLost fires once when the bus goes away; pending calls fail', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const conn = await connectBus(bus.address);
  t.teardown(() => conn.close());
  const silent = await withClient(t, bus.address);
  silent.bus.addMethodHandler(() => true);
  const reasons: Error[] = [];
  conn.onLost((r) => reasons.push(r));
  const pending = conn.call(new Message({ destination: uniqueName(silent), path: '/', interface: 'org.example.Silent', member: 'Wait' }), 10_000);
  await bus.stop();
  const e = await t.throwsAsync(pending) as unknown as DBusError;
  t.is(e.type, DBUS_ERROR.Disconnected);
  await sleep(50);
  t.is(reasons.length, 1);
  t.true(conn.closed);
  t.throws(() => conn.send(Message.newSignal('/x', 'org.example.X', 'Y')));
  let late = 0;
  conn.onLost(() => { late += 1; });
  await sleep(10);
  t.is(late, 1, 'a callback added after the loss still runs');
});

test('connection - connecting to a bus that is not there fails with the address in the message', async (t) => {
  await t.throwsAsync(connectBus('unix:path=/nonexistent/bus', { connectTimeoutMs: 2000 }), { message: /\/nonexistent\/bus/ });
  await t.throwsAsync(connectBus('nonsense'), { message: /not a bus/ });
  await t.throwsAsync(connectBus('unix:abstract=/x'), { message: /abstract/ });
});
