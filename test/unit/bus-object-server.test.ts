/**
 * Dispatch rules of the object server, driven message by message through a
 * recording stand-in for the bus connection (the same rules are checked
 * again over a real dbus-daemon in test/integration/bus-adapter.test.ts).
 */
import test from 'ava';
import { marshalMessage } from '../../service/bus/wire/message.js';
import { Message, MessageType, Variant } from 'dbus-next';
import type { BusConnection, RawMethodHandler } from '../../service/bus/connection.js';
import { DBUS_ERROR, ERROR_NAMES } from '../../service/protocol/errors.js';
import { parseIntrospectionXml } from '../../service/bus/introspection.js';
import type { InterfaceSpec } from '../../service/protocol/members.js';
import { ObjectServer, type InterfaceImpl } from '../../service/bus/object-server.js';
import { ERROR_CODES, PreStageError, type ErrorCode } from '../../service/model/errors.js';
import { RecordingLogger } from '../helpers/recording-logger.js';

const TEST_IFACE = {
  name: 'org.example.Test',
  methods: [
    { name: 'Echo', in: [{ name: 'text', type: 's' }], out: [{ name: 'echo', type: 's' }], privileged: false },
    { name: 'Secret', in: [], out: [{ name: 'secret', type: 's' }], privileged: true },
    { name: 'Fail', in: [{ name: 'code', type: 's' }], out: [], privileged: false },
    { name: 'Crash', in: [], out: [], privileged: false },
    { name: 'Later', in: [], out: [{ name: 'value', type: 'u' }], privileged: false },
  ],
  signals: [],
  properties: [
    { name: 'Name', type: 's', access: 'read' },
    { name: 'Count', type: 'u', access: 'read' },
  ],
} as const satisfies InterfaceSpec;

/** Records what the server sends; delivers calls to its handler. */
class FakeConnection implements BusConnection {
  readonly uniqueName = ':1.1';
  closed = false;
  readonly sent: Message[] = [];
  readonly uids = new Map<string, number>();
  private handler: RawMethodHandler | null = null;
  private serial = 1;

  call(): Promise<Message> { return Promise.reject(new Error('not used')); }
  send(msg: Message): void {
    if (this.closed) throw new Error('closed');
    // As the daemon's connection does: a serial, and a body that does not fit its signature throws here.
    msg.serial ||= 1000 + this.sent.length;
    marshalMessage(msg);
    this.sent.push(msg);
  }
  requestName(): Promise<void> { return Promise.resolve(); }
  callerUid(sender: string): Promise<number> {
    const uid = this.uids.get(sender);
    return uid === undefined ? Promise.reject(new Error('no such name')) : Promise.resolve(uid);
  }
  onNameVanished(): () => void { return () => {}; }
  addMethodHandler(handler: RawMethodHandler): () => void {
    this.handler = handler;
    return () => { this.handler = null; };
  }
  onLost(): void {}
  close(): void { this.closed = true; }

  /** Deliver a METHOD_CALL; resolves with the reply (or null when none came). */
  async deliver(m: { path: string; iface?: string; member: string; signature?: string; body?: unknown[]; sender?: string; flags?: number }): Promise<Message | null> {
    const serial = this.serial++;
    const msg = new Message({
      type: MessageType.METHOD_CALL, serial, sender: m.sender ?? ':1.99', destination: this.uniqueName,
      path: m.path, member: m.member, signature: m.signature ?? '', body: m.body ?? [],
      ...(m.iface ? { interface: m.iface } : {}), ...(m.flags ? { flags: m.flags } : {}),
    });
    if (!this.handler) throw new Error('no handler installed');
    const took = this.handler(msg);
    if (!took) throw new Error('the server did not take the call');
    for (let i = 0; i < 20; i++) {
      const reply = this.sent.find((r) => Number(r.replySerial) === serial);
      if (reply) return reply;
      await new Promise((r) => setImmediate(r));
    }
    return null;
  }
}

interface Ctx {
  conn: FakeConnection;
  server: ObjectServer;
  log: RecordingLogger;
  calls: string[];
  props: { Name: string; Count: number };
}

function setup(): Ctx {
  const conn = new FakeConnection();
  conn.uids.set(':1.99', 1000);
  conn.uids.set(':1.0', 0);
  const log = new RecordingLogger();
  const server = new ObjectServer(conn, log, { machineIdFiles: [] });
  const calls: string[] = [];
  const props = { Name: 'first', Count: 3 };
  const impl: InterfaceImpl<typeof TEST_IFACE> = {
    spec: TEST_IFACE,
    methods: {
      Echo: (call) => { calls.push('Echo'); return [`echo:${call.args[0] as string}`]; },
      Secret: () => { calls.push('Secret'); return ['s3cret']; },
      Fail: (call) => { throw new PreStageError(call.args[0] as ErrorCode, `failed with ${call.args[0] as string}`); },
      Crash: () => { throw new TypeError('cannot read properties of undefined (reading \'x\')'); },
      Later: async () => { await new Promise((r) => setTimeout(r, 5)); return [7]; },
    },
    properties: () => ({ ...props }),
  };
  server.exportObject({ path: '/org/example/Obj', interfaces: [impl] });
  server.exportObject({ path: '/org/example/Obj/Child/A', interfaces: [impl] });
  return { conn, server, log, calls, props };
}

const OBJ = '/org/example/Obj';

function isError(t: import('ava').ExecutionContext, reply: Message | null, name: string, ...needles: string[]) {
  t.truthy(reply, 'a reply was sent');
  t.is(reply!.type, MessageType.ERROR);
  t.is(reply!.errorName, name);
  for (const n of needles) t.true(String(reply!.body[0]).includes(n), `'${reply!.body[0]}' should mention '${n}'`);
}

test('a method call is answered with its output signature', async (t) => {
  const { conn } = setup();
  const reply = await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['hi'] });
  t.is(reply!.type, MessageType.METHOD_RETURN);
  t.is(reply!.signature, 's');
  t.deepEqual(reply!.body, ['echo:hi']);
});

test('an async handler is answered when it resolves', async (t) => {
  const { conn } = setup();
  const reply = await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Later' });
  t.deepEqual(reply!.body, [7]);
  t.is(reply!.signature, 'u');
});

test('a call without an interface field finds the member', async (t) => {
  const { conn } = setup();
  const reply = await conn.deliver({ path: OBJ, member: 'Echo', signature: 's', body: ['x'] });
  t.deepEqual(reply!.body, ['echo:x']);
});

test('unknown object - UnknownObject', async (t) => {
  const { conn } = setup();
  isError(t, await conn.deliver({ path: '/org/example/Nope', iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['x'] }),
    DBUS_ERROR.UnknownObject, '/org/example/Nope');
  isError(t, await conn.deliver({ path: '/elsewhere', iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect' }),
    DBUS_ERROR.UnknownObject);
});

test('unknown interface - UnknownInterface', async (t) => {
  const { conn } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: 'org.example.Other', member: 'Echo', signature: 's', body: ['x'] }),
    DBUS_ERROR.UnknownInterface, 'org.example.Other');
});

test('unknown method - UnknownMethod', async (t) => {
  const { conn } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Nope' }), DBUS_ERROR.UnknownMethod, 'Nope');
  isError(t, await conn.deliver({ path: OBJ, member: 'Nope' }), DBUS_ERROR.UnknownMethod, 'Nope');
});

test('wrong signature - InvalidArgs naming the expected signature; handler not run', async (t) => {
  const { conn, calls } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo', signature: 'u', body: [1] }),
    DBUS_ERROR.InvalidArgs, "expected signature 's'", "got 'u'");
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo' }), DBUS_ERROR.InvalidArgs, "got ''");
  t.deepEqual(calls, []);
});

test('privileged member - non-root caller gets AccessDenied and the handler does not run', async (t) => {
  const { conn, calls, log } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Secret', sender: ':1.99' }),
    DBUS_ERROR.AccessDenied, 'Secret requires root', 'uid 1000');
  t.deepEqual(calls, []);
  t.true(log.lines.some((l) => l.message.includes('denied')));
});

test('privileged member - root caller gets through', async (t) => {
  const { conn, calls } = setup();
  const reply = await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Secret', sender: ':1.0' });
  t.deepEqual(reply!.body, ['s3cret']);
  t.deepEqual(calls, ['Secret']);
});

test('privileged member - a caller that cannot be identified is denied', async (t) => {
  const { conn, calls } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Secret', sender: ':1.404' }),
    DBUS_ERROR.AccessDenied, 'could not be identified');
  t.deepEqual(calls, []);
});

const mapsCode = test.macro(async (t, code: ErrorCode) => {
  const { conn } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Fail', signature: 's', body: [code] }),
    ERROR_NAMES[code], `failed with ${code}`);
});
for (const code of ERROR_CODES) test(`engine error ${code} - replied as ${ERROR_NAMES[code]}`, mapsCode, code);

test('an unexpected error - Error.Internal, short message, no stack; logged in full', async (t) => {
  const { conn, log } = setup();
  const reply = await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Crash' });
  isError(t, reply, 'org.containers.bootc.PreStage.Error.Internal', 'Crash', 'cannot read properties');
  t.false(String(reply!.body[0]).includes(' at '), 'no stack frames');
  t.true(log.lines.some((l) => l.level === 'error' && l.message.includes(' at ')), 'the stack is in the log');
});

test('NO_REPLY_EXPECTED - the method runs and nothing is sent back, not even an error', async (t) => {
  const { conn, calls } = setup();
  t.is(await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['x'], flags: 1 }), null);
  t.is(await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Nope', flags: 1 }), null);
  t.deepEqual(calls, ['Echo']);
  t.is(conn.sent.length, 0);
});

test('Properties.Get and GetAll - current values with the table types', async (t) => {
  const { conn, props } = setup();
  props.Count = 9;
  const get = await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: [TEST_IFACE.name, 'Count'] });
  t.is(get!.signature, 'v');
  const v = get!.body[0] as Variant;
  t.is(v.signature, 'u');
  t.is(v.value, 9);
  const all = await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'GetAll', signature: 's', body: [TEST_IFACE.name] });
  const dict = all!.body[0] as Record<string, Variant>;
  t.deepEqual(Object.keys(dict).sort(), ['Count', 'Name']);
  t.is(dict.Name!.signature, 's');
  // An empty interface name means "any interface" (D-Bus specification).
  const any = await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: ['', 'Name'] });
  t.is((any!.body[0] as Variant).value, 'first');
  // Standard interfaces have no properties.
  const peer = await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'GetAll', signature: 's', body: ['org.freedesktop.DBus.Peer'] });
  t.deepEqual(peer!.body[0], {});
});

test('Properties.Set - PropertyReadOnly, and the value is unchanged', async (t) => {
  const { conn } = setup();
  isError(t, await conn.deliver({
    path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Set', signature: 'ssv',
    body: [TEST_IFACE.name, 'Name', new Variant('s', 'changed')],
  }), DBUS_ERROR.PropertyReadOnly, 'Name', 'read-only');
  const get = await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: [TEST_IFACE.name, 'Name'] });
  t.is((get!.body[0] as Variant).value, 'first');
});

test('Properties - unknown property is InvalidArgs, unknown interface UnknownInterface', async (t) => {
  const { conn } = setup();
  isError(t, await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Get', signature: 'ss', body: [TEST_IFACE.name, 'Nope'] }),
    DBUS_ERROR.InvalidArgs, 'Nope');
  isError(t, await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'Set', signature: 'ssv', body: [TEST_IFACE.name, 'Nope', new Variant('s', '')] }),
    DBUS_ERROR.InvalidArgs, 'Nope');
  isError(t, await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Properties', member: 'GetAll', signature: 's', body: ['org.example.Other'] }),
    DBUS_ERROR.UnknownInterface, 'org.example.Other');
});

test('Introspect - interfaces of the object and child nodes; ancestors list their child', async (t) => {
  const { conn } = setup();
  const obj = parseIntrospectionXml((await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect' }))!.body[0] as string);
  t.deepEqual(obj.interfaces.map((i) => i.name), [
    'org.freedesktop.DBus.Peer', 'org.freedesktop.DBus.Introspectable', 'org.freedesktop.DBus.Properties', TEST_IFACE.name,
  ]);
  t.deepEqual(obj.children, ['Child']);
  const echo = obj.interfaces[3]!.methods.find((m) => m.name === 'Echo')!;
  t.deepEqual(echo.args, [{ name: 'text', type: 's', direction: 'in' }, { name: 'echo', type: 's', direction: 'out' }]);
  const root = parseIntrospectionXml((await conn.deliver({ path: '/', iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect' }))!.body[0] as string);
  t.deepEqual(root.children, ['org']);
  t.deepEqual(root.interfaces.map((i) => i.name), ['org.freedesktop.DBus.Peer', 'org.freedesktop.DBus.Introspectable', 'org.freedesktop.DBus.Properties']);
  const mid = parseIntrospectionXml((await conn.deliver({ path: `${OBJ}/Child`, iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect' }))!.body[0] as string);
  t.deepEqual(mid.children, ['A']);
});

test('Peer - Ping on any path; GetMachineId fails cleanly without a machine id', async (t) => {
  const { conn } = setup();
  const ping = await conn.deliver({ path: '/anywhere/at/all', iface: 'org.freedesktop.DBus.Peer', member: 'Ping' });
  t.is(ping!.type, MessageType.METHOD_RETURN);
  isError(t, await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Peer', member: 'GetMachineId' }), DBUS_ERROR.Failed, 'machine id');
});

test('unexport - the object is gone for callers', async (t) => {
  const { conn, server } = setup();
  t.true(server.unexportObject('/org/example/Obj/Child/A'));
  isError(t, await conn.deliver({ path: '/org/example/Obj/Child/A', iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['x'] }),
    DBUS_ERROR.UnknownObject);
  const obj = parseIntrospectionXml((await conn.deliver({ path: OBJ, iface: 'org.freedesktop.DBus.Introspectable', member: 'Introspect' }))!.body[0] as string);
  t.deepEqual(obj.children, []);
});

test('emitPropertiesChanged - variants typed from the table; unknown names dropped and logged', (t) => {
  const { conn, server, log } = setup();
  t.true(server.emitPropertiesChanged(OBJ, TEST_IFACE.name, { Count: 4, Bogus: 1 }));
  server.flushSignals();
  const sig = conn.sent.at(-1)!;
  t.is(sig.type, MessageType.SIGNAL);
  t.is(sig.interface, 'org.freedesktop.DBus.Properties');
  t.is(sig.member, 'PropertiesChanged');
  t.is(sig.signature, 'sa{sv}as');
  t.is(sig.body[0], TEST_IFACE.name);
  const changed = sig.body[1] as Record<string, Variant>;
  t.deepEqual(Object.keys(changed), ['Count']);
  t.is(changed.Count!.signature, 'u');
  t.deepEqual(sig.body[2], []);
  t.true(log.lines.some((l) => l.level === 'error' && l.message.includes('Bogus')));
});

test('signals - sent at the end of the turn, in order, and always before a reply that follows them', async (t) => {
  const { conn, server } = setup();
  t.true(server.emitSignal(OBJ, TEST_IFACE.name, 'A', 's', ['1']));
  t.true(server.emitSignal(OBJ, TEST_IFACE.name, 'B', 's', ['2']));
  t.is(conn.sent.length, 0, 'nothing is marshalled in the emitting turn');
  await new Promise((r) => setImmediate(r));
  t.deepEqual(conn.sent.map((m) => m.member), ['A', 'B']);

  server.emitSignal(OBJ, TEST_IFACE.name, 'C', 's', ['3']);
  const reply = await conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['x'] });
  t.deepEqual(conn.sent.slice(2).map((m) => m.member ?? `reply ${m.replySerial}`), ['C', `reply ${reply!.replySerial}`]);
});

test('signals - a body that does not marshal is logged and dropped; the ones around it are sent', (t) => {
  const { conn, server, log } = setup();
  server.emitSignal(OBJ, TEST_IFACE.name, 'A', 's', ['ok']);
  server.emitSignal(OBJ, TEST_IFACE.name, 'Bad', 'u', ['not a number']);
  server.emitSignal(OBJ, TEST_IFACE.name, 'C', 's', ['ok']);
  server.flushSignals();
  t.deepEqual(conn.sent.map((m) => m.member), ['A', 'C']);
  t.true(log.lines.some((l) => l.level === 'error' && l.message.includes('cannot emit') && l.message.includes('.Bad')), JSON.stringify(log.lines));
});

test('signals - close() sends what is queued first', (t) => {
  const { conn, server } = setup();
  server.emitSignal(OBJ, TEST_IFACE.name, 'Last', 's', ['x']);
  server.close();
  t.deepEqual(conn.sent.map((m) => m.member), ['Last']);
});

test('emitting on a closed connection - returns false, never throws, logged once', (t) => {
  const { conn, server, log } = setup();
  conn.closed = true;
  t.false(server.emitSignal(OBJ, TEST_IFACE.name, 'X', 's', ['a']));
  t.false(server.emitSignal(OBJ, TEST_IFACE.name, 'X', 's', ['b']));
  t.false(server.emitPropertiesChanged(OBJ, TEST_IFACE.name, { Count: 1 }));
  t.is(log.lines.filter((l) => l.message.includes('closed')).length, 1);
});

test('close - the handler is removed', (t) => {
  const { conn, server } = setup();
  server.close();
  return t.throwsAsync(conn.deliver({ path: OBJ, iface: TEST_IFACE.name, member: 'Echo', signature: 's', body: ['x'] }), { message: /no handler/ });
});
