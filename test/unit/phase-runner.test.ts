/**
 * The phase runner (service/engine/phase-runner.ts) alone, without the
 * engine's queue: real transactions, a real journal and state directory in
 * a temporary directory, and real hook programs (/bin/sh scripts that
 * append their name to a file, so the order steps ran in is on disk).
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, mkdirSync, promises as fsp, statSync } from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_PATH } from '../../service/engine/engine.js';
import { JOURNAL_VERSION, JournalStore, nowUsec, type JournalHook } from '../../service/engine/journal.js';
import { PhaseRunner, type Job } from '../../service/engine/phase-runner.js';
import { StateDir } from '../../service/engine/state-dir.js';
import { Transaction } from '../../service/engine/transaction.js';
import { nullLogger } from '../../service/model/logger.js';
import type { TransactionEvent, TransactionSnapshot } from '../../service/model/types.js';
import { tmpDir } from '../helpers/tmp.js';

interface Setup {
  runner: PhaseRunner;
  stateDir: StateDir;
  store: JournalStore;
  /** Where the steps write what ran, one line each. */
  ranFile: string;
  ran(): Promise<string[]>;
  tx(hooks: JournalHook[]): Promise<Transaction>;
  phases: string[];
  finished: TransactionSnapshot[];
}

/**
 * Transaction ids unique on the machine: a step's leftover scan kills every
 * process carrying its transaction, hook and phase in its environment, so
 * two tests (here or in another process) sharing an id would kill each
 * other's steps.
 */
let txSerial = 0;

async function setup(t: ExecutionContext): Promise<Setup> {
  const root = await tmpDir(t, { prefix: 'phase-runner-' });
  const stateDir = new StateDir(path.join(root, 'state'));
  await stateDir.open();
  t.teardown(() => stateDir.release());
  const store = new JournalStore(stateDir.journalDir);
  await store.init();
  const txs: Transaction[] = [];
  const phases: string[] = [];
  const finished: TransactionSnapshot[] = [];
  const runner = new PhaseRunner({
    log: nullLogger, stateDir, store, stepPath: DEFAULT_PATH, killGraceMs: 500,
    // The owner of /bin/sh, so the programs are trusted whoever runs the tests.
    trustedUid: statSync('/bin/sh').uid,
    // Host-root steps only here (new-root steps: test/integration/new-root.test.ts).
    bootedRoot: '/', bwrap: () => null,
    isClosing: () => false,
    transactions: () => txs,
    phaseStarted: (_tx, phase) => phases.push(phase),
    finished: (_tx, snapshot) => finished.push(snapshot),
  });
  const ranFile = path.join(root, 'ran');
  return {
    runner, stateDir, store, ranFile, phases, finished,
    ran: async () => (await fsp.readFile(ranFile, 'utf8').catch(() => '')).split('\n').filter(Boolean),
    tx: async (hooks) => {
      const id = `tx_${process.pid}_${++txSerial}`;
      const createdUsec = nowUsec();
      const tx = new Transaction({
        id, deployment: '/dep', deploymentKey: 'dep', hooks, fingerprint: 'f', createdUsec, dryRun: false,
        logFile: stateDir.logFile(id),
      });
      tx.journal = await store.create({
        t: 'begin', v: JOURNAL_VERSION, id, deployment: '/dep', deploymentKey: 'dep', createdUsec,
        fingerprint: 'f', dryRun: false, hooks,
      });
      t.teardown(async () => { await tx.journal?.close(); tx.dispose(); });
      txs.push(tx);
      return tx;
    },
  };
}

/** A step that records `what` in the ran file, then exits with `status`. */
const step = (s: Setup, what: string, status = 0): string[] =>
  ['/bin/sh', '-c', `echo ${what} >> '${s.ranFile}'; exit ${status}`];

function hook(name: string, steps: { prepare?: string[]; commit?: string[]; abort?: string[] }, required = true): JournalHook {
  return {
    name, source: `/etc/bootc/pre-stage.d/${name}.hook`, digest: 'd', refused: null,
    definition: {
      description: '', prepare: steps.prepare ?? null, commit: steps.commit ?? null, abort: steps.abort ?? null,
      after: [], before: [], environment: [], required, timeoutSec: 30,
    },
  };
}

function events(tx: Transaction): TransactionEvent[] {
  const out: TransactionEvent[] = [];
  tx.events$.subscribe((e) => out.push(e));
  return out;
}

const job = (tx: Transaction, kind: Job['kind'], timeoutSec = 0): Job => ({ tx, kind, timeoutSec });

test('prepare - every step in plan order, each journaled before it ran and after, then prepared', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([hook('a', { prepare: step(s, 'a-prepare') }), hook('b', { prepare: step(s, 'b-prepare') })]);
  const seen = events(tx);
  await s.runner.run(job(tx, 'prepare'));
  t.deepEqual(await s.ran(), ['a-prepare', 'b-prepare']);
  t.is(tx.state, 'prepared');
  t.deepEqual(s.phases, ['prepare']);
  t.is(s.finished.at(-1)?.state, 'prepared');
  t.deepEqual(seen.map((e) => e.type === 'hook-started' || e.type === 'hook-finished' ? `${e.type} ${e.hook}` : e.type), [
    'phase-started', 'hook-started a', 'hook-finished a', 'hook-started b', 'hook-finished b', 'finished',
  ]);
  const records = (await s.store.read(tx.id)).records.map((r) =>
    r.t === 'step' || r.t === 'done' ? `${r.t} ${r.hook}` : r.t === 'state' ? `state ${r.state}` : r.t);
  t.deepEqual(records.filter((r) => r !== 'pid'), [
    'begin', 'phase', 'state preparing', 'step a', 'done a', 'step b', 'done b', 'state prepared',
  ]);
  t.deepEqual([...tx.preparedStarted], ['a', 'b']);
});

test('prepare - a failing required hook rolls back every started hook in reverse and marks the rest not run', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    hook('a', { prepare: step(s, 'a-prepare'), abort: step(s, 'a-abort') }),
    hook('b', { prepare: step(s, 'b-prepare') }),
    hook('c', { prepare: step(s, 'c-prepare', 3), abort: step(s, 'c-abort') }),
    hook('d', { prepare: step(s, 'd-prepare'), abort: step(s, 'd-abort') }),
  ]);
  await s.runner.run(job(tx, 'prepare'));
  t.deepEqual(await s.ran(), ['a-prepare', 'b-prepare', 'c-prepare', 'c-abort', 'a-abort']);
  const snap = tx.snapshot();
  t.is(snap.state, 'failed');
  t.is(snap.error, 'HookFailed');
  t.regex(snap.errorMessage, /^required hook c exited with status 3; rolled back$/);
  t.deepEqual(snap.hooks.map((h) => h.result), ['success', 'success', 'failed', 'cancelled']);
  t.is(snap.hooks[3]!.status, 'not run');
  t.regex(snap.hooks[0]!.status, /rolled back$/);
});

test('prepare - an optional hook that fails is reported and the rest still run', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    hook('a', { prepare: step(s, 'a-prepare', 1) }, false),
    hook('b', { prepare: step(s, 'b-prepare') }),
  ]);
  await s.runner.run(job(tx, 'prepare'));
  t.deepEqual(await s.ran(), ['a-prepare', 'b-prepare']);
  t.is(tx.state, 'prepared');
  t.deepEqual(tx.snapshot().hooks.map((h) => h.result), ['failed', 'success']);
});

test('prepare - a cancel stops the running step and rolls back; the phase ends cancelled', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    hook('a', { prepare: step(s, 'a-prepare'), abort: step(s, 'a-abort') }),
    // b's prepare only sleeps: the cancel may come before it runs at all.
    hook('b', { prepare: ['/bin/sleep', '60'], abort: step(s, 'b-abort') }),
  ]);
  tx.events$.subscribe((e) => {
    if (e.type === 'hook-started' && e.hook === 'b') {
      // What Engine.cancel does for a running prepare.
      tx.cancelRequested = true;
      s.runner.cancelCurrentStep();
    }
  });
  await s.runner.run(job(tx, 'prepare'));
  t.deepEqual(await s.ran(), ['a-prepare', 'b-abort', 'a-abort']);
  t.is(tx.state, 'cancelled');
  t.is(tx.snapshot().error, 'Cancelled');
  t.is(s.runner.currentStep(), null);
});

test('prepare - the phase deadline stops the running step; the phase ends Timeout, rolled back', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    // No output before the sleep: on a loaded machine the deadline may come
    // before the shell runs at all, and the outcome must not depend on it.
    hook('a', { prepare: ['/bin/sleep', '60'], abort: step(s, 'a-abort') }),
    hook('b', { prepare: step(s, 'b-prepare') }),
  ]);
  await s.runner.run(job(tx, 'prepare', 1));
  // b never starts. a's step record is durable before its spawn, so a is
  // rolled back once it started (on a starved machine the deadline can
  // even come before a's step).
  t.deepEqual(await s.ran(), tx.preparedStarted.has('a') ? ['a-abort'] : []);
  const snap = tx.snapshot();
  t.is(snap.state, 'failed');
  t.is(snap.error, 'Timeout', snap.errorMessage);
  t.regex(snap.errorMessage, /exceeded its 1s deadline; rolled back$/);
});

test('commit - every step runs after a failure; a required failure fails the phase and keeps that hook\'s state', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    hook('a', { commit: step(s, 'a-commit', 1) }),
    hook('b', { commit: step(s, 'b-commit') }),
    hook('c', {}),
  ]);
  for (const h of ['a', 'b', 'c']) mkdirSync(s.stateDir.hookStateDir('dep', h), { recursive: true });
  await s.runner.run(job(tx, 'commit'));
  t.deepEqual(await s.ran(), ['a-commit', 'b-commit']);
  const snap = tx.snapshot();
  t.is(snap.state, 'failed');
  t.is(snap.error, 'HookFailed');
  t.regex(snap.errorMessage, /^commit incomplete: a exited with status 1; hook state is kept, run CommitPreStage again to retry$/);
  t.true(existsSync(s.stateDir.hookStateDir('dep', 'a')));
  t.false(existsSync(s.stateDir.hookStateDir('dep', 'b')));
  t.false(existsSync(s.stateDir.hookStateDir('dep', 'c')), 'a hook without a Commit step keeps no state');
});

test('abort - runs in reverse plan order; an optional failure is a warning', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([
    hook('a', { abort: step(s, 'a-abort') }),
    hook('b', { abort: step(s, 'b-abort', 2) }, false),
  ]);
  await s.runner.run(job(tx, 'abort'));
  t.deepEqual(await s.ran(), ['b-abort', 'a-abort']);
  t.is(tx.state, 'aborted');
  t.is(s.finished.at(-1)?.state, 'aborted');
});

test('dry run - runs nothing; every hook is skipped with what would run; ends aborted', async (t) => {
  const s = await setup(t);
  const tx = await s.tx([hook('a', { prepare: step(s, 'a-prepare') }), hook('b', { commit: step(s, 'b-commit') })]);
  const seen = events(tx);
  await s.runner.run(job(tx, 'dry-run'));
  t.deepEqual(await s.ran(), []);
  const snap = tx.snapshot();
  t.is(snap.state, 'aborted');
  t.deepEqual(snap.hooks.map((h) => h.result), ['skipped', 'skipped']);
  t.regex(snap.hooks[0]!.status, /^would run: \/bin\/sh -c /);
  t.is(snap.hooks[1]!.status, 'no Prepare step');
  const fin = seen.at(-1);
  t.is(fin?.type, 'finished');
  t.is(fin?.type === 'finished' ? fin.message : '', 'dry run: 2 hook(s) planned, nothing was run');
});
