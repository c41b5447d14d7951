/**
 * Crash recovery as a client sees it, on the real daemon (test/helpers/crash.ts):
 * a recovered transaction keeps its history on the bus, a queued one is
 * cancelled with a reason, new work waits for the recovery, an interrupted
 * cancel stays a cancel, and a client that goes away cancels nothing.
 */
import test from 'ava';
import { busctlCall } from '../helpers/busctl.js';
import { CrashRig, ERROR_PREFIX, HOOK_NAMES } from '../helpers/crash.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE } from '../helpers/dbus-client.js';
import { ClientError } from '../../service/client/errors.js';
import { PreStageClient } from '../../service/client/pre-stage-client.js';

/** Start a prepare of the staged deployment and kill the daemon while `hook`'s prepare step waits. */
async function crashWhilePreparing(rig: CrashRig, hook = 'h2') {
  await rig.block(hook, 'prepare');
  const path = await rig.client.startPreStage(rig.staged);
  const blocked = await rig.waitForRecord((r) => r.hook === hook && r.phase === 'prepare' && r.event === 'blocked');
  return { path, blocked };
}

test('recovery - the recovered transaction is on the bus with its history, the recovery and its final state', async (t) => {
  const rig = await CrashRig.create(t);
  const { path, blocked } = await crashWhilePreparing(rig);
  const before = await rig.client.transactionProperties(path);
  t.is(before.state, 'preparing');
  // What a client could read before the crash: GetLog flushes the log.
  const logBefore = await rig.client.getLog(path, { maxLines: 1000 });
  t.true(logBefore.some((l) => l.includes('h2 prepare step running as')), logBefore.join('\n'));
  await rig.crash(blocked.tx, 'prepare');
  await rig.restart();
  await rig.waitSettled();

  t.true((await rig.client.listTransactions()).includes(path), 'ListTransactions lists it after the restart');
  const after = await rig.client.transactionProperties(path);
  t.is(after.id, before.id);
  t.is(after.deployment, rig.staged);
  t.is(after.phase, 'prepare');
  t.is(after.state, 'failed');
  t.is(after.error, `${ERROR_PREFIX}Internal`);
  t.regex(after.errorMessage, /daemon stopped during the prepare phase; the steps that ran were rolled back/);
  t.is(after.startedUsec, before.startedUsec, 'the phase keeps its start time');
  t.true(after.finishedUsec > after.startedUsec);
  t.is(after.currentHook, '');
  t.deepEqual(after.hooks.map((h) => [h.name, h.result]), [['h1', 'success'], ['h2', 'cancelled'], ['h3', 'cancelled']]);
  t.regex(after.hooks[1]!.status, /interrupted/);
  t.regex(after.hooks[2]!.status, /not run/);

  const log = await rig.client.getLog(path, { maxLines: 1000 });
  for (const line of logBefore) t.true(log.includes(line), `the log kept '${line}'`);
  const at = (re: RegExp) => log.findIndex((l) => re.test(l));
  t.true(at(/ - daemon restarted while preparing; recovering/) > at(/h2 prepare step running as/));
  t.true(at(/ - rolling back/) > at(/daemon restarted/));
  t.true(at(/ h1 rollback abort step success/) > at(/ h2 rollback abort step success/), 'rolled back in reverse order');
  t.regex(log.at(-1)!, / - finished: failed \(Internal\): the daemon stopped during the prepare phase/);
  // GetLog by hook still works on the recovered transaction.
  const h2 = await rig.client.getLog(path, { maxLines: 1000, hook: 'h2' });
  t.true(h2.length > 0 && h2.every((l) => l.split(' ')[1] === 'h2'));
});

test('recovery - a transaction queued with wait when the daemon died ends cancelled, saying to start it again', async (t) => {
  const rig = await CrashRig.create(t);
  const { blocked } = await crashWhilePreparing(rig);
  const queued = await rig.client.startPreStage(rig.other, { wait: true });
  t.is((await rig.client.transactionProperties(queued)).state, 'queued');
  await rig.crash(blocked.tx, 'prepare');
  await rig.restart();
  await rig.waitSettled();
  const q = await rig.client.transactionProperties(queued);
  t.is(q.state, 'cancelled');
  t.is(q.error, `${ERROR_PREFIX}Cancelled`);
  t.is(q.errorMessage, 'the daemon restarted before this transaction ran; start it again');
  t.true(q.finishedUsec > 0);
  t.deepEqual(rig.records().filter((r) => r.tx === q.id), [], 'none of its steps ran');
  // Starting it again works, and it runs.
  const again = await rig.client.startPreStage(rig.other);
  t.not(again, queued);
  t.is((await rig.waitState(again)).state, 'prepared');
});

test('recovery - new work waits for the recovery: Busy without wait, queued behind it with wait', async (t) => {
  const rig = await CrashRig.create(t);
  const { blocked } = await crashWhilePreparing(rig);
  await rig.crash(blocked.tx, 'prepare');
  await rig.clearBlocks();
  await rig.block('h1', 'abort');
  await rig.restart({ keepBlocks: true });
  await rig.waitForRecord((r) => r.tx === blocked.tx && r.hook === 'h1' && r.phase === 'abort' && r.event === 'blocked');
  const m = await rig.client.managerProperties();
  t.is(m.state, 'busy');
  t.true(m.activeTransaction.endsWith(blocked.tx), 'the recovery is the active transaction');
  const busy = await t.throwsAsync(rig.client.startPreStage(rig.other)) as ClientError;
  t.is(busy.errorName, `${ERROR_PREFIX}Busy`);
  t.true(busy.message.includes(blocked.tx), busy.message);
  const queued = await rig.client.startPreStage(rig.other, { wait: true });
  t.is((await rig.client.transactionProperties(queued)).state, 'queued');
  await rig.unblock('h1', 'abort');
  const done = await rig.waitState(queued);
  t.is(done.state, 'prepared');
  const rec = rig.records();
  const lastRecovery = Math.max(...rec.filter((r) => r.tx === blocked.tx).map((r) => r.index));
  const firstNew = Math.min(...rec.filter((r) => r.tx === done.id).map((r) => r.index));
  t.true(firstNew > lastRecovery, 'the new transaction ran only after the recovery finished');
  t.is((await rig.client.transactionProperties(`${MANAGER_PATH}/Transaction/${blocked.tx}`)).state, 'failed');
});

test('recovery - a cancel whose rollback was interrupted still ends cancelled', async (t) => {
  const rig = await CrashRig.create(t);
  const { path, blocked } = await crashWhilePreparing(rig);
  await rig.block('h1', 'abort');
  await rig.client.cancel(path);
  await rig.waitForRecord((r) => r.tx === blocked.tx && r.hook === 'h1' && r.phase === 'abort' && r.event === 'blocked');
  t.is((await rig.client.transactionProperties(path)).state, 'rolling-back');
  await rig.crash(blocked.tx, 'prepare');
  await rig.restart();
  await rig.waitSettled();
  const s = await rig.client.transactionProperties(path);
  t.is(s.state, 'cancelled', s.errorMessage);
  t.is(s.error, `${ERROR_PREFIX}Cancelled`);
  t.regex(s.errorMessage, /cancelled/);
  const marker = rig.records().filter((r) => r.tx === blocked.tx && r.event === 'end' && r.phase === 'abort').map((r) => r.hook);
  t.deepEqual(marker.slice(-2), ['h2', 'h1'], 'the rollback ran again after the restart');
});

test('recovery - a client that disconnects mid-prepare cancels nothing', async (t) => {
  const rig = await CrashRig.create(t);
  await rig.block('h2', 'prepare');
  // A client of its own, gone while the prepare runs.
  const gone = await PreStageClient.connect({ address: rig.ctx.bus.address });
  const name = gone.conn.uniqueName;
  const path = await gone.startPreStage(rig.staged);
  await rig.waitForRecord((r) => r.hook === 'h2' && r.phase === 'prepare' && r.event === 'blocked');
  const owners = await rig.ctx.client.collectSignals({
    sender: 'org.freedesktop.DBus', interface: 'org.freedesktop.DBus', member: 'NameOwnerChanged', arg0: name,
  });
  gone.close();
  // The bus has dropped it, and so told the daemon before anything we send next.
  await owners.waitFor((s) => s.body[2] === '');
  await owners.stop();
  t.is((await rig.client.transactionProperties(path)).state, 'preparing');
  // busctl asks for the same deployment and disconnects as soon as it has the reply: a rejoin, not a cancel.
  const r = await busctlCall(rig.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage',
    ['sa{sv}', rig.staged, '0']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.trim(), `o "${path}"`);
  await rig.unblock('h2', 'prepare');
  const s = await rig.waitState(path);
  t.is(s.state, 'prepared');
  t.is(s.error, '');
  t.deepEqual(rig.records().filter((x) => x.event === 'end').map((x) => `${x.hook} ${x.phase}`),
    HOOK_NAMES.map((h) => `${h} prepare`), 'every prepare step ran to the end, nothing was aborted');
});
