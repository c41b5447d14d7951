/**
 * The bootc side, without bootc: reading `bootc status --format=json`
 * (documents shaped like bootc's own fixtures), finding the deployment
 * directory, and the progress events in bootc's ProgressSteps format.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BootcProgress, BOOTC_PROGRESS_API_VERSION, fdWriter, type ProgressStepsEvent } from '../../service/cli/bootc-progress.js';
import { deploymentDir, stagedEntry } from '../../service/cli/bootc.js';
import { ClientError } from '../../service/client/errors.js';
import type { TransactionProperties } from '../../service/client/types.js';

const C1 = '3c6dad657109522e0b2e49bf44b5420f16f0b438b5b9357e5132211cfbad135d';

function host(staged: unknown): string {
  return JSON.stringify({
    apiVersion: 'org.containers.bootc/v1', kind: 'BootcHost', metadata: { name: 'host' },
    spec: { image: { image: 'quay.io/example/os:latest', transport: 'registry' } },
    status: {
      staged,
      booted: { image: null, incompatible: false, pinned: false, ostree: { stateroot: 'default', checksum: C1.replace('3', '4'), deploySerial: 0 } },
      rollback: null, type: 'bootcHost',
    },
  });
}

test('stagedEntry - the staged ostree entry of bootc status', (t) => {
  t.deepEqual(stagedEntry(host({ ostree: { stateroot: 'default', checksum: C1, deploySerial: 1 }, pinned: false })),
    { stateroot: 'default', checksum: C1, deploySerial: 1 });
  t.deepEqual(stagedEntry(host({ ostree: { checksum: C1, deploySerial: 0 } })), { checksum: C1, deploySerial: 0 },
    'bootc before stateroot was added');
  t.is(stagedEntry(host(null)), null);
});

const malformed: [string, string, RegExp][] = [
  ['not JSON', 'Staged: none', /not JSON/],
  ['no status', '{"kind":"BootcHost"}', /no "status" object/],
  ['no ostree entry', host({ image: null }), /no "ostree" entry/],
  ['a short checksum', host({ ostree: { checksum: 'abc', deploySerial: 0 } }), /not a SHA-256 checksum/],
  ['a negative serial', host({ ostree: { checksum: C1, deploySerial: -1 } }), /deploySerial .* not a serial number/],
  ['a stateroot with a slash', host({ ostree: { stateroot: '../x', checksum: C1, deploySerial: 0 } }), /not a stateroot name/],
];
for (const [what, doc, re] of malformed) {
  test(`stagedEntry - ${what} is refused with a reason`, (t) => {
    const e = t.throws(() => stagedEntry(doc), { instanceOf: ClientError });
    t.regex(e!.message, re);
  });
}

test('deploymentDir - from the stateroot, or found on disk when bootc did not say', async (t) => {
  const sysroot = await fsp.mkdtemp(path.join(os.tmpdir(), 'cli-bootc-'));
  t.teardown(() => fsp.rm(sysroot, { recursive: true, force: true }));
  t.is(await deploymentDir(sysroot, { stateroot: 'fedora', checksum: C1, deploySerial: 2 }),
    path.join(sysroot, 'ostree/deploy/fedora/deploy', `${C1}.2`));
  await t.throwsAsync(deploymentDir(sysroot, { checksum: C1, deploySerial: 0 }), { message: /is not under .*wrong --sysroot/ });
  await fsp.mkdir(path.join(sysroot, 'ostree/deploy/a/deploy', `${C1}.0`), { recursive: true });
  t.is(await deploymentDir(sysroot, { checksum: C1, deploySerial: 0 }), path.join(sysroot, 'ostree/deploy/a/deploy', `${C1}.0`));
  await fsp.mkdir(path.join(sysroot, 'ostree/deploy/b/deploy', `${C1}.0`), { recursive: true });
  await t.throwsAsync(deploymentDir(sysroot, { checksum: C1, deploySerial: 0 }), { message: /in several stateroots/ });
});

function props(hooks: [string, string][]): TransactionProperties {
  return {
    path: '/p', id: '7', deployment: '/d', phase: 'prepare', state: 'prepared', progress: 100, currentHook: '',
    hooks: hooks.map(([name, result]) => ({ name, result: result as 'success', percent: 100, status: '' })),
    error: '', errorMessage: '', startedUsec: 0, finishedUsec: 0,
  };
}

test('BootcProgress - ProgressSteps with bootc\'s field names: a step per hook, the running one as subtask', (t) => {
  const out: ProgressStepsEvent[] = [];
  const p = new BootcProgress('7', (e) => out.push(e));
  p.event({ type: 'state', transaction: props([['a', 'pending'], ['b', 'pending']]) });
  p.event({ type: 'hook-started', hook: 'a', index: 0, count: 2 });
  p.event({ type: 'hook-progress', hook: 'a', percent: 10, status: 'x' });
  p.event({ type: 'message', hook: 'a', line: 'x' });
  p.event({ type: 'hook-finished', hook: 'a', result: 'success', message: '' });
  p.event({ type: 'hook-started', hook: 'b', index: 1, count: 2 });
  p.event({ type: 'hook-finished', hook: 'b', result: 'failed', message: 'exit 1' });
  p.event({ type: 'finished', state: 'failed', error: 'E', message: 'm', transaction: props([['a', 'success'], ['b', 'failed']]) });
  const base = { type: 'ProgressSteps', apiVersion: BOOTC_PROGRESS_API_VERSION, task: 'pre-stage',
    description: 'Running pre-stage hooks', id: '7', stepsCached: 0, stepsTotal: 2 };
  const sub = (id: string, completed: boolean) => ({ subtask: 'hook', description: id, id, completed });
  t.deepEqual(out, [
    { ...base, steps: 0, subtasks: [sub('a', false)] },
    { ...base, steps: 1, subtasks: [sub('a', true)] },
    { ...base, steps: 1, subtasks: [sub('b', false)] },
    { ...base, steps: 2, subtasks: [sub('b', true)] },
    { ...base, steps: 2, subtasks: [] },
  ]);
  t.deepEqual(Object.keys(out[0]!), ['type', 'apiVersion', 'task', 'description', 'id', 'stepsCached', 'steps', 'stepsTotal', 'subtasks']);
  t.is(BOOTC_PROGRESS_API_VERSION, 'org.containers.bootc.progress/v1');
});

test('BootcProgress - a late join counts the hooks that had finished', (t) => {
  const out: ProgressStepsEvent[] = [];
  const p = new BootcProgress('7', (e) => out.push(e));
  p.event({ type: 'finished', state: 'prepared', error: '', message: '', transaction: props([['a', 'success'], ['b', 'skipped']]) });
  t.like(out[0], { steps: 2, stepsTotal: 2, subtasks: [] });
});

test('fdWriter - writes JSON lines; after a write error it goes quiet and reports once', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cli-fd-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'progress');
  const fh = await fsp.open(file, 'w');
  t.teardown(() => fh.close());
  const errors: Error[] = [];
  const ev: ProgressStepsEvent = {
    type: 'ProgressSteps', apiVersion: BOOTC_PROGRESS_API_VERSION, task: 't', description: 'd', id: 'i',
    stepsCached: 0, steps: 0, stepsTotal: 1, subtasks: [],
  };
  const w = fdWriter(fh.fd, (e) => errors.push(e));
  w(ev);
  w(ev);
  t.is(await fsp.readFile(file, 'utf8'), `${JSON.stringify(ev)}\n${JSON.stringify(ev)}\n`);
  t.deepEqual(errors, []);
  // A descriptor open for reading only: every write fails (EBADF).
  const ro = await fsp.open(file, 'r');
  t.teardown(() => ro.close());
  const bad = fdWriter(ro.fd, (e) => errors.push(e));
  bad(ev);
  bad(ev);
  t.is(errors.length, 1);
  t.regex(errors[0]!.message, /EBADF/);
});
