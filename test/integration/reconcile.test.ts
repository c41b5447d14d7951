/**
 * Reconcile on a real ostree sysroot through the bus: a deployment
 * discarded with `ostree admin undeploy` has its transaction aborted, a
 * "reboot" into the prepared deployment (the daemon restarted with
 * --booted-root at it) commits it at start-up, and hook state directories
 * go only once their abort or commit has succeeded.
 */
import test from 'ava';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { busctlCallJson } from '../helpers/busctl.js';
import { CrashRig, rigSlot, ERROR_PREFIX, HOOK_NAMES } from '../helpers/crash.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE } from '../helpers/dbus-client.js';

/** <state>/hooks/<stateroot>-<checksum>.<serial> of a deployment. */
function hookStateDir(rig: CrashRig, deployment: string): string {
  return path.join(rig.ctx.stateDir, 'hooks', `${rig.sysroot.osname}-${path.basename(deployment)}`);
}

/** Steps run for `tx` after record line `from`, as "<hook> <phase>" of each successful end. */
function endsSince(rig: CrashRig, tx: string, from: number): string[] {
  return rig.records().filter((r) => r.tx === tx && r.index >= from && r.event === 'end').map((r) => `${r.hook} ${r.phase}`);
}

test('reconcile - a deployment discarded with ostree admin undeploy has its transaction aborted and its hook state removed', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const staged = rig.staged;
  const p = await rig.runPhase('prepare', staged);
  t.is(p.state, 'prepared');
  const dir = hookStateDir(rig, staged);
  t.deepEqual((await fsp.readdir(dir)).sort(), HOOK_NAMES, 'every hook has a state directory while prepared');

  // Nothing to do while the deployment exists and is not booted.
  const idle = await busctlCallJson(rig.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', ['a{sv}', '0']);
  t.deepEqual(idle.data, [[]]);

  await rig.sysroot.undeploy(0);
  t.false(existsSync(staged), 'ostree removed the deployment');
  const from = rig.lineCount();
  const acted = await busctlCallJson(rig.ctx.bus.address, SERVICE, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', ['a{sv}', '0']);
  t.deepEqual(acted.data, [[p.path]], 'Reconcile names the transaction it aborts');
  const s = await rig.waitState(p.path, ['aborted', 'failed'], 60_000, 'abort');
  t.is(s.state, 'aborted', s.errorMessage);
  t.deepEqual(endsSince(rig, p.id, from), ['h3 abort', 'h2 abort', 'h1 abort']);
  t.false(existsSync(dir), 'hook state is removed once every abort succeeded');
  // Done: a second pass has nothing to do.
  t.deepEqual(await rig.client.reconcile(), []);
}));

test('reconcile - an abort that fails keeps that hook\'s state; the next reconcile retries it', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const staged = rig.staged;
  const p = await rig.runPhase('prepare', staged);
  t.is(p.state, 'prepared');
  const dir = hookStateDir(rig, staged);
  await rig.fail('h2', 'abort');
  await rig.sysroot.undeploy(0);
  t.deepEqual(await rig.client.reconcile(), [p.path]);
  const failed = await rig.waitState(p.path, ['aborted', 'failed'], 60_000, 'abort');
  t.is(failed.state, 'failed');
  t.is(failed.phase, 'abort');
  t.is(failed.error, `${ERROR_PREFIX}HookFailed`);
  t.regex(failed.errorMessage, /h2 exited with status 3.*hook state is kept/);
  t.deepEqual(await fsp.readdir(dir), ['h2'], 'only the failed hook keeps its state');
  t.regex(await fsp.readFile(path.join(dir, 'h2', 'runs'), 'utf8'), /^prepare \d+\nabort \d+\n$/, 'what the hook kept is intact');

  await rig.fail('h2', 'abort', false);
  const from = rig.lineCount();
  t.deepEqual(await rig.client.reconcile(), [p.path], 'the failed abort is retried');
  const s = await rig.waitState(p.path, ['aborted'], 60_000, 'abort');
  t.is(s.error, '');
  t.deepEqual(endsSince(rig, p.id, from), ['h3 abort', 'h2 abort', 'h1 abort']);
  t.false(existsSync(dir));
}));

test('reconcile - a reboot into the prepared deployment (restart with --booted-root at it) commits it at start-up', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const staged = rig.staged;
  const p = await rig.runPhase('prepare', staged);
  t.is(p.state, 'prepared');
  const dir = hookStateDir(rig, staged);
  t.true(existsSync(dir));
  // A prepared, not booted deployment is left alone by the start-up reconcile.
  await rig.restart();
  await rig.waitSettled();
  t.is((await rig.client.transactionProperties(p.path)).state, 'prepared');

  const from = rig.lineCount();
  await rig.restart({ bootedRoot: staged });
  // The start-up reconcile queues the commit just after the daemon owns its name.
  await rig.waitState(p.path, ['committed', 'failed'], 60_000, 'commit');
  const txs = await rig.waitSettled();
  const s = txs.find((x) => x.id === p.id)!;
  t.is(s.state, 'committed', s.errorMessage);
  t.is(s.phase, 'commit');
  t.deepEqual(endsSince(rig, p.id, from), ['h1 commit', 'h2 commit', 'h3 commit']);
  t.false(existsSync(dir), 'hook state is removed once every commit succeeded');
  const log = await rig.client.getLog(p.path, { maxLines: 100 });
  t.true(log.some((l) => l.includes('reconcile: the deployment is booted')), log.join('\n'));
  t.deepEqual(await rig.client.reconcile(), [], 'nothing more to do');
}));

test('reconcile - a commit at boot that fails keeps that hook\'s state and is retried by the next reconcile', (t) => rigSlot(async () => {
  const rig = await CrashRig.create(t);
  const staged = rig.staged;
  const p = await rig.runPhase('prepare', staged);
  t.is(p.state, 'prepared');
  await rig.fail('h3', 'commit');
  await rig.restart({ bootedRoot: staged });
  await rig.waitState(p.path, ['committed', 'failed'], 60_000, 'commit');
  const s = (await rig.waitSettled()).find((x) => x.id === p.id)!;
  t.is(s.state, 'failed');
  t.is(s.phase, 'commit');
  t.is(s.error, `${ERROR_PREFIX}HookFailed`);
  const dir = hookStateDir(rig, staged);
  t.deepEqual(await fsp.readdir(dir), ['h3']);
  await rig.fail('h3', 'commit', false);
  t.deepEqual(await rig.client.reconcile(), [p.path]);
  t.is((await rig.waitState(p.path, ['committed'], 60_000, 'commit')).error, '');
  t.false(existsSync(dir));
}));
