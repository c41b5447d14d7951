/**
 * Crash recovery as a client sees it, on the real daemon (test/helpers/crash.ts):
 * a recovered transaction keeps its history on the bus, a queued one is
 * cancelled with a reason, new work waits for the recovery, an interrupted
 * cancel stays a cancel, and a client that goes away cancels nothing.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { busctlCall } from '../helpers/busctl.js';
import { CrashRig, rigSlot, ERROR_PREFIX, HOOK_NAMES } from '../helpers/crash.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE } from '../helpers/dbus-client.js';
import { ClientError } from '../../service/client/errors.js';
import { PreStageClient } from '../../service/client/pre-stage-client.js';
import { readProcStat } from '../../service/engine/process-tree.js';
import { sleep } from '../helpers/processes.js';

/** Start a prepare of the staged deployment and kill the daemon while `hook`'s prepare step waits. */
async function crashWhilePreparing(rig: CrashRig, hook = 'h2') {
  await rig.block(hook, 'prepare');
  const path = await rig.client.startPreStage(rig.staged);
  const blocked = await rig.waitForRecord((r) => r.hook === hook && r.phase === 'prepare' && r.event === 'blocked');
  return { path, blocked };
}

test('recovery - the recovered transaction is on the bus with its history, the recovery and its final state', (t) => rigSlot(async () => {
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
}));

test('recovery - a transaction queued with wait when the daemon died ends cancelled, saying to start it again', (t) => rigSlot(async () => {
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
}));

test('recovery - new work waits for the recovery: Busy without wait, queued behind it with wait', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const { blocked } = await crashWhilePreparing(rig);
  await rig.crash(blocked.tx, 'prepare');
  await rig.restart({ block: [['h1', 'abort']] });
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
}));

test('recovery - a cancel whose rollback was interrupted still ends cancelled', (t) => rigSlot(async () => {
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
}));

test('recovery - a client that disconnects mid-prepare cancels nothing', (t) => rigSlot(async () => {
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
}));

test('recovery - a journal damaged mid-file is trusted for nothing: every hook is aborted', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const { blocked } = await crashWhilePreparing(rig, 'h1');
  await rig.crash(blocked.tx, 'prepare');
  const file = `${rig.journalDir}/${blocked.tx}.jnl`;
  const lines = (await fsp.readFile(file, 'utf8')).split('\n');
  t.is(JSON.parse(lines[1]!).t, 'phase');
  lines[1] = '{"t":"phase","ph\u0000garbage';
  await fsp.writeFile(file, lines.join('\n'));
  const from = rig.lineCount();
  await rig.restart();
  await rig.waitSettled();
  const s = await rig.client.transactionProperties(`${MANAGER_PATH}/Transaction/${blocked.tx}`);
  t.is(s.state, 'failed');
  t.deepEqual(rig.records().filter((r) => r.index >= from && r.event === 'end').map((r) => `${r.hook} ${r.phase}`),
    ['h3 abort', 'h2 abort', 'h1 abort'], 'only h1 had started, but the damaged journal cannot prove it');
  await rig.ctx.daemon.waitForLog((e) => String(e['message']).includes(`journal ${blocked.tx} is damaged at line 2`));
}));

test('recovery - a journal of an unknown version is reported and left alone; the daemon still starts and works', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const id = '20000101T000000_0badf00d';
  const file = `${rig.journalDir}/${id}.jnl`;
  await fsp.mkdir(rig.journalDir, { recursive: true });
  const text = `${JSON.stringify({ t: 'begin', v: 99, id, deployment: rig.staged, future: true })}\n`;
  await fsp.writeFile(file, text);
  await rig.restart();
  await rig.ctx.daemon.waitForLog((e) => String(e['message']).includes(`journal ${id} has version 99; this daemon reads version 1`));
  t.false((await rig.client.listTransactions()).some((p) => p.endsWith(id)));
  t.is(await fsp.readFile(file, 'utf8'), text, 'a newer daemon\'s journal is not touched');
  t.is((await rig.runPhase('prepare', rig.staged)).state, 'prepared');
}));

test('recovery - past --history the oldest finished transactions go (object, journal, log); one that owes work never does', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t, { args: ['--history', '20'] });
  const prepared = await rig.runPhase('prepare', rig.other);
  t.is(prepared.state, 'prepared');
  const dry: string[] = [];
  for (let i = 0; i < 22; i++) {
    const p = await rig.client.startPreStage(rig.staged, { dryRun: true });
    t.is((await rig.waitState(p)).state, 'aborted');
    dry.push(p);
  }
  const kept = [prepared.path, ...dry.slice(2)].sort();
  // Pruning follows each finished job (after the daemon reports idle): wait for it.
  const deadline = Date.now() + 30_000;
  while ((await rig.client.listTransactions()).length > kept.length && Date.now() < deadline) await sleep(50);
  t.deepEqual((await rig.client.listTransactions()).sort(), kept);
  const idOf = (p: string) => p.slice(p.lastIndexOf('/') + 1);
  for (const gone of dry.slice(0, 2)) {
    t.false(existsSync(`${rig.journalDir}/${idOf(gone)}.jnl`), 'its journal is removed');
    t.false(existsSync(`${rig.ctx.stateDir}/logs/${idOf(gone)}.log`), 'its log is removed');
    await t.throwsAsync(rig.client.transactionProperties(gone), undefined, 'its object is gone from the bus');
  }
  // A restart reads the same history back.
  await rig.restart();
  await rig.waitSettled();
  t.deepEqual((await rig.client.listTransactions()).sort(), kept);
  t.is((await rig.client.transactionProperties(prepared.path)).state, 'prepared');
}));

test('recovery - a recorded step pid that now names another process (PID reuse) is not signalled', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const { blocked } = await crashWhilePreparing(rig);
  await rig.crash(blocked.tx, 'prepare');
  // A process of nobody's transaction, leader of its own group, standing in
  // for one that got the recorded pid after the step's death.
  const other = spawn('/bin/sleep', ['1000'], { detached: true, stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } });
  t.teardown(() => { try { process.kill(other.pid!, 'SIGKILL'); } catch { /* gone */ } });
  const file = `${rig.journalDir}/${blocked.tx}.jnl`;
  const text = await fsp.readFile(file, 'utf8');
  const pidLine = `"t":"pid","phase":"prepare","hook":"h2","pid":${blocked.pid},`;
  t.true(text.includes(pidLine), 'the journal recorded the step\'s pid');
  await fsp.writeFile(file, text.replace(pidLine, `"t":"pid","phase":"prepare","hook":"h2","pid":${other.pid},`));
  await rig.restart();
  await rig.waitSettled();
  t.is((await rig.client.transactionProperties(`${MANAGER_PATH}/Transaction/${blocked.tx}`)).state, 'failed');
  t.is(readProcStat(other.pid!)?.state === 'Z' ? 'dead' : readProcStat(other.pid!) ? 'alive' : 'dead', 'alive',
    'its start time differs from the recorded one, so recovery left it alone');
}));
