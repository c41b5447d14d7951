/**
 * ostree's finalization lock of a staged deployment, and our record of
 * holding it. Shared by the CLI (`start --staged`, `upgrade`) and the gate
 * (service/gate/), with nothing but Node's own modules.
 *
 * - ostree finalizes a staged deployment at shutdown
 *   (ostree-finalize-staged.service, `ostree admin finalize-staged`) unless
 *   `/run/ostree/staged-deployment-locked` exists; then it logs "Not
 *   finalizing; found /run/ostree/staged-deployment-locked" and the stage is
 *   discarded. The file is empty, as `ostree admin deploy
 *   --lock-finalization` writes it; bootc reports it as
 *   `status.staged.downloadOnly` and removes it on `bootc upgrade
 *   --from-downloaded`.
 * - `/run/bootc-prestage/finalization-lock` (JSON: deployment key, path,
 *   time) says that *we* wrote the lock, so that the gate may lift it once
 *   the pre-stage succeeded; a lock bootc or the administrator wrote is
 *   never lifted by us. The lock is written before the marker and removed
 *   before it: after a crash in between there is at worst a lock nobody
 *   lifts automatically (the safe side).
 *
 * `BOOTC_PRESTAGE_OSTREE_RUN_DIR` (default /run/ostree) and
 * `BOOTC_PRESTAGE_RUNTIME_DIR` (default /run/bootc-prestage) move both for
 * tests (README, "With bootc").
 */
import { promises as fsp, constants as fsc, openSync, closeSync, mkdirSync } from 'node:fs';
import * as path from 'node:path';

export interface LockPaths {
  /** /run/ostree */
  runOstree: string;
  /** /run/ostree/staged-deployment: exists while a deployment is staged. */
  stagedFile: string;
  /** /run/ostree/staged-deployment-locked */
  lockFile: string;
  /** /run/bootc-prestage/finalization-lock */
  marker: string;
  /** /run/bootc-prestage/trigger-pending: the trigger is starting a prepare. */
  triggerPending: string;
}

export function lockPaths(env: NodeJS.ProcessEnv = process.env): LockPaths {
  const runOstree = env.BOOTC_PRESTAGE_OSTREE_RUN_DIR || '/run/ostree';
  const runtime = env.BOOTC_PRESTAGE_RUNTIME_DIR || '/run/bootc-prestage';
  return {
    runOstree,
    stagedFile: path.join(runOstree, 'staged-deployment'),
    lockFile: path.join(runOstree, 'staged-deployment-locked'),
    marker: path.join(runtime, 'finalization-lock'),
    triggerPending: path.join(runtime, 'trigger-pending'),
  };
}

/**
 * `<stateroot>-<checksum>.<serial>` of a deployment path
 * `.../ostree/deploy/<stateroot>/deploy/<checksum>.<serial>`: the key the
 * daemon's journal records (`deploymentKey`).
 */
export function deploymentKeyOf(deployment: string): string {
  const leaf = path.basename(deployment);
  const stateroot = path.basename(path.dirname(path.dirname(deployment)));
  return `${stateroot}-${leaf}`;
}

async function writeAtomic(file: string, text: string): Promise<void> {
  await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, text, { mode: 0o644 });
  await fsp.rename(tmp, file);
}

/** Lock finalization (lock file first) and record that we hold it. */
export async function lockFinalization(p: Pick<LockPaths, 'lockFile' | 'marker'>, key: string, deployment: string): Promise<void> {
  await fsp.mkdir(path.dirname(p.lockFile), { recursive: true, mode: 0o755 });
  const fh = await fsp.open(p.lockFile, fsc.O_WRONLY | fsc.O_CREAT, 0o644);
  await fh.close();
  await writeAtomic(p.marker, `${JSON.stringify({ key, deployment, usec: Date.now() * 1000 })}\n`);
}

/** Synchronous lock for a signal handler: the lock file only (no marker: nobody lifts it). */
export function lockFinalizationSync(p: Pick<LockPaths, 'lockFile'>): void {
  mkdirSync(path.dirname(p.lockFile), { recursive: true, mode: 0o755 });
  closeSync(openSync(p.lockFile, fsc.O_WRONLY | fsc.O_CREAT, 0o644));
}

/** Lift a lock we hold (lock file first, then the marker). */
export async function unlockFinalization(p: Pick<LockPaths, 'lockFile' | 'marker'>): Promise<void> {
  await fsp.rm(p.lockFile, { force: true });
  await fsp.rm(p.marker, { force: true });
}

export async function isLocked(p: Pick<LockPaths, 'lockFile'>): Promise<boolean> {
  return fsp.lstat(p.lockFile).then(() => true, () => false);
}

/** True when the lock exists and our marker says we wrote it for `key`. */
export async function isOurLock(p: Pick<LockPaths, 'lockFile' | 'marker'>, key: string): Promise<boolean> {
  if (!await isLocked(p)) return false;
  try {
    const m = JSON.parse(await fsp.readFile(p.marker, 'utf8')) as { key?: unknown };
    return m.key === key;
  } catch {
    return false;
  }
}

export { writeAtomic };
