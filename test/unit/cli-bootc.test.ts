/**
 * The bootc side, without bootc: reading `bootc status --format=json`
 * (documents shaped like bootc's own fixtures), finding the deployment
 * directory, and the progress events in bootc's ProgressSteps format.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BootcProgress, BOOTC_PROGRESS_VERSION, ProgressStream, fdLineWriter, stepsEvent } from '../../service/cli/bootc-progress.js';
import { deploymentDir, stagedEntry, stagedInfo } from '../../service/cli/bootc.js';
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

/** A clock whose time moves only when told, with the timers it would fire. */
function fakeClock() {
  let now = 1000;
  const timers: { at: number; fn: () => void; id: number }[] = [];
  let next = 1;
  return {
    clock: {
      now: () => now,
      setTimeout: (fn: () => void, ms: number) => { const id = next++; timers.push({ at: now + ms, fn, id }); return id; },
      clearTimeout: (id: unknown) => { const i = timers.findIndex((x) => x.id === id); if (i >= 0) timers.splice(i, 1); },
    },
    advance(ms: number) {
      const until = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at);
        const t = timers[0];
        if (!t || t.at > until) break;
        timers.shift();
        now = t.at;
        t.fn();
      }
      now = until;
    },
  };
}

function collect(): { lines: Record<string, unknown>[]; write: (l: string) => void } {
  const lines: Record<string, unknown>[] = [];
  return { lines, write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>) };
}

test('BootcProgress - Start once, then ProgressSteps snapshots with every started hook as a subtask, completed false -> true', (t) => {
  const c = collect();
  const f = fakeClock();
  const stream = new ProgressStream(c.write, f.clock);
  const p = new BootcProgress(stream);
  p.event({ type: 'state', transaction: props([['a', 'running'], ['b', 'pending']]) });
  f.advance(1000);
  p.event({ type: 'state', transaction: props([['a', 'success'], ['b', 'running']]) });
  f.advance(1000);
  p.event({ type: 'finished', state: 'failed', error: 'E', message: 'm', transaction: props([['a', 'success'], ['b', 'failed']]) });
  const base = { type: 'ProgressSteps', task: 'pre-stage', description: 'Pre-stage prepare', id: '7', stepsCached: 0, stepsTotal: 2 };
  const sub = (id: string, completed: boolean) => ({ subtask: 'hook', description: id, id, completed });
  t.deepEqual(c.lines, [
    { type: 'Start', version: '0.1.0' },
    { ...base, steps: 0, subtasks: [sub('a', false)] },
    { ...base, steps: 1, subtasks: [sub('a', true), sub('b', false)] },
    { ...base, steps: 2, subtasks: [sub('a', true), sub('b', true)] },
  ]);
  t.deepEqual(Object.keys(c.lines[1]!), ['type', 'task', 'description', 'id', 'stepsCached', 'steps', 'stepsTotal', 'subtasks']);
  t.is(BOOTC_PROGRESS_VERSION, '0.1.0');
});

test('ProgressStream - at most REFRESH_HZ lossy events a second; the latest is written when its interval ends; the final one at once', (t) => {
  const c = collect();
  const f = fakeClock();
  const stream = new ProgressStream(c.write, f.clock);
  const p = new BootcProgress(stream);
  // 200 hooks finishing 1 ms apart: 200 state changes in 0.2 s.
  const names = Array.from({ length: 200 }, (_, i) => `h${String(i).padStart(3, '0')}`);
  for (let i = 0; i < names.length; i++) {
    p.event({ type: 'state', transaction: props(names.map((n, j) => [n, j < i ? 'success' : j === i ? 'running' : 'pending'])) });
    f.advance(1);
  }
  const beforeFinal = c.lines.length;
  // Start, the first event, then at most one per 200 ms interval.
  t.true(beforeFinal <= 3, `${beforeFinal} lines for 200 changes in 0.2 s`);
  p.event({ type: 'finished', state: 'prepared', error: '', message: '', transaction: props(names.map((n) => [n, 'success'])) });
  t.is(c.lines.length, beforeFinal + 1, 'the final state is written at once');
  t.like(c.lines.at(-1), { steps: 200, stepsTotal: 200 });
  f.advance(5000);
  t.is(c.lines.length, beforeFinal + 1, 'nothing pending is written after the final state');
  // A change followed by quiet: written when the interval ends.
  const c2 = collect();
  const f2 = fakeClock();
  const s2 = new ProgressStream(c2.write, f2.clock);
  const p2 = new BootcProgress(s2);
  p2.event({ type: 'state', transaction: props([['a', 'running']]) });
  f2.advance(10);
  p2.event({ type: 'state', transaction: props([['a', 'success']]) });
  t.is(c2.lines.length, 2);
  f2.advance(190);
  t.is(c2.lines.length, 3);
  t.like(c2.lines[2], { steps: 1 });
});

test('ProgressStream - relayed bootc lines: its Start is dropped (one Start in the stream), other events pass unchanged, junk is dropped', (t) => {
  const c = collect();
  const stream = new ProgressStream(c.write);
  stream.relay('{"type":"Start","version":"0.1.0"}');
  stream.relay('{"type":"ProgressBytes","task":"pulling","description":"d","id":"i","bytesCached":0,"bytes":1,"bytesTotal":2,"stepsCached":0,"steps":0,"stepsTotal":1,"subtasks":[]}');
  stream.relay('not json');
  stream.relay('[1]');
  stream.relay('{"type":"Start","version":"0.1.0"}');
  stream.required(stepsEvent(props([['a', 'success']])));
  t.deepEqual(c.lines.map((l) => l['type']), ['Start', 'ProgressBytes', 'ProgressSteps']);
  t.is(c.lines[1]!['bytes'], 1);
});

test('fdLineWriter - writes lines; after a write error it goes quiet and reports once', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cli-fd-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'progress');
  const fh = await fsp.open(file, 'w');
  t.teardown(() => fh.close());
  const errors: Error[] = [];
  const w = fdLineWriter(fh.fd, (e) => errors.push(e));
  w('{"a":1}');
  w('{"a":2}');
  t.is(await fsp.readFile(file, 'utf8'), '{"a":1}\n{"a":2}\n');
  t.deepEqual(errors, []);
  // A descriptor open for reading only: every write fails (EBADF).
  const ro = await fsp.open(file, 'r');
  t.teardown(() => ro.close());
  const bad = fdLineWriter(ro.fd, (e) => errors.push(e));
  bad('x');
  bad('y');
  t.is(errors.length, 1);
  t.regex(errors[0]!.message, /EBADF/);
});

test('stagedInfo - downloadOnly is read; a composefs stage is refused by name; no stage is null', (t) => {
  t.deepEqual(stagedInfo(host({ ostree: { stateroot: 'default', checksum: C1, deploySerial: 1 }, downloadOnly: true })),
    { entry: { stateroot: 'default', checksum: C1, deploySerial: 1 }, downloadOnly: true });
  t.is(stagedInfo(host({ ostree: { stateroot: 'default', checksum: C1, deploySerial: 1 }, downloadOnly: false }))!.downloadOnly, false);
  t.is(stagedInfo(host({ ostree: { stateroot: 'default', checksum: C1, deploySerial: 1 } }))!.downloadOnly, undefined);
  t.is(stagedInfo(host(null)), null);
  const e = t.throws(() => stagedInfo(host({ ostree: null, composefs: { verity: C1, bootType: 'bls' }, downloadOnly: false })),
    { instanceOf: ClientError });
  t.regex(e!.message, /composefs backend.*not.*yet|supports only the ostree backend yet/);
  t.throws(() => stagedInfo(host({ ostree: { stateroot: 'default', checksum: C1, deploySerial: 1 }, downloadOnly: 'yes' })),
    { message: /downloadOnly .* not a boolean/ });
});
