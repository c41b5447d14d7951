/**
 * Micro-benchmark of outgoing marshalling: the PropertiesChanged a
 * transaction sends per hook, carrying the whole `Hooks` property
 * (a(ssus), one entry per hook), and the HookStarted / HookFinished signals
 * next to it; dbus-next's marshallMessage against service/bus/wire/message.ts.
 *
 *   npx tsc -p tsconfig.json && node dist/test/bench/marshal-micro.js [--hooks 200] [--ms 1500]
 *
 * Both produce the same bytes (checked here once, and in
 * test/unit/bus-wire.test.ts at length).
 */
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { Message, Variant } from 'dbus-next';
import { marshalMessage } from '../../service/bus/wire/message.js';

const require = createRequire(import.meta.url);
const { marshallMessage } = require('dbus-next/lib/marshall-compat.js') as {
  marshallMessage(msg: Message): [Buffer, number[]];
};

const { values } = parseArgs({
  options: { hooks: { type: 'string', default: '200' }, ms: { type: 'string', default: '1500' } },
});
const hookCount = Number(values.hooks);
const budgetMs = Number(values.ms);

const PATH = '/org/containers/bootc/PreStage/Transaction/1';
const IFACE = 'org.containers.bootc.PreStage.Transaction';

// As in the daemon, hook names and statuses are long-lived strings; the
// Hooks array itself is rebuilt from the snapshot for every emission.
const names = Array.from({ length: hookCount }, (_, i) => `${String(i).padStart(3, '0')}-hook-number-${i}`);

function propertiesChanged(): Message {
  const hooks = names.map((name, i) =>
    [name, i < hookCount / 2 ? 'success' : 'pending', i < hookCount / 2 ? 100 : 0, i < hookCount / 2 ? 'done' : '']);
  const m = Message.newSignal(PATH, 'org.freedesktop.DBus.Properties', 'PropertiesChanged', 'sa{sv}as', [
    IFACE, { Hooks: new Variant('a(ssus)', hooks), State: new Variant('s', 'running') }, [],
  ]);
  m.serial = 7;
  return m;
}

// The daemon's Hooks entries are frozen and kept while unchanged
// (bus/transaction-object.ts): the encoder reuses their bytes.
const frozenRows = names.map((name, i) => Object.freeze(
  [name, i < hookCount / 2 ? 'success' : 'pending', i < hookCount / 2 ? 100 : 0, i < hookCount / 2 ? 'done' : '']));

function propertiesChangedFrozen(): Message {
  const m = Message.newSignal(PATH, 'org.freedesktop.DBus.Properties', 'PropertiesChanged', 'sa{sv}as', [
    IFACE, { Hooks: new Variant('a(ssus)', frozenRows.slice()), State: new Variant('s', 'running') }, [],
  ]);
  m.serial = 7;
  return m;
}

function hookStarted(): Message {
  const m = Message.newSignal(PATH, IFACE, 'HookStarted', 'suu', ['100-hook-number-100', 100, hookCount]);
  m.serial = 8;
  return m;
}

/**
 * µs per call of `fn` on a message from `make`: messages are built ahead
 * in batches (dbus-next rewrites the message it marshals, so each is used
 * once), only the marshalling is timed, and the median batch is reported.
 */
function measure(make: () => Message, fn: (m: Message) => unknown): number {
  const batch = 100;
  const perCall: number[] = [];
  const deadline = Date.now() + budgetMs;
  let rounds = 0;
  while (rounds < 5 || Date.now() < deadline) {
    const msgs = Array.from({ length: batch }, make);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < batch; i++) fn(msgs[i]!);
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    if (rounds++ >= 2) perCall.push(us / batch); // the first rounds warm up
  }
  perCall.sort((a, b) => a - b);
  return perCall[perCall.length >> 1]!;
}

const sample = propertiesChanged();
const theirs = marshallMessage(propertiesChanged())[0];
const ours = marshalMessage(sample);
if (!ours.equals(theirs)) throw new Error('wire/message.ts and dbus-next disagree on the PropertiesChanged bytes');
for (let i = 0; i < 2; i++) {
  if (!marshalMessage(propertiesChangedFrozen()).equals(theirs)) throw new Error('reused entry bytes differ from dbus-next\'s');
}

const cases: [string, () => Message][] = [
  [`PropertiesChanged, Hooks a(ssus) x ${hookCount} (${ours.length} bytes)`, propertiesChanged],
  [`the same, its entries frozen as the daemon's (bytes reused)`, propertiesChangedFrozen],
  ['HookStarted (suu)', hookStarted],
];
console.log('| message | dbus-next µs | wire/message.ts µs | speed-up |');
console.log('| --- | --- | --- | --- |');
for (const [name, make] of cases) {
  const a = measure(make, (m) => marshallMessage(m));
  const b = measure(make, (m) => marshalMessage(m));
  console.log(`| ${name} | ${a.toFixed(2)} | ${b.toFixed(2)} | ${(a / b).toFixed(0)}× |`);
}
