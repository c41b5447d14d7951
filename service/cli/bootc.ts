/**
 * Talking to bootc: find the staged deployment from `bootc status
 * --format=json`, and run the upgrade commands. bootc is run from PATH
 * (tests put a stand-in first on PATH: test/fixtures/bootc/bootc).
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { ClientError } from '../client/errors.js';
import { deploymentKeyOf, lockFinalization, lockPaths, unlockFinalization } from '../model/finalization-lock.js';

/** `status.staged.ostree` (or booted, rollback) of bootc's BootcHost document. */
export interface BootEntryOstree {
  /** Absent in bootc before it added the field; then found on disk. */
  stateroot?: string;
  checksum: string;
  deploySerial: number;
}

export interface BootcRunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
}

/**
 * Run `bootc ARGS`. `stdio` says where its output goes (the live display
 * wants the terminal; --json output wants bootc's stdout on our stderr);
 * with `capture`, stdout is collected instead. Rejects only when bootc
 * cannot be started at all.
 */
export function runBootc(
  args: string[],
  opts: { env: NodeJS.ProcessEnv; capture?: boolean; stdio?: StdioOptions; onSpawn?: (pipes: (Readable | null)[]) => void },
): Promise<BootcRunResult> {
  return new Promise((resolve, reject) => {
    const stdio: StdioOptions = opts.capture ? ['ignore', 'pipe', 'inherit'] : (opts.stdio ?? 'inherit');
    let child;
    try {
      child = spawn('bootc', args, { env: opts.env, stdio });
    } catch (e) {
      reject(new ClientError('failed', `cannot run bootc: ${(e as Error).message}`));
      return;
    }
    opts.onSpawn?.(child.stdio as (Readable | null)[]);
    let out = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => { if (out.length < 64 * 1024 * 1024) out += d; });
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(new ClientError('failed', e.code === 'ENOENT'
        ? 'cannot run bootc: not found in PATH (bootc-prestage upgrade and start --staged need bootc)'
        : `cannot run bootc: ${e.message}`));
    });
    child.once('close', (code, signal) => resolve({ code, signal, stdout: out }));
  });
}

/** "exit status 3" / "killed by SIGTERM". */
export function describeExit(r: { code: number | null; signal: NodeJS.Signals | null }): string {
  return r.signal ? `killed by ${r.signal}` : `exit status ${r.code}`;
}

/** What `bootc status --format=json` says is staged. */
export interface StagedInfo {
  entry: BootEntryOstree;
  /**
   * `status.staged.downloadOnly`: true when the stage is finalization-locked
   * (bootc's status.rs: staged && finalization locked); undefined from a
   * bootc without the field.
   */
  downloadOnly: boolean | undefined;
}

/**
 * The staged entry of a `bootc status --format=json` document, or null when
 * nothing is staged. Throws ClientError('failed') for a document that is
 * not what bootc writes, and for a deployment of bootc's composefs backend
 * (`status.staged.ostree` null, `status.staged.composefs` set), which
 * bootc-prestage does not support yet.
 */
export function stagedInfo(json: string): StagedInfo | null {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new ClientError('failed', `bootc status --format=json printed something that is not JSON: ${(e as Error).message}`);
  }
  const status = (doc as { status?: unknown } | null)?.status;
  if (status === null || typeof status !== 'object') {
    throw new ClientError('failed', 'bootc status --format=json has no "status" object');
  }
  const staged = (status as { staged?: unknown }).staged;
  if (staged === null || staged === undefined) return null;
  if (typeof staged !== 'object') throw new ClientError('failed', 'status.staged in bootc status is not an object');
  const o = (staged as { ostree?: unknown }).ostree;
  const composefs = (staged as { composefs?: unknown }).composefs;
  if ((o === null || o === undefined) && composefs !== null && composefs !== undefined) {
    throw new ClientError('failed', "the staged deployment is on bootc's composefs backend (status.staged.composefs): "
      + 'bootc-prestage supports only the ostree backend yet, so it cannot prepare or lock this stage');
  }
  if (o === null || typeof o !== 'object') {
    throw new ClientError('failed', 'the staged deployment in bootc status has no "ostree" entry (not an ostree deployment?)');
  }
  const { stateroot, checksum, deploySerial } = o as Record<string, unknown>;
  if (typeof checksum !== 'string' || !/^[0-9a-f]{64}$/.test(checksum)) {
    throw new ClientError('failed', 'status.staged.ostree.checksum in bootc status is not a SHA-256 checksum');
  }
  if (typeof deploySerial !== 'number' || !Number.isInteger(deploySerial) || deploySerial < 0) {
    throw new ClientError('failed', 'status.staged.ostree.deploySerial in bootc status is not a serial number');
  }
  if (stateroot !== undefined && (typeof stateroot !== 'string' || !/^[^/\0]+$/.test(stateroot) || stateroot === '..' || stateroot === '.')) {
    throw new ClientError('failed', 'status.staged.ostree.stateroot in bootc status is not a stateroot name');
  }
  const d = (staged as { downloadOnly?: unknown }).downloadOnly;
  if (d !== undefined && typeof d !== 'boolean') {
    throw new ClientError('failed', 'status.staged.downloadOnly in bootc status is not a boolean');
  }
  return {
    entry: { ...(stateroot !== undefined ? { stateroot: stateroot as string } : {}), checksum, deploySerial },
    downloadOnly: d,
  };
}

/** The `status.staged.ostree` entry, or null when nothing is staged (see stagedInfo). */
export function stagedEntry(json: string): BootEntryOstree | null {
  return stagedInfo(json)?.entry ?? null;
}

/**
 * The deployment directory of an entry:
 * `<sysroot>/ostree/deploy/<stateroot>/deploy/<checksum>.<serial>`. Without
 * a stateroot (older bootc), the one stateroot that has that deployment.
 */
export async function deploymentDir(sysroot: string, e: BootEntryOstree): Promise<string> {
  const leaf = `${e.checksum}.${e.deploySerial}`;
  const base = path.join(sysroot, 'ostree', 'deploy');
  if (e.stateroot !== undefined) return path.join(base, e.stateroot, 'deploy', leaf);
  const roots = await fsp.readdir(base).catch(() => [] as string[]);
  const hits: string[] = [];
  for (const r of roots) {
    const dir = path.join(base, r, 'deploy', leaf);
    if (await fsp.stat(dir).then((s) => s.isDirectory(), () => false)) hits.push(dir);
  }
  if (hits.length === 1) return hits[0]!;
  throw new ClientError('not-found', hits.length === 0
    ? `bootc's staged deployment ${leaf} is not under ${base}/*/deploy (wrong --sysroot?)`
    : `bootc's staged deployment ${leaf} is in several stateroots: ${hits.join(', ')}`);
}

async function bootcStatus(env: NodeJS.ProcessEnv): Promise<StagedInfo | null> {
  const r = await runBootc(['status', '--format=json'], { env, capture: true });
  if (r.code !== 0) throw new ClientError('failed', `bootc status --format=json failed (${describeExit(r)})`);
  return stagedInfo(r.stdout);
}

const NOTHING_STAGED = "bootc has no staged deployment: run 'bootc upgrade --download-only' first (or use 'bootc-prestage upgrade')";

/** Ask bootc for its staged deployment; a ClientError('not-found') when nothing is staged. */
export async function stagedDeployment(sysroot: string, env: NodeJS.ProcessEnv): Promise<string> {
  const info = await bootcStatus(env);
  if (!info) throw new ClientError('not-found', NOTHING_STAGED);
  return deploymentDir(sysroot, info.entry);
}

/** The lock of a staged deployment as prepareStaged left it. */
export interface StagedLock {
  /** ostree's lock file (`/run/ostree/staged-deployment-locked`). */
  file: string;
  /** We wrote it (bootc had left the stage unlocked). */
  lockedByUs: boolean;
  /** Our record that we hold it (see finalization-lock.ts). */
  marker: string;
}

/**
 * Find bootc's staged deployment and make sure its finalization is locked
 * before any hook runs: bootc says so (`status.staged.downloadOnly`), or,
 * for a bootc without the field, ostree's lock file exists. Otherwise (a
 * plain `bootc upgrade` or `bootc switch`, or bootc#2425: `--download-only`
 * on an image already staged leaves it unlocked) we lock it ourselves,
 * exactly as ostree's `--lock-finalization` does, and check that bootc now
 * reports it locked. Any doubt is an error: we never run hooks on a stage
 * that a reboot could finalize.
 */
export async function prepareStaged(
  sysroot: string, env: NodeJS.ProcessEnv, opts: { lock: boolean; warn: (m: string) => void },
): Promise<{ deployment: string; lock: StagedLock | null }> {
  const info = await bootcStatus(env);
  if (!info) throw new ClientError('not-found', NOTHING_STAGED);
  const deployment = await deploymentDir(sysroot, info.entry);
  if (!opts.lock) return { deployment, lock: null };
  const paths = lockPaths(env);
  const key = deploymentKeyOf(deployment);
  if (info.downloadOnly === true || (info.downloadOnly === undefined && await exists(paths.lockFile))) {
    return { deployment, lock: { file: paths.lockFile, lockedByUs: false, marker: paths.marker } };
  }
  await lockFinalization(paths, key, deployment);
  opts.warn(`bootc left the staged deployment unlocked (${info.downloadOnly === false ? 'status.staged.downloadOnly is false' : 'no lock file'}); `
    + `locked its finalization (${paths.lockFile}) until its pre-stage has succeeded`);
  const after = await bootcStatus(env);
  if (!after || after.entry.checksum !== info.entry.checksum || after.entry.deploySerial !== info.entry.deploySerial) {
    throw new ClientError('failed', 'the staged deployment changed while it was being locked; run the command again');
  }
  if (after.downloadOnly === false) {
    throw new ClientError('failed', `wrote ${paths.lockFile} but bootc still reports the staged deployment unlocked `
      + '(status.staged.downloadOnly false); not running hooks on a stage a reboot could finalize');
  }
  return { deployment, lock: { file: paths.lockFile, lockedByUs: true, marker: paths.marker } };
}

/** Undo a lock prepareStaged wrote (the stage's pre-stage succeeded). */
export async function restoreLock(lock: StagedLock, warn: (m: string) => void): Promise<void> {
  if (!lock.lockedByUs) return;
  await unlockFinalization({ lockFile: lock.file, marker: lock.marker });
  warn(`the pre-stage succeeded: unlocked the staged deployment's finalization again (removed ${lock.file})`);
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(() => true, () => false);
}
