/**
 * Idempotency and concurrency of StartPreStage over the bus, on the real
 * daemon with the crash harness's hooks (test/helpers/crash.ts): asking
 * again rejoins or reuses instead of running twice (what makes a retry
 * after a crash or a lost reply safe), `force` runs again, another
 * deployment is Busy or waits in a bounded queue, `timeout-sec` bounds the
 * phase and `dry-run` runs nothing.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { busctlCall } from '../helpers/busctl.js';
import { CrashRig, rigSlot, crashHookFile, ERROR_PREFIX, HOOKS, HOOK_NAMES } from '../helpers/crash.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE } from '../helpers/dbus-client.js';
import type { ClientError } from '../../service/client/errors.js';

const prepareEnds = (rig: CrashRig, tx: string) =>
  rig.records().filter((r) => r.tx === tx && r.phase === 'prepare' && r.event === 'end').map((r) => r.hook);

test('start - asking again for the deployment being prepared rejoins it (same object path), from any client', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  await rig.block('h2', 'prepare');
  const first = await rig.client.startPreStage(rig.staged);
  await rig.waitForRecord((r) => r.hook === 'h2' && r.event === 'blocked');
  t.is(await rig.client.startPreStage(rig.staged), first);
  t.is(await rig.client.startPreStage(rig.staged, { force: true }), first, 'force does not restart a running prepare');
  const r = await busctlCall(rig.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', ['sa{sv}', rig.staged, '0']);
  t.is(r.stdout.trim(), `o "${first}"`, r.stderr);
  t.is((await rig.client.listTransactions()).length, 1);
  await rig.unblock('h2', 'prepare');
  const s = await rig.waitState(first);
  t.is(s.state, 'prepared');
  t.deepEqual(prepareEnds(rig, s.id), HOOK_NAMES, 'each step ran once');
}));

test('start - prepared with unchanged hooks returns the same transaction and runs nothing; force or a changed hook runs again', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const p = await rig.runPhase('prepare', rig.staged);
  t.is(p.state, 'prepared');
  const lines = rig.lineCount();
  t.is(await rig.client.startPreStage(rig.staged), p.path);
  t.is((await rig.client.managerProperties()).state, 'idle', 'nothing was queued');
  t.is(rig.lineCount(), lines, 'no step ran');
  t.is((await rig.client.transactionProperties(p.path)).finishedUsec, p.finishedUsec, 'the transaction is untouched');

  const forced = await rig.client.startPreStage(rig.staged, { force: true });
  t.not(forced, p.path);
  const f = await rig.waitState(forced);
  t.is(f.state, 'prepared');
  t.deepEqual(prepareEnds(rig, f.id), HOOK_NAMES);
  const old = await rig.client.transactionProperties(p.path);
  t.is(old.state, 'aborted', 'the older prepared transaction is superseded');
  t.true((await rig.client.getLog(p.path)).some((l) => l.includes(`superseded by transaction ${f.id}`)));

  // Another file content is another fingerprint: it prepares again.
  const h3 = HOOKS[2]!;
  const file = path.join(rig.ctx.root, 'etc/bootc/pre-stage.d/h3.hook');
  await fsp.writeFile(file, crashHookFile(h3, rig.dir, 'h2').replace('Description=', 'Description=changed '));
  const changed = await rig.client.startPreStage(rig.staged);
  t.not(changed, forced);
  t.is((await rig.waitState(changed)).state, 'prepared');
}));

test('start - another deployment while one runs is Busy, naming the running transaction', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  await rig.block('h1', 'prepare');
  const first = await rig.client.startPreStage(rig.staged);
  const { tx } = await rig.waitForRecord((r) => r.hook === 'h1' && r.event === 'blocked');
  const e = await t.throwsAsync(rig.client.startPreStage(rig.other)) as ClientError;
  t.is(e.errorName, `${ERROR_PREFIX}Busy`);
  t.true(e.message.includes(tx) && e.message.includes("pass 'wait'"), e.message);
  const r = await busctlCall(rig.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', ['sa{sv}', rig.other, '0']);
  t.not(r.code, 0);
  t.regex(r.stderr, /is running; retry later or pass 'wait'/);
  t.is((await rig.client.listTransactions()).length, 1, 'a refused start leaves nothing behind');
  await rig.unblock('h1', 'prepare');
  t.is((await rig.waitState(first)).state, 'prepared');
}));

test('start - wait queues behind the running transaction, in order; 16 may wait, the 17th is Busy', (t) => rigSlot(async () => {
  t.timeout(300_000, 'building a sysroot with 18 deployments is slow under load');
  const rig = await CrashRig.create(t, { deployments: 18 });
  const deps = rig.sysroot.deployments;
  await rig.block('h1', 'prepare');
  const first = await rig.client.startPreStage(deps[0]!);
  await rig.waitForRecord((r) => r.hook === 'h1' && r.event === 'blocked');
  const waiting: string[] = [];
  for (let i = 1; i <= 16; i++) waiting.push(await rig.client.startPreStage(deps[i]!, { wait: true }));
  for (const w of waiting) t.is((await rig.client.transactionProperties(w)).state, 'queued');
  const full = await t.throwsAsync(rig.client.startPreStage(deps[17]!, { wait: true })) as ClientError;
  t.is(full.errorName, `${ERROR_PREFIX}Busy`);
  t.regex(full.message, /queue is full \(16 transactions waiting\)/);
  // Asking again for a queued deployment is the same queued transaction, not a new waiter.
  t.is(await rig.client.startPreStage(deps[1]!, { wait: true }), waiting[0]);
  // Cancel all but the first two waiters; they never run.
  for (const w of waiting.slice(2)) await rig.client.cancel(w);
  for (const w of waiting.slice(2)) {
    const s = await rig.client.transactionProperties(w);
    t.is(s.state, 'cancelled');
    t.is(s.errorMessage, 'cancelled before it started');
  }
  await rig.unblock('h1', 'prepare');
  const ends: string[] = [];
  for (const p of [first, ...waiting.slice(0, 2)]) {
    const s = await rig.waitState(p);
    t.is(s.state, 'prepared', s.errorMessage);
    ends.push(s.id);
  }
  const order = rig.records().filter((r) => r.event === 'start').map((r) => r.tx);
  t.deepEqual([...new Set(order)], ends, 'they ran one at a time, in the order they were queued');
}));

test('start - timeout-sec bounds the whole phase: the step is stopped, the prepare rolled back, Timeout', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  await rig.block('h2', 'prepare');
  const p = await rig.client.startPreStage(rig.staged, { timeoutSec: 2 });
  const s = await rig.waitState(p);
  t.is(s.state, 'failed');
  t.is(s.error, `${ERROR_PREFIX}Timeout`);
  t.regex(s.errorMessage, /the prepare phase exceeded its 2s deadline; rolled back/);
  // The phase's deadline stopped h2 (its own TimeoutSec did not expire): cancelled, as on Cancel().
  t.deepEqual(s.hooks.map((h) => h.result), ['success', 'cancelled', 'cancelled']);
  // On a loaded machine the deadline can pass before h2's step is spawned;
  // the invariant is: h2 never finished its prepare, and every hook whose
  // prepare started was aborted, in reverse order.
  const h2Started = rig.records().some((r) => r.event === 'start' && r.hook === 'h2' && r.phase === 'prepare');
  const ends = rig.records().filter((r) => r.event === 'end').map((r) => `${r.hook} ${r.phase}`);
  if (h2Started) t.deepEqual(ends, ['h1 prepare', 'h2 abort', 'h1 abort'], 'both started hooks were aborted, in reverse');
  else t.deepEqual(ends.filter((e) => e !== 'h2 abort'), ['h1 prepare', 'h1 abort'], 'h1 was aborted');
}));

test('start - dry-run orders the hooks and runs nothing, even while another transaction runs', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  await rig.block('h1', 'prepare');
  const running = await rig.client.startPreStage(rig.other);
  await rig.waitForRecord((r) => r.hook === 'h1' && r.event === 'blocked');
  const dry = await rig.client.startPreStage(rig.staged, { dryRun: true });
  const s = await rig.waitState(dry);
  t.is(s.state, 'aborted');
  t.deepEqual(s.hooks.map((h) => [h.name, h.result]), HOOK_NAMES.map((h) => [h, 'skipped']));
  t.regex(s.hooks[0]!.status, /^would run: \/bin\/sh \S+\/step\.sh child$/);
  t.deepEqual(rig.records().filter((r) => r.tx === s.id), []);
  await rig.unblock('h1', 'prepare');
  t.is((await rig.waitState(running)).state, 'prepared');
  // A dry run is no prepared transaction: a real start still runs.
  const real = await rig.client.startPreStage(rig.staged);
  t.not(real, dry);
  t.is((await rig.waitState(real)).state, 'prepared');
}));
