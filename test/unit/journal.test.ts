import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { JournalStore, parseJournal, type BeginRecord } from '../../service/engine/journal.js';
import { replayJournal } from '../../service/engine/recovery.js';
import type { HookDefinition } from '../../service/model/types.js';

const def = (over: Partial<HookDefinition> = {}): HookDefinition => ({
  description: '', prepare: ['/bin/true'], commit: ['/bin/true'], abort: ['/bin/true'],
  after: [], before: [], environment: [], required: true, timeoutSec: 300, ...over,
});

const begin = (id = 'T1', hooks = ['a', 'b', 'c']): BeginRecord => ({
  t: 'begin', v: 1, id, deployment: '/sysroot/ostree/deploy/os/deploy/x.0', deploymentKey: 'os-x.0',
  createdUsec: 1, fingerprint: 'f', dryRun: false,
  hooks: hooks.map((name) => ({ name, definition: def(), source: `/etc/${name}.hook`, digest: 'd', refused: null })),
});

async function tmpStore(t: import('ava').ExecutionContext): Promise<JournalStore> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'journal-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const s = new JournalStore(path.join(dir, 'journal'));
  await s.init();
  return s;
}

test('journal - records come back in order after close', async (t) => {
  const store = await tmpStore(t);
  const j = await store.create(begin());
  await j.append({ t: 'phase', phase: 'prepare', usec: 2, timeoutSec: 0 }, false);
  await j.append({ t: 'step', phase: 'prepare', hook: 'a', rollback: false, usec: 3 }, true);
  await j.close();
  const read = await store.read('T1');
  t.deepEqual(read.records.map((r) => r.t), ['begin', 'phase', 'step']);
  t.false(read.torn);
  t.is(read.corruptLine, null);
});

test('journal - create refuses an id that already exists', async (t) => {
  const store = await tmpStore(t);
  const j = await store.create(begin());
  await j.close();
  await t.throwsAsync(() => store.create(begin()), { code: 'EEXIST' });
});

test('journal - a torn last record is ignored and cut before new appends', async (t) => {
  const store = await tmpStore(t);
  const j = await store.create(begin());
  await j.append({ t: 'step', phase: 'prepare', hook: 'a', rollback: false, usec: 3 }, true);
  await j.close();
  await fsp.appendFile(path.join(store.dir, 'T1.jnl'), '{"t":"done","phase":"prep');
  const torn = await store.read('T1');
  t.true(torn.torn);
  t.is(torn.records.length, 2);
  const j2 = await store.reopen('T1');
  await j2.append({ t: 'state', state: 'failed', error: 'Internal', message: 'x', usec: 4 }, true);
  await j2.close();
  const again = await store.read('T1');
  t.false(again.torn);
  t.is(again.corruptLine, null);
  t.deepEqual(again.records.map((r) => r.t), ['begin', 'step', 'state']);
});

test('journal - a damaged middle line is reported with its line number', (t) => {
  const text = JSON.stringify(begin()) + '\n' + 'garbage\n' + JSON.stringify({ t: 'state', state: 'preparing', error: '', message: '', usec: 1 }) + '\n';
  const r = parseJournal('T1', text);
  t.is(r.corruptLine, 2);
  t.is(r.records.length, 2);
});

test('replay - an interrupted prepare lists every started hook for rollback', (t) => {
  const recs = [
    begin(),
    { t: 'phase', phase: 'prepare', usec: 2, timeoutSec: 0 },
    { t: 'state', state: 'preparing', error: '', message: '', usec: 2 },
    { t: 'step', phase: 'prepare', hook: 'a', rollback: false, usec: 3 },
    { t: 'pid', phase: 'prepare', hook: 'a', pid: 100, start: '5' },
    { t: 'done', phase: 'prepare', hook: 'a', rollback: false, result: 'success', message: '', usec: 4 },
    { t: 'step', phase: 'prepare', hook: 'b', rollback: false, usec: 5 },
    { t: 'pid', phase: 'prepare', hook: 'b', pid: 101, start: '6' },
  ];
  const r = replayJournal(parseJournal('T1', recs.map((x) => JSON.stringify(x)).join('\n') + '\n'));
  if (!r.ok) return t.fail(r.reason);
  t.true(r.value.interrupted);
  t.is(r.value.state, 'preparing');
  t.deepEqual([...r.value.preparedStarted], ['a', 'b']);
  t.deepEqual(r.value.pids, [{ pid: 101, start: '6' }]);
  t.deepEqual(r.value.hooks.map((h) => h.result), ['success', 'running', 'pending']);
});

test('replay - a finished transaction is not interrupted', (t) => {
  const recs = [
    begin(),
    { t: 'phase', phase: 'prepare', usec: 2, timeoutSec: 0 },
    { t: 'state', state: 'preparing', error: '', message: '', usec: 2 },
    { t: 'state', state: 'prepared', error: '', message: 'ok', usec: 9 },
  ];
  const r = replayJournal(parseJournal('T1', recs.map((x) => JSON.stringify(x)).join('\n') + '\n'));
  if (!r.ok) return t.fail(r.reason);
  t.false(r.value.interrupted);
  t.is(r.value.finishedUsec, 9);
});

test('replay - damage during prepare assumes every hook started', (t) => {
  const text = [JSON.stringify(begin()), JSON.stringify({ t: 'phase', phase: 'prepare', usec: 2, timeoutSec: 0 }),
    '{broken', JSON.stringify({ t: 'state', state: 'preparing', error: '', message: '', usec: 2 })].join('\n') + '\n';
  const r = replayJournal(parseJournal('T1', text));
  if (!r.ok) return t.fail(r.reason);
  t.truthy(r.value.damage);
  t.deepEqual([...r.value.preparedStarted].sort(), ['a', 'b', 'c']);
});

test('replay - commit phase lists hooks in plan order, abort in reverse', (t) => {
  const mk = (phase: string) => replayJournal(parseJournal('T1', [begin(), { t: 'phase', phase, usec: 2, timeoutSec: 0 }]
    .map((x) => JSON.stringify(x)).join('\n') + '\n'));
  const c = mk('commit');
  const a = mk('abort');
  if (!c.ok || !a.ok) return t.fail();
  t.deepEqual(c.value.hooks.map((h) => h.name), ['a', 'b', 'c']);
  t.deepEqual(a.value.hooks.map((h) => h.name), ['c', 'b', 'a']);
});

test('replay - refuses a journal of another version and one without begin', (t) => {
  const v2 = replayJournal(parseJournal('T1', JSON.stringify({ ...begin(), v: 2 }) + '\n'));
  t.false(v2.ok);
  const none = replayJournal(parseJournal('T1', JSON.stringify({ t: 'state', state: 'prepared' }) + '\n'));
  t.false(none.ok);
});
