/**
 * The crash harness (test/helpers/crash.ts): the real daemon, SIGKILLed at
 * every journal boundary of the prepare, commit and abort phases and of a
 * failed prepare's rollback, and while each hook's step runs with its
 * background child alive; restarted on the same state and checked against
 * every invariant of docs/design.md "Transactions".
 *
 * The kill points come from a calibration at load time: clean runs of each
 * phase, whose journal records are counted (N); the tests then kill after
 * record k for k = 1..N. By default every boundary of the three-hook
 * prepare, commit and abort runs; of the failing prepare, only the
 * records from its rollback on (its first records are the prepare's).
 * BOOTC_PRESTAGE_CRASH_FULL=1 runs every boundary of every shape;
 * BOOTC_PRESTAGE_CRASH_JOBS sets how many kill points run at once
 * (default 2).
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { JournalRecord } from '../../service/engine/journal.js';
import type { Phase } from '../../service/model/types.js';
import {
  calibrate, checkNewWork, checkRecovery, CrashRig, describeRecord, HOOKS, rigSlot, type CrashSnapshot,
} from '../helpers/crash.js';
import { readProcStat } from '../../service/engine/process-tree.js';

const FULL = process.env['BOOTC_PRESTAGE_CRASH_FULL'] === '1';
const slot = rigSlot;
const cal = await calibrate();

type Shape = 'prepare' | 'commit' | 'abort' | 'rollback';
const SHAPE_RECORDS: Record<Shape, JournalRecord[]> = {
  prepare: cal.prepare, commit: cal.commit, abort: cal.abort, rollback: cal.rollback,
};
/** The phase a shape asks for. */
const PHASE_OF: Record<Shape, Phase> = { prepare: 'prepare', commit: 'commit', abort: 'abort', rollback: 'prepare' };

/**
 * Kill points for a shape: every boundary 1..N of the prepare (and of every
 * shape with BOOTC_PRESTAGE_CRASH_FULL=1); otherwise the boundaries that
 * differ in kind: the phase and state records, every record of the middle
 * hook's step (before its process, while it runs, after it), and the end.
 */
function killPoints(shape: Shape): number[] {
  const recs = SHAPE_RECORDS[shape];
  const all = recs.map((_, i) => i + 1);
  if (FULL || shape === 'prepare') return all;
  const rollbackFrom = recs.findIndex((r) => r.t === 'state' && r.state === 'rolling-back');
  return all.filter((k) => {
    const r = recs[k - 1]!;
    if (shape === 'rollback' && k - 1 < rollbackFrom) return false;
    return r.t === 'phase' || r.t === 'state' || ((r.t === 'step' || r.t === 'pid' || r.t === 'done') && r.hook === 'h2');
  });
}

/** Prepare the staged deployment cleanly when the shape crashes a later phase; returns records so far. */
async function setUp(rig: CrashRig, shape: Shape): Promise<number> {
  if (shape === 'rollback') await rig.fail('h3', 'prepare');
  if (shape === 'commit' || shape === 'abort') {
    const p = await rig.runPhase('prepare', rig.staged);
    if (p.state !== 'prepared') throw new Error(`set-up prepare ended ${p.state}: ${p.errorMessage}`);
  }
  return rig.recordCount();
}

/** Restart, wait for recovery, check every invariant and new work. */
async function recoverAndCheck(t: ExecutionContext, rig: CrashRig, snap: CrashSnapshot): Promise<void> {
  await rig.fail('h3', 'prepare', false);
  await rig.restart();
  const txs = await rig.waitSettled();
  const violations = await checkRecovery(rig, snap, txs);
  t.deepEqual(violations, [], `after the crash:\n${rig.describe()}`);
  t.deepEqual(await checkNewWork(rig), [], 'new work after recovery');
}

test('crash - calibration: clean runs journal every step before and after it', (t) => {
  t.log(`clean runs took ${cal.ms} ms; records: prepare ${cal.prepare.length}, commit ${cal.commit.length}, ` +
    `abort ${cal.abort.length}, failed prepare with rollback ${cal.rollback.length}`);
  for (const [shape, recs] of Object.entries(SHAPE_RECORDS)) {
    const names = recs.map(describeRecord);
    t.log(`${shape}: ${names.join(' | ')}`);
    for (const h of HOOKS) {
      const phase = PHASE_OF[shape as Shape] === 'prepare' ? 'prepare' : PHASE_OF[shape as Shape];
      const step = names.indexOf(`step ${phase} ${h.name}`);
      const done = names.findIndex((n) => n.startsWith(`done ${phase} ${h.name} `));
      t.true(step >= 0 && done > step, `${shape}: ${h.name} has a step record before its done record`);
    }
  }
  t.is(cal.prepare[0]!.t, 'begin');
  t.true(cal.rollback.some((r) => r.t === 'step' && r.rollback), 'the failing prepare journals its rollback steps');
});

const atRecord = test.macro({
  async exec(t, shape: Shape, k: number) {
    await slot(async () => {
      const rig = await CrashRig.create(t);
      const base = await setUp(rig, shape);
      await rig.arm(base + k);
      const phase = PHASE_OF[shape];
      const deployment = rig.staged;
      const reply = rig.request(phase, deployment);
      await rig.waitStopped();
      t.is(await rig.recordCount(), base + k, 'stopped exactly at the boundary');
      const txId = await rig.latestTxId(deployment);
      const snap = await rig.crash(txId, phase);
      const r = await reply;
      if (typeof r === 'string') t.true(r.endsWith(txId), 'the reply named the interrupted transaction');
      await recoverAndCheck(t, rig, snap);
    });
  },
  title: (_given, shape: Shape, k: number) => {
    const recs = SHAPE_RECORDS[shape];
    return `crash - ${shape === 'rollback' ? 'failed prepare' : shape}: SIGKILL after journal record ${k}/${recs.length} (${describeRecord(recs[k - 1]!)})`;
  },
});

for (const shape of ['prepare', 'commit', 'abort', 'rollback'] as const) {
  for (const k of killPoints(shape)) test(atRecord, shape, k);
}

const whileRunning = test.macro({
  async exec(t, shape: Shape, hook: string) {
    await slot(async () => {
      const rig = await CrashRig.create(t);
      await setUp(rig, shape);
      const stepPhase: Phase = shape === 'rollback' ? 'abort' : PHASE_OF[shape];
      await rig.block(hook, stepPhase);
      const reply = rig.request(PHASE_OF[shape], rig.staged);
      const blocked = await rig.waitForRecord((r) => r.hook === hook && r.phase === stepPhase && r.event === 'blocked');
      const snap = await rig.crash(blocked.tx, PHASE_OF[shape]);
      await reply;
      // The kill point is real: the step and the child it left are alive after the daemon died.
      const alive = new Set(snap.alive.map((p) => p.pid));
      t.true(alive.has(blocked.pid), `the ${hook} ${stepPhase} step outlived the daemon`);
      const child = rig.records().find((r) => r.tx === blocked.tx && r.hook === hook && r.phase === stepPhase && r.event === 'child');
      const mode = HOOKS.find((h) => h.name === hook)!.child;
      if (mode !== 'none') {
        t.truthy(child, 'the step left a background child');
        t.true(alive.has(child!.pid), 'its background child outlived the daemon');
        const st = readProcStat(child!.pid);
        if (mode === 'setsid') t.not(st?.session, blocked.pid, 'the child escaped the step\'s session');
        else t.is(st?.pgrp, blocked.pid, 'the child is in the step\'s process group');
      }
      await recoverAndCheck(t, rig, snap);
    });
  },
  title: (_given, shape: Shape, hook: string) =>
    `crash - ${shape === 'rollback' ? 'failed prepare, rollback' : shape}: SIGKILL while the ${hook} ${shape === 'rollback' ? 'abort' : shape} step runs`,
});

for (const shape of ['prepare', 'commit', 'abort'] as const) {
  for (const h of HOOKS) test(whileRunning, shape, h.name);
}
test(whileRunning, 'rollback', 'h2');

test('crash - a torn last record (killed mid-write) is cut off and the prepare rolled back', async (t) => {
  await slot(async () => {
    const rig = await CrashRig.create(t);
    await rig.block('h2', 'prepare');
    const reply = rig.request('prepare', rig.staged);
    const blocked = await rig.waitForRecord((r) => r.hook === 'h2' && r.event === 'blocked');
    const snap = await rig.crash(blocked.tx, 'prepare');
    await reply;
    const file = path.join(rig.journalDir, `${blocked.tx}.jnl`);
    await fsp.appendFile(file, '{"t":"done","phase":"prepare","hook":"h2","rollback":false,"res');
    const torn = await rig.journal(blocked.tx);
    t.true(torn.torn);
    t.is(torn.corruptLine, null);
    await recoverAndCheck(t, rig, snap);
    const after = await rig.journal(blocked.tx);
    t.false(after.torn, 'recovery cut the torn record before appending');
  });
});

test('crash - a torn record after a finished prepare leaves it prepared, and it still commits', async (t) => {
  await slot(async () => {
    const rig = await CrashRig.create(t);
    const p = await rig.runPhase('prepare', rig.staged);
    t.is(p.state, 'prepared');
    const snap = await rig.crash(p.id, 'prepare');
    await fsp.appendFile(path.join(rig.journalDir, `${p.id}.jnl`), '{"t":"phase","pha');
    await recoverAndCheck(t, rig, snap);
    const c = await rig.runPhase('commit', rig.staged);
    t.is(c.id, p.id);
    t.is(c.state, 'committed', c.errorMessage);
    t.false((await rig.journal(p.id)).torn);
  });
});

/**
 * Killed again while recovery runs: the first crash while h2's step of
 * the phase runs, the second while recovery's `second` step waits; the
 * third start must finish what both left.
 */
const duringRecovery = test.macro({
  async exec(t, phase: Phase, second: string) {
    await slot(async () => {
      const rig = await CrashRig.create(t);
      await setUp(rig, phase);
      await rig.block('h2', phase);
      const reply = rig.request(phase, rig.staged);
      const first = await rig.waitForRecord((r) => r.hook === 'h2' && r.phase === phase && r.event === 'blocked');
      await rig.crash(first.tx, phase);
      await reply;
      const recoveryPhase: Phase = phase === 'prepare' ? 'abort' : phase;
      const from = rig.lineCount();
      await rig.restart({ block: [[second, recoveryPhase]] });
      const blocked = await rig.waitForRecord((r) => r.tx === first.tx && r.hook === second && r.phase === recoveryPhase && r.event === 'blocked', 60_000, from);
      const snap = await rig.crash(first.tx, phase);
      t.true(snap.alive.some((p) => p.pid === blocked.pid), 'the recovery\'s step outlived the second daemon');
      await recoverAndCheck(t, rig, snap);
    });
  },
  title: (_given, phase: Phase, second: string) =>
    `crash - ${phase}: SIGKILL again while recovery runs the ${second} ${phase === 'prepare' ? 'abort' : phase} step`,
});

test(duringRecovery, 'prepare', 'h1');
test(duringRecovery, 'commit', 'h3');
test(duringRecovery, 'abort', 'h1');
