/**
 * Under a real systemd (systemd-nspawn --boot of a Debian 12 root made with
 * mmdebstrap, test/helpers/nspawn.ts): the package's units doing their job.
 *
 * - D-Bus activation through systemd (SystemdService=, Type=dbus), idle
 *   exit and re-activation, Restart= after a SIGKILL with the crash
 *   recovery, reconcile at boot (and the gate's record shown by it);
 * - the boot gate at `systemctl poweroff`/`reboot`, ordered before
 *   ostree-finalize-staged.service, on every staging path: `bootc-prestage
 *   upgrade`, `bootc upgrade` + reboot, `bootc switch`, the auto-update
 *   timer's service with the package's drop-in, a plain ostree deploy with
 *   /run/ostree/staged-deployment written, and `bootc upgrade --apply`
 *   (stage, then reboot at once); with a failing hook each ends discarded
 *   (recorded), with passing hooks finalized;
 * - the gate's safe answers with no daemon, a crashed one, a corrupt state
 *   file;
 * - the unit's hardening with a hook that uses podman: an /etc hook's
 *   prepare step, run by the activated daemon under its unit as shipped,
 *   loads an OCI archive (built on the host, FROM scratch) into the
 *   machine's /var/lib/containers, with podman reading
 *   /etc/containers/storage.conf and using its runroot under /run, and its
 *   write to /usr fails (ProtectSystem=yes).
 *
 * What cannot run here, and why (details in test/helpers/nspawn.ts):
 * ostree cannot stage or finalize in a container (no booted ostree system,
 * no boot loader), so "staged" is the bootc stand-in writing
 * /run/ostree/staged-deployment after a real `ostree admin deploy`, and
 * ostree-finalize-staged.service is a stand-in with ostree's ordering that
 * records whether it would have finalized or discarded. A plain `ostree
 * admin deploy --stage` is the same: ostree refuses --stage outside a
 * booted ostree system, so that path is `ostree admin deploy` plus the
 * staged-deployment file, with the stand-in bootc reporting it (on a real
 * system without bootc the gate reads `ostree admin status`). The podman
 * hook starts no container (`podman run`): crun cannot set rlimits in this
 * sandbox (setrlimit RLIMIT_NOFILE/NPROC: Operation not permitted,
 * docs/platform-notes.md), so only podman's storage work is tested under
 * the hardening; the machine's podman uses the vfs driver, since its root
 * is an overlay mount (test/helpers/nspawn.ts).
 *
 * Needs root, systemd-nspawn, mmdebstrap and the package mirror (first run
 * only; the root filesystem is cached in /var/cache/bootc-prestage-tests).
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Machine, unavailable } from '../helpers/nspawn.js';
import { removeTree, sh } from '../helpers/containers.js';
import { makeTmpDir } from '../helpers/tmp.js';

const why = unavailable();
const serial = why ? test.serial.skip : test.serial;
if (why) test('systemd tests', (t) => { t.log(`skipped: ${why}`); t.pass(); });

let machine: Machine | null = null;
let creating: Promise<Machine> | null = null;
let generation = 0;

/** One machine for the whole file (made once; a failure to make it fails every test at once). */
async function m(): Promise<Machine> {
  creating ??= Machine.create().then((x) => { machine = x; return x; });
  return creating;
}

test.after.always(async () => {
  if (machine) await machine.dispose();
});

async function booted(): Promise<Machine> {
  const x = await m();
  if (!x.running) await x.boot();
  return x;
}

async function setHook(x: Machine, kind: 'pass' | 'fail' | 'slow' | 'sleep3'): Promise<void> {
  const prepare = { pass: '/bin/true', fail: '/bin/false', slow: '/bin/sleep 120', sleep3: '/bin/sleep 3' }[kind];
  const file = path.join(x.root, 'etc/bootc/pre-stage.d/t.hook');
  await fsp.writeFile(file, `[Hook]\nDescription=test hook (${kind})\nPrepare=${prepare}\nAbort=/bin/true\n`, { mode: 0o644 });
  await fsp.chmod(file, 0o644);
}

async function setConfig(x: Machine, text: string): Promise<void> {
  await fsp.writeFile(path.join(x.root, 'etc/bootc-prestage/config'), text, { mode: 0o644 });
}

async function finalizeLog(x: Machine): Promise<string[]> {
  return (await x.read('var/lib/test-finalize/log')).split('\n').filter(Boolean);
}

async function records(x: Machine): Promise<Record<string, unknown>[]> {
  return (await x.read('var/lib/bootc-prestage-gate/discarded.jsonl')).split('\n').filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function show(x: Machine, unit: string, props: string[]): Promise<Record<string, string>> {
  const r = await x.exec(['systemctl', 'show', unit, ...props.map((p) => `-p${p}`)]);
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** Until the trigger service has run for the latest staging (a new invocation that is no longer running). */
async function triggerDone(x: Machine, before: string): Promise<Record<string, string>> {
  for (let i = 0; i < 600; i++) {
    const s = await show(x, 'bootc-prestage-staged.service', ['InvocationID', 'ActiveState', 'Result', 'ExecMainStatus']);
    if (s['InvocationID'] && s['InvocationID'] !== before && (s['ActiveState'] === 'inactive' || s['ActiveState'] === 'failed')) return s;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('the trigger did not run');
}

async function invocation(x: Machine): Promise<string> {
  return (await show(x, 'bootc-prestage-staged.service', ['InvocationID']))['InvocationID'] ?? '';
}

/** Shut down; return what the finalize stand-in did and the gate's new record, if any. */
async function shutdownOutcome(x: Machine, verb: 'poweroff' | 'reboot' = 'poweroff', alreadyRequested = false) {
  const before = (await finalizeLog(x)).length;
  const recBefore = (await records(x)).length;
  await x.shutdown(verb, { alreadyRequested });
  const log = await finalizeLog(x);
  return { finalize: log.slice(before), record: (await records(x)).slice(recBefore)[0] ?? null };
}

async function publish(x: Machine): Promise<void> {
  generation++;
  await x.publish(generation);
}

function noteTime(t: ExecutionContext, started: number): void {
  t.log(`${((Date.now() - started) / 1000).toFixed(1)} s`);
}

serial('D-Bus activation through systemd: Type=dbus, the bus name, idle exit and re-activation; reconcile ran at boot', async (t) => {
  t.timeout(600_000);
  const started = Date.now();
  const x = await booted();
  const rec = await show(x, 'bootc-prestage-reconcile.service', ['ActiveState', 'Result']);
  t.deepEqual(rec, { ActiveState: 'active', Result: 'success' }, 'the preset enabled reconcile and it ran at boot');
  t.is((await show(x, 'bootc-prestage-gate.service', ['ActiveState']))['ActiveState'], 'active', 'the gate is armed from boot');
  // A short idle time for this test only (a drop-in, as an admin would).
  await fsp.mkdir(path.join(x.root, 'etc/systemd/system/bootc-prestaged.service.d'), { recursive: true });
  await fsp.writeFile(path.join(x.root, 'etc/systemd/system/bootc-prestaged.service.d/idle.conf'),
    '[Service]\nExecStart=\nExecStart=/usr/libexec/bootc-prestaged --bus system --idle-exit-sec 2\n');
  await x.exec(['systemctl', 'daemon-reload']);
  await x.exec(['systemctl', 'stop', 'bootc-prestaged.service']);
  const call = await x.exec(['busctl', 'get-property', 'org.containers.bootc.PreStage', '/org/containers/bootc/PreStage',
    'org.containers.bootc.PreStage', 'State']);
  t.is(call.stdout.trim(), 's "idle"', call.stderr);
  const s = await show(x, 'bootc-prestaged.service', ['ActiveState', 'Type', 'BusName', 'MainPID']);
  t.like(s, { ActiveState: 'active', Type: 'dbus', BusName: 'org.containers.bootc.PreStage' });
  const owner = await x.exec(['busctl', 'status', '--no-pager', 'org.containers.bootc.PreStage']);
  t.regex(owner.stdout, new RegExp(`^PID=${s['MainPID']}$`, 'm'), 'the unit\'s main process owns the name');
  t.regex(owner.stdout, /^Unit=bootc-prestaged\.service$/m);
  // Idle exit, then activation again by the next call.
  let state = '';
  for (let i = 0; i < 100 && state !== 'inactive'; i++) {
    await new Promise((r) => setTimeout(r, 200));
    state = (await show(x, 'bootc-prestaged.service', ['ActiveState']))['ActiveState']!;
  }
  t.is(state, 'inactive', 'exited after 2 s idle');
  const again = await x.exec(['bootc-prestage', 'status']);
  t.is(again.code, 0, again.stderr);
  t.regex(again.stdout, /^State: idle$/m);
  t.is((await show(x, 'bootc-prestaged.service', ['ActiveState']))['ActiveState'], 'active', 're-activated');
  await fsp.rm(path.join(x.root, 'etc/systemd/system/bootc-prestaged.service.d'), { recursive: true });
  await x.exec(['systemctl', 'daemon-reload']);
  noteTime(t, started);
});

/**
 * The prepare step of the podman hardening test's /etc hook, run on the
 * host root inside bootc-prestaged.service (its mount namespace and
 * hardening, see packaging/systemd/bootc-prestaged.service). It records
 * what it saw in /var/lib/test-podman/result and exits non-zero when
 * podman or the hardening did not behave. No `podman run`: crun cannot set
 * rlimits in this sandbox (docs/platform-notes.md), so nothing here starts
 * a container; storage writes, the runroot and config reads are what
 * image hooks (bound-images) need.
 */
const PODMAN_HOOK = `#!/bin/sh
set -u
r=/var/lib/test-podman/result
: > "$r"
ok=0
echo "cgroup=$(grep -o '[^/]*\\.service$' /proc/self/cgroup | head -1)" >> "$r"
echo "info=$(podman info --format '{{.Store.GraphDriverName}} {{.Store.GraphRoot}} {{.Store.RunRoot}}' 2>&1)" >> "$r" || ok=1
if podman load -i /var/lib/test-podman/image.tar > /var/lib/test-podman/load.log 2>&1; then
    echo "load=$(grep '^Loaded image' /var/lib/test-podman/load.log)" >> "$r"
else
    echo "load=failed: $(tr '\\n' ' ' < /var/lib/test-podman/load.log)" >> "$r"; ok=1
fi
if podman image exists localhost/prestage-hardening:1; then echo "exists=yes" >> "$r"; else echo "exists=no" >> "$r"; ok=1; fi
echo "images=$(podman images --format '{{.Repository}}:{{.Tag}}' 2>&1 | tr '\\n' ' ')" >> "$r"
# Forbidden by ProtectSystem=yes: /usr is read-only for the unit.
if err=$(touch /usr/lib/hardening-probe 2>&1); then echo "usr=written" >> "$r"; ok=1; else echo "usr=refused: $err" >> "$r"; fi
# PrivateTmp=yes: this /var/tmp is the unit's own (podman unpacks there).
echo marker > /var/tmp/hardening-marker || ok=1
echo "done=$ok" >> "$r"
exit $ok
`;

serial('the unit\'s hardening with a podman hook: an /etc hook\'s prepare loads an image into /var/lib/containers, reads /etc/containers, uses its runroot in /run; a write to /usr fails', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  // The image, built on the host in a store of this test's own (FROM
  // scratch: one file, nothing to run), saved as an OCI archive.
  const work = await makeTmpDir({ prefix: 'systemd-podman-' });
  try {
    await fsp.mkdir(path.join(work, 'ctx'));
    await fsp.writeFile(path.join(work, 'ctx', 'hello.txt'), 'hello from the hardening test\n');
    await fsp.writeFile(path.join(work, 'ctx', 'Containerfile'), 'FROM scratch\nCOPY hello.txt /hello.txt\n');
    const store = ['--root', path.join(work, 'root'), '--runroot', path.join(work, 'run'), '--storage-driver', 'vfs'];
    await sh('podman', [...store, 'build', '-q', '-t', 'localhost/prestage-hardening:1', path.join(work, 'ctx')]);
    await fsp.mkdir(path.join(x.root, 'var/lib/test-podman'), { recursive: true, mode: 0o755 });
    await sh('podman', [...store, 'save', '--format', 'oci-archive', '-o', path.join(x.root, 'var/lib/test-podman/image.tar'),
      'localhost/prestage-hardening:1']);
  } finally {
    await removeTree(work);
  }
  await fsp.mkdir(path.join(x.root, 'usr/local/libexec'), { recursive: true, mode: 0o755 });
  await fsp.writeFile(path.join(x.root, 'usr/local/libexec/test-podman-hook'), PODMAN_HOOK, { mode: 0o755 });
  await fsp.chmod(path.join(x.root, 'usr/local/libexec/test-podman-hook'), 0o755);
  const hook = path.join(x.root, 'etc/bootc/pre-stage.d/podman-hardening.hook');
  await fsp.writeFile(hook, '[Hook]\nDescription=podman under the unit\'s hardening\nPrepare=/usr/local/libexec/test-podman-hook\nAbort=/bin/true\n', { mode: 0o644 });
  await fsp.chmod(hook, 0o644);
  try {
    t.is((await x.exec(['podman', 'image', 'exists', 'localhost/prestage-hardening:1'])).code, 1, 'not in the machine\'s store before');
    const unit = await show(x, 'bootc-prestaged.service', ['ProtectSystem', 'ProtectHome', 'PrivateTmp']);
    t.deepEqual(unit, { ProtectSystem: 'yes', ProtectHome: 'read-only', PrivateTmp: 'yes' }, 'the unit as shipped, no drop-in');
    const dep = (await x.exec(['sh', '-c', 'ls -d /sysroot/ostree/deploy/testos/deploy/*.0 | head -1'])).stdout.trim();
    // Through D-Bus activation (the name may have exited idle): the hook
    // is the daemon's child, in its unit.
    const start = await x.exec(['bootc-prestage', 'start', dep], { timeoutMs: 300_000 });
    const result = await x.read('var/lib/test-podman/result');
    t.log(result.trim());
    t.is(start.code, 0, `${start.stdout}\n${start.stderr}\n${result}`);
    const r = Object.fromEntries(result.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    t.is(r['cgroup'], 'bootc-prestaged.service', 'the step ran in the daemon\'s unit');
    t.is(r['info'], 'vfs /var/lib/containers/storage /run/containers/storage', 'podman read the machine\'s /etc/containers/storage.conf (vfs; its default in /usr/share is overlay)');
    t.is(r['load'], 'Loaded image: localhost/prestage-hardening:1');
    t.is(r['exists'], 'yes');
    t.regex(r['images'] ?? '', /localhost\/prestage-hardening:1/);
    t.regex(r['usr'] ?? '', /^refused: .*Read-only file system/, 'ProtectSystem=yes: /usr is read-only for hooks');
    t.is(r['done'], '0');
    // Outside the unit (nsenter, no hardening): the writes are the
    // machine's, not a private copy; /usr and /var/tmp are untouched.
    const outside = await x.exec(['podman', 'images', '--format', '{{.Repository}}:{{.Tag}}']);
    t.regex(outside.stdout, /^localhost\/prestage-hardening:1$/m, outside.stderr);
    t.is((await x.exec(['test', '-d', '/run/containers/storage'])).code, 0, 'the runroot in /run');
    t.is((await x.exec(['test', '-e', '/usr/lib/hardening-probe'])).code, 1);
    t.is((await x.exec(['test', '-e', '/var/tmp/hardening-marker'])).code, 1, 'PrivateTmp=yes: the hook\'s /var/tmp was its own');
    const abort = await x.exec(['bootc-prestage', 'abort', dep], { timeoutMs: 300_000 });
    t.is(abort.code, 0, abort.stderr);
  } finally {
    await fsp.rm(hook, { force: true });
    await x.exec(['podman', 'rmi', '-f', 'localhost/prestage-hardening:1']);
  }
});

serial('Restart= after a SIGKILL: systemd restarts the daemon, which rolls the interrupted prepare back', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setConfig(x, 'Trigger=no\n');
  await setHook(x, 'slow');
  const dep = (await x.exec(['sh', '-c', 'ls -d /sysroot/ostree/deploy/testos/deploy/*.0 | head -1'])).stdout.trim();
  const start = await x.exec(['bootc-prestage', 'start', '--no-follow', dep]);
  t.is(start.code, 0, start.stderr);
  const tx = start.stdout.trim();
  for (let i = 0; i < 100; i++) {
    if ((await x.exec(['pgrep', '-f', '^/bin/sleep 120'])).code === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const before = await show(x, 'bootc-prestaged.service', ['MainPID', 'NRestarts']);
  await x.exec(['systemctl', 'kill', '--kill-who=main', '-s', 'KILL', 'bootc-prestaged.service']);
  let after: Record<string, string> = {};
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 200));
    after = await show(x, 'bootc-prestaged.service', ['MainPID', 'NRestarts', 'ActiveState']);
    if (after['ActiveState'] === 'active' && after['MainPID'] !== before['MainPID'] && after['MainPID'] !== '0') break;
  }
  t.is(Number(after['NRestarts']), Number(before['NRestarts']) + 1, JSON.stringify(after));
  t.is(after['ActiveState'], 'active');
  let txState = '';
  for (let i = 0; i < 100 && txState !== 's "failed"'; i++) {
    txState = (await x.exec(['busctl', 'get-property', 'org.containers.bootc.PreStage', tx,
      'org.containers.bootc.PreStage.Transaction', 'State'])).stdout.trim();
    if (txState !== 's "failed"') await new Promise((r) => setTimeout(r, 200));
  }
  t.is(txState, 's "failed"', 'the recovered prepare was rolled back');
  t.is((await x.exec(['pgrep', '-f', '^/bin/sleep 120'])).code, 1, 'no hook process is left');
  await setConfig(x, '');
});

for (const kind of ['fail', 'pass'] as const) {
  const expect = kind === 'fail' ? 'discarded' : 'finalized';

  serial(`bootc-prestage upgrade, ${kind}ing hook: ${expect} at poweroff`, async (t) => {
    t.timeout(600_000);
    const x = await booted();
    await setHook(x, kind);
    await publish(x);
    const r = await x.exec(['bootc-prestage', 'upgrade'], { timeoutMs: 300_000 });
    t.is(r.code, kind === 'fail' ? 1 : 0, `${r.stdout}\n${r.stderr}`);
    const o = await shutdownOutcome(x);
    t.deepEqual(o.finalize, [expect]);
    if (kind === 'fail') t.like(o.record ?? {}, { cause: 'failed' });
    else t.true(o.record === null, JSON.stringify(o.record));
  });

  for (const how of ['bootc upgrade', 'bootc switch testos/next'] as const) {
    serial(`${how} (path trigger) + reboot, ${kind}ing hook: ${expect}`, async (t) => {
      t.timeout(600_000);
      const x = await booted();
      await setHook(x, kind);
      await publish(x);
      const inv = await invocation(x);
      const r = await x.exec(how.split(' '));
      t.is(r.code, 0, r.stderr);
      const trig = await triggerDone(x, inv);
      t.is(trig['Result'], kind === 'fail' ? 'exit-code' : 'success', JSON.stringify(trig));
      // /run is the container's own tmpfs: look from inside.
      t.is((await x.exec(['test', '-e', '/run/ostree/staged-deployment-locked'])).code === 0, kind === 'fail', 'locked after a failure, unlocked after a success (AutoUnlock=yes)');
      const o = await shutdownOutcome(x, 'reboot');
      t.deepEqual(o.finalize, [expect]);
      if (kind === 'fail') t.like(o.record ?? {}, { cause: 'failed' });
      else t.true(o.record === null, JSON.stringify(o.record));
    });
  }

  serial(`the auto-update timer's service (drop-in: bootc-prestage upgrade --apply), ${kind}ing hook: ${expect}`, async (t) => {
    t.timeout(600_000);
    const x = await booted();
    await setHook(x, kind);
    await publish(x);
    // The stand-in's --apply reboots as bootc does.
    await fsp.appendFile(path.join(x.root, 'etc/bootc-standin.conf'), 'BOOTC_STANDIN_REBOOT="systemctl reboot"\n');
    try {
      const cat = await x.exec(['systemctl', 'cat', 'bootc-fetch-apply-updates.service']);
      t.regex(cat.stdout, /ExecStart=\/usr\/bin\/bootc-prestage upgrade --apply/);
      await x.exec(['systemctl', '--no-block', 'start', 'bootc-fetch-apply-updates.service']);
      if (kind === 'fail') {
        let s: Record<string, string> = {};
        for (let i = 0; i < 300; i++) {
          s = await show(x, 'bootc-fetch-apply-updates.service', ['ActiveState', 'Result']);
          if (s['ActiveState'] === 'failed') break;
          await new Promise((r) => setTimeout(r, 200));
        }
        t.is(s['ActiveState'], 'failed', 'the update service fails and does not reboot');
        const o = await shutdownOutcome(x);
        t.deepEqual(o.finalize, ['discarded']);
        t.like(o.record ?? {}, { cause: 'failed' });
      } else {
        const o = await shutdownOutcome(x, 'reboot', true);
        t.deepEqual(o.finalize, ['finalized'], 'it rebooted by itself into the prepared stage');
        t.true(o.record === null, JSON.stringify(o.record));
      }
    } finally {
      const conf = path.join(x.root, 'etc/bootc-standin.conf');
      await fsp.writeFile(conf, (await fsp.readFile(conf, 'utf8')).replace(/^BOOTC_STANDIN_REBOOT=.*\n/m, ''));
    }
  });

  serial(`a plain ostree deploy with /run/ostree/staged-deployment written (stand-in for ostree admin deploy --stage), ${kind}ing hook: ${expect}`, async (t) => {
    t.timeout(600_000);
    const x = await booted();
    await setHook(x, kind);
    await publish(x);
    const inv = await invocation(x);
    const r = await x.sh('ostree admin deploy --sysroot=/sysroot --os=testos --retain testos/next >/dev/null && mkdir -p /run/ostree && echo stand-in > /run/ostree/staged-deployment');
    t.is(r.code, 0, r.stderr);
    await triggerDone(x, inv);
    const o = await shutdownOutcome(x);
    t.deepEqual(o.finalize, [expect]);
    if (kind === 'fail') t.like(o.record ?? {}, { cause: 'failed' });
  });
}

serial('bootc upgrade --apply (stage, then reboot at once), passing hook taking 3 s: the gate waits for the prepare and it is finalized', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setHook(x, 'sleep3');
  await publish(x);
  await fsp.appendFile(path.join(x.root, 'etc/bootc-standin.conf'), 'BOOTC_STANDIN_REBOOT="systemctl reboot"\n');
  try {
    await x.exec(['bootc', 'upgrade', '--apply']);
    const o = await shutdownOutcome(x, 'reboot', true);
    const j = await x.journal('bootc-prestage-gate.service');
    t.deepEqual(o.finalize, ['finalized'], `${JSON.stringify(o.record)}\n${j}\n${await x.journal('bootc-prestage-staged.service')}`);
    t.true(o.record === null, JSON.stringify(o.record));
    t.regex(j, /waiting up to 180 s/, 'the gate waited for the running prepare');
  } finally {
    const conf = path.join(x.root, 'etc/bootc-standin.conf');
    await fsp.writeFile(conf, (await fsp.readFile(conf, 'utf8')).replace(/^BOOTC_STANDIN_REBOOT=.*\n/m, ''));
  }
});

serial('bootc upgrade --apply, a hook slower than GateWaitSec: locked, and the record says it did not finish; the next boot\'s reconcile and status show it', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setHook(x, 'slow');
  await setConfig(x, 'GateWaitSec=3\n');
  await publish(x);
  await fsp.appendFile(path.join(x.root, 'etc/bootc-standin.conf'), 'BOOTC_STANDIN_REBOOT="systemctl reboot"\n');
  try {
    await x.exec(['bootc', 'upgrade', '--apply']);
    const o = await shutdownOutcome(x, 'reboot', true);
    t.deepEqual(o.finalize, ['discarded']);
    t.like(o.record ?? {}, { cause: 'did-not-finish' });
    t.regex(String(o.record!['summary']), /discarded at shutdown: pre-stage did not finish before shutdown/);
  } finally {
    const conf = path.join(x.root, 'etc/bootc-standin.conf');
    await fsp.writeFile(conf, (await fsp.readFile(conf, 'utf8')).replace(/^BOOTC_STANDIN_REBOOT=.*\n/m, ''));
    await setConfig(x, '');
    await setHook(x, 'pass');
  }
  await x.boot();
  const rec = await x.exec(['journalctl', '-b', '-u', 'bootc-prestage-reconcile.service', '--no-pager', '-o', 'cat']);
  t.regex(rec.stdout, /discarded at shutdown: pre-stage did not finish before shutdown \(transaction \S+\)/);
  const st = await x.exec(['bootc-prestage', 'status']);
  t.regex(st.stdout, /Discarded at shutdown by the boot gate:\n(.*\n)* {2}upgrade to .* pre-stage did not finish before shutdown/);
});

serial('a reboot before the path trigger fired (its race with bootc --apply), no daemon running: the gate starts one and runs the prepare itself; finalized', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setHook(x, 'pass');
  await publish(x);
  // The race made certain: the path unit is gone and the daemon is not running.
  await x.exec(['systemctl', 'stop', 'bootc-prestage-staged.path', 'bootc-prestaged.service']);
  t.is((await x.exec(['bootc', 'upgrade'])).code, 0);
  const o = await shutdownOutcome(x, 'reboot');
  const j = await x.journal('bootc-prestage-gate.service');
  t.deepEqual(o.finalize, ['finalized'], `${JSON.stringify(o.record)}\n${j}`);
  t.regex(j, /the pre-stage never ran; running the prepare phase now, before finalization/);
  t.true(o.record === null);
  await x.boot();
});

serial('the gate with no daemon at all (Trigger=no, nothing ran): locked, "never ran"', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setConfig(x, 'Trigger=no\n');
  await setHook(x, 'pass');
  await publish(x);
  await x.exec(['systemctl', 'stop', 'bootc-prestaged.service']);
  const r = await x.exec(['bootc', 'upgrade']);
  t.is(r.code, 0);
  const o = await shutdownOutcome(x);
  t.deepEqual(o.finalize, ['discarded']);
  t.like(o.record ?? {}, { cause: 'never-ran' });
  await x.boot();
  await setConfig(x, '');
});

serial('the gate with the daemon stopped in the middle of a prepare, and with a corrupt state file: locked', async (t) => {
  t.timeout(600_000);
  const x = await booted();
  await setConfig(x, 'Trigger=no\n');
  await setHook(x, 'slow');
  await publish(x);
  t.is((await x.exec(['bootc', 'upgrade'])).code, 0);
  const dep = (await x.sh('bootc status --format=json | node -e \'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{const o=JSON.parse(s).status.staged.ostree;console.log(`/sysroot/ostree/deploy/${o.stateroot}/deploy/${o.checksum}.${o.deploySerial}`)})\'')).stdout.trim();
  t.is((await x.exec(['bootc-prestage', 'start', '--no-follow', dep])).code, 0);
  for (let i = 0; i < 100; i++) {
    if ((await x.exec(['pgrep', '-f', '^/bin/sleep 120'])).code === 0) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  await x.exec(['systemctl', 'stop', 'bootc-prestaged.service']);
  let o = await shutdownOutcome(x);
  t.deepEqual(o.finalize, ['discarded']);
  t.like(o.record ?? {}, { cause: 'did-not-finish' });

  await x.boot();
  await setHook(x, 'pass');
  await publish(x);
  t.is((await x.exec(['bootc-prestage', 'upgrade'])).code, 0, 'prepared');
  await fsp.writeFile(path.join(x.root, 'var/lib/bootc-prestage/journal/99990101T000000_00000000.jnl'), '{"t":\n', { mode: 0o600 });
  o = await shutdownOutcome(x);
  t.deepEqual(o.finalize, ['discarded']);
  t.like(o.record ?? {}, { cause: 'error' });
  await fsp.rm(path.join(x.root, 'var/lib/bootc-prestage/journal/99990101T000000_00000000.jnl'));
  await setConfig(x, '');
});
