/**
 * The engine's state directory (service/engine/state-dir.ts) alone: its
 * tree and modes, the lock against a second live daemon, the hook state
 * directories, and the choice of history to prune. Real files in a
 * temporary directory; the "other daemon" is a real process.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp, existsSync, mkdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { PreStageError } from '../../service/model/errors.js';
import { processStartTime } from '../../service/engine/process-tree.js';
import { StateDir, historyToPrune } from '../../service/engine/state-dir.js';
import { tmpDir } from '../helpers/tmp.js';

const modeOf = (p: string) => statSync(p).mode & 0o7777;

test('state dir - open makes the tree with mode 0700 and a lock naming this process', async (t) => {
  const root = path.join(await tmpDir(t), 'state');
  const dir = new StateDir(root);
  await dir.open();
  t.is(modeOf(root), 0o700);
  t.is(modeOf(dir.logDir), 0o700);
  t.is(modeOf(dir.hookStateRoot), 0o700);
  t.is(dir.journalDir, path.join(root, 'journal'));
  const lock = await fsp.readFile(path.join(root, 'daemon.lock'), 'utf8');
  t.is(lock, `${process.pid} ${processStartTime(process.pid)}\n`);
  t.is(modeOf(path.join(root, 'daemon.lock')), 0o600);
  await dir.release();
  t.false(existsSync(path.join(root, 'daemon.lock')));
});

test('state dir - a lock held by another live process is Busy and names it; the lock is left alone', async (t) => {
  const root = await tmpDir(t);
  const other = spawn('/bin/sleep', ['30'], { stdio: 'ignore' });
  t.teardown(() => { other.kill('SIGKILL'); });
  await new Promise<void>((resolve) => other.once('spawn', () => resolve()));
  const held = `${other.pid} ${processStartTime(other.pid!)}\n`;
  await fsp.writeFile(path.join(root, 'daemon.lock'), held);
  const e = await t.throwsAsync(new StateDir(root).open(), { instanceOf: PreStageError });
  t.is(e?.code, 'Busy');
  t.true(e!.message.includes(`pid ${other.pid}`), e!.message);
  t.is(await fsp.readFile(path.join(root, 'daemon.lock'), 'utf8'), held);
});

test('state dir - a lock left by a process that is gone (or whose pid was reused) is taken over', async (t) => {
  const root = await tmpDir(t);
  // Our own parent's pid with a start time it never had: a reused pid.
  await fsp.writeFile(path.join(root, 'daemon.lock'), `${process.ppid} 1\n`);
  await new StateDir(root).open();
  t.is(await fsp.readFile(path.join(root, 'daemon.lock'), 'utf8'), `${process.pid} ${processStartTime(process.pid)}\n`);
});

test('state dir - hook state directories: where they are, removed per hook, the deployment\'s only when empty', async (t) => {
  const dir = new StateDir(await tmpDir(t));
  await dir.open();
  // A step's start makes its directory (StepSpec.beforeExec: step-runner tests).
  const a = dir.hookStateDir('dep1', 'a');
  const b = dir.hookStateDir('dep1', 'b');
  for (const d of [a, b]) mkdirSync(d, { recursive: true, mode: 0o700 });
  t.is(a, path.join(dir.hookStateRoot, 'dep1', 'a'));
  await fsp.writeFile(path.join(a, 'kept'), 'x');
  await dir.removeHookState('dep1', 'a');
  t.false(existsSync(a));
  await dir.cleanDeploymentState('dep1');
  t.true(existsSync(b), 'a deployment directory with a hook left is kept');
  await dir.removeHookState('dep1', 'b');
  await dir.cleanDeploymentState('dep1');
  t.false(existsSync(path.join(dir.hookStateRoot, 'dep1')));
  await t.notThrowsAsync(dir.cleanDeploymentState('never-made'));
});

test('state dir - logs live in logs/<id>.log and are removed by id', async (t) => {
  const dir = new StateDir(await tmpDir(t));
  await dir.open();
  t.is(dir.logFile('20260101T000000_ab'), path.join(dir.logDir, '20260101T000000_ab.log'));
  await fsp.writeFile(dir.logFile('x'), 'line\n');
  await dir.removeLog('x');
  t.false(existsSync(dir.logFile('x')));
  await t.notThrowsAsync(dir.removeLog('x'));
});

test('history - only the oldest beyond the limit are pruned, oldest first', (t) => {
  const tx = (id: string, createdUsec: number) => ({ id, createdUsec });
  const finished = [tx('c', 30), tx('a', 10), tx('d', 40), tx('b', 20)];
  t.deepEqual(historyToPrune(finished, 2).map((x) => x.id), ['a', 'b']);
  t.deepEqual(historyToPrune(finished, 4), []);
  t.deepEqual(historyToPrune(finished, 10), []);
  t.deepEqual(historyToPrune(finished, 0).map((x) => x.id), ['a', 'b', 'c', 'd']);
  t.deepEqual(finished.map((x) => x.id), ['c', 'a', 'd', 'b'], 'the input is not reordered');
});
