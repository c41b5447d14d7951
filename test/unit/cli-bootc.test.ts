/**
 * The bootc side, without bootc: reading `bootc status --format=json`
 * (documents shaped like bootc's own fixtures), finding the deployment
 * directory, and the progress events in bootc's ProgressSteps format.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BootcProgress, BOOTC_PROGRESS_VERSION, ProgressStream, fdLineWriter, stepsEvent } from '../../service/cli/bootc-progress.js';
import { deploymentDir, stagedEntry, stagedInfo } from '../../service/cli/bootc.js';
import { ClientError } from '../../service/client/errors.js';
import type { TransactionProperties } from '../../service/client/types.js';
import { FIXTURES_DIR } from '../helpers/tmp.js';

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

/** The lines are one valid bootc progress stream (test/fixtures/bootc/validate-progress.py, python3-jsonschema). */
function validStream(t: ExecutionContext, lines: Record<string, unknown>[]): void {
  const r = spawnSync('python3', [path.join(FIXTURES_DIR, 'bootc', 'validate-progress.py')],
    { input: lines.map((l) => JSON.stringify(l)).join('\n'), encoding: 'utf8' });
  t.is(r.status, 0, `${r.stdout}${r.stderr}`);
}

function hookRows(rows: [string, string, string?][]): TransactionProperties {
  const tx = props([]);
  tx.hooks = rows.map(([name, result, status]) => ({ name, result: result as 'success', percent: 0, status: status ?? '' }));
  return tx;
}

const sub = (name: string, bytes: number, bytesTotal: number) =>
  ({ subtask: 'image', description: name, id: name, bytesCached: 0, bytes, bytesTotal });

test('BootcProgress - a hook\'s bytes-form STATUS becomes ProgressBytes (task pulling, one subtask per image); the final one is complete', (t) => {
  const c = collect();
  const f = fakeClock();
  const p = new BootcProgress(new ProgressStream(c.write, f.clock));
  const progress = (status: string) => { p.event({ type: 'hook-progress', hook: 'bound-images', percent: 10, status }); f.advance(1000); };
  p.event({ type: 'state', transaction: hookRows([['bound-images', 'running', 'Reading /usr/lib/bound-images.d']]) });
  f.advance(1000);
  progress('pulling app:2.0 120/300 MB, pulling db:16 512/2048 kB (2/5 images ready)');
  progress('Pulling bound image 4/5: cache:1');
  progress('pulling db:16 1024/2048 kB, pulling cache:1 5 MB (3/5 images ready)');
  progress('pulling db:16 garbage');
  progress('pulling cache:1 9/20 MB (4/5 images ready)');
  p.event({ type: 'hook-finished', hook: 'bound-images', result: 'success', message: '' });
  p.event({ type: 'finished', state: 'prepared', error: '', message: '', transaction: hookRows([['bound-images', 'success', '5 bound images ready']]) });
  validStream(t, c.lines);
  const bytes = c.lines.filter((l) => l['type'] === 'ProgressBytes');
  const base = { type: 'ProgressBytes', task: 'pulling', description: 'Pre-stage hook bound-images', id: 'bound-images', bytesCached: 0, stepsCached: 0 };
  t.deepEqual(bytes, [
    { ...base, bytes: 120_512_000, bytesTotal: 302_048_000, steps: 2, stepsTotal: 5,
      subtasks: [sub('app:2.0', 120_000_000, 300_000_000), sub('db:16', 512_000, 2_048_000)] },
    // app:2.0 is no longer listed: finished. cache:1's total is unknown, so the sum's is too (0).
    { ...base, bytes: 306_024_000, bytesTotal: 0, steps: 3, stepsTotal: 5,
      subtasks: [sub('app:2.0', 300_000_000, 300_000_000), sub('db:16', 1_024_000, 2_048_000), sub('cache:1', 5_000_000, 0)] },
    { ...base, bytes: 311_048_000, bytesTotal: 322_048_000, steps: 4, stepsTotal: 5,
      subtasks: [sub('app:2.0', 300_000_000, 300_000_000), sub('db:16', 2_048_000, 2_048_000), sub('cache:1', 9_000_000, 20_000_000)] },
    // The hook succeeded: every image complete.
    { ...base, bytes: 322_048_000, bytesTotal: 322_048_000, steps: 5, stepsTotal: 5,
      subtasks: [sub('app:2.0', 300_000_000, 300_000_000), sub('db:16', 2_048_000, 2_048_000), sub('cache:1', 20_000_000, 20_000_000)] },
  ]);
  t.deepEqual(Object.keys(bytes[0]!), ['type', 'task', 'description', 'id', 'bytesCached', 'bytes', 'bytesTotal', 'stepsCached', 'steps', 'stepsTotal', 'subtasks']);
  t.deepEqual(c.lines.map((l) => l['type']), ['Start', 'ProgressSteps', 'ProgressBytes', 'ProgressBytes', 'ProgressBytes', 'ProgressBytes', 'ProgressSteps']);
  t.like(c.lines.at(-1), { type: 'ProgressSteps', steps: 1, stepsTotal: 1 });
});

test('BootcProgress - bytes also come from the Hooks property; a failed hook\'s final ProgressBytes keeps what it reported', (t) => {
  const c = collect();
  const f = fakeClock();
  const p = new BootcProgress(new ProgressStream(c.write, f.clock));
  p.event({ type: 'state', transaction: hookRows([['pull', 'running', 'pulling a 1/4 MB (0/2 images ready)'], ['next', 'pending']]) });
  f.advance(1000);
  p.event({ type: 'state', transaction: hookRows([['pull', 'running', 'pulling a 3/4 MB, pulling b 1/8 MB (0/2 images ready)'], ['next', 'pending']]) });
  f.advance(1000);
  // The phase ends with the failure: no hook-finished event seen, the state says it.
  p.event({ type: 'finished', state: 'failed', error: 'E', message: 'm', transaction: hookRows([['pull', 'failed', 'pulling a 3/4 MB, pulling b 1/8 MB (0/2 images ready)'], ['next', 'pending']]) });
  validStream(t, c.lines);
  const bytes = c.lines.filter((l) => l['type'] === 'ProgressBytes');
  t.is(bytes.length, 3);
  t.like(bytes[0], { id: 'pull', bytes: 1_000_000, bytesTotal: 4_000_000, steps: 0, stepsTotal: 2 });
  t.deepEqual(bytes[2], { ...bytes[1], subtasks: [sub('a', 3_000_000, 4_000_000), sub('b', 1_000_000, 8_000_000)] },
    'final = last reported: nothing is claimed complete');
  t.like(bytes[2], { bytes: 4_000_000, bytesTotal: 12_000_000, steps: 0 });
  t.is(c.lines.at(-1)!['type'], 'ProgressSteps');
  // Nothing else about that hook afterwards.
  p.event({ type: 'hook-progress', hook: 'pull', percent: 1, status: 'pulling a 4/4 MB' });
  f.advance(1000);
  t.is(c.lines.filter((l) => l['type'] === 'ProgressBytes').length, 3);
});

test('ProgressStream - ProgressBytes and ProgressSteps share the 5 a second: counted per second over a 3 s pull of 3000 statuses; neither displaces the other; finals at once', (t) => {
  const c = collect();
  const f = fakeClock();
  const at: { t: number; line: Record<string, unknown>; required: boolean }[] = [];
  let inRequired = false;
  const stream = new ProgressStream((l) => { c.write(l); at.push({ t: f.clock.now(), line: c.lines.at(-1)!, required: inRequired }); }, f.clock);
  const required = stream.required.bind(stream);
  stream.required = (ev, key) => { inRequired = true; required(ev, key); inRequired = false; };
  const p = new BootcProgress(stream);
  const t0 = f.clock.now();
  const status = (ms: number) => `pulling app:2.0 ${Math.floor(ms / 10)}/300 MB (0/1 images ready)`;
  p.event({ type: 'state', transaction: hookRows([['pull', 'running'], ['after', 'pending']]) });
  for (let ms = 1; ms <= 3000; ms++) {
    f.advance(1);
    p.event({ type: 'hook-progress', hook: 'pull', percent: 0, status: status(ms) });
    // The daemon's property changes now and then, carrying the same status.
    if (ms % 50 === 0) p.event({ type: 'state', transaction: hookRows([['pull', 'running', status(ms)], ['after', 'pending']]) });
  }
  const finishedAt = f.clock.now();
  p.event({ type: 'hook-finished', hook: 'pull', result: 'success', message: '' });
  // The next hook starts and reports bytes at once; one more status of the first arrives late.
  p.event({ type: 'state', transaction: hookRows([['pull', 'success', status(3000)], ['after', 'running']]) });
  f.advance(5);
  p.event({ type: 'hook-progress', hook: 'after', percent: 0, status: 'pulling db:16 1/2 MB' });
  p.event({ type: 'hook-progress', hook: 'pull', percent: 0, status: status(2999) });
  f.advance(1000);
  p.event({ type: 'finished', state: 'prepared', error: '', message: '', transaction: hookRows([['pull', 'success'], ['after', 'success']]) });
  validStream(t, c.lines);

  const events = at.filter((e) => e.line['type'] !== 'Start');
  const lossy = events.filter((e) => !e.required);
  // Every 1 s window, sliding over each lossy write: at most REFRESH_HZ lossy events.
  for (const e of lossy) {
    const n = lossy.filter((x) => x.t >= e.t && x.t < e.t + 1000).length;
    t.true(n <= 5, `${n} lossy events in the second from ${e.t - t0} ms`);
  }
  // And they were written: 3 s of pulling gives 5 a second, not fewer.
  const pulling = lossy.filter((e) => e.line['type'] === 'ProgressBytes' && e.line['id'] === 'pull');
  t.true(pulling.length >= 14 && pulling.length <= 16, `${pulling.length} ProgressBytes in 3 s`);
  const seen = pulling.map((e) => e.line['bytes'] as number);
  t.deepEqual(seen, [...seen].sort((a, b) => a - b), 'bytes never go back');
  // The final ProgressBytes: written at once when the hook finished, complete.
  const finals = events.filter((e) => e.required);
  // Its own at the hook's end, the other's (last reported) at the phase's end, then the phase's ProgressSteps.
  t.is(finals.length, 3);
  t.is(finals[0]!.t, finishedAt);
  t.like(finals[0]!.line, { type: 'ProgressBytes', bytes: 300_000_000, bytesTotal: 300_000_000, steps: 1, stepsTotal: 1 });
  // The ProgressSteps of the hook that started next was not displaced by that hook's bytes, written 5 ms later.
  const afterStarted = events.find((e) => e.line['type'] === 'ProgressSteps' && JSON.stringify(e.line['subtasks']).includes('"id":"after","completed":false'));
  t.truthy(afterStarted, 'the step "after" running was written');
  t.is(afterStarted!.t - finishedAt, 200);
  const afterBytes = events.find((e) => e.line['type'] === 'ProgressBytes' && e.line['id'] === 'after');
  t.is(afterBytes!.t - finishedAt, 400, 'then, an interval later, its bytes');
  t.like(afterBytes!.line, { bytes: 1_000_000, bytesTotal: 2_000_000 });
  t.is(events.filter((e) => e.line['id'] === 'pull' && e.t > finishedAt).length, 0, 'nothing about the finished hook after its final event');
  t.like(events.at(-1)!.line, { type: 'ProgressSteps', steps: 2, stepsTotal: 2 });
  t.true(events.at(-1)!.required);
});

test('ProgressStream - pending events of different kinds are written one per interval, the longest waiting first', (t) => {
  const c = collect();
  const f = fakeClock();
  const s = new ProgressStream(c.write, f.clock);
  s.lossy({ n: 1 }, 'a');
  f.advance(10);
  s.lossy({ n: 2 }, 'a');
  s.lossy({ n: 3 }, 'b');
  s.lossy({ n: 4 }, 'a');
  t.deepEqual(c.lines.map((l) => l['n']), [undefined, 1]);
  f.advance(190);
  t.deepEqual(c.lines.map((l) => l['n']), [undefined, 1, 4], 'a waited longest: its latest');
  f.advance(199);
  t.is(c.lines.length, 3);
  f.advance(1);
  t.deepEqual(c.lines.map((l) => l['n']), [undefined, 1, 4, 3]);
  // A required event replaces its own kind's pending one and starts a new interval.
  s.lossy({ n: 5 }, 'a');
  s.lossy({ n: 6 }, 'b');
  f.advance(100);
  s.required({ n: 7 }, 'a');
  t.deepEqual(c.lines.map((l) => l['n']).slice(4), [7]);
  f.advance(199);
  t.is(c.lines.length, 5);
  f.advance(1);
  t.deepEqual(c.lines.map((l) => l['n']).slice(4), [7, 6]);
  s.lossy({ n: 8 }, 'b');
  s.flush();
  t.deepEqual(c.lines.map((l) => l['n']).slice(4), [7, 6, 8], 'flush writes what is pending');
  f.advance(1000);
  t.is(c.lines.length, 7);
});
