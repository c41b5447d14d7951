/**
 * bootc-prestage-gate: the boot gate's two jobs (README, "The boot gate").
 *
 *   bootc-prestage-gate shutdown   ExecStop of bootc-prestage-gate.service,
 *                                  which stops before ostree-finalize-staged.service
 *   bootc-prestage-gate trigger    bootc-prestage-staged.service, started by
 *                                  bootc-prestage-staged.path on a new stage
 *   bootc-prestage-gate decide     print the decision (JSON) and change nothing
 *
 * `shutdown` locks the finalization of the staged deployment unless its
 * latest transaction is prepared with the current hooks (decide.ts); it
 * waits, bounded by GateWaitSec=, for a prepare of it that is running.
 * Every error, every timeout and SIGTERM lock: the safe side. It leaves a
 * record (records.ts) that `bootc-prestage status` and the next boot's
 * `bootc-prestage reconcile` show.
 *
 * Options (for tests; the units use the defaults): --state-dir DIR
 * (/var/lib/bootc-prestage), --root DIR (/), --sysroot DIR (/sysroot).
 * Environment: BOOTC_PRESTAGE_CONFIG, BOOTC_PRESTAGE_OSTREE_RUN_DIR,
 * BOOTC_PRESTAGE_RUNTIME_DIR, BOOTC_PRESTAGE_GATE_RECORDS, and
 * BOOTC_PRESTAGE_CLI (the client the trigger runs; default bootc-prestage
 * from PATH).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadConfig, type GateConfig } from './config.js';
import { daemonAlive, decide, type Decision } from './decide.js';
import {
  isLocked, isOurLock, lockFinalization, lockFinalizationSync, lockPaths, unlockFinalization,
  writeAtomic, type LockPaths,
} from '../model/finalization-lock.js';
import { appendRecord, recordsFile } from '../model/records.js';
import { findStaged, type Staged } from './staged.js';
import { isSameProcess, processStartTime } from '../engine/process-tree.js';

const USAGE = `Usage: bootc-prestage-gate shutdown|trigger|decide [--state-dir DIR] [--root DIR] [--sysroot DIR]
`;

/** sd-daemon priorities: systemd reads them from the start of each line. */
function log(level: 3 | 4 | 5 | 6, text: string): void {
  process.stdout.write(`<${level}>${text.replace(/\n/g, ' ')}\n`);
}

interface Ctx {
  stateDir: string;
  root: string;
  sysroot: string;
  paths: LockPaths;
  config: GateConfig;
  configInvalid: boolean;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The trigger's "prepare is being started" marker matches `key` and its process is alive. */
async function triggerPending(paths: LockPaths, key: string): Promise<boolean> {
  try {
    const m = JSON.parse(await fsp.readFile(paths.triggerPending, 'utf8')) as { key?: unknown; pid?: unknown; start?: unknown };
    return m.key === key && typeof m.pid === 'number' && isSameProcess(m.pid, typeof m.start === 'string' ? m.start : null);
  } catch {
    return false;
  }
}

async function decideFor(ctx: Ctx, staged: Staged, ownPrepare = false): Promise<Decision> {
  return decide({
    stateDir: ctx.stateDir, root: ctx.root, deployment: staged.deployment, key: staged.key,
    triggerPending: ownPrepare || await triggerPending(ctx.paths, staged.key),
  });
}

/**
 * The prepare the trigger did not get to run: a reboot right after staging
 * (`bootc upgrade --apply`) can reach systemd before the path unit's
 * event, and then the shutdown stops the path unit. With Trigger=yes the
 * gate runs the prepare itself, bounded by its own wait. D-Bus activation
 * is refused once the shutdown has begun, so when no daemon holds the
 * state directory the gate starts one as its own child (stopped when the
 * gate is done; its journal is as crash safe as any). Resolves when the
 * client has exited.
 */
function prepareAtShutdown(ctx: Ctx, staged: Staged, force: boolean, children: ChildProcess[]): Promise<number> {
  return (async () => {
    if (!await daemonAlive(ctx.stateDir)) {
      const daemon = process.env.BOOTC_PRESTAGE_DAEMON || '/usr/libexec/bootc-prestaged';
      const child = spawn(daemon, ['--bus', 'system', '--idle-exit-sec', '0'], { stdio: ['ignore', 'inherit', 'inherit'] });
      child.once('error', (e) => log(3, `cannot start ${daemon}: ${e.message}`));
      children.push(child);
    }
    // Until the client got a transaction started: the daemon just spawned
    // needs a moment to own its name (meanwhile the bus says "Refusing
    // activation, D-Bus is shutting down"). A prepare that ran and failed
    // is not retried.
    const until = Date.now() + 20_000;
    for (;;) {
      const code = await runCliOnce(['start', '--wait', ...(force ? ['--force'] : []), staged.deployment]);
      if (code === 0 || Date.now() >= until) return code;
      const d = await decide({ stateDir: ctx.stateDir, root: ctx.root, deployment: staged.deployment, key: staged.key, triggerPending: false });
      if (!(d.kind === 'lock' && d.cause === 'never-ran')) return code;
      await sleep(250);
    }
  })();
}

const CAUSE_TEXT: Record<string, string> = {
  failed: 'pre-stage failed',
  'never-ran': 'pre-stage never ran',
  'did-not-finish': 'pre-stage did not finish before shutdown',
  'hooks-changed': 'hooks changed since the pre-stage ran',
  error: 'the gate could not verify the pre-stage',
};

async function lockAndRecord(ctx: Ctx, staged: Staged | null, d: Extract<Decision, { kind: 'lock' }>): Promise<void> {
  const what = staged ? staged.image ?? staged.deployment : 'the staged deployment';
  const summary = `upgrade to ${what} discarded at shutdown: ${CAUSE_TEXT[d.cause]}`;
  try {
    // The lock only, without our marker: nothing may lift this one.
    lockFinalizationSync(ctx.paths);
    await fsp.rm(ctx.paths.marker, { force: true });
  } catch (e) {
    log(3, `cannot lock finalization (${ctx.paths.lockFile}): ${(e as Error).message}`);
    throw e;
  }
  log(3, `${summary}${d.transaction ? ` (transaction ${d.transaction})` : ''}: ${d.reason}; locked finalization (${ctx.paths.lockFile})`);
  try {
    await appendRecord(recordsFile(), {
      usec: Date.now() * 1000,
      bootId: await fsp.readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((s) => s.trim(), () => ''),
      deployment: staged?.deployment ?? '',
      image: staged?.image ?? null,
      transaction: d.transaction ?? '',
      cause: d.cause,
      summary,
      reason: d.reason,
    });
  } catch (e) {
    // The lock holds; only the record is missing.
    log(4, `cannot write the record to ${recordsFile()}: ${(e as Error).message}`);
  }
}

async function shutdown(ctx: Ctx): Promise<number> {
  if (!await fsp.lstat(ctx.paths.stagedFile).then(() => true, () => false)) {
    log(6, `nothing staged (${ctx.paths.stagedFile} does not exist)`);
    return 0;
  }
  let staged: Staged | null = null;
  try {
    staged = await findStaged(ctx.sysroot);
    if (!staged) throw new Error(`${ctx.paths.stagedFile} exists but neither bootc nor ostree reports a staged deployment`);
  } catch (e) {
    await lockAndRecord(ctx, staged, { kind: 'lock', cause: 'error', transaction: null, reason: (e as Error).message });
    return 0;
  }
  const deadline = Date.now() + ctx.config.gateWaitSec * 1000;
  let announced = false;
  let ownPrepare: Promise<number> | null = null;
  let ownRunning = false;
  const children: ChildProcess[] = [];
  try {
  for (;;) {
    const d = await decideFor(ctx, staged, ownRunning);
    if (d.kind === 'lock' && d.cause === 'never-ran' && ownPrepare === null && ctx.config.trigger && !ctx.configInvalid
      && Date.now() < deadline) {
      log(5, `${d.reason}; running the prepare phase now, before finalization (Trigger=yes)`);
      ownRunning = true;
      ownPrepare = prepareAtShutdown(ctx, staged, d.transaction !== null, children);
      void ownPrepare.then(() => { ownRunning = false; });
      continue;
    }
    if (d.kind === 'finalize') {
      if (await isLocked(ctx.paths)) {
        if (ctx.config.autoUnlock && !ctx.configInvalid && await isOurLock(ctx.paths, staged.key)) {
          await unlockFinalization(ctx.paths);
          log(5, `${d.reason}: lifted the finalization lock bootc-prestage wrote; ${staged.deployment} is finalized`);
        } else {
          log(5, `${d.reason}; finalization stays locked as bootc or the administrator asked (bootc upgrade --from-downloaded lifts it)`);
        }
      } else {
        log(6, `${d.reason}: ${staged.deployment} is finalized`);
      }
      return 0;
    }
    if (d.kind === 'lock') {
      await lockAndRecord(ctx, staged, d);
      return 0;
    }
    if (Date.now() >= deadline) {
      await lockAndRecord(ctx, staged, {
        kind: 'lock', cause: 'did-not-finish', transaction: d.transaction,
        reason: `${d.reason}, still after ${ctx.config.gateWaitSec} s (GateWaitSec=)`,
      });
      return 0;
    }
    if (!announced) {
      log(5, `${d.reason}: waiting up to ${ctx.config.gateWaitSec} s for it before finalization`);
      announced = true;
    }
    await sleep(250);
  }
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  }
}

/** Run the client; resolves with its exit status. */
function runCli(args: string[]): Promise<number> {
  return runCliOnce(args);
}

function runCliOnce(args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const cli = process.env.BOOTC_PRESTAGE_CLI || 'bootc-prestage';
    const child = spawn(cli, args, { stdio: ['ignore', 'inherit', 'inherit'] });
    child.once('error', (e) => { log(3, `cannot run ${cli}: ${e.message}`); resolve(1); });
    child.once('close', (code) => resolve(code ?? 1));
  });
}

async function trigger(ctx: Ctx): Promise<number> {
  if (!ctx.config.trigger) {
    log(6, 'Trigger=no: not starting the pre-stage of the staged deployment');
    return 0;
  }
  if (!await fsp.lstat(ctx.paths.stagedFile).then(() => true, () => false)) {
    log(6, `nothing staged (${ctx.paths.stagedFile} does not exist)`);
    return 0;
  }
  const staged = await findStaged(ctx.sysroot);
  if (!staged) {
    log(4, `${ctx.paths.stagedFile} exists but no staged deployment is reported; the shutdown gate will lock it`);
    return 1;
  }
  await writeAtomic(ctx.paths.triggerPending,
    `${JSON.stringify({ key: staged.key, pid: process.pid, start: processStartTime(process.pid) })}\n`);
  try {
    if (!await isLocked(ctx.paths)) {
      await lockFinalization(ctx.paths, staged.key, staged.deployment);
      log(5, `locked finalization of ${staged.deployment} until its pre-stage has succeeded`);
    }
    const before = await decideFor(ctx, staged);
    let code = 0;
    if (before.kind !== 'finalize') {
      // A transaction that predates this staging (the same checksum.serial
      // staged again) would be returned as "already prepared": run again.
      const force = before.kind === 'lock' && before.cause === 'never-ran' && before.transaction !== null;
      code = await runCli(['start', ...(force ? ['--force'] : []), staged.deployment]);
    }
    const after = await decideFor(ctx, staged);
    if (code !== 0 || after.kind !== 'finalize') {
      log(3, `the pre-stage of ${staged.deployment} did not succeed (${after.reason}); finalization stays locked `
        + 'and ostree discards the stage at shutdown');
      return 1;
    }
    if (ctx.config.autoUnlock && !ctx.configInvalid && await isOurLock(ctx.paths, staged.key)) {
      await unlockFinalization(ctx.paths);
      log(5, `${after.reason}: lifted the finalization lock; ${staged.deployment} boots next`);
    } else if (await isLocked(ctx.paths)) {
      log(5, `${after.reason}; finalization stays locked (AutoUnlock=no, or bootc's download-only lock): `
        + "run 'bootc upgrade --from-downloaded' to boot it");
    }
    return 0;
  } finally {
    await fsp.rm(ctx.paths.triggerPending, { force: true });
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv, allowPositionals: true, strict: true,
      options: { 'state-dir': { type: 'string' }, root: { type: 'string' }, sysroot: { type: 'string' } },
    });
  } catch (e) {
    process.stderr.write(`bootc-prestage-gate: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const cmd = parsed.positionals[0];
  if (parsed.positionals.length !== 1 || !['shutdown', 'trigger', 'decide'].includes(cmd!)) {
    process.stderr.write(USAGE);
    return 2;
  }
  const loaded = loadConfig();
  for (const p of loaded.problems) log(4, p);
  const ctx: Ctx = {
    stateDir: parsed.values['state-dir'] ?? '/var/lib/bootc-prestage',
    root: parsed.values.root ?? '/',
    sysroot: parsed.values.sysroot ?? '/sysroot',
    paths: lockPaths(),
    config: loaded.config,
    configInvalid: loaded.invalid,
  };
  if (cmd === 'shutdown') {
    // systemd's stop timeout sends SIGTERM: lock before going.
    const onTerm = () => {
      try {
        if (stagedExists(ctx)) lockFinalizationSync(ctx.paths);
        log(3, 'stopped by SIGTERM before deciding: locked finalization');
      } finally {
        process.exit(0);
      }
    };
    process.once('SIGTERM', onTerm);
    try {
      return await shutdown(ctx);
    } catch (e) {
      log(3, `gate error: ${(e as Error).message}; locking finalization`);
      if (stagedExists(ctx)) lockFinalizationSync(ctx.paths);
      return 1;
    }
  }
  if (cmd === 'decide') {
    const staged = await findStaged(ctx.sysroot);
    const d = staged ? await decideFor(ctx, staged) : null;
    process.stdout.write(`${JSON.stringify({ staged, decision: d })}\n`);
    return 0;
  }
  try {
    return await trigger(ctx);
  } catch (e) {
    log(3, `trigger error: ${(e as Error).message}; the staged deployment stays locked if it was`);
    return 1;
  }
}

/** Whether a stage exists; when that cannot be told, assume it does (lock). */
function stagedExists(ctx: Ctx): boolean {
  try {
    return existsSync(ctx.paths.stagedFile);
  } catch {
    return true;
  }
}
