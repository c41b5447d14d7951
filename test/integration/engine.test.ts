/**
 * The engine on its own (no D-Bus): real hook programs, a real ostree
 * sysroot, a real journal on disk.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { recordEvents, settled, withEngine } from '../helpers/engine-env.js';

const staged = (env: { sysroot: { deployments: string[] } }) => env.sysroot.deployments[0]!;

test('engine - prepare then commit runs every step in order and ends committed', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', commit: 'ok', abort: 'ok' });
  await env.hook('b', { prepare: 'ok', commit: 'ok', abort: 'ok', after: 'a' });
  const tx = await env.engine.start(staged(env), {});
  const events = recordEvents(tx);
  const s = await settled(tx);
  t.is(s.state, 'prepared');
  t.is(s.progress, 100);
  t.deepEqual(s.hooks.map((h) => [h.name, h.result]), [['a', 'success'], ['b', 'success']]);
  t.deepEqual(events.map((e) => e.type), ['phase-started', 'hook-started', 'hook-finished', 'hook-started', 'hook-finished', 'finished']);
  const c = await env.engine.commit(staged(env), {});
  t.is(c.id, tx.id, 'commit continues the same transaction');
  const s2 = await settled(tx, ['committed', 'failed']);
  t.is(s2.state, 'committed');
  t.is(s2.phase, 'commit');
  t.deepEqual(await env.recorded(), ['a prepare ok', 'b prepare ok', 'a commit ok', 'b commit ok']);
});

test('engine - a failing required hook rolls back every started hook in reverse order', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', abort: 'ok' });
  await env.hook('b', { prepare: 'ok', abort: 'ok', after: 'a' });
  await env.hook('c', { prepare: 'fail', abort: 'ok', after: 'b' });
  await env.hook('d', { prepare: 'ok', abort: 'ok', after: 'c' });
  const tx = await env.engine.start(staged(env), {});
  const s = await settled(tx);
  t.is(s.state, 'failed');
  t.is(s.error, 'HookFailed');
  t.regex(s.errorMessage, /required hook c exited with status 3/);
  t.deepEqual(s.hooks.map((h) => h.result), ['success', 'success', 'failed', 'cancelled']);
  t.deepEqual(await env.recorded(), [
    'a prepare ok', 'b prepare ok', 'c prepare fail', 'c abort ok', 'b abort ok', 'a abort ok',
  ]);
  const log = await tx.readLog({ maxLines: 1000 });
  t.true(log.some((l) => l.includes(' c failing on purpose')), 'stderr of the hook is in the log');
});

test('engine - an optional failure and a skipped step do not stop the phase', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'fail', required: false });
  await env.hook('b', { prepare: 'skip' });
  await env.hook('c', { prepare: 'ok' });
  const tx = await env.engine.start(staged(env), {});
  const s = await settled(tx);
  t.is(s.state, 'prepared');
  t.deepEqual(s.hooks.map((h) => h.result), ['failed', 'skipped', 'success']);
  t.true(env.logs.some((l) => l.level === 'warn' && l.message.includes('optional hook a')));
});

test('engine - a step that exceeds TimeoutSec is killed and the phase rolls back', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', abort: 'ok' });
  await env.hook('slow', { prepare: 'sleep', abort: 'ok', after: 'a', timeoutSec: '1' });
  const tx = await env.engine.start(staged(env), {});
  const s = await settled(tx);
  t.is(s.state, 'failed');
  t.is(s.error, 'Timeout');
  t.is(s.hooks[1]!.result, 'timeout');
  t.deepEqual(await env.recorded(), ['a prepare ok', 'slow prepare sleep', 'slow abort ok', 'a abort ok']);
});

test('engine - cancel stops the running step and rolls back', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', abort: 'ok' });
  await env.hook('b', { prepare: 'sleep', abort: 'ok', after: 'a' });
  const tx = await env.engine.start(staged(env), {});
  await settled(tx, ['preparing']);
  // Wait until b is running, then cancel.
  await new Promise<void>((resolve) => {
    const sub = tx.state$.subscribe((s) => { if (s.hooks[1]?.result === 'running') { sub.unsubscribe(); resolve(); } });
  });
  tx.cancel();
  const s = await settled(tx);
  t.is(s.state, 'cancelled');
  t.is(s.error, 'Cancelled');
  t.is(s.hooks[1]!.result, 'cancelled');
  t.deepEqual((await env.recorded()).slice(-2), ['b abort ok', 'a abort ok']);
});

test('engine - the step sees exactly the documented environment', async (t) => {
  const env = await withEngine(t);
  await env.hook('envhook', { prepare: 'env', extra: 'Environment=FOO=bar' });
  process.env.LEAK_CHECK = 'must-not-leak';
  t.teardown(() => { delete process.env.LEAK_CHECK; });
  const tx = await env.engine.start(staged(env), {});
  t.is((await settled(tx)).state, 'prepared');
  const dump = await fsp.readFile(`${env.record}.env.envhook.prepare`, 'utf8');
  const vars = Object.fromEntries(dump.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  t.is(vars.BOOTC_PRESTAGE_PHASE, 'prepare');
  t.is(vars.BOOTC_PRESTAGE_DEPLOYMENT, staged(env));
  t.is(vars.BOOTC_PRESTAGE_TRANSACTION, tx.id);
  t.is(vars.BOOTC_PRESTAGE_HOOK, 'envhook');
  t.is(vars.BOOTC_PRESTAGE_NOTIFY_FD, '3');
  t.is(vars.LANG, 'C.UTF-8');
  t.is(vars.FOO, 'bar');
  t.truthy(vars.PATH);
  t.is(vars.BOOTC_PRESTAGE_STATE_DIRECTORY, path.join(env.stateDir, 'hooks', `${env.sysroot.osname}-${path.basename(staged(env))}`, 'envhook'));
  t.false('LEAK_CHECK' in vars);
  t.is((await fsp.readFile(`${env.record}.cwd.envhook`, 'utf8')).trim(), '/');
});

test('engine - a prepared deployment with unchanged hooks is not run again unless forced', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok' });
  const tx = await env.engine.start(staged(env), {});
  await settled(tx);
  const again = await env.engine.start(staged(env), {});
  t.is(again.id, tx.id);
  t.deepEqual(await env.recorded(), ['a prepare ok']);
  const forced = await env.engine.start(staged(env), { force: true });
  t.not(forced.id, tx.id);
  t.is((await settled(forced)).state, 'prepared');
  t.is(tx.snapshot().state, 'aborted', 'the older prepared transaction is superseded');
  t.deepEqual(await env.recorded(), ['a prepare ok', 'a prepare ok']);
  // A changed hook file changes the fingerprint: it runs again.
  await env.hook('a', { prepare: 'ok', commit: 'ok' });
  const changed = await env.engine.start(staged(env), {});
  t.not(changed.id, forced.id);
  await settled(changed);
});

test('engine - another deployment is Busy, or queued with wait', async (t) => {
  const env = await withEngine(t);
  // Long enough that no timeout races the test on a loaded machine; the test cancels.
  await env.hook('a', { prepare: 'sleep', abort: 'ok', timeoutSec: '60' });
  const first = await env.engine.start(env.sysroot.deployments[0]!, {});
  const rejoined = await env.engine.start(env.sysroot.deployments[0]!, {});
  t.is(rejoined.id, first.id, 'the same deployment rejoins');
  const err = await t.throwsAsync(() => env.engine.start(env.sysroot.deployments[1]!, {}));
  t.is((err as { code?: string }).code, 'Busy');
  const queued = await env.engine.start(env.sysroot.deployments[1]!, { wait: true });
  t.is(queued.snapshot().state, 'queued');
  await settled(first, ['preparing']);
  first.cancel();
  const f = await settled(first);
  t.is(f.state, 'cancelled');
  await settled(queued, ['preparing']);
  t.true(queued.snapshot().startedUsec >= f.finishedUsec, 'the queued one ran after the first ended');
  queued.cancel();
  t.is((await settled(queued)).state, 'cancelled');
});

test('engine - dry-run plans without running anything', async (t) => {
  const env = await withEngine(t);
  await env.hook('b', { prepare: 'ok' });
  await env.hook('a', { prepare: 'ok', before: 'b' });
  const tx = await env.engine.start(staged(env), { dryRun: true });
  const s = await settled(tx);
  t.is(s.state, 'aborted');
  t.deepEqual(s.hooks.map((h) => [h.name, h.result]), [['a', 'skipped'], ['b', 'skipped']]);
  t.regex(s.hooks[0]!.status, /would run: .*step ok/);
  t.deepEqual(await env.recorded(), []);
});

test('engine - phase timeout-sec bounds the whole phase', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'sleep', abort: 'ok', timeoutSec: 'infinity' });
  const tx = await env.engine.start(staged(env), { timeoutSec: 1 });
  const s = await settled(tx);
  t.is(s.state, 'failed');
  t.is(s.error, 'Timeout');
  t.regex(s.errorMessage, /deadline/);
});

test('engine - abort after prepare runs abort steps in reverse and keeps nothing', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', abort: 'ok' });
  await env.hook('b', { prepare: 'ok', abort: 'ok', after: 'a' });
  const tx = await env.engine.start(staged(env), {});
  await settled(tx);
  await env.engine.abort(staged(env), {});
  const s = await settled(tx, ['aborted', 'failed']);
  t.is(s.state, 'aborted');
  t.deepEqual((await env.recorded()).slice(2), ['b abort ok', 'a abort ok']);
  const hooksDir = path.join(env.stateDir, 'hooks');
  t.deepEqual(await fsp.readdir(hooksDir), [], 'hook state directories are removed after a successful abort');
});

test('engine - commit without a prepared transaction is NotFound; bad paths are InvalidDeployment', async (t) => {
  const env = await withEngine(t);
  const e1 = await t.throwsAsync(() => env.engine.commit(staged(env), {}));
  t.is((e1 as { code?: string }).code, 'NotFound');
  for (const bad of ['relative/path', '/etc', `${env.sysroot.path}/ostree/deploy/../../..`, `${staged(env)}/usr`]) {
    const e = await t.throwsAsync(() => env.engine.start(bad, {}));
    t.is((e as { code?: string }).code, 'InvalidDeployment', bad);
  }
  t.deepEqual(env.engine.transactions(), []);
});

test('engine - reconcile commits the booted deployment and aborts a discarded one', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', commit: 'ok', abort: 'ok' });
  const [newer, booted] = env.sysroot.deployments as [string, string];
  const txBooted = await env.engine.start(booted, {});
  await settled(txBooted);
  const txNewer = await env.engine.start(newer, {});
  await settled(txNewer);
  await env.sysroot.undeploy(0); // discard the newer one
  const acted = await env.engine.reconcile();
  t.deepEqual(acted.map((x) => x.id).sort(), [txBooted.id, txNewer.id].sort());
  t.is((await settled(txBooted, ['committed', 'failed'])).state, 'committed');
  t.is((await settled(txNewer, ['aborted', 'failed'])).state, 'aborted');
});

test('engine - a restart finds history and rolls back an interrupted prepare', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', abort: 'ok' });
  await env.hook('b', { prepare: 'sleep', abort: 'ok', after: 'a' });
  const tx = await env.engine.start(staged(env), {});
  await new Promise<void>((resolve) => {
    const sub = tx.state$.subscribe((s) => { if (s.hooks[1]?.result === 'running') { sub.unsubscribe(); resolve(); } });
  });
  // shutdown() stops like a crash: the step is killed, no final record.
  const engine = await env.reopen();
  const again = engine.transaction(tx.id)!;
  t.truthy(again);
  const s = await settled(again);
  t.is(s.state, 'failed');
  t.regex(s.errorMessage, /daemon stopped during the prepare phase/);
  const rec = await env.recorded();
  t.deepEqual(rec.slice(-2), ['b abort ok', 'a abort ok']);
});

test('engine - a prepared transaction loaded at start-up can be committed, aborted or superseded', async (t) => {
  const env = await withEngine(t);
  await env.hook('a', { prepare: 'ok', commit: 'ok', abort: 'ok' });
  const [newer, older] = env.sysroot.deployments as [string, string];
  const t1 = await env.engine.start(newer, {});
  await settled(t1);
  const t2 = await env.engine.start(older, {});
  await settled(t2);
  const engine = await env.reopen();
  // Commit one (a reboot into it), supersede the other with a forced re-run.
  const c = await engine.commit(newer, {});
  t.is((await settled(c, ['committed', 'failed'])).state, 'committed');
  const f = await engine.start(older, { force: true, wait: true });
  t.is((await settled(f)).state, 'prepared');
  t.is(engine.transaction(t2.id)!.snapshot().state, 'aborted');
  // And the journals say so after another restart.
  const again = await env.reopen();
  t.is(again.transaction(t1.id)!.snapshot().state, 'committed');
  t.is(again.transaction(t2.id)!.snapshot().state, 'aborted');
  t.is(again.transaction(f.id)!.snapshot().state, 'prepared');
});
