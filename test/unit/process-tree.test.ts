/**
 * process-tree against real processes: groups started detached, escapees
 * started with setsid, environments with unique markers (tests run
 * concurrently, and other test files run hook processes too).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  findProcessesByEnv, findProcessRefsByEnv, groupAlive, groupMembers, isSameProcess, killGroup,
  killProcessesByEnv, listProcesses, parseProcStat, processStartTime, processesSince, readProcStat, sessionMembers,
  terminateGroup, terminateProcesses,
} from '../../service/engine/process-tree.js';

const PATH_ENV = { PATH: '/usr/bin:/bin' };

/** Start `script` with sh as the leader of a new session/group; resolves once it printed "ready". */
async function startGroup(script: string, env: Record<string, string> = PATH_ENV): Promise<number> {
  const child = spawn('/bin/sh', ['-c', script], { detached: true, stdio: ['ignore', 'pipe', 'ignore'], env });
  child.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('ready\n')) resolve();
    });
    child.once('exit', () => reject(new Error(`exited before ready: ${out}`)));
  });
  child.stdout!.destroy();
  return child.pid!;
}

function gone(pid: number): boolean {
  const st = readProcStat(pid);
  return st === null || st.state === 'Z' || st.state === 'X';
}

function cleanupGroup(pgid: number): void {
  try { process.kill(-pgid, 'SIGKILL'); } catch { /* gone */ }
}

/** A 52-field stat line with the given comm, as the kernel writes it. */
function statLine(pid: number, comm: string): string {
  const rest = ['S', '1', '4242', '4343', '0', '-1', '4194560', '100', '0', '0', '0', '5', '3', '0', '0', '20', '0',
    '1', '0', '987654321', ...Array.from({ length: 32 }, () => '0')];
  return `${pid} (${comm}) ${rest.join(' ')}\n`;
}

test('parseProcStat - fields counted from the last ")" whatever comm holds', (t) => {
  for (const comm of ['sleep', 'a b', 'x) S 1 2 3 (', ')', '((', 'with )) two', '']) {
    const st = parseProcStat(statLine(77, comm));
    t.truthy(st, comm);
    t.like(st, { pid: 77, comm, state: 'S', ppid: 1, pgrp: 4242, session: 4343, startTime: '987654321' }, comm);
  }
});

test('parseProcStat - rejects what is not a stat line', (t) => {
  t.is(parseProcStat(''), null);
  t.is(parseProcStat('garbage'), null);
  t.is(parseProcStat('12 (x) S 1 2'), null);
  t.is(parseProcStat('x (comm) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20'), null);
});

test('processStartTime - this process has a stable start time; matches /proc/self/stat', (t) => {
  const st = processStartTime(process.pid);
  t.regex(st ?? '', /^[0-9]+$/);
  t.is(processStartTime(process.pid), st);
  t.is<string | null, string | null>(parseProcStat(readFileSync('/proc/self/stat', 'latin1'))!.startTime, st);
  t.is(processStartTime(2 ** 30), null);
  t.is(processStartTime(0), null);
  t.is(processStartTime(-5), null);
});

test('isSameProcess - true only for the pid with its recorded start time', (t) => {
  const st = processStartTime(process.pid)!;
  t.true(isSameProcess(process.pid, st));
  t.false(isSameProcess(process.pid, String(BigInt(st) + 1n)));
  t.false(isSameProcess(process.pid, null));
  t.false(isSameProcess(2 ** 30, st));
});

test('listProcesses - includes this process with its group and session', (t) => {
  const self = listProcesses().find((p) => p.pid === process.pid);
  t.truthy(self);
  t.is<string | null, string | null>(self!.startTime, processStartTime(process.pid));
});

test('signalling pid or group 0 and 1 is refused before kill(2)', (t) => {
  for (const id of [0, 1, -3, 1.5]) {
    t.throws(() => killGroup(id, 0), { instanceOf: RangeError });
    t.throws(() => groupAlive(id), { instanceOf: RangeError });
    t.throws(() => groupMembers(id), { instanceOf: RangeError });
    t.throws(() => sessionMembers(id), { instanceOf: RangeError });
  }
  return Promise.all([
    t.throwsAsync(terminateGroup(1, 0), { instanceOf: RangeError }),
    t.throwsAsync(terminateProcesses([{ pid: 1, startTime: '1' }], 0), { instanceOf: RangeError }),
  ]);
});

test('groupAlive / groupMembers / killGroup - a live group, then an empty one', async (t) => {
  const pgid = await startGroup('sleep 1000 & sleep 1000 & echo ready; wait');
  t.teardown(() => cleanupGroup(pgid));
  t.true(groupAlive(pgid));
  const members = groupMembers(pgid);
  t.true(members.includes(pgid));
  t.is(members.length, 3);
  t.deepEqual(sessionMembers(pgid).map((r) => r.pid).sort(), [...members].sort());
  t.true(killGroup(pgid, 'SIGKILL'));
  t.true(await terminateGroup(pgid, 0, { killWaitMs: 10_000 }));
  t.false(groupAlive(pgid));
  t.deepEqual(groupMembers(pgid), []);
  t.notThrows(() => killGroup(pgid, 'SIGTERM')); // only zombies may be left (PID 1 may not reap)
});

test('terminateGroup - SIGTERM is enough for a group that obeys it', async (t) => {
  const pgid = await startGroup('trap "exit 0" TERM; sleep 1000 & echo ready; wait');
  t.teardown(() => cleanupGroup(pgid));
  const started = Date.now();
  t.true(await terminateGroup(pgid, 30_000));
  t.false(groupAlive(pgid));
  t.true(Date.now() - started < 20_000); // did not need the 30 s grace
});

test('terminateGroup - SIGKILL after the grace for a group that ignores SIGTERM', async (t) => {
  const pgid = await startGroup("trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait");
  t.teardown(() => cleanupGroup(pgid));
  const members = groupMembers(pgid);
  t.is(members.length, 3);
  t.true(await terminateGroup(pgid, 200));
  t.false(groupAlive(pgid));
  for (const m of members) t.true(gone(m));
});

test('terminateGroup - a stopped group is continued so it acts on SIGTERM', async (t) => {
  const pgid = await startGroup('trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done');
  t.teardown(() => cleanupGroup(pgid));
  killGroup(pgid, 'SIGSTOP');
  t.true(await terminateGroup(pgid, 30_000));
  t.false(groupAlive(pgid));
});

test('terminateGroup - an empty or vanished group resolves at once', async (t) => {
  const pgid = await startGroup('echo ready; exec sleep 1000');
  killGroup(pgid, 'SIGKILL');
  t.true(await terminateGroup(pgid, 0));
  t.true(await terminateGroup(pgid, 1000));
});

test('killGroup / groupAlive - a group that is gone: ESRCH is false, not an error', async (t) => {
  const child = spawn('/bin/sleep', ['1000'], { detached: true, stdio: 'ignore' });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const pid = child.pid!;
  t.true(groupAlive(pid));
  t.true(killGroup(pid, 'SIGKILL'));
  await exited; // reaped by Node: nothing of the group is left
  t.false(killGroup(pid, 'SIGTERM'));
  t.false(groupAlive(pid));
});

test('findProcessesByEnv - exact entries, all of them, not substrings; skips itself', async (t) => {
  const marker = randomUUID();
  const env = { ...PATH_ENV, PT_MARK: marker, PT_OTHER: 'v', XPT_MARK: 'decoy' };
  const pgid = await startGroup('setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo ready; wait', env);
  t.teardown(() => cleanupGroup(pgid));
  // The setsid'd sleep may take a moment to exec.
  let found: number[] = [];
  for (let i = 0; i < 200 && found.length < 2; i++) {
    found = await findProcessesByEnv({ PT_MARK: marker });
    if (found.length < 2) await new Promise((r) => setTimeout(r, 10));
  }
  t.is(found.length, 2); // the shell and its setsid'd sleep
  t.true(found.includes(pgid));
  const escapee = found.find((p) => p !== pgid)!;
  t.teardown(() => { try { process.kill(escapee, 'SIGKILL'); } catch { /* gone */ } });
  t.is(readProcStat(escapee)!.session, escapee); // really left the session
  t.deepEqual(await findProcessesByEnv({ PT_MARK: marker, PT_OTHER: 'v' }), found);
  t.deepEqual(await findProcessesByEnv({ PT_MARK: marker, PT_OTHER: 'w' }), []);
  t.deepEqual(await findProcessesByEnv({ PT_MARK: marker.slice(0, -1) }), []);
  t.deepEqual(await findProcessesByEnv({ PT_MARK: `${marker}x` }), []);
  t.deepEqual(await findProcessesByEnv({ T_MARK: marker }), []);
  t.deepEqual(await findProcessesByEnv({ PT_MARK: marker, MISSING: '' }), []);
  const refs = await findProcessRefsByEnv({ PT_MARK: marker });
  t.deepEqual(refs.map((r) => r.pid), found);
  for (const r of refs) t.true(isSameProcess(r.pid, r.startTime));

  // This process's own initial environment matches its first entry, but it is skipped.
  const first = readFileSync('/proc/self/environ', 'utf8').split('\0')[0]!;
  const eq = first.indexOf('=');
  const self = await findProcessesByEnv({ [first.slice(0, eq)]: first.slice(eq + 1) });
  t.false(self.includes(process.pid));
});

test('findProcessesByEnv - refuses an empty or malformed filter', async (t) => {
  await t.throwsAsync(findProcessesByEnv({}), { instanceOf: RangeError });
  await t.throwsAsync(findProcessesByEnv({ 'A=B': 'x' }), { instanceOf: RangeError });
  await t.throwsAsync(findProcessesByEnv({ A: 'x\0y' }), { instanceOf: RangeError });
  await t.throwsAsync(killProcessesByEnv({}, 0), { instanceOf: RangeError });
});

test('killProcessesByEnv - kills a transaction\'s processes in and out of their group, TERM-proof ones too', async (t) => {
  const txn = `txn-${randomUUID()}`;
  const env = { ...PATH_ENV, BOOTC_PRESTAGE_TRANSACTION: txn };
  const pgid = await startGroup(
    "trap '' TERM; setsid sh -c \"trap '' TERM; exec sleep 1000\" </dev/null >/dev/null 2>&1 & sleep 1000 & echo ready; wait",
    env);
  t.teardown(() => cleanupGroup(pgid));
  const bystander = await startGroup('echo ready; exec sleep 1000', { ...PATH_ENV, BOOTC_PRESTAGE_TRANSACTION: `${txn}-other` });
  t.teardown(() => cleanupGroup(bystander));
  let before: number[] = [];
  for (let i = 0; i < 200 && before.length < 3; i++) {
    before = await findProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: txn });
    if (before.length < 3) await new Promise((r) => setTimeout(r, 10));
  }
  t.is(before.length, 3);
  for (const p of before) t.teardown(() => { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } });

  const killed = await killProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: txn }, 200);
  t.deepEqual(killed, before);
  for (const p of before) t.true(gone(p), String(p));
  t.deepEqual(await findProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: txn }), []);
  t.false(gone(bystander));
  t.deepEqual(await killProcessesByEnv({ BOOTC_PRESTAGE_TRANSACTION: txn }, 200), []);
});

test('terminateProcesses - a recycled pid (other start time) is never signalled', async (t) => {
  const pgid = await startGroup('echo ready; exec sleep 1000');
  t.teardown(() => cleanupGroup(pgid));
  const real = processStartTime(pgid)!;
  // Same pid, wrong start time: treated as gone already, left alone.
  t.true(await terminateProcesses([{ pid: pgid, startTime: String(BigInt(real) + 1n) }], 0));
  t.false(gone(pgid));
  t.true(await terminateProcesses([{ pid: pgid, startTime: real }], 1000));
  t.true(gone(pgid));
});

test('processesSince - the leader and what it started; with leaderReaped, not the leader\'s own pid', async (t) => {
  // A leader that is alive stands in for "a pid the caller says is free":
  // the option is the caller's promise, and must stop the probe of that pid.
  const leader = await startGroup('sleep 30 & echo ready; wait');
  t.teardown(() => cleanupGroup(leader));
  const ref = { pid: leader, startTime: processStartTime(leader)! };
  for (const pidWindow of [false, true]) {
    const all = processesSince(ref, { pidWindow }).map((p) => p.pid);
    t.true(all.includes(leader), `pidWindow ${pidWindow}: the leader is found`);
    const sleeper = processesSince(ref, { pidWindow }).find((p) => p.pgrp === leader && p.pid !== leader);
    t.truthy(sleeper, `pidWindow ${pidWindow}: its child is found`);
  }
  const reaped = processesSince(ref, { pidWindow: true, leaderReaped: true });
  t.false(reaped.some((p) => p.pid === leader), 'with leaderReaped the leader is not probed');
  t.true(reaped.some((p) => p.pgrp === leader), 'the processes it started still are');
});
