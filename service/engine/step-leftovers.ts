/**
 * Finding and killing what a step left running after its main process
 * exited: its process group, its session (members that moved to another
 * group, e.g. jobs of a shell with `set -m`), and processes that escaped
 * with setsid but still carry the step's identifying environment entries.
 */
import {
  filterByEnv, processesSince, readProcStat, terminateGroup, terminateProcesses, type ProcessRef,
} from './process-tree.js';

/**
 * A step that ended within this long is cleaned up by looking only at the
 * pids allocated since its own (see processesSince): going round the whole
 * pid space in that time takes over 32,000 process creations.
 */
export const PID_WINDOW_MAX_MS = 1000;

/** What one pass over /proc found of a step's processes. */
export interface StepProcesses {
  /** Some process is still in the step's process group. */
  inGroup: boolean;
  /** Processes of its session outside its group, and setsid escapees. */
  stray: ProcessRef[];
  /** Every process found, by pid, with its command name. */
  names: Map<number, string>;
}

/**
 * One pass over /proc for the processes of the step whose session and group
 * id is `sid`, then (when `trackEnv` is given) an environment check of the
 * rest. `sid` must be a real session id: in a pid namespace every process
 * whose session leader is outside reads as session 0. `leaderReaped`: the
 * leader's exit status was collected (processesSince).
 */
export async function findStepProcesses(
  sid: number, leader: ProcessRef, pidWindow: boolean, trackEnv: Record<string, string> | null, leaderReaped = false,
): Promise<StepProcesses> {
  let inGroup = false;
  const stray: ProcessRef[] = [];
  const others: ProcessRef[] = [];
  const names = new Map<number, string>();
  for (const p of processesSince(leader, { pidWindow, leaderReaped })) {
    if (p.pgrp === sid) inGroup = true;
    else if (p.session === sid) stray.push({ pid: p.pid, startTime: p.startTime });
    else {
      if (p.pid !== process.pid) others.push({ pid: p.pid, startTime: p.startTime });
      continue;
    }
    names.set(p.pid, p.comm);
  }
  if (trackEnv !== null && others.length > 0) {
    // Escaped with setsid: only the environment still tells.
    for (const r of await filterByEnv(others, trackEnv)) {
      stray.push(r);
      names.set(r.pid, readComm(r.pid));
    }
  }
  return { inGroup, stray, names };
}

/** SIGTERM, then SIGKILL after `graceMs`, to what was found; false if some survived SIGKILL. */
export async function terminateStepProcesses(sid: number, found: StepProcesses, graceMs: number): Promise<boolean> {
  const [groupGone, strayGone] = await Promise.all([
    found.inGroup ? terminateGroup(sid, graceMs) : true,
    found.stray.length > 0 ? terminateProcesses(found.stray, graceMs) : true,
  ]);
  return groupGone && strayGone;
}

/** "1234 (sleep), 1240 (sh), and 3 more": at most ten processes named. */
export function describeProcesses(pids: readonly number[], names: ReadonlyMap<number, string>): string {
  return pids.slice(0, 10).map((p) => `${p} (${names.get(p)})`).join(', ')
    + (pids.length > 10 ? `, and ${pids.length - 10} more` : '');
}

function readComm(pid: number): string {
  return readProcStat(pid)?.comm ?? '?';
}
