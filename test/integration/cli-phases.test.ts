/**
 * bootc-prestage start, commit, abort, cancel and reconcile against the
 * real daemon on a private bus with the shipped policy and a real ostree
 * sysroot: pipe mode, --json, and the exit statuses of each outcome.
 */
import test from 'ava';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { deploymentsOf, withDaemon } from '../helpers/daemon.js';
import { MANAGER_IFACE, MANAGER_PATH, SERVICE } from '../helpers/dbus-client.js';
import { tmpDir } from '../helpers/tmp.js';
import { hookFile, jsonLines, runCli, spawnCli } from './cli-harness.js';

/** Runs until cancelled (10 minutes at most): tests cancel it, never wait for it. */
const SLOW = hookFile({ prepare: 'i=0; while [ $i -lt 6000 ]; do echo PROGRESS=$((i/60)) >&3; i=$((i+1)); sleep 0.1; done', abort: 'echo slow-abort' });

/** A commit step that waits for the test to create `<dir>/go`, then writes `<dir>/committed`. */
const gatedCommit = (dir: string) => hookFile({
  prepare: 'true', commit: `while [ ! -e ${dir}/go ]; do sleep 0.05; done; echo ok > ${dir}/committed`,
});

test.serial('start - pipe mode prints one line per event and exits 0 when prepared', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2, hooks: { 'image-check.hook': hookFile({ prepare: 'echo checking the image; echo STATUS=looked >&3' }) } },
    etcHooks: { 'host-step.hook': hookFile({ prepare: 'echo host step ran', after: 'image-check' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['start', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  const lines = r.stdout.split('\n');
  t.regex(lines[0]!, /^Transaction \S+ \(\/org\/containers\/bootc\/PreStage\/Transaction\/\S+\): prepare of /);
  t.true(lines.includes('[1/2] image-check: started'), r.stdout);
  t.true(lines.includes('[image-check] checking the image'), r.stdout);
  t.true(lines.some((l) => /^\[1\/2\] image-check: success/.test(l)), r.stdout);
  t.true(lines.includes('[host-step] host step ran'), r.stdout);
  t.true(lines.some((l) => /^\[2\/2\] host-step: success/.test(l)), r.stdout);
  t.regex(lines[lines.length - 1]!, /^Result: prepared .*2 hook\(s\) prepared/);
  // The order is the events' order: image-check finished before host-step started.
  t.true(lines.findIndex((l) => l.startsWith('[1/2] image-check: success'))
    < lines.indexOf('[2/2] host-step: started'));
});

test.serial('start --json - one JSON object per line, from begin to finished, with numbers for 64-bit times', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'one.hook': hookFile({ prepare: 'echo PROGRESS=40 >&3; echo STATUS=working >&3; echo out-line' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['--json', 'start', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  const evs = jsonLines(r.stdout);
  t.is(evs[0]!['event'], 'begin');
  t.is(evs[0]!['deployment'], staged);
  const path0 = evs[0]!['transaction'] as string;
  t.regex(path0, /^\/org\/containers\/bootc\/PreStage\/Transaction\/[A-Za-z0-9_]+$/);
  const started = evs.find((e) => e['event'] === 'hook-started');
  t.like(started, { hook: 'one', index: 0, count: 1, transaction: path0 });
  t.truthy(evs.find((e) => e['event'] === 'message' && e['line'] === 'out-line'));
  t.truthy(evs.find((e) => e['event'] === 'hook-finished' && e['hook'] === 'one' && e['result'] === 'success'));
  const last = evs[evs.length - 1]!;
  t.is(last['event'], 'finished');
  t.is(last['state'], 'prepared');
  t.is(last['error'], '');
  t.is(last['transaction']['state'], 'prepared');
  t.is(typeof last['transaction']['startedUsec'], 'number');
  t.true(last['transaction']['finishedUsec'] >= last['transaction']['startedUsec']);
  t.deepEqual(last['transaction']['hooks'], [{ name: 'one', result: 'success', percent: 100, status: 'working' }]);
});

test.serial('start - a deployment already prepared with the same hooks returns at once with exit 0', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'count.hook': hookFile({ prepare: `echo x >> ${dir}/runs` }) },
  });
  const [staged] = deploymentsOf(ctx);
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 0);
  const again = await runCli(['start', staged!], { address: ctx.bus.address });
  t.is(again.code, 0, again.stderr);
  t.regex(again.stdout, /Result: prepared/);
  t.notRegex(again.stdout, /count: started/);
  t.is(await fsp.readFile(path.join(dir, 'runs'), 'utf8'), 'x\n');
  // --force runs it again.
  t.is((await runCli(['start', '--force', staged!], { address: ctx.bus.address })).code, 0);
  t.is(await fsp.readFile(path.join(dir, 'runs'), 'utf8'), 'x\nx\n');
});

test.serial('start - a failing required hook exits 1 with a one-line reason, after rolling back', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: {
      'first.hook': hookFile({ prepare: 'echo first', abort: `echo undone > ${dir}/first-aborted` }),
      'second.hook': hookFile({ prepare: 'echo going to fail >&2; exit 3', after: 'first' }),
    },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['start', staged!], { address: ctx.bus.address });
  t.is(r.code, 1);
  const err = r.stderr.split('\n');
  t.is(err.length, 1, r.stderr);
  t.regex(err[0]!, /^bootc-prestage: the prepare phase of \S+ failed \[HookFailed\]: .*second/);
  t.regex(r.stdout, /\[second\] going to fail/);
  t.regex(r.stdout, /Result: failed \[HookFailed\]/);
  t.true(existsSync(path.join(dir, 'first-aborted')), 'the abort step of the hook that ran was run');
});

test.serial('start --json - a failure still ends with a finished object; exit 1', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'bad.hook': hookFile({ prepare: 'exit 9' }) },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['--json', 'start', staged!], { address: ctx.bus.address });
  t.is(r.code, 1);
  const last = jsonLines(r.stdout).pop()!;
  t.like(last, { event: 'finished', state: 'failed', error: 'org.containers.bootc.PreStage.Error.HookFailed' });
  t.regex(r.stderr, /failed \[HookFailed\]/);
});

test.serial('start - busy exits 3; --wait queues behind the running transaction instead', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 3 },
    etcHooks: { 'slow.hook': SLOW },
  });
  const [d1, d2] = deploymentsOf(ctx);
  const first = await runCli(['start', '--no-follow', d1!], { address: ctx.bus.address });
  t.is(first.code, 0, first.stderr);
  const txPath = first.stdout.trim();
  t.regex(txPath, /^\/org\/containers\/bootc\/PreStage\/Transaction\//);

  const busy = await runCli(['start', d2!], { address: ctx.bus.address });
  t.is(busy.code, 3);
  t.regex(busy.stderr, /^bootc-prestage: .*running/);
  t.is(busy.stderr.trim().split('\n').length, 1);

  const waiting = spawnCli(['start', '--wait', d2!], { address: ctx.bus.address });
  await waiting.waitForLine((l) => l.startsWith('State: queued'));
  t.is(waiting.child.exitCode, null, 'still waiting while the first runs');
  const cancel = await runCli(['cancel', txPath.split('/').pop()!], { address: ctx.bus.address });
  t.is(cancel.code, 0, cancel.stderr);
  // Once the first is cancelled, the queued one runs (its slow hook), so cancel it too.
  const second = await waiting.waitForLine((l) => l.startsWith('Transaction '));
  const id2 = /^Transaction (\S+)/.exec(second)![1]!;
  await waiting.waitForLine((l) => l.startsWith('[1/1] slow: started'));
  t.is((await runCli(['cancel', id2], { address: ctx.bus.address })).code, 0);
  const res = await waiting.done;
  t.is(res.code, 1);
  t.regex(res.stderr, /was cancelled/);
});

test.serial('commit - runs the commit steps of a prepared deployment; exit 0', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'mark.hook': hookFile({ prepare: 'true', commit: `echo committed > ${dir}/commit` }) },
  });
  const [staged] = deploymentsOf(ctx);
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 0);
  const r = await runCli(['commit', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /: commit of /);
  t.regex(r.stdout, /\[1\/1\] mark: success/);
  t.regex(r.stdout, /Result: committed/);
  t.is(await fsp.readFile(path.join(dir, 'commit'), 'utf8'), 'committed\n');
  // Again: already committed, nothing runs, still 0.
  const again = await runCli(['--json', 'commit', staged!], { address: ctx.bus.address });
  t.is(again.code, 0, again.stderr);
  t.like(jsonLines(again.stdout).pop(), { event: 'finished', state: 'committed' });
});

test.serial('abort - runs the abort steps in reverse order; exit 0', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: {
      'a.hook': hookFile({ prepare: 'true', abort: `echo a >> ${dir}/order` }),
      'b.hook': hookFile({ prepare: 'true', abort: `echo b >> ${dir}/order`, after: 'a' }),
    },
  });
  const [staged] = deploymentsOf(ctx);
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 0);
  const r = await runCli(['--json', 'abort', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  const evs = jsonLines(r.stdout);
  t.deepEqual(evs.filter((e) => e['event'] === 'hook-started').map((e) => e['hook']), ['b', 'a']);
  t.like(evs.pop(), { event: 'finished', state: 'aborted' });
  t.is(await fsp.readFile(path.join(dir, 'order'), 'utf8'), 'b\na\n');
});

test.serial('commit - of a deployment never prepared exits 4 (not found)', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['commit', staged!], { address: ctx.bus.address });
  t.is(r.code, 4);
  t.regex(r.stderr, /^bootc-prestage: no pre-stage transaction exists for /);
});

test.serial('start - a path that is not a deployment exits 4', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 1 } });
  const r = await runCli(['start', '/usr'], { address: ctx.bus.address });
  t.is(r.code, 4);
  t.regex(r.stderr, /^bootc-prestage: /);
  t.is(r.stderr.trim().split('\n').length, 1);
});

test.serial('start --dry-run - lists what would run, runs nothing; exit 0', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'x.hook': hookFile({ prepare: `touch ${dir}/ran` }) },
  });
  const [staged] = deploymentsOf(ctx);
  const r = await runCli(['start', '--dry-run', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /x: skipped: would run: \/bin\/sh -c/);
  t.regex(r.stdout, /Result: aborted.*dry run/);
  t.false(existsSync(path.join(dir, 'ran')));
});

test.serial('cancel - of a running prepare ends it cancelled; exit 0; of a finished one exits 1', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'slow.hook': SLOW } });
  const [staged] = deploymentsOf(ctx);
  const started = await runCli(['start', '--no-follow', staged!], { address: ctx.bus.address });
  const txPath = started.stdout.trim();
  const r = await runCli(['--json', 'cancel', txPath], { address: ctx.bus.address });
  t.is(r.code, 0, r.stderr);
  t.like(jsonLines(r.stdout).pop(), { event: 'finished', state: 'cancelled' });
  // The transaction is at rest now: nothing left to cancel, but a second cancel of it is not an error.
  const again = await runCli(['cancel', txPath], { address: ctx.bus.address });
  t.is(again.code, 0, again.stderr);
  const prepared = await runCli(['start', '--dry-run', '--no-follow', staged!], { address: ctx.bus.address });
  const dry = prepared.stdout.trim();
  // A dry run finishes at once (aborted): cancelling it is refused with a reason.
  await new Promise((r2) => setTimeout(r2, 300));
  const late = await runCli(['cancel', dry], { address: ctx.bus.address });
  t.is(late.code, 1);
  t.regex(late.stderr, /already aborted; there is nothing to cancel/);
});

test.serial('reconcile - aborts the transaction of a deployment that is gone; exit 0', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'r.hook': hookFile({ prepare: 'true', abort: `echo gone > ${dir}/aborted` }) },
  });
  const sysroot = ctx.sysroot as { deployments: string[]; undeploy(i: number): Promise<void> };
  const staged = sysroot.deployments[0]!;
  t.is((await runCli(['start', staged], { address: ctx.bus.address })).code, 0);
  await sysroot.undeploy(0);
  const r = await runCli(['reconcile'], { address: ctx.bus.address });
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /Result: aborted/);
  t.is(await fsp.readFile(path.join(dir, 'aborted'), 'utf8'), 'gone\n');
  const none = await runCli(['reconcile'], { address: ctx.bus.address });
  t.is(none.code, 0);
  t.is(none.stdout, 'Nothing to reconcile.');
});

test.serial('reconcile - also follows a commit phase another client queued, as the daemon\'s start-up reconcile does', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'c.hook': gatedCommit(dir) } });
  const staged = deploymentsOf(ctx)[0]!;
  t.is((await runCli(['start', staged], { address: ctx.bus.address })).code, 0);
  // Queued by another client: Reconcile's reply does not include it.
  await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'CommitPreStage', 'sa{sv}', [staged, {}]);
  const cli = spawnCli(['reconcile'], { address: ctx.bus.address });
  await cli.waitForLine((l) => /^Transaction \S+ \(\S+\): reconcile$/.test(l));
  await fsp.writeFile(path.join(dir, 'go'), '');
  const r = await cli.done;
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /Result: committed/);
  t.is(await fsp.readFile(path.join(dir, 'committed'), 'utf8'), 'ok\n', 'the commit step had run when reconcile returned');
});

// The boot flow: prepared, "rebooted" into the deployment, committed by the
// daemon's own start-up reconcile while the boot unit's `reconcile` waits.
test.serial('reconcile - at boot, also follows the commit the daemon queued by itself when it started', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'c.hook': gatedCommit(dir) } });
  const staged = deploymentsOf(ctx)[0]!;
  t.is((await runCli(['start', staged], { address: ctx.bus.address })).code, 0);
  await ctx.restart({ bootedRoot: staged });
  const cli = spawnCli(['reconcile'], { address: ctx.bus.address });
  await cli.waitForLine((l) => /^Transaction \S+ \(\S+\): reconcile$/.test(l));
  await fsp.writeFile(path.join(dir, 'go'), '');
  const r = await cli.done;
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /Result: committed/);
  t.is(await fsp.readFile(path.join(dir, 'committed'), 'utf8'), 'ok\n', 'the commit step had run when reconcile returned');
});
