/**
 * BusConnection puts its messages on the wire with service/bus/wire/ (message.ts):
 * through a real dbus-daemon to a dbus-next peer, signals, calls and
 * replies arrive whole, and a body that does not marshal fails at once
 * with a MarshalError, leaving the connection usable.
 */
import test from 'ava';
import { Message, MessageType, Variant } from 'dbus-next';
import { connectBus } from '../../service/bus/connection.js';
import { MarshalError } from '../../service/bus/wire/message.js';
import { withBus } from '../helpers/bus.js';
import { withClient } from '../helpers/dbus-client.js';

const PATH = '/org/example/Wire';
const IFACE = 'org.example.Wire';
const v = (sig: string, value: unknown) => new Variant(sig, value);
const nameOf = (bus: unknown): string => (bus as { name: string }).name;

const hooks = Array.from({ length: 200 }, (_, i) => [`${i}-hook-ü`, i % 2 ? 'success' : 'pending', i % 101, '']);
const BODY = ['org.example.Wire', { Hooks: v('a(ssus)', hooks), Big: v('t', 2n ** 53n - 1n), Empty: v('a(tt)', []) }, ['State']];

test('signals sent through BusConnection arrive as sent', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const conn = await connectBus(bus.address);
  t.teardown(() => conn.close());
  const rx = await withClient(t, bus.address);
  const rec = await rx.collectSignals({ path: PATH, interface: IFACE });
  conn.send(Message.newSignal(PATH, IFACE, 'Changed', 'sa{sv}as', BODY));
  conn.send(Message.newSignal(PATH, IFACE, 'Second', 'ay', [Buffer.from([0, 1, 2])]));
  const got = await rec.waitFor((s) => s.member === 'Second');
  t.is(got.sender, conn.uniqueName);
  t.deepEqual(rec.signals.map((s) => s.member), ['Changed', 'Second']);
  t.deepEqual(rec.signals[0]!.rawBody, BODY);
  t.deepEqual(rec.signals[1]!.rawBody, [Buffer.from([0, 1, 2])]);
});

test('a call and its reply go through, serials and reply handlers stay dbus-next\'s', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const conn = await connectBus(bus.address);
  t.teardown(() => conn.close());
  const peer = await withClient(t, bus.address);
  const seen: number[] = [];
  peer.bus.addMethodHandler((msg: Message) => {
    if (msg.interface !== IFACE) return false;
    seen.push(msg.serial!);
    peer.bus.send(Message.newMethodReturn(msg, 'sa{sv}as', msg.body));
    return true;
  });
  for (let i = 0; i < 3; i++) {
    const reply = await conn.call(new Message({
      destination: nameOf(peer.bus), path: PATH, interface: IFACE, member: 'Echo', signature: 'sa{sv}as', body: BODY,
    }));
    t.is(reply.type, MessageType.METHOD_RETURN);
    t.deepEqual(reply.body, BODY);
  }
  t.is(new Set(seen).size, 3, 'every call had its own serial');
});

test('a body that does not fit throws a MarshalError at once and the connection goes on', async (t) => {
  const bus = await withBus(t, { policy: 'permissive' });
  const conn = await connectBus(bus.address);
  t.teardown(() => conn.close());
  const rx = await withClient(t, bus.address);
  const rec = await rx.collectSignals({ path: PATH, interface: IFACE });
  const lost: Error[] = [];
  conn.onLost((e) => lost.push(e));

  t.throws(() => conn.send(Message.newSignal(PATH, IFACE, 'Bad', 'u', [-1])), { instanceOf: MarshalError, message: /'u', got -1/ });
  const bad = new Message({ destination: nameOf(rx.bus), path: PATH, interface: IFACE, member: 'Bad', signature: 's', body: [7] });
  await t.throwsAsync(conn.call(bad), { instanceOf: MarshalError });
  // dbus-next's private reply-handler table (service/connection/core.ts says why it is touched at all).
  const handlers = (conn as unknown as { bus: { _methodReturnHandlers: Record<number, unknown> } }).bus._methodReturnHandlers;
  t.false(String(bad.serial) in handlers, 'no reply handler is left for a call that was never sent');
  // A message the bus would reject (and drop us for) is refused before it goes out.
  const local = Message.newSignal(PATH, IFACE, 'Changed');
  local.path = '/org/freedesktop/DBus/Local';
  t.throws(() => conn.send(local), { instanceOf: MarshalError, message: /reserved/ });

  conn.send(Message.newSignal(PATH, IFACE, 'Good', 's', ['still here']));
  const good = await rec.waitFor((s) => s.member === 'Good');
  t.deepEqual(good.body, ['still here']);
  t.deepEqual(rec.signals.map((s) => s.member), ['Good']);
  t.false(conn.closed);
  t.deepEqual(lost, []);
});
