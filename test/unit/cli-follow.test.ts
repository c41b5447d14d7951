/**
 * followTransaction's ordering rules, driven by a scripted client: which
 * signals count as already reflected in the snapshot, when each goal is
 * reached, and how a vanished daemon or a lost connection end the follow.
 * (The same code runs against the real daemon in test/integration/cli-*.)
 */
import test from 'ava';
import { DBusError, Variant } from 'dbus-next';
import type { ReceivedSignal } from '../../service/client/connection.js';
import { followTransaction, type FollowGoal } from '../../service/client/follow.js';
import type { PreStageClient } from '../../service/client/pre-stage-client.js';
import type { ServiceWatch, WatchItem } from '../../service/client/service-watch.js';
import type { FollowEvent, TransactionProperties } from '../../service/client/types.js';

const PATH = '/org/containers/bootc/PreStage/Transaction/7';
const MANAGER = '/org/containers/bootc/PreStage';
const IFACE = 'org.containers.bootc.PreStage.Transaction';
const OWNER = ':1.5';

function tx(over: Partial<TransactionProperties> = {}): TransactionProperties {
  return {
    path: PATH, id: '7', deployment: '/d', phase: 'prepare', state: 'preparing', progress: 0, currentHook: '',
    hooks: [], error: '', errorMessage: '', startedUsec: 1, finishedUsec: 0, ...over,
  };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}

/** A scripted client and watch; `seq` numbers every delivery like connection.ts. */
class Script {
  seq = 0;
  backlog: WatchItem[] = [];
  listener: ((i: WatchItem) => void) | null = null;
  closed = false;
  lost: ((e: Error) => void) | null = null;
  snapshot = deferred<TransactionProperties>();
  snapshotSeq = 0;
  rereads: (TransactionProperties | Error | Promise<TransactionProperties>)[] = [];

  readonly watch = {
    consume: (l: (i: WatchItem) => void) => {
      this.listener = l;
      const b = this.backlog;
      this.backlog = [];
      return { backlog: b, stop: () => { this.listener = null; } };
    },
    close: async () => { this.closed = true; },
  } as unknown as ServiceWatch;

  readonly client = {
    watch: async () => this.watch,
    transactionPropertiesAt: async () => {
      const t = await this.snapshot.promise;
      return { tx: t, reply: { seq: this.snapshotSeq, sender: OWNER, body: [] } };
    },
    transactionProperties: async () => {
      const next = this.rereads.shift();
      if (!next || next instanceof Error) throw next ?? new Error('gone');
      return await next;
    },
    conn: { onLost: (cb: (e: Error) => void) => { this.lost = cb; return () => { this.lost = null; }; } },
  } as unknown as PreStageClient;

  private deliver(item: WatchItem): void {
    if (this.listener) this.listener(item);
    else this.backlog.push(item);
  }

  signal(path: string, iface: string, member: string, body: unknown[]): void {
    const s: ReceivedSignal = { seq: ++this.seq, sender: OWNER, path, interface: iface, member, signature: '', body };
    this.deliver({ kind: 'signal', signal: s });
  }

  changed(props: Record<string, [string, unknown]>): void {
    const dict: Record<string, Variant> = {};
    for (const [k, [sig, v]] of Object.entries(props)) dict[k] = new Variant(sig, v);
    this.signal(PATH, 'org.freedesktop.DBus.Properties', 'PropertiesChanged', [IFACE, dict, []]);
  }

  owner(oldOwner: string, newOwner: string): void {
    this.deliver({ kind: 'owner', seq: ++this.seq, oldOwner, newOwner });
  }

  /** The GetAll reply arrives now (after everything delivered so far). */
  answer(t: TransactionProperties): void {
    this.snapshotSeq = ++this.seq;
    this.snapshot.resolve(t);
  }
}

async function collect(follow: AsyncIterable<FollowEvent>): Promise<FollowEvent[]> {
  const out: FollowEvent[] = [];
  for await (const e of follow) out.push(e);
  return out;
}

const tick = () => new Promise((r) => setImmediate(r));

function start(s: Script, goal: FollowGoal, shareWatch = false) {
  return followTransaction(s.client, PATH, { goal, watch: s.watch, ...(shareWatch ? { shareWatch } : {}) });
}

test('signals before the snapshot: their events pass, their property changes do not move the state back', async (t) => {
  const s = new Script();
  s.changed({ Progress: ['u', 10] });
  s.signal(PATH, IFACE, 'Message', ['a', 'early line']);
  const f = start(s, { kind: 'rest' });
  const events = collect(f);
  await tick();
  s.changed({ Progress: ['u', 20] }); // arrives while GetAll is in flight, before its reply
  s.answer(tx({ progress: 40 }));
  await tick();
  s.changed({ Progress: ['u', 60] });
  s.changed({ State: ['s', 'prepared'], ErrorMessage: ['s', '1 hook(s) prepared'], Progress: ['u', 100] });
  const evs = await events;
  t.deepEqual(evs.filter((e) => e.type === 'state').map((e) => (e as { transaction: TransactionProperties }).transaction.progress),
    [40, 60, 100]);
  t.like(evs.find((e) => e.type === 'message'), { hook: 'a', line: 'early line' });
  t.like(evs[evs.length - 1], { type: 'finished', state: 'prepared', message: '1 hook(s) prepared' });
  t.like(await f.result, { state: 'prepared', progress: 100 });
  t.true(s.closed, 'the watch is closed at the end');
});

test('a transaction already at rest ends the follow at once (goal rest)', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  s.answer(tx({ state: 'prepared', errorMessage: 'nothing to do' }));
  const evs = await collect(f);
  t.deepEqual(evs.map((e) => e.type), ['state', 'finished']);
  t.like(evs[1], { state: 'prepared', message: 'nothing to do' });
});

test('a queued commit: resting in prepared is not the end; the end is after the phase ran', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'phase', done: 'committed' });
  const events = collect(f);
  s.answer(tx({ state: 'prepared' }));
  await tick();
  let settled = false;
  void f.result.then(() => { settled = true; });
  await tick();
  t.false(settled, 'still waiting for the commit to run');
  s.signal(MANAGER, 'org.containers.bootc.PreStage', 'TransactionStarted', [PATH, '/d', 'commit']);
  s.changed({ Phase: ['s', 'commit'], State: ['s', 'committing'] });
  s.changed({ State: ['s', 'committed'] });
  const evs = await events;
  t.like(evs[evs.length - 1], { type: 'finished', state: 'committed' });
  t.true(evs.some((e) => e.type === 'phase-started'));
});

test('already committed when asked to commit: done at once', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'phase', done: 'committed' });
  s.answer(tx({ phase: 'commit', state: 'committed' }));
  t.like(await f.result, { state: 'committed' });
});

test('a retried commit: resting in failed waits for the phase to start, then the Finished signal ends it with a re-read', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'phase', done: 'committed' });
  const events = collect(f);
  s.answer(tx({ phase: 'commit', state: 'failed', error: 'x' }));
  await tick();
  s.signal(PATH, IFACE, 'HookStarted', ['a', 0, 1]);
  s.rereads.push(tx({ phase: 'commit', state: 'committed', progress: 100, errorMessage: 'done' }));
  s.signal(PATH, IFACE, 'Finished', ['committed', '', 'done']);
  const evs = await events;
  const last = evs[evs.length - 1] as Extract<FollowEvent, { type: 'finished' }>;
  t.like(last, { type: 'finished', state: 'committed', message: 'done' });
  t.is(last.transaction.progress, 100, 'the re-read properties, not the coalesced ones');
});

test('the Finished signal when the re-read fails: what the signal said is final', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  s.answer(tx());
  await tick();
  s.rereads.push(new Error('pruned'));
  s.signal(PATH, IFACE, 'Finished', ['failed', 'org.containers.bootc.PreStage.Error.HookFailed', 'required hook a failed']);
  t.like(await f.result, { state: 'failed', error: 'org.containers.bootc.PreStage.Error.HookFailed', errorMessage: 'required hook a failed' });
});

test('the daemon leaving the bus ends the follow with a clear unreachable error', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  const events = collect(f).catch((e: unknown) => e);
  s.owner(':1.2', ''); // an older daemon that left before ours answered: not ours
  s.answer(tx({ state: 'preparing' }));
  await tick();
  s.owner(':1.9', ':1.10'); // someone else's name change (not our owner)
  await tick();
  s.owner(OWNER, '');
  const err = await t.throwsAsync(f.result);
  t.like(err, { kind: 'unreachable' });
  t.regex(err!.message, /^bootc-prestaged left the bus during the prepare phase of transaction 7 \(preparing\)/);
  t.is(await events, err, 'the iterator throws the same error');
  t.true(s.closed);
});

test('a lost bus connection ends the follow as unreachable', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  s.answer(tx());
  await tick();
  // What connection.ts reports when the socket goes away.
  s.lost!(new DBusError('org.freedesktop.DBus.Error.Disconnected', 'lost the bus connection: the bus closed the connection'));
  const err = await t.throwsAsync(f.result);
  t.like(err, { kind: 'unreachable' });
  t.regex(err!.message, /lost the bus connection/);
});

test('a shared watch is neither closed nor drained by the follow', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' }, true);
  s.answer(tx({ state: 'aborted' }));
  await f.result;
  t.false(s.closed);
});

test('signals of other transactions are ignored', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  const events = collect(f);
  s.answer(tx());
  await tick();
  s.signal(`${MANAGER}/Transaction/8`, IFACE, 'Finished', ['prepared', '', '']);
  s.signal(MANAGER, 'org.containers.bootc.PreStage', 'TransactionFinished', [`${MANAGER}/Transaction/8`, 'prepared', '']);
  s.signal(`${MANAGER}/Transaction/8`, IFACE, 'Message', ['x', 'not ours']);
  await tick();
  s.changed({ State: ['s', 'cancelled'] });
  const evs = await events;
  t.false(evs.some((e) => e.type === 'message'));
  t.like(evs[evs.length - 1], { type: 'finished', state: 'cancelled' });
});

test('rest reached through property changes: the Finished signal that follows gives the result message', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  s.answer(tx());
  await tick();
  const reread = deferred<TransactionProperties>();
  s.rereads.push(reread.promise);
  s.changed({ State: ['s', 'prepared'], Progress: ['u', 100] });
  // Sent by the daemon right after the last property change, before the re-read's reply.
  s.signal(PATH, IFACE, 'Finished', ['prepared', '', '2 hook(s) prepared']);
  s.signal(MANAGER, 'org.containers.bootc.PreStage', 'TransactionFinished', [PATH, 'prepared', '']);
  reread.resolve(tx({ state: 'prepared', progress: 100 }));
  const evs = await collect(f);
  t.like(evs[evs.length - 1], { type: 'finished', state: 'prepared', message: '2 hook(s) prepared' });
  t.is(evs.filter((e) => e.type === 'finished').length, 1);
});

test('a phase that finished before the snapshot: the Finished signal sent before it still gives the result message', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  await tick();
  // A dry run: over before GetAll is answered.
  s.signal(MANAGER, 'org.containers.bootc.PreStage', 'TransactionStarted', [PATH, '/d', 'prepare']);
  s.changed({ State: ['s', 'aborted'], Progress: ['u', 100] });
  s.signal(PATH, IFACE, 'Finished', ['aborted', '', 'dry run: 1 hook(s) planned, nothing was run']);
  s.signal(MANAGER, 'org.containers.bootc.PreStage', 'TransactionFinished', [PATH, 'aborted', '']);
  s.answer(tx({ state: 'aborted', progress: 100 }));
  const evs = await collect(f);
  t.like(evs[evs.length - 1], { type: 'finished', state: 'aborted', message: 'dry run: 1 hook(s) planned, nothing was run' });
  t.is(evs.filter((e) => e.type === 'finished').length, 1);
});

test('a Finished signal before the snapshot for another state (an earlier phase) gives no message', async (t) => {
  const s = new Script();
  const f = start(s, { kind: 'rest' });
  await tick();
  s.signal(PATH, IFACE, 'Finished', ['prepared', '', '1 hook(s) prepared']);
  s.answer(tx({ state: 'failed', phase: 'commit', error: 'org.containers.bootc.PreStage.Error.HookFailed', errorMessage: 'commit failed' }));
  const evs = await collect(f);
  t.like(evs[evs.length - 1], { type: 'finished', state: 'failed', message: 'commit failed' });
});
