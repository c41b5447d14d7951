/**
 * Steps in the new root, through the bus, on a real ostree sysroot whose
 * deployments have a userspace of their own (busybox-static's binary
 * committed as /usr/bin/busybox, test/helpers/ostree.ts), run by the real
 * daemon with real bubblewrap. The staged deployment's os-release differs
 * from the booted one's, and its probe program exists only in its tree.
 */
import test from 'ava';
import { existsSync, promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { PreStageClient } from '../../service/client/pre-stage-client.js';
import { parseJournal, type JournalRecord } from '../../service/engine/journal.js';
import { findProcessRefsByEnv, isSameProcess, type ProcessRef } from '../../service/engine/process-tree.js';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import { TRANSACTION_IFACE } from '../helpers/dbus-client.js';
import { withSysroot, type Sysroot, type TreeSpec } from '../helpers/ostree.js';
import { sleep } from '../helpers/processes.js';

const RESTING = ['prepared', 'committed', 'aborted', 'failed', 'cancelled'];

/** The staged tree: a probe that reports what it sees, and a hook running it with no RootDirectory=. */
function stagedTree(extraHooks: Record<string, string> = {}, files: TreeSpec['files'] = {}): TreeSpec {
  return {
    userspace: true,
    osRelease: { VERSION_ID: '2', PRETTY_NAME: 'the new image' },
    files: {
      'usr/libexec/newroot-test/probe': {
        mode: 0o755,
        content: [
          '#!/bin/sh',
          'set -u',
          '. /usr/lib/os-release',
          'echo "os-release VERSION_ID=$VERSION_ID"',
          'echo PROGRESS=40 >&3',
          'echo STATUS=probing the new root >&3',
          'if [ -e /usr/bin/bwrap ]; then echo "host /usr visible"; else echo "host /usr invisible"; fi',
          'echo from-new-root > /etc/newroot-x',
          'echo from-new-root > /var/newroot-x',
          'if echo z > /usr/newroot-z 2>/dev/null; then echo "/usr writable"; else echo "/usr read-only"; fi',
          'echo "phase=$BOOTC_PRESTAGE_PHASE"',
          'echo PROGRESS=100 >&3',
          '',
        ].join('\n'),
      },
      'usr/libexec/newroot-test/linger': {
        mode: 0o755,
        content: [
          '#!/bin/sh',
          // A child in the step's group and one in a session of its own: both must go with the step.
          'sleep 1000 &',
          'setsid sleep 1000 </dev/null >/dev/null 2>&1 &',
          'echo STATUS=lingering >&3',
          'exec sleep 1000',
          '',
        ].join('\n'),
      },
      ...files,
    },
    hooks: {
      'probe.hook': '[Hook]\nDescription=probe the new root\nPrepare=/usr/libexec/newroot-test/probe\n',
      ...extraHooks,
    },
  };
}

async function rig(t: import('ava').ExecutionContext, tree: TreeSpec, env: Record<string, string> = {}): Promise<{
  ctx: DaemonContext; sysroot: Sysroot; staged: string; client: PreStageClient;
}> {
  const sysroot = await withSysroot(t, { userspace: true, deployments: 1 });
  const staged = await sysroot.deploy(tree);
  const ctx = await withDaemon(t, { sysroot, env, timeoutMs: 60_000 });
  const client = await PreStageClient.connect({ address: ctx.bus.address, callTimeoutMs: 30_000 });
  t.teardown(() => client.close());
  return { ctx, sysroot, staged, client };
}

async function waitRest(client: PreStageClient, p: string, timeoutMs = 90_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await client.transactionProperties(p);
    if (RESTING.includes(s.state)) return s;
    if (Date.now() > deadline) throw new Error(`${s.id} still ${s.state}`);
    await sleep(50);
  }
}

function journalOf(ctx: DaemonContext, id: string): JournalRecord[] {
  return parseJournal(id, readFileSync(path.join(ctx.stateDir, 'journal', `${id}.jnl`), 'utf8')).records;
}

test('new root - an image hook without RootDirectory= runs in the staged deployment: its os-release and programs, the booted /etc and the stateroot /var, a read-only /usr', async (t) => {
  const { ctx, sysroot, staged, client } = await rig(t, stagedTree());
  t.true(existsSync('/usr/bin/bwrap'), 'the host has a /usr file the new tree lacks');
  t.false(existsSync('/usr/libexec/newroot-test/probe'), 'the probe exists only in the new tree');
  const signals = await ctx.client.collectSignals({ interface: TRANSACTION_IFACE });
  t.teardown(() => signals.stop());

  const [hook] = await client.listHooks(staged);
  t.is(hook!.name, 'probe');
  t.is(hook!.extra['PrepareRoot'], staged, 'ListHooks shows the effective root');

  const p = await client.startPreStage(staged);
  const s = await waitRest(client, p);
  const log = await client.getLog(p, { maxLines: 1000 });
  t.is(s.state, 'prepared', log.join('\n'));
  const text = log.join('\n');
  t.regex(text, /os-release VERSION_ID=2/, 'the new os-release, not the booted one (1)');
  t.regex(text, /host \/usr invisible/);
  t.regex(text, /\/usr read-only/);
  t.regex(text, /phase=prepare/);
  t.regex(text, /--ro-bind \S+ \/ --bind \S+\/etc \/etc/, 'the log shows the bwrap command line');

  const bootedEtc = path.join(sysroot.bootedRoot, 'etc', 'newroot-x');
  const staterootVar = path.join(sysroot.path, 'ostree', 'deploy', sysroot.osname, 'var', 'newroot-x');
  t.is(await fsp.readFile(bootedEtc, 'utf8'), 'from-new-root\n', '/etc is the booted deployment\'s');
  t.is(await fsp.readFile(staterootVar, 'utf8'), 'from-new-root\n', '/var is the stateroot\'s');
  t.false(existsSync(path.join(staged, 'etc', 'newroot-x')), 'not the staged deployment\'s own etc');
  t.false(existsSync(path.join(staged, 'usr', 'newroot-z')));

  const progress = signals.signals.filter((x) => x.member === 'HookProgress' && x.path === p);
  t.true(progress.some((x) => x.body[0] === 'probe' && x.body[2] === 'probing the new root'), 'STATUS from inside arrived');
  t.true(progress.some((x) => x.body[1] === 100), 'PROGRESS from inside arrived');
  const messages = signals.signals.filter((x) => x.member === 'Message' && x.path === p).map((x) => x.body[1]);
  t.true(messages.includes('os-release VERSION_ID=2'), 'stdout arrives as Message');
});

test('new root - RootDirectory=/ opts an image hook out; an /etc hook may opt in with RootDirectory=${BOOTC_PRESTAGE_DEPLOYMENT}', async (t) => {
  const { ctx, staged, client } = await rig(t, stagedTree({
    'host.hook': '[Hook]\nPrepare=/bin/sh -c ". /usr/lib/os-release; echo host sees $ID $VERSION_ID"\nRootDirectory=/\n',
  }));
  await fsp.mkdir(path.join(ctx.root, 'etc/bootc/pre-stage.d'), { recursive: true });
  await fsp.writeFile(path.join(ctx.root, 'etc/bootc/pre-stage.d/optin.hook'),
    '[Hook]\nPrepare=/bin/sh -c ". /usr/lib/os-release; echo opted in: $VERSION_ID"\nRootDirectory=${BOOTC_PRESTAGE_DEPLOYMENT}\n');
  const hooks = Object.fromEntries((await client.listHooks(staged)).map((h) => [h.name, h.extra['PrepareRoot']]));
  t.deepEqual(hooks, { host: '/', optin: staged, probe: staged });
  const p = await client.startPreStage(staged);
  const s = await waitRest(client, p);
  const text = (await client.getLog(p, { maxLines: 1000 })).join('\n');
  t.is(s.state, 'prepared', text);
  t.notRegex(text, /host sees \S+ 2/, 'the opted-out hook sees the host os-release');
  t.regex(text, /opted in: 2/);
});

test('new root - dry run shows the bwrap command line and runs nothing', async (t) => {
  const { sysroot, staged, client } = await rig(t, stagedTree());
  const p = await client.startPreStage(staged, { dryRun: true });
  const s = await waitRest(client, p);
  t.is(s.state, 'aborted');
  const status = s.hooks.find((h) => h.name === 'probe')!.status;
  t.regex(status, new RegExp(`^would run in ${staged}: \\S*bwrap --ro-bind ${staged} / --bind ${sysroot.bootedRoot}/etc /etc --bind \\S+/var /var --proc /proc --dev-bind /dev /dev --bind /sys /sys --bind /run /run --tmpfs /tmp --bind \\S+ \\S+ --chdir / --unshare-pid --die-with-parent -- /usr/libexec/newroot-test/probe$`));
  t.false(existsSync(path.join(sysroot.bootedRoot, 'etc', 'newroot-x')));
});

test('new root - no bwrap: the step fails naming the bubblewrap package, never runs on the host root', async (t) => {
  const { sysroot, staged, client } = await rig(t, stagedTree(), { BOOTC_PRESTAGE_BWRAP: '' });
  const p = await client.startPreStage(staged);
  const s = await waitRest(client, p);
  t.is(s.state, 'failed');
  t.regex(s.errorMessage, /bubblewrap.*'bubblewrap' package/);
  t.false(existsSync(path.join(sysroot.bootedRoot, 'etc', 'newroot-x')), 'nothing ran');
});

/** Host pids of every process carrying the transaction's marker, polled until `n` are there. */
async function stepProcesses(id: string, n: number): Promise<ProcessRef[]> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const found = await findProcessRefsByEnv({ BOOTC_PRESTAGE_TRANSACTION: id });
    if (found.length >= n) return found;
    if (Date.now() > deadline) throw new Error(`only ${found.length} processes of ${id}`);
    await sleep(50);
  }
}

const leavesNothing = test.macro({
  exec: async (t, how: 'timeout' | 'cancel') => {
    const hookText = `[Hook]\nPrepare=/usr/libexec/newroot-test/linger\nTimeoutSec=${how === 'timeout' ? 3 : 600}\n`;
    const { client, staged } = await rig(t, stagedTree({ 'linger.hook': hookText }, {}));
    const p = await client.startPreStage(staged);
    const id = (await client.transactionProperties(p)).id;
    // bwrap, its namespace's init, the script's sleep, the group child and the setsid child.
    const procs = await stepProcesses(id, 5);
    t.true(procs.length >= 5, JSON.stringify(procs));
    if (how === 'cancel') await client.cancel(p);
    const s = await waitRest(client, p);
    t.is(s.state, how === 'cancel' ? 'cancelled' : 'failed');
    t.is(s.hooks.find((h) => h.name === 'linger')!.result, how === 'cancel' ? 'cancelled' : 'timeout');
    const left = procs.filter((r) => isSameProcess(r.pid, r.startTime));
    t.deepEqual(left, [], 'every process of the step is gone, by pid and start time');
  },
  title: (_p, how: string) => `new root - a ${how} leaves no process of the step behind (checked by pid)`,
});
test(leavesNothing, 'timeout');
test(leavesNothing, 'cancel');

test('new root - a RootDirectory= that is not a directory, or writable by others, is InvalidHook naming file and line; nothing runs', async (t) => {
  const { ctx, staged, client } = await rig(t, stagedTree());
  const dir = path.join(ctx.dir, 'open-root');
  await fsp.mkdir(dir, { mode: 0o777 });
  await fsp.chmod(dir, 0o777);
  const etc = path.join(ctx.root, 'etc/bootc/pre-stage.d');
  await fsp.mkdir(etc, { recursive: true });
  for (const [root, why] of [[dir, /writable by group and others/], ['/nonexistent-root', /does not exist/], ['/etc/hostname', /is not a directory/]] as const) {
    await fsp.writeFile(path.join(etc, 'bad.hook'), `[Hook]\nDescription=bad\nPrepare=/bin/true\nRootDirectory=${root}\n`);
    const before = await client.listTransactions();
    const e = await t.throwsAsync(client.startPreStage(staged)) as Error & { errorName?: string };
    t.is(e.errorName, 'org.containers.bootc.PreStage.Error.InvalidHook');
    t.regex(e!.message, new RegExp(`bad\\.hook:4: RootDirectory=${root.replace(/[/.]/g, '\\$&')}`));
    t.regex(e!.message, why);
    t.deepEqual(await client.listTransactions(), before, 'no transaction was made');
  }
});

test('new root - a program that exists on the host but not in the root is refused', async (t) => {
  const { staged, client } = await rig(t, stagedTree({
    'hostonly.hook': '[Hook]\nPrepare=/usr/bin/bwrap --version\nRequired=no\n',
  }));
  t.true(existsSync('/usr/bin/bwrap'));
  const [h] = (await client.listHooks(staged)).filter((x) => x.name === 'hostonly');
  t.regex(String(h!.extra['Refused']), /Prepare= program \/usr\/bin\/bwrap in \S+ does not exist/);
});

// ---- retry ------------------------------------------------------------------------------------

/** A host hook that exits 75 `fails` times, then 0, counting its runs in `dir`/count. */
function retryHook(dir: string, fails: number, retrySec: number, retryMaxSec: number): string {
  const script = `n=$(cat ${dir}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${dir}/count; ` +
    `echo attempt $n; if [ $n -le ${fails} ]; then exit 75; fi; exit 0`;
  return `[Hook]\nPrepare=/bin/sh -c '${script}'\nRetrySec=${retrySec}\nRetryMaxSec=${retryMaxSec}\n`;
}

async function retryRig(t: import('ava').ExecutionContext, hookText: string) {
  const sysroot = await withSysroot(t, { deployments: 2 });
  const ctx = await withDaemon(t, {
    sysroot,
    etcHooks: {
      'first.hook': `[Hook]\nPrepare=/bin/sh -c 'echo run >> ${'$'}{COUNT_DIR}/first'\nEnvironment=COUNT_DIR=%DIR%\n`,
      'retry.hook': `${hookText}After=first\n`,
    },
    timeoutMs: 60_000,
  });
  const client = await PreStageClient.connect({ address: ctx.bus.address, callTimeoutMs: 30_000 });
  t.teardown(() => client.close());
  return { ctx, client, staged: sysroot.deployments[0]! };
}

async function countDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp('/tmp/retry-count-');
  await fsp.chmod(dir, 0o755);
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

function fixFirst(ctx: DaemonContext, dir: string): Promise<void> {
  const f = path.join(ctx.root, 'etc/bootc/pre-stage.d/first.hook');
  return fsp.readFile(f, 'utf8').then((s) => fsp.writeFile(f, s.replace('%DIR%', dir)));
}

test('retry - exit 75 twice then 0 succeeds at the third attempt, each after RetrySec=, with the status shown', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 2, 1, 60));
  await fixFirst(ctx, dir);
  const signals = await ctx.client.collectSignals({ interface: TRANSACTION_IFACE, member: 'HookProgress' });
  t.teardown(() => signals.stop());
  const p = await client.startPreStage(staged);
  const s = await waitRest(client, p);
  t.is(s.state, 'prepared', s.errorMessage);
  t.is(await fsp.readFile(path.join(dir, 'count'), 'utf8'), '3\n');
  t.is(await fsp.readFile(path.join(dir, 'first'), 'utf8'), 'run\n', 'the hook before it ran once');
  const recs = journalOf(ctx, s.id).filter((r) => 'hook' in r && r.hook === 'retry');
  const steps = recs.filter((r): r is Extract<JournalRecord, { t: 'step' }> => r.t === 'step');
  const retries = recs.filter((r): r is Extract<JournalRecord, { t: 'retry' }> => r.t === 'retry');
  t.is(steps.length, 3);
  t.deepEqual(retries.map((r) => r.attempt), [2, 3]);
  for (let k = 0; k < 2; k++) {
    // The interval as a lower bound from the journal's own clock: never an upper bound.
    t.true(retries[k]!.dueUsec - retries[k]!.usec >= 1e6 - 1000, 'the due time is RetrySec after the 75');
    t.true(steps[k + 1]!.usec >= retries[k]!.dueUsec, 'the next attempt started no earlier than due');
  }
  t.true(signals.signals.some((x) => x.body[0] === 'retry' && /^retrying in 1 s \(attempt 2\)$/.test(String(x.body[2]))));
  t.true(signals.signals.some((x) => x.body[0] === 'retry' && /^retrying in 1 s \(attempt 3\)$/.test(String(x.body[2]))));
});

test('retry - a window that closes turns 75 into a failure whose message says so', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 5, 2, 3));
  await fixFirst(ctx, dir);
  const p = await client.startPreStage(staged);
  const s = await waitRest(client, p);
  t.is(s.state, 'failed');
  t.regex(s.errorMessage, /required hook retry exited with status 75 \(try again later\) at attempt 2; its retry window of 3s \(RetryMaxSec=\) closes before the next attempt/);
  t.is(await fsp.readFile(path.join(dir, 'count'), 'utf8'), '2\n');
});

test('retry - RetryMaxSec= unset: 75 is a failure at once', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 5, 1, 0).replace('RetryMaxSec=0\n', ''));
  await fixFirst(ctx, dir);
  const s = await waitRest(client, await client.startPreStage(staged));
  t.is(s.state, 'failed');
  t.regex(s.errorMessage, /status 75 \(try again later\); RetryMaxSec= is 0, so it is not retried/);
});

test('retry - Cancel cuts the wait', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 5, 600, 3600));
  await fixFirst(ctx, dir);
  const p = await client.startPreStage(staged);
  for (;;) {
    const st = await client.transactionProperties(p);
    if (st.hooks.some((h) => h.name === 'retry' && h.status.startsWith('retrying in'))) break;
    await sleep(50);
  }
  await client.cancel(p);
  const s = await waitRest(client, p);
  t.is(s.state, 'cancelled');
  t.regex(s.hooks.find((h) => h.name === 'retry')!.status, /cancelled while waiting to retry \(attempt 2\)/);
});

test('retry - the phase deadline cuts the retries: no wait outlasts it, and the phase times out', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 100, 1, 3600));
  await fixFirst(ctx, dir);
  const s = await waitRest(client, await client.startPreStage(staged, { timeoutSec: 3 }));
  t.is(s.state, 'failed');
  t.is(s.error, 'org.containers.bootc.PreStage.Error.Timeout');
  t.regex(s.errorMessage, /phase deadline|phase exceeded its 3s deadline/);
  const runs = Number(await fsp.readFile(path.join(dir, 'count'), 'utf8'));
  t.true(runs >= 1 && runs < 100, `${runs} attempts`);
});

test('retry - a SIGKILL of the daemon during the wait resumes the wait after the restart, not the work', async (t) => {
  const dir = await countDir(t);
  const { ctx, client, staged } = await retryRig(t, retryHook(dir, 1, 3, 600));
  await fixFirst(ctx, dir);
  const p = await client.startPreStage(staged);
  const id = (await client.transactionProperties(p)).id;
  for (;;) {
    if (journalOf(ctx, id).some((r) => r.t === 'retry')) break;
    await sleep(20);
  }
  await ctx.daemon.kill('SIGKILL');
  await ctx.restart();
  const c2 = await PreStageClient.connect({ address: ctx.bus.address, callTimeoutMs: 30_000 });
  t.teardown(() => c2.close());
  const s = await waitRest(c2, p);
  t.is(s.state, 'prepared', s.errorMessage);
  t.is(await fsp.readFile(path.join(dir, 'count'), 'utf8'), '2\n', 'one attempt before the crash, one after');
  t.is(await fsp.readFile(path.join(dir, 'first'), 'utf8'), 'run\n', 'the hook before it was not run again');
  const recs = journalOf(ctx, id);
  const retry = recs.find((r): r is Extract<JournalRecord, { t: 'retry' }> => r.t === 'retry')!;
  const steps = recs.filter((r): r is Extract<JournalRecord, { t: 'step' }> => r.t === 'step' && r.hook === 'retry');
  t.is(steps.length, 2);
  t.true(steps[1]!.usec >= retry.dueUsec, 'the resumed attempt waited until its due time');
});

test('retry - a SIGKILL during a commit step\'s wait resumes that wait; the commit steps before it are not run again', async (t) => {
  const dir = await countDir(t);
  const script = `n=$(cat ${dir}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${dir}/count; if [ $n -le 1 ]; then exit 75; fi; exit 0`;
  const { ctx, client, staged } = await retryRig(t,
    `[Hook]\nPrepare=/bin/true\nCommit=/bin/sh -c '${script}'\nRetrySec=3\nRetryMaxSec=600\n`);
  const first = path.join(ctx.root, 'etc/bootc/pre-stage.d/first.hook');
  await fsp.writeFile(first, `[Hook]\nPrepare=/bin/true\nCommit=/bin/sh -c 'echo run >> ${dir}/first'\n`);
  const p = await client.startPreStage(staged);
  t.is((await waitRest(client, p)).state, 'prepared');
  await client.commitPreStage(staged);
  const id = (await client.transactionProperties(p)).id;
  for (;;) {
    if (journalOf(ctx, id).some((r) => r.t === 'retry' && r.phase === 'commit')) break;
    await sleep(20);
  }
  await ctx.daemon.kill('SIGKILL');
  await ctx.restart();
  const c2 = await PreStageClient.connect({ address: ctx.bus.address, callTimeoutMs: 30_000 });
  t.teardown(() => c2.close());
  let s = await c2.transactionProperties(p);
  const deadline = Date.now() + 60_000;
  while (!(s.phase === 'commit' && RESTING.includes(s.state)) && Date.now() < deadline) {
    await sleep(50);
    s = await c2.transactionProperties(p);
  }
  t.is(s.state, 'committed', s.errorMessage);
  t.is(await fsp.readFile(path.join(dir, 'count'), 'utf8'), '2\n');
  t.is(await fsp.readFile(path.join(dir, 'first'), 'utf8'), 'run\n', 'the commit step before it ran once');
  t.deepEqual(s.hooks.map((h) => [h.name, h.result]), [['first', 'success'], ['retry', 'success']]);
});
