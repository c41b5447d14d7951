/**
 * The boot gate's decision as a program (dist/bootc-prestage-gate.mjs),
 * against a real daemon's state directory and a real ostree sysroot, with
 * the bootc stand-in (test/fixtures/bootc) naming the staged deployment and
 * temporary directories standing for /run/ostree and /run/bootc-prestage.
 * What systemd adds (the unit ordering at shutdown, the path trigger, the
 * daemon started by activation) is tested under a real systemd in
 * test/systemd/boot-gate.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import type { Sysroot } from '../helpers/ostree.js';
import { tmpDir } from '../helpers/tmp.js';
import { BOOTC_STANDIN_DIR, CLI_ENTRY, hookFile, runCli } from './cli-harness.js';

const GATE = path.join(path.dirname(path.dirname(path.dirname(new URL(import.meta.url).pathname))), 'dist', 'bootc-prestage-gate.mjs');

interface Env {
  env: Record<string, string>;
  runDir: string;
  lockFile: string;
  records: string;
}

async function gateEnv(t: ExecutionContext, ctx: DaemonContext, config = ''): Promise<Env> {
  const dir = await tmpDir(t, { mode: 0o755 });
  const runDir = path.join(dir, 'run-ostree');
  await fsp.mkdir(runDir);
  await fsp.writeFile(path.join(runDir, 'staged-deployment'), 'stand-in\n');
  await fsp.writeFile(path.join(dir, 'config'), config);
  const sysroot = ctx.sysroot as Sysroot;
  return {
    runDir,
    lockFile: path.join(runDir, 'staged-deployment-locked'),
    records: path.join(dir, 'discarded.jsonl'),
    env: {
      PATH: `${BOOTC_STANDIN_DIR}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
      BOOTC_STANDIN_SYSROOT: sysroot.path,
      BOOTC_STANDIN_CONFIG: path.join(dir, 'no-config'),
      BOOTC_STANDIN_RUN_DIR: runDir,
      BOOTC_PRESTAGE_OSTREE_RUN_DIR: runDir,
      BOOTC_PRESTAGE_RUNTIME_DIR: path.join(dir, 'run-bootc-prestage'),
      BOOTC_PRESTAGE_GATE_RECORDS: path.join(dir, 'discarded.jsonl'),
      BOOTC_PRESTAGE_CONFIG: path.join(dir, 'config'),
      // The client the gate runs when it must start a prepare itself.
      BOOTC_PRESTAGE_CLI: CLI_ENTRY,
      DBUS_SYSTEM_BUS_ADDRESS: ctx.bus.address,
    },
  };
}

function gate(ctx: DaemonContext, e: Env, cmd: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [GATE, cmd, '--state-dir', ctx.stateDir, '--root', ctx.root, '--sysroot', (ctx.sysroot as Sysroot).path],
      { env: e.env, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, out: stdout + stderr });
      });
  });
}

async function records(e: Env): Promise<Record<string, unknown>[]> {
  const text = await fsp.readFile(e.records, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout, stderr) => (err ? reject(new Error(`${cmd}: ${err.message} ${stderr}`)) : resolve(stdout)));
  });
}

/** Until the daemon has written `count` journals (a transaction exists). */
async function journalWritten(ctx: DaemonContext, count = 1): Promise<void> {
  const dir = path.join(ctx.stateDir, 'journal');
  for (let i = 0; i < 600; i++) {
    if ((await fsp.readdir(dir).catch(() => [] as string[])).length >= count) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no transaction was created');
}

const staged = (ctx: DaemonContext) => (ctx.sysroot as Sysroot).deployments[0]!;

test.serial('gate - the staged deployment prepared with the current hooks: finalized, nothing locked or recorded', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'ok.hook': hookFile({ prepare: 'true' }) } });
  const e = await gateEnv(t, ctx);
  t.is((await runCli(['start', staged(ctx)], { address: ctx.bus.address })).code, 0);
  const r = await gate(ctx, e, 'shutdown');
  t.is(r.code, 0, r.out);
  t.regex(r.out, /is prepared with the current hooks: .* is finalized/);
  t.false(existsSync(e.lockFile));
  t.deepEqual(await records(e), []);
});

test.serial('gate - a failed prepare: locked, logged with the transaction id, recorded as "pre-stage failed"', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'no.hook': hookFile({ prepare: 'exit 1' }) } });
  const e = await gateEnv(t, ctx);
  t.is((await runCli(['start', staged(ctx)], { address: ctx.bus.address })).code, 1);
  const r = await gate(ctx, e, 'shutdown');
  t.is(r.code, 0, r.out);
  t.true(existsSync(e.lockFile));
  const [rec] = await records(e);
  t.like(rec, { cause: 'failed', deployment: staged(ctx), summary: `upgrade to ${staged(ctx)} discarded at shutdown: pre-stage failed` });
  t.regex(r.out, new RegExp(`^<3>upgrade to .* discarded at shutdown: pre-stage failed \\(transaction ${rec!['transaction']}\\): transaction \\S+ ended failed \\[HookFailed\\]`, 'm'));
  // bootc-prestage status shows the record.
  const s = await runCli(['status'], { address: ctx.bus.address, env: e.env });
  t.regex(s.stdout, /Discarded at shutdown by the boot gate:\n {2}upgrade to .* discarded at shutdown: pre-stage failed \(transaction /);
});

test.serial('gate - no transaction, Trigger=yes: the gate runs the prepare itself before finalization (the trigger missed it)', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'ok.hook': hookFile({ prepare: `touch ${dir}/ran` }) } });
  const e = await gateEnv(t, ctx);
  const r = await gate(ctx, e, 'shutdown');
  t.regex(r.out, /the pre-stage never ran; running the prepare phase now, before finalization/);
  t.regex(r.out, /is finalized/);
  t.true(existsSync(path.join(dir, 'ran')));
  t.false(existsSync(e.lockFile));
  t.deepEqual(await records(e), []);
});

test.serial('gate - a prepare the gate runs itself that fails: locked, "pre-stage failed"', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'no.hook': hookFile({ prepare: 'exit 1' }) } });
  const e = await gateEnv(t, ctx);
  const r = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r.out);
  t.like((await records(e))[0], { cause: 'failed' });
});

test.serial('gate - no transaction (Trigger=no): locked, "never ran"; hooks changed since the prepare: locked', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'ok.hook': hookFile({ prepare: 'true' }) } });
  const e = await gateEnv(t, ctx, 'Trigger=no\n');
  const r = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r.out);
  t.like((await records(e))[0], { cause: 'never-ran' });
  await fsp.rm(e.lockFile);
  t.is((await runCli(['start', staged(ctx)], { address: ctx.bus.address })).code, 0);
  await fsp.writeFile(path.join(ctx.root, 'etc/bootc/pre-stage.d/new.hook'), hookFile({ prepare: 'true' }), { mode: 0o644 });
  const r2 = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r2.out);
  t.like((await records(e))[1], { cause: 'hooks-changed' });
});

test.serial('gate - a corrupt journal: locked (the safe answer); a deployment staged again after its prepare: locked', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'ok.hook': hookFile({ prepare: 'true' }) } });
  const e = await gateEnv(t, ctx);
  t.is((await runCli(['start', staged(ctx)], { address: ctx.bus.address })).code, 0);
  const jdir = path.join(ctx.stateDir, 'journal');
  await fsp.writeFile(path.join(jdir, '99990101T000000_deadbeef.jnl'), 'garbage\n{not json\n');
  const r = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r.out);
  t.like((await records(e))[0], { cause: 'error' });
  t.regex(String((await records(e))[0]!['reason']), /unreadable state/);
  await fsp.rm(path.join(jdir, '99990101T000000_deadbeef.jnl'));
  await fsp.rm(e.lockFile);
  t.is((await gate(ctx, e, 'shutdown')).code, 0);
  t.false(existsSync(e.lockFile), 'without the bad file it is prepared again');
  await fsp.writeFile(e.env['BOOTC_PRESTAGE_CONFIG']!, 'Trigger=no\n');
  // Staged again: the same commit undeployed and deployed again gets the
  // same <checksum>.<serial> in a new directory, newer than the transaction.
  const sysroot = ctx.sysroot as Sysroot;
  const checksum = path.basename(staged(ctx)).split('.')[0]!;
  await run('ostree', ['admin', 'undeploy', `--sysroot=${sysroot.path}`, '0']);
  await run('ostree', ['admin', 'deploy', `--sysroot=${sysroot.path}`, `--os=${sysroot.osname}`, '--retain', checksum]);
  await sysroot.refresh();
  t.is(staged(ctx), path.join(path.dirname(staged(ctx)), `${checksum}.0`));
  const r3 = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r3.out);
  t.like((await records(e)).at(-1), { cause: 'never-ran' });
});

test.serial('gate - a running prepare is waited for: finalized when it ends prepared, locked "did not finish" past GateWaitSec', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'slow.hook': hookFile({ prepare: `while [ ! -e ${dir}/go ]; do sleep 0.1; done` }) },
  });
  const e = await gateEnv(t, ctx, 'GateWaitSec=600\n');
  const start = runCli(['start', staged(ctx)], { address: ctx.bus.address });
  await journalWritten(ctx);
  // The gate sees the running prepare and waits.
  const g = gate(ctx, e, 'shutdown');
  await new Promise((r) => setTimeout(r, 1500));
  await fsp.writeFile(path.join(dir, 'go'), '');
  t.is((await start).code, 0);
  const r = await g;
  t.regex(r.out, /is running \(preparing\): waiting up to 600 s/);
  t.regex(r.out, /is finalized/);
  t.false(existsSync(e.lockFile));

  await fsp.rm(path.join(dir, 'go'));
  await fsp.writeFile(e.env['BOOTC_PRESTAGE_CONFIG']!, 'GateWaitSec=1\n');
  const before = (await fsp.readdir(path.join(ctx.stateDir, 'journal'))).length;
  const start2 = runCli(['start', '--force', staged(ctx)], { address: ctx.bus.address });
  await journalWritten(ctx, before + 1);
  const r2 = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r2.out);
  t.like((await records(e))[0], { cause: 'did-not-finish', summary: `upgrade to ${staged(ctx)} discarded at shutdown: pre-stage did not finish before shutdown` });
  await fsp.writeFile(path.join(dir, 'go'), '');
  await start2;
});

test.serial('gate - a prepare interrupted with no daemon left: locked at once', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const pidFile = path.join(dir, 'pid');
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'slow.hook': hookFile({ prepare: `echo $$ > ${pidFile}; exec sleep 600` }) },
  });
  t.teardown(async () => {
    const pid = Number(await fsp.readFile(pidFile, 'utf8').catch(() => '0'));
    if (pid > 0) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  });
  const e = await gateEnv(t, ctx, 'GateWaitSec=600\n');
  t.is((await runCli(['start', '--no-follow', staged(ctx)], { address: ctx.bus.address })).code, 0);
  // Wait for the step, then kill the daemon as a crash would.
  for (let i = 0; i < 200 && !existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 100));
  await ctx.daemon.kill('SIGKILL');
  const r = await gate(ctx, e, 'shutdown');
  t.true(existsSync(e.lockFile), r.out);
  t.like((await records(e))[0], { cause: 'did-not-finish' });
  t.regex(String((await records(e))[0]!['reason']), /no daemon is running/);
});

test.serial('gate - nothing staged: nothing to do; a composefs stage or an unreadable bootc status: locked', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const e = await gateEnv(t, ctx);
  await fsp.rm(path.join(e.runDir, 'staged-deployment'));
  const r = await gate(ctx, e, 'shutdown');
  t.is(r.code, 0);
  t.regex(r.out, /nothing staged/);
  t.false(existsSync(e.lockFile));
  await fsp.writeFile(path.join(e.runDir, 'staged-deployment'), '');
  const r2 = await gate(ctx, { ...e, env: { ...e.env, BOOTC_STANDIN_COMPOSEFS: '1' } }, 'shutdown');
  t.true(existsSync(e.lockFile), r2.out);
  t.regex(String((await records(e))[0]!['reason']), /composefs/);
  await fsp.rm(e.lockFile);
  const r3 = await gate(ctx, { ...e, env: { ...e.env, BOOTC_STANDIN_FAIL: 'status' } }, 'shutdown');
  t.true(existsSync(e.lockFile), r3.out);
});
