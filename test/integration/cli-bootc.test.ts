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
import { BOOTC_STANDIN_DIR, hookFile, jsonLines, runCli, spawnCli, waitForFile } from './cli-harness.js';

interface Bootc {
  env: Record<string, string>;
  /** Stands for /run/ostree, for both the stand-in and bootc-prestage. */
  runDir: string;
  /** The lock file in it. */
  lockFile: string;
  /** The calls the stand-in got, each as its argument list. */
  calls(): Promise<string[][]>;
}

async function standIn(t: ExecutionContext, sysroot: Sysroot, more: Record<string, string> = {}): Promise<Bootc> {
  const dir = await tmpDir(t, { mode: 0o755 });
  const log = path.join(dir, 'bootc-calls');
  const runDir = path.join(dir, 'run-ostree');
  return {
    runDir,
    lockFile: path.join(runDir, 'staged-deployment-locked'),
    env: {
      PATH: `${BOOTC_STANDIN_DIR}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
      BOOTC_STANDIN_SYSROOT: sysroot.path,
      BOOTC_STANDIN_LOG: log,
      BOOTC_STANDIN_CONFIG: path.join(dir, 'no-config'),
      // Never the machine's own /run/ostree and /run/bootc-prestage.
      BOOTC_STANDIN_RUN_DIR: runDir,
      BOOTC_PRESTAGE_OSTREE_RUN_DIR: runDir,
      BOOTC_PRESTAGE_RUNTIME_DIR: path.join(dir, 'run-bootc-prestage'),
      BOOTC_PRESTAGE_GATE_RECORDS: path.join(dir, 'discarded.jsonl'),
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
  // The stand-in's stage is not locked: start --staged locks it for the
  // prepare phase, checks bootc now reports it locked, and unlocks it again
  // after the success.
  t.regex(r.stderr, /bootc left the staged deployment unlocked \(status.staged.downloadOnly is false\); locked its finalization/);
  t.regex(r.stderr, new RegExp(`Staged deployment: ${sysroot.deployments[0]!.replace(/\./g, '\\.')}`));
  t.regex(r.stderr, /the pre-stage succeeded: unlocked the staged deployment's finalization again/);
  t.regex(r.stdout, new RegExp(`prepare of ${sysroot.deployments[0]!.replace(/\./g, '\\.')}\n`));
  t.true(existsSync(path.join(dir, 'prepared')));
  t.false(existsSync(bootc.lockFile));
  t.deepEqual(await bootc.calls(), [['status', '--format=json'], ['status', '--format=json']]);
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

  const text = await progressText;
  await validProgress(t, text);
  const events = jsonLines(text);
  // One stream: our Start, bootc's events (relayed, its own Start dropped)
  // and ours, in order.
  t.deepEqual(events.map((e) => e['type'] === 'Start' ? 'Start' : e['task']),
    ['Start', 'pulling', ...Array(events.length - 3).fill('pre-stage'), 'finalize']);
  const ours = events.filter((e) => e['task'] === 'pre-stage');
  t.deepEqual(ours.at(-1)!['subtasks'], [{ subtask: 'hook', description: 'from-image', id: 'from-image', completed: true }]);
  t.like(ours.at(-1), { steps: 1, stepsTotal: 1, description: 'Pre-stage prepare' });
  t.false(existsSync(bootc.lockFile), 'from-downloaded unlocked the stage');
  // The hooks table says where each prepare runs: the image's hook in the new root.
  const listed = await runCli(['hooks', sysroot.deployments[0]!], { address: ctx.bus.address });
  t.is(listed.code, 0, listed.stderr);
  t.regex(listed.stdout, /^NAME\s+REQUIRED\s+TIMEOUT\s+PREPARE\s+RUNS IN\s+SOURCE$/m);
  t.regex(listed.stdout, /^from-image\s+yes\s+\S+\s+.+\s+new root\s+\S+from-image\.hook$/m, listed.stdout);
});

/** The stream is valid against bootc's schema, with exactly one Start, first (test/fixtures/bootc/validate-progress.py). */
async function validProgress(t: ExecutionContext, text: string): Promise<void> {
  const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = execFile('python3', [path.join(BOOTC_STANDIN_DIR, 'validate-progress.py')], (err, stdout, stderr) => {
      resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, out: stdout + stderr });
    });
    child.stdin!.end(text);
  });
  t.is(r.code, 0, `${r.out}\n--- stream:\n${text}`);
}

test.serial('--progress-fd - start, commit, abort and reconcile each write one valid stream (bootc\'s schema, one Start)', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 3 },
    etcHooks: {
      'a.hook': hookFile({ prepare: 'true', commit: 'true', abort: 'true' }),
      'b.hook': hookFile({ prepare: 'true', commit: 'true', abort: 'true', after: 'a' }),
    },
  });
  const sysroot = staged(ctx) as Sysroot & { undeploy(i: number): Promise<void> };
  const [d0, d1] = sysroot.deployments as [string, string];
  const withFd = async (args: string[]) => {
    const cli = spawnCli([...args, '--progress-fd', '3'], { address: ctx.bus.address, extraFds: ['pipe'] });
    const text = readAll(cli.child.stdio[3] as Readable);
    const r = await cli.done;
    t.is(r.code, 0, `${args.join(' ')}: ${r.stdout}\n${r.stderr}`);
    return text;
  };
  for (const args of [['start', d0], ['commit', d0], ['start', d1], ['abort', d1], ['start', d1]]) {
    const text = await withFd(args);
    await validProgress(t, text);
    const last = jsonLines(text).at(-1)!;
    t.like(last, { type: 'ProgressSteps', steps: 2, stepsTotal: 2 }, args.join(' '));
    t.deepEqual((last['subtasks'] as { id: string; completed: boolean }[]).map((x) => [x.id, x.completed]),
      args[0] === 'abort' ? [['b', true], ['a', true]] : [['a', true], ['b', true]]);
  }
  // d1 is prepared again; its deployment goes away: reconcile aborts it.
  await sysroot.undeploy(sysroot.deployments.indexOf(d1));
  const text = await withFd(['reconcile']);
  await validProgress(t, text);
  t.like(jsonLines(text).at(-1), { description: 'Pre-stage abort', steps: 2 });
});

test.serial('--progress-fd - a hook\'s bytes-form STATUS lines on fd 3 become ProgressBytes events in the valid stream', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  // A real /bin/sh hook on the host root: it reports bytes as the
  // bound-images hook does (docs/hooks.md, "Bytes progress") and waits for
  // the test to have seen each report in the stream before the next one.
  const script = [
    'echo "STATUS=Reading the bound images" >&3',
    'echo "STATUS=pulling app:2.0 120/300 MB, pulling db:16 512/2048 kB (2/4 images ready)" >&3',
    waitForFile(`${dir}/seen-1`),
    'echo "STATUS=Pulling bound image 4/4: cache:1" >&3',
    'echo "STATUS=pulling db:16 2048/2048 kB, pulling cache:1 5/20 MB (2/4 images ready)" >&3',
    waitForFile(`${dir}/seen-2`),
    'echo "STATUS=4 bound images ready" >&3',
  ].join('; ');
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 }, etcHooks: { 'pull.hook': hookFile({ prepare: script }) } });
  const cli = spawnCli(['start', staged(ctx).deployments[0]!, '--progress-fd', '3'], { address: ctx.bus.address, extraFds: ['pipe'] });
  const lines: string[] = [];
  const fd3 = cli.child.stdio[3] as Readable;
  fd3.setEncoding('utf8');
  let rest = '';
  const read = new Promise<void>((resolve) => {
    fd3.on('data', (chunk: string) => {
      rest += chunk;
      const parts = rest.split('\n');
      rest = parts.pop()!;
      for (const l of parts) {
        lines.push(l);
        const ev = JSON.parse(l) as Record<string, unknown>;
        if (ev['type'] !== 'ProgressBytes') continue;
        const ids = (ev['subtasks'] as { id: string }[]).map((s) => s.id).join(' ');
        if (ids === 'app:2.0 db:16') void fsp.writeFile(`${dir}/seen-1`, '');
        if (ids === 'app:2.0 db:16 cache:1') void fsp.writeFile(`${dir}/seen-2`, '');
      }
    });
    fd3.on('end', () => resolve());
  });
  const r = await cli.done;
  await read;
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const text = `${lines.join('\n')}\n`;
  await validProgress(t, text);
  const events = jsonLines(text);
  const bytes = events.filter((e) => e['type'] === 'ProgressBytes');
  const base = { task: 'pulling', description: 'Pre-stage hook pull', id: 'pull', bytesCached: 0, stepsCached: 0, stepsTotal: 4 };
  const sub = (name: string, b: number, total: number) => ({ subtask: 'image', description: name, id: name, bytesCached: 0, bytes: b, bytesTotal: total });
  t.deepEqual(bytes, [
    { type: 'ProgressBytes', ...base, bytes: 120_512_000, bytesTotal: 302_048_000, steps: 2,
      subtasks: [sub('app:2.0', 120_000_000, 300_000_000), sub('db:16', 512_000, 2_048_000)] },
    // app:2.0 is no longer listed: it has finished.
    { type: 'ProgressBytes', ...base, bytes: 307_048_000, bytesTotal: 322_048_000, steps: 2,
      subtasks: [sub('app:2.0', 300_000_000, 300_000_000), sub('db:16', 2_048_000, 2_048_000), sub('cache:1', 5_000_000, 20_000_000)] },
    // The hook succeeded: its final event, every image complete.
    { type: 'ProgressBytes', ...base, bytes: 322_048_000, bytesTotal: 322_048_000, steps: 4,
      subtasks: [sub('app:2.0', 300_000_000, 300_000_000), sub('db:16', 2_048_000, 2_048_000), sub('cache:1', 20_000_000, 20_000_000)] },
  ]);
  t.like(events.at(-1), { type: 'ProgressSteps', task: 'pre-stage', steps: 1, stepsTotal: 1 });
});

test.serial('upgrade - bootc#2425: --download-only of an image already staged leaves it unlocked; upgrade locks it, and a failed prepare keeps it locked', async (t) => {
  // The image's hook runs in the new root: the deployment has a userspace (its /bin/sh).
  const ctx = await withDaemon(t, { sysroot: { deployments: 1, userspace: true } });
  const sysroot = staged(ctx);
  await publishImage(t, sysroot, {
    'usr/lib/bootc/pre-stage.d/gate.hook': hookFile({ prepare: 'exit 1' }),
  });
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_DEPLOY_REF: 'testos/next', BOOTC_STANDIN_BUG_2425: '1' });
  // A plain `bootc upgrade` staged the image, unlocked.
  await new Promise<void>((resolve, reject) => execFile('bootc', ['upgrade'], { env: { ...process.env, ...bootc.env } },
    (err) => (err ? reject(err) : resolve())));
  t.false(existsSync(bootc.lockFile));
  const r = await runCli(['upgrade', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 1, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /Image specification is unchanged/);
  t.regex(r.stderr, /bootc left the staged deployment unlocked \(status.staged.downloadOnly is false\); locked its finalization/);
  t.regex(r.stderr, /the staged deployment stays locked and is discarded at the next reboot/);
  t.true(existsSync(bootc.lockFile), 'the stage is locked: ostree discards it at reboot');
  t.deepEqual((await bootc.calls()).map((c) => c.slice(0, 2)),
    [['upgrade'], ['upgrade', '--download-only'], ['status', '--format=json'], ['status', '--format=json']]);
});

test.serial('start --staged - a bootc without status.staged.downloadOnly: the lock file decides, and a lock bootc wrote stays', async (t) => {
  const ctx = await withDaemon(t, { sysroot: { deployments: 2 } });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_NO_DOWNLOAD_ONLY: '1' });
  await fsp.mkdir(bootc.runDir, { recursive: true });
  await fsp.writeFile(bootc.lockFile, '');
  const r = await runCli(['start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 0, r.stderr);
  t.notRegex(r.stderr, /locked its finalization|unlocked/);
  t.true(existsSync(bootc.lockFile), 'not ours to lift: bootc upgrade --from-downloaded does');
  t.deepEqual(await bootc.calls(), [['status', '--format=json']]);
});

test.serial('start --staged - a failed prepare keeps the lock start --staged wrote', async (t) => {
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 }, etcHooks: { 'no.hook': hookFile({ prepare: 'exit 3' }) },
  });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot);
  const r = await runCli(['start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /the staged deployment stays locked \(.*staged-deployment-locked\): ostree discards it at the next reboot/);
  t.true(existsSync(bootc.lockFile));
});

test.serial('start --staged - a stage of bootc\'s composefs backend: a clear "not supported yet" error naming the backend, nothing run', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const ctx = await withDaemon(t, {
    sysroot: { deployments: 2 }, etcHooks: { 'mark.hook': hookFile({ prepare: `touch ${dir}/ran` }) },
  });
  const sysroot = staged(ctx);
  const bootc = await standIn(t, sysroot, { BOOTC_STANDIN_COMPOSEFS: '1' });
  const r = await runCli(['start', '--staged', '--sysroot', sysroot.path], { address: ctx.bus.address, env: bootc.env });
  t.is(r.code, 1);
  t.is(r.stderr, "bootc-prestage: the staged deployment is on bootc's composefs backend (status.staged.composefs): "
    + 'bootc-prestage supports only the ostree backend yet, so it cannot prepare or lock this stage');
  t.false(existsSync(path.join(dir, 'ran')));
  t.false(existsSync(bootc.lockFile));
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
