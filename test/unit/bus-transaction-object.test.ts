/**
 * What a transaction object emits, recorded without a bus: rate limits
 * (progress throttled per hook, properties coalesced per object, messages
 * capped per transaction) and the ordering clients rely on. Real timers:
 * these are the production throttles, run in real time. Serial, because
 * the assertions measure time.
 */
import test from 'ava';
import { Variant } from 'dbus-next';
import type { ExportedObject, MethodCall, ObjectRegistry } from '../../service/bus/object-server.js';
import {
  PROGRESS_INTERVAL_MS, TransactionObject, transactionProperties, type RateLimits,
} from '../../service/bus/transaction-object.js';
import { PreStageError } from '../../service/model/errors.js';
import { nullLogger } from '../../service/model/logger.js';
import { FakeEngine, type FakeTransaction } from '../helpers/fake-engine.js';

interface Emitted {
  at: number;
  member: string;
  body: unknown[];
}

class Recorder implements ObjectRegistry {
  readonly objects = new Map<string, ExportedObject>();
  readonly out: Emitted[] = [];
  exportObject(obj: ExportedObject) { this.objects.set(obj.path, obj); }
  unexportObject(path: string) { return this.objects.delete(path); }
  isExported(path: string) { return this.objects.has(path); }
  emitSignal(_path: string, _iface: string, member: string, _sig: string, body: unknown[]) {
    this.out.push({ at: performance.now(), member, body });
    return true;
  }
  emitPropertiesChanged(_path: string, _iface: string, changed: Record<string, unknown>) {
    this.out.push({ at: performance.now(), member: 'PropertiesChanged', body: [changed] });
    return true;
  }
  members(): string[] { return this.out.map((e) => e.member); }
  of(member: string): Emitted[] { return this.out.filter((e) => e.member === member); }
}

function setup(limits: Partial<RateLimits> = {}) {
  const engine = new FakeEngine();
  const tx = engine.addTransaction('/sysroot/ostree/deploy/os/deploy/abc.0', 'tx1');
  const rec = new Recorder();
  const obj = new TransactionObject(rec, tx, nullLogger, limits);
  obj.export();
  return { engine, tx, rec, obj };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Feed `total` progress events for `hook` spread over about `ms` milliseconds. */
async function feedProgress(tx: FakeTransaction, hook: string, total: number, ms: number): Promise<void> {
  const batches = Math.max(1, Math.round(ms / 10));
  const per = Math.ceil(total / batches);
  for (let i = 0; i < total; i += per) {
    for (let j = i; j < Math.min(total, i + per); j++) tx.progress(hook, (100 * j) / total, `step ${j}`);
    await sleep(10);
  }
}

test.serial('exported at the transaction path with every property initialised', (t) => {
  const { rec, tx, obj } = setup();
  t.is(obj.path, '/org/containers/bootc/PreStage/Transaction/tx1');
  const exported = rec.objects.get(obj.path)!;
  const props = exported.interfaces[0]!.properties() as Record<string, unknown>;
  t.deepEqual(Object.keys(props).sort(), [
    'CurrentHook', 'Deployment', 'Error', 'ErrorMessage', 'FinishedUsec', 'Hooks', 'Id', 'Phase',
    'Progress', 'StartedUsec', 'State',
  ]);
  for (const [k, v] of Object.entries(props)) t.not(v, undefined, k);
  t.is(typeof props.StartedUsec, 'bigint');
  t.deepEqual(props.Hooks, [['alpha', 'pending', 0, ''], ['beta', 'pending', 0, '']]);
  t.is(props.Deployment, tx.deployment);
  obj.dispose();
});

test.serial('snapshot to properties - error codes become D-Bus names, times stay below 2^53', (t) => {
  const { tx, obj } = setup();
  tx.patch({ error: 'HookFailed', startedUsec: 2 ** 60, progress: 250 });
  const p = transactionProperties(tx.snapshot());
  t.is(p.Error, 'org.containers.bootc.PreStage.Error.HookFailed');
  t.is(p.StartedUsec, BigInt(Number.MAX_SAFE_INTEGER));
  t.is(p.Progress, 100);
  obj.dispose();
});

test.serial('10,000 progress events - at most ~20 HookProgress per second, the last value delivered', async (t) => {
  const { tx, rec, obj } = setup();
  tx.beginPhase('prepare');
  tx.hookStarted('alpha');
  const start = Date.now();
  await feedProgress(tx, 'alpha', 10_000, 1000);
  await sleep(120); // let the trailing value out
  const seconds = (Date.now() - start) / 1000;
  const progress = rec.of('HookProgress');
  t.log(`${progress.length} HookProgress signals in ${seconds.toFixed(2)} s`);
  t.true(progress.length <= Math.ceil(seconds * 20) + 2, `${progress.length} signals in ${seconds} s`);
  t.true(progress.length >= 5, 'progress keeps flowing while throttled');
  t.deepEqual(progress.at(-1)!.body, ['alpha', 100, 'step 9999']);
  for (let i = 1; i < progress.length; i++) {
    t.true(progress[i]!.at - progress[i - 1]!.at >= 40, `signals ${i - 1} and ${i} are ${progress[i]!.at - progress[i - 1]!.at} ms apart`);
  }
  obj.dispose();
});

/** The most signals of `list` in any window [t, t + 1000 ms). */
function maxInOneSecond(list: Emitted[]): number {
  let max = 0;
  for (let i = 0, j = 0; i < list.length; i++) {
    while (list[i]!.at - list[j]!.at >= 1000) j++;
    max = Math.max(max, i - j + 1);
  }
  return max;
}

test.serial('a hook sending progress for 3 s gets at most 20 HookProgress in any second, flushes included', async (t) => {
  const { tx, rec, obj } = setup();
  tx.beginPhase('prepare');
  tx.hookStarted('alpha');
  const end = performance.now() + 3000;
  let i = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 50; k++) tx.progress('alpha', i++ % 100, `s${i}`);
    await sleep(1);
  }
  // The flushes a hook's end forces: before HookFinished, and (after a
  // rollback step of the same hook sent more) before Finished.
  tx.progress('alpha', 42, 'last');
  tx.hookFinished('alpha', 'failed', 'exit 1');
  tx.progress('alpha', 7, 'rollback');
  tx.finish('failed', 'HookFailed', 'alpha failed');
  const progress = rec.of('HookProgress');
  const max = maxInOneSecond(progress);
  t.log(`${progress.length} HookProgress in ${((progress.at(-1)!.at - progress[0]!.at) / 1000).toFixed(2)} s, at most ${max} in one second`);
  t.true(max <= 20, `${max} HookProgress in one second`);
  t.true(progress.length >= 40, 'progress keeps flowing');
  // Spaced by the interval, except the ones a flush forced (right before HookFinished or Finished).
  for (let k = 1; k < progress.length; k++) {
    const gap = progress[k]!.at - progress[k - 1]!.at;
    const next = rec.out[rec.out.indexOf(progress[k]!) + 1]?.member;
    if (next !== 'HookFinished' && next !== 'PropertiesChanged' && next !== 'Finished') {
      t.true(gap >= PROGRESS_INTERVAL_MS - 0.5, `HookProgress ${k} came ${gap.toFixed(1)} ms after the one before`);
    }
  }
  const beforeFinished = rec.out.slice(0, rec.members().indexOf('HookFinished'));
  t.deepEqual(beforeFinished.filter((e) => e.member === 'HookProgress').at(-1)!.body, ['alpha', 42, 'last']);
  t.deepEqual(progress.at(-1)!.body, ['alpha', 7, 'rollback']);
  obj.dispose();
});

test.serial('progress is throttled per hook: a busy hook does not starve another', async (t) => {
  const { tx, rec, obj } = setup();
  tx.hookStarted('alpha');
  for (let i = 0; i < 30; i++) {
    tx.progress('alpha', i, `a${i}`);
    if (i % 10 === 0) tx.progress('beta', i, `b${i}`);
    await sleep(5);
  }
  await sleep(120);
  const last = (hook: string) => rec.of('HookProgress').filter((e) => e.body[0] === hook).at(-1)?.body;
  t.deepEqual(last('alpha'), ['alpha', 29, 'a29']);
  t.deepEqual(last('beta'), ['beta', 20, 'b20']);
  obj.dispose();
});

test.serial('PropertiesChanged is coalesced per object and carries only what changed', async (t) => {
  const { tx, rec, obj } = setup();
  const start = Date.now();
  for (let i = 0; i < 50; i++) {
    for (let j = 0; j < 20; j++) tx.patch({ progress: Math.floor((i * 20 + j) / 10) });
    await sleep(10);
  }
  await sleep(120);
  const seconds = (Date.now() - start) / 1000;
  const changes = rec.of('PropertiesChanged');
  t.log(`${changes.length} PropertiesChanged for 1000 snapshot changes in ${seconds.toFixed(2)} s`);
  t.true(changes.length <= Math.ceil(seconds * 20) + 2);
  t.deepEqual(Object.keys(changes.at(-1)!.body[0] as object), ['Progress']);
  t.is((changes.at(-1)!.body[0] as Record<string, unknown>).Progress, 99);
  obj.dispose();
});

test.serial('Message lines - capped per window, the rest counted in one suppressed line', async (t) => {
  const { tx, rec, obj } = setup({ messageWindowMs: 200 });
  for (let i = 0; i < 500; i++) tx.message('alpha', `line ${i}`);
  t.is(rec.of('Message').length, 50);
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', 'line 49']);
  await sleep(260);
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', '[450 lines suppressed; see GetLog]']);
  // A new window sends lines again.
  tx.message('alpha', 'after');
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', 'after']);
  obj.dispose();
});

test.serial('Message lines - the default cap is 50 per second', async (t) => {
  const { tx, rec, obj } = setup();
  for (let i = 0; i < 120; i++) tx.message('alpha', `line ${i}`);
  await sleep(400);
  t.is(rec.of('Message').length, 50, 'no new window before a second has passed');
  await sleep(750);
  t.is(rec.of('Message').length, 51);
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', '[70 lines suppressed; see GetLog]']);
  obj.dispose();
});

test.serial('Message lines - engine counts join the window\'s notice; with no window open they are reported at once', async (t) => {
  const { tx, rec, obj } = setup({ messageWindowMs: 200 });
  for (let i = 0; i < 60; i++) tx.message('alpha', `line ${i}`);
  tx.emit({ type: 'messages-suppressed', hook: 'alpha', count: 1000 });
  t.is(rec.of('Message').length, 50, 'a count in an open window waits for its end');
  await sleep(260);
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', '[1010 lines suppressed; see GetLog]']);
  t.is(rec.of('Message').length, 51);
  // No window open now: the engine's window those lines were in has ended.
  tx.emit({ type: 'messages-suppressed', hook: 'alpha', count: 1 });
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', '[1 line suppressed; see GetLog]']);
  await sleep(260);
  t.is(rec.of('Message').length, 52, 'reported once');
  obj.dispose();
});

test.serial('Message lines - an engine count before hook-finished is reported before HookFinished', async (t) => {
  const { tx, rec, obj } = setup({ messageWindowMs: 10_000 });
  tx.beginPhase('prepare');
  tx.hookStarted('alpha');
  for (let i = 0; i < 50; i++) tx.message('alpha', `l${i}`);
  tx.emit({ type: 'messages-suppressed', hook: 'alpha', count: 950 });
  tx.hookFinished('alpha', 'success', 'done');
  const seq = rec.out.filter((e) => e.member === 'Message' || e.member === 'HookFinished');
  t.is(seq.length, 52);
  t.deepEqual(seq.at(-2)!.body, ['alpha', '[950 lines suppressed; see GetLog]']);
  t.is(seq.at(-1)!.member, 'HookFinished');
  obj.dispose();
});

test.serial('HookFinished - after the hook\'s pending progress, suppressed count and properties', async (t) => {
  const { tx, rec, obj } = setup({ messageWindowMs: 10_000 });
  tx.beginPhase('prepare');
  tx.hookStarted('alpha');
  for (let i = 0; i < 10; i++) tx.progress('alpha', i * 10, `s${i}`);
  for (let i = 0; i < 60; i++) tx.message('alpha', `l${i}`);
  tx.hookFinished('alpha', 'success', 'done');
  const seq = rec.out.map((e) => e.member);
  const finished = seq.indexOf('HookFinished');
  t.true(finished > 0);
  const before = rec.out.slice(0, finished);
  t.deepEqual(before.filter((e) => e.member === 'HookProgress').at(-1)!.body, ['alpha', 90, 's9']);
  t.deepEqual(before.filter((e) => e.member === 'Message').at(-1)!.body, ['alpha', '[10 lines suppressed; see GetLog]']);
  const hooksChange = before.filter((e) => e.member === 'PropertiesChanged').map((e) => e.body[0] as Record<string, unknown>)
    .filter((c) => c.Hooks !== undefined).at(-1)!;
  t.deepEqual((hooksChange.Hooks as unknown[][])[0]!.slice(0, 3), ['alpha', 'success', 100]);
  t.deepEqual(rec.out[finished]!.body, ['alpha', 'success', 'done']);
  // Nothing for that hook is left to trail after HookFinished.
  await sleep(120);
  t.false(rec.out.slice(finished + 1).some((e) => e.member === 'HookProgress'));
  obj.dispose();
});

test.serial('Finished - every PropertiesChanged, with the final State, is sent first', async (t) => {
  const { tx, rec, obj } = setup();
  tx.beginPhase('prepare');
  tx.hookStarted('alpha');
  tx.progress('alpha', 10);
  tx.progress('alpha', 20);
  tx.hookFinished('alpha', 'failed', 'exit status 1');
  tx.finish('failed', 'HookFailed', 'alpha failed');
  const finished = rec.members().indexOf('Finished');
  t.is(finished, rec.out.length - 1);
  t.deepEqual(rec.out[finished]!.body, ['failed', 'org.containers.bootc.PreStage.Error.HookFailed', 'alpha failed']);
  const merged = Object.assign({}, ...rec.out.slice(0, finished)
    .filter((e) => e.member === 'PropertiesChanged').map((e) => e.body[0] as object)) as Record<string, unknown>;
  t.is(merged.State, 'failed');
  t.is(merged.Error, 'org.containers.bootc.PreStage.Error.HookFailed');
  t.is(merged.ErrorMessage, 'alpha failed');
  t.is(typeof merged.FinishedUsec, 'bigint');
  await sleep(120);
  t.is(rec.out.length, finished + 1, 'nothing trails Finished');
  obj.dispose();
});

test.serial('HookStarted, HookFinished and Finished are never delayed or dropped under a flood', async (t) => {
  const { tx, rec, obj } = setup();
  tx.beginPhase('prepare');
  for (const hook of ['alpha', 'beta']) {
    tx.hookStarted(hook);
    for (let i = 0; i < 2000; i++) {
      tx.progress(hook, i / 20);
      tx.message(hook, `x${i}`);
    }
    tx.hookFinished(hook, 'success');
  }
  tx.finish('prepared');
  t.deepEqual(rec.members().filter((m) => /^(HookStarted|HookFinished|Finished)$/.test(m)),
    ['HookStarted', 'HookFinished', 'HookStarted', 'HookFinished', 'Finished']);
  t.deepEqual(rec.of('HookStarted').map((e) => e.body), [['alpha', 0, 2], ['beta', 1, 2]]);
  obj.dispose();
});

test.serial('dispose - flushes, unexports, and leaves no timer behind', async (t) => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout' || r === 'Immediate').length;
  const before = timers();
  const { tx, rec, obj } = setup();
  tx.hookStarted('alpha');
  for (let i = 0; i < 100; i++) tx.progress('alpha', i);
  for (let i = 0; i < 100; i++) tx.message('alpha', `m${i}`);
  tx.patch({ state: 'preparing' });
  t.true(timers() > before, 'throttles and the message window hold timers while running');
  obj.dispose();
  t.is(timers(), before);
  t.false(rec.objects.has(obj.path));
  t.deepEqual(rec.of('HookProgress').at(-1)!.body, ['alpha', 99, '']);
  t.deepEqual(rec.of('Message').at(-1)!.body, ['alpha', '[50 lines suppressed; see GetLog]']);
  const count = rec.out.length;
  tx.progress('alpha', 1);
  tx.finish('failed');
  await sleep(80);
  t.is(rec.out.length, count, 'nothing is emitted after dispose');
});

function call(args: unknown[]): MethodCall {
  return { path: '', interface: '', member: '', args, sender: ':1.1', replied: false, reply() {} };
}

test.serial('Cancel and GetLog reach the handle with decoded options', async (t) => {
  const { tx, rec, obj } = setup();
  const impl = rec.objects.get(obj.path)!.interfaces[0]!;
  await impl.methods.Cancel!(call([]));
  t.is(tx.cancelCalls, 1);
  tx.cancelError = new PreStageError('Busy', 'commit cannot be cancelled');
  t.throws(() => impl.methods.Cancel!(call([])), { message: /cannot be cancelled/ });
  for (let i = 0; i < 5; i++) tx.message(i % 2 ? 'beta' : 'alpha', `l${i}`);
  const out = await impl.methods.GetLog!(call([{ 'max-lines': new Variant('u', 2), hook: new Variant('s', 'alpha') }]));
  t.deepEqual(out, [['alpha: l2', 'alpha: l4']]);
  t.deepEqual(tx.logCalls.at(-1), { maxLines: 2, hook: 'alpha' });
  await t.throwsAsync(Promise.resolve(impl.methods.GetLog!(call([{ lines: new Variant('u', 2) }]))), { message: /unknown key 'lines'/ });
  obj.dispose();
});
