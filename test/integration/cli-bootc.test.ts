/**
 * The bootc side: `start --staged` and `upgrade`, with the stand-in bootc
 * of test/fixtures/bootc first on PATH (bootc itself cannot be installed
 * here; the stand-in answers `bootc status --format=json` from the test's
 * real ostree sysroot and records every call), and `--progress-fd` in
 * bootc's own progress format.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import type { Sysroot } from '../helpers/ostree.js';
import { tmpDir, writeFiles } from '../helpers/tmp.js';
import { BOOTC_STANDIN_DIR, hookFile, jsonLines, runCli, spawnCli } from './cli-harness.js';

interface Bootc {
  env: Record<string, string>;
  /** The calls the stand-in got, each as its argument list. */
  calls(): Promise<string[][]>;
}

async function standIn(t: ExecutionContext, sysroot: Sysroot, more: Record<string, string> = {}): Promise<Bootc> {
  const dir = await tmpDir(t, { mode: 0o755 });
  const log = path.join(dir, 'bootc-calls');
  return {
    env: {
      PATH: `${BOOTC_STANDIN_DIR}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
      BOOTC_STANDIN_SYSROOT: sysroot.path,
      BOOTC_STANDIN_LOG: log,
      ...more,
    },
    async calls() {
      const text = await fsp.readFile(log, 'utf8').catch(() => '');
      return text.split('\n').filter((l) => l !== '').map((l) => l.split('\t'));
    },
  };
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, (err, stdout, stderr) => (err ? reject(new Error(`${cmd}: ${err.message} ${stderr}`)) : resolve(stdout)));
  });
}

/**
 * "Publish a new image": commit the booted tree plus `files` to the branch
 * testos/next, which the stand-in's `upgrade --download-only` deploys.
 */
async function publishImage(t: ExecutionContext, sysroot: Sysroot, files: Record<string, string>): Promise<void> {
  const overlay = await tmpDir(t);
  await writeFiles(overlay, files);
  await run('ostree', [`--repo=${sysroot.repo}`, 'commit', '--branch=testos/next', `--tree=ref=${sysroot.osname}/stable`,
    `--tree=dir=${overlay}`, '--owner-uid=0', '--owner-gid=0', '--subject=next image']);
}

function staged(ctx: DaemonContext): Sysroot {
  return ctx.sysroot as Sysroot;
}

test.serial('start --staged - prepares the deployment bootc reports as staged', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    // The image's hook runs in the staged deployment (busybox userspace), with the test's directory bound in.
    sysroot: { deployments: 2, userspace: true, hooks: { 'mark.hook': `${hookFile({ prepare: `touch ${dir}/prepared` })}BindPaths=${dir}\n` } },
  });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot);
  const r = await runCli(['start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, `Staged deployment: ${sysroot.deployments[0]}`);
  t.regex(r.stdout, new RegExp(`prepare of ${sysroot.deployments[0]!.replace(/\./g, '\\.')}\n`));
  t.true(existsSync(path.join(dir, 'prepared')));
  t.deepEqual(await bootc.calls(), [['status', '--format=json']]);
});

test.serial('start --staged - a bootc without ostree.stateroot (older versions): the deployment is found on disk', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_NO_STATEROOT: '1' });
  const r = await runCli(['--json', 'start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 0, r.stderr);
  t.is(jsonLines(r.stdout)[0]!['deployment'], sysroot.deployments[0]);
});

test.serial('start --staged - nothing staged exits 4 and says what to run', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const sysroot = staged(ctx);
  // Booted into the newest deployment: nothing newer is staged.
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_BOOTED: sysroot.deployments[0]! });
  const r = await runCli(['start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 4);
  t.is(r.stderr, "bootc-prestage: bootc has no staged deployment: run 'bootc upgrade --download-only' first (or use 'bootc-prestage upgrade')");
});

test.serial('start --staged - no bootc on PATH exits 1 with the reason', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  // A PATH with setpriv (the harness runs the command through it) and no bootc.
  const bin = await tmpDir(t, { mode: 0o755 });
  await fsp.symlink(await whichSetpriv(), path.join(bin, 'setpriv'));
  const r = await runCli(['start', '--staged'], { address: ctx.bus.address, env: { PATH: bin } });
  t.is(r.code, 1);
  t.regex(r.stderr, /^bootc-prestage: cannot run bootc: not found in PATH/);
});

async function whichSetpriv(): Promise<string> {
  for (const d of (process.env['PATH'] ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(d, 'setpriv');
    if (existsSync(p)) return p;
  }
  throw new Error('setpriv is not on PATH');
}

async function readAll(stream: Readable | null | undefined): Promise<string> {
  if (!stream) return '';
  let s = '';
  stream.setEncoding('utf8');
  for await (const chunk of stream) s += chunk as string;
  return s;
}

test.serial('upgrade - download-only, the prepare phase, then from-downloaded; --progress-fd speaks bootc\'s format', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, { sysroot: { deployments: 1, userspace: true } });
  const sysroot = staged(ctx);
  await publishImage(t, sysroot, {
    'usr/lib/bootc/pre-stage.d/from-image.hook': `${hookFile({ prepare: `echo ran > ${dir}/image-hook` })}BindPaths=${dir}\n`,
  });
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_DEPLOY_REF: 'testos/next' });
  const cli = spawnCli(['upgrade', '--apply', '--sysroot', sysroot.path, '--progress-fd', '3'],
    { address: ctx.bus.address, env: bootc.env, extraFds: ['pipe'] });
  const progressText = readAll(cli.child.stdio[3] as Readable);
  const r = await cli.done;
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  await sysroot.refresh();
  t.is(sysroot.deployments.length, 2, 'the stand-in staged the new image');
  t.is(await fsp.readFile(path.join(dir, 'image-hook'), 'utf8'), 'ran\n', 'the hook the new image ships ran');
  t.deepEqual(await bootc.calls(), [
    ['upgrade', '--download-only', '--progress-fd', '3'],
    ['status', '--format=json'],
    ['upgrade', '--from-downloaded', '--apply', '--progress-fd', '3'],
  ]);
  t.regex(r.stdout, /Running: bootc upgrade --download-only --progress-fd 3\n/);
  t.regex(r.stdout, new RegExp(`Staged deployment: ${sysroot.deployments[0]!.replace(/\./g, '\\.')}\n`));

  const events = jsonLines(await progressText);
  // bootc's own events (from the stand-in) and ours share the descriptor, in order.
  t.deepEqual(events.map((e) => e['task']), ['pulling', 'pre-stage', 'pre-stage', 'pre-stage', 'finalize']);
  for (const e of events) {
    t.deepEqual(Object.keys(e), ['type', 'apiVersion', 'task', 'description', 'id', 'stepsCached', 'steps', 'stepsTotal', 'subtasks']);
    t.is(e['type'], 'ProgressSteps');
    t.is(e['apiVersion'], 'org.containers.bootc.progress/v1');
  }
  const ours = events.filter((e) => e['task'] === 'pre-stage');
  t.deepEqual(ours.map((e) => [e['steps'], e['stepsTotal'], e['subtasks']]), [
    [0, 1, [{ subtask: 'hook', description: 'from-image', id: 'from-image', completed: false }]],
    [1, 1, [{ subtask: 'hook', description: 'from-image', id: 'from-image', completed: true }]],
    [1, 1, []],
  ]);
});

test.serial('upgrade - a failed prepare phase stops before unlocking: exit 1, the stage stays locked', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 1, userspace: true } });
  const sysroot = staged(ctx);
  await publishImage(t, sysroot, {
    'usr/lib/bootc/pre-stage.d/gate.hook': hookFile({ prepare: 'exit 1' }),
  });
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_DEPLOY_REF: 'testos/next' });
  const r = await runCli(['upgrade', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 1, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stderr, /^bootc-prestage: the prepare phase failed \[HookFailed\]: required hook gate .*; not finalizing the upgrade: the staged deployment stays locked and is discarded at the next reboot/);
  t.deepEqual((await bootc.calls()).map((c) => c.slice(0, 2)), [['upgrade', '--download-only'], ['status', '--format=json']]);
});

test.serial('upgrade - bootc --download-only failing stops at once with exit 1', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 1 } });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_FAIL: 'download-only' });
  const r = await runCli(['upgrade', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 1);
  t.regex(r.stderr, /bootc-prestage: bootc upgrade --download-only failed \(exit status 1\)$/);
  t.deepEqual(await bootc.calls(), [['upgrade', '--download-only']]);
});

test.serial('upgrade - no update available: bootc stages nothing, exit 0 with nothing run', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 1 } });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot);
  const r = await runCli(['--json', 'upgrade', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 0, r.stderr);
  const evs = jsonLines(r.stdout);
  t.like(evs.pop(), { event: 'finished', state: 'no-update' });
  t.deepEqual(await bootc.calls(), [['upgrade', '--download-only'], ['status', '--format=json']]);
});
