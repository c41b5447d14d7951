/**
 * Ctrl-C and a vanishing daemon while bootc-prestage follows a transaction:
 * the first SIGINT cancels a prepare phase and waits for its rollback (as
 * rpm-ostree does), a second one exits at once, commit steps are never
 * cancelled, and a daemon that dies mid-phase gives a clear exit 5.
 */
import test from 'ava';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { deploymentsOf, withDaemon } from '../helpers/daemon.js';
import { MANAGER_PATH, SERVICE, TRANSACTION_IFACE } from '../helpers/dbus-client.js';
import { exitedWithin } from '../helpers/processes.js';
import { tmpDir } from '../helpers/tmp.js';
import { hookFile, jsonLines, runCli, spawnCli, waitForFile } from './cli-harness.js';

const LONG = 'i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done';

async function waitForState(
  client: { getProperty(d: string, p: string, i: string, n: string): Promise<unknown> }, txPath: string,
  want: string, timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State');
    if (s === want) return;
    if (Date.now() > deadline) throw new Error(`transaction ${txPath} is ${String(s)}, not ${want}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.serial('start - Ctrl-C cancels the transaction, waits for the rollback, and exits 1', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'long.hook': hookFile({ prepare: LONG, abort: `echo rolled-back > ${dir}/aborted` }) },
  });
  const [staged] = deploymentsOf(ctx);
  const cli = spawnCli(['--json', 'start', staged!], { address: ctx.bus.address });
  await cli.waitForLine((l) => l.includes('"event":"hook-started"'));
  cli.kill('SIGINT');
  const r = await cli.done;
  t.is(r.code, 1, r.stderr);
  const evs = jsonLines(r.stdout);
  t.truthy(evs.find((e) => e['event'] === 'note' && /Cancelling transaction/.test(e['text'])));
  t.like(evs.pop(), { event: 'finished', state: 'cancelled', error: 'org.containers.bootc.PreStage.Error.Cancelled' });
  t.regex(r.stderr, /^bootc-prestage: the prepare phase of \S+ was cancelled \[Cancelled\]/);
  t.true(existsSync(path.join(dir, 'aborted')), 'the rollback ran before the command exited');
  const txPath = evs[0]!['transaction'] as string;
  t.is(await ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State'), 'cancelled');
});

test.serial('start - a second Ctrl-C exits at once (130) while the daemon finishes the rollback', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'long.hook': hookFile({ prepare: LONG, abort: `${waitForFile(`${dir}/go`)}; echo done > ${dir}/aborted` }) },
  });
  const [staged] = deploymentsOf(ctx);
  const cli = spawnCli(['--json', 'start', staged!], { address: ctx.bus.address });
  const begin = JSON.parse(await cli.waitForLine((l) => l.includes('"event":"begin"'))) as { transaction: string };
  await cli.waitForLine((l) => l.includes('"event":"hook-started"'));
  cli.kill('SIGINT');
  await cli.waitForLine((l) => l.includes('"state":"rolling-back"'));
  cli.kill('SIGINT');
  // The abort step waits for `go`: the command exits while the rollback runs.
  const info = await exitedWithin(cli.child, 10_000);
  t.truthy(info, 'exited on the second Ctrl-C without waiting for the rollback');
  const r = await cli.done;
  t.is(r.code, 130);
  t.regex(r.stderr, /interrupted; transaction \S+ goes on in the daemon/);
  t.false(existsSync(path.join(dir, 'aborted')));
  t.is(await ctx.client.getProperty(SERVICE, begin.transaction, TRANSACTION_IFACE, 'State'), 'rolling-back');
  await fsp.writeFile(path.join(dir, 'go'), '');
  await waitForState(ctx.client, begin.transaction, 'cancelled');
  t.true(existsSync(path.join(dir, 'aborted')));
});

test.serial('commit - Ctrl-C says commit steps cannot be cancelled and keeps waiting for them (exit 0)', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'c.hook': hookFile({ prepare: 'true', commit: `${waitForFile(`${dir}/go`)}; echo ok > ${dir}/committed` }) },
  });
  const [staged] = deploymentsOf(ctx);
  t.is((await runCli(['start', staged!], { address: ctx.bus.address })).code, 0);
  const cli = spawnCli(['commit', staged!], { address: ctx.bus.address });
  await cli.waitForLine((l) => l.includes('c: started'));
  cli.kill('SIGINT');
  await cli.waitForLine((l) => l.startsWith('The commit steps cannot be cancelled'));
  await fsp.writeFile(path.join(dir, 'go'), '');
  const r = await cli.done;
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /The commit steps cannot be cancelled; waiting for them to finish/);
  t.regex(r.stdout, /Result: committed/);
  t.true(existsSync(path.join(dir, 'committed')));
});

test.serial('start - the daemon dying mid-phase ends the follow with exit 5 and a clear reason', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 },
    etcHooks: { 'long.hook': hookFile({ prepare: LONG }) },
  });
  const [staged] = deploymentsOf(ctx);
  const cli = spawnCli(['start', staged!], { address: ctx.bus.address });
  await cli.waitForLine((l) => l.includes('long: started'));
  await ctx.daemon.kill('SIGKILL');
  const r = await cli.done;
  t.is(r.code, 5, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stderr, /^bootc-prestage: bootc-prestaged left the bus during the prepare phase of transaction \S+ \(preparing\); when it runs again it finishes or rolls back/);
  // When it runs again, the interrupted prepare is rolled back and status says so.
  await ctx.restart();
  const deadline = Date.now() + 20_000;
  let status = '';
  while (Date.now() < deadline) {
    status = (await runCli(['status'], { address: ctx.bus.address })).stdout;
    if (/prepare +(failed|cancelled)/.test(status)) break;
    await new Promise((res) => setTimeout(res, 200));
  }
  t.regex(status, /prepare +(failed|cancelled)/);
  t.is((await ctx.client.getProperty(SERVICE, MANAGER_PATH, 'org.containers.bootc.PreStage', 'State')), 'idle');
});
