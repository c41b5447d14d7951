/**
 * The compat-check hook (packaging/hooks/compat-check), run as the daemon
 * runs a step (test/fixtures/images/hook-step.ts): against real ostree
 * deployments where the point is the deployment layout (/etc/os-release
 * from usr/etc, the booted root), and against plain trees for the
 * comparison tables.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { describeStep, HOOKS_DIR, installPrograms, runHookStep, type HookStepResult } from '../fixtures/images/hook-step.js';
import { withSysroot } from '../helpers/ostree.js';
import { tmpDir } from '../helpers/tmp.js';
import type { Phase } from '../../service/model/types.js';

interface Machine {
  dir: string;
  booted: string;
  hostRoot: string;
}

function osRelease(keys: Record<string, string>): string {
  return Object.entries(keys).map(([k, v]) => `${k}="${v}"`).join('\n') + '\n';
}

/** A booted root and a stand-in host with the programs, in a temporary directory. */
async function machine(t: ExecutionContext, booted: Record<string, string>): Promise<Machine> {
  const dir = await tmpDir(t, { prefix: 'compat-check-' });
  const m: Machine = { dir, booted: path.join(dir, 'booted'), hostRoot: path.join(dir, 'host') };
  await fsp.mkdir(path.join(m.booted, 'usr/lib'), { recursive: true });
  await fsp.writeFile(path.join(m.booted, 'usr/lib/os-release'), osRelease(booted));
  await installPrograms(m.hostRoot);
  return m;
}

let counter = 0;
/** A plain deployment tree with the programs and this os-release (in usr/lib, linked from etc as images do). */
async function deployment(m: Machine, keys: Record<string, string> | null): Promise<string> {
  counter += 1;
  const root = path.join(m.dir, 'deploy', `${String(counter).padStart(64, '0')}.0`);
  await installPrograms(root);
  await fsp.mkdir(path.join(root, 'usr/lib'), { recursive: true });
  await fsp.mkdir(path.join(root, 'etc'), { recursive: true });
  if (keys) {
    await fsp.writeFile(path.join(root, 'usr/lib/os-release'), osRelease(keys));
    // Absolute, as in real images: it must resolve inside the deployment.
    await fsp.symlink('/usr/lib/os-release', path.join(root, 'etc/os-release'));
  }
  return root;
}

function check(m: Machine, d: string, env: Record<string, string> = {}, phase: Phase = 'prepare'): Promise<HookStepResult> {
  return runHookStep({
    hook: 'compat-check', phase, deployment: d, hostRoot: m.hostRoot, stateDir: path.join(m.dir, 'state'),
    env: { COMPAT_BOOTED_ROOT: m.booted, COMPAT_VAR_DIR: m.dir, COMPAT_MIN_FREE_MB: '1', ...env },
  });
}

function passes(t: ExecutionContext, r: HookStepResult): void {
  t.is(r.code, 0, describeStep(r));
  t.deepEqual(r.ignoredNotify, []);
  t.is(r.progress.at(-1), 100);
  t.is(r.statuses.at(-1), 'Compatible');
}

function fails(t: ExecutionContext, r: HookStepResult, message: RegExp): void {
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), message);
  t.deepEqual(r.ignoredNotify, []);
}

test('compat-check - passes for the same OS at a newer version, on real ostree deployments', async (t) => {
  const files: Record<string, { content: Buffer; mode: number }> = {};
  for (const [name, mode] of Object.entries({ 'compat-check': 0o755, 'hook-lib.sh': 0o644 })) {
    files[`usr/libexec/bootc-prestage/${name}`] = { content: await fsp.readFile(path.join(HOOKS_DIR, name)), mode };
  }
  const sysroot = await withSysroot(t, { osname: 'testos', osRelease: { VERSION_ID: '41' }, files });
  const staged = await sysroot.deploy({ files, osRelease: { VERSION_ID: '42' } });
  const m = await machine(t, {});
  const r = await runHookStep({
    hook: 'compat-check', phase: 'prepare', deployment: staged, hostRoot: m.hostRoot, stateDir: path.join(m.dir, 'state'),
    env: { COMPAT_BOOTED_ROOT: sysroot.bootedRoot, COMPAT_MIN_FREE_MB: '1' },
  });
  passes(t, r);
  t.regex(r.stdout.join('\n'), /ID: testos, as running/);
  t.regex(r.stdout.join('\n'), /VERSION_ID: 41 -> 42/);
  t.regex(r.stdout.join('\n'), /free space: \d+ MiB under \/var/);
});

test('compat-check - refuses another operating system, unless allowed', async (t) => {
  const m = await machine(t, { ID: 'fedora', VERSION_ID: '41' });
  const d = await deployment(m, { ID: 'centos', VERSION_ID: '42' });
  const r = await check(m, d);
  fails(t, r, /the new deployment is a different operating system: os-release ID 'centos', but this machine runs 'fedora'/);
  t.regex(r.stderr.join('\n'), /Environment=COMPAT_ALLOW_ID_CHANGE=1 in \/etc\/bootc\/pre-stage\.d\/compat-check\.hook/);
  t.is(r.statuses.at(-1), '1 compatibility check(s) failed');
  const allowed = await check(m, d, { COMPAT_ALLOW_ID_CHANGE: '1' });
  passes(t, allowed);
  t.regex(allowed.stderr.join('\n'), /warning: ID changes from fedora to centos \(allowed by COMPAT_ALLOW_ID_CHANGE\)/);
});

test('compat-check - refuses a downgrade, unless allowed', async (t) => {
  const m = await machine(t, { ID: 'fedora', VERSION_ID: '42' });
  const d = await deployment(m, { ID: 'fedora', VERSION_ID: '41' });
  fails(t, await check(m, d), /the new deployment is older: VERSION_ID 41, but this machine runs 42\. .*'bootc rollback'.*COMPAT_ALLOW_DOWNGRADE=1/);
  passes(t, await check(m, d, { COMPAT_ALLOW_DOWNGRADE: 'yes' }));
});

const versions = test.macro({
  async exec(t, booted: string, next: string, allowed: boolean) {
    const m = await machine(t, { ID: 'os', VERSION_ID: booted });
    const r = await check(m, await deployment(m, { ID: 'os', VERSION_ID: next }));
    if (allowed) passes(t, r);
    else fails(t, r, /the new deployment is older/);
  },
  title: (_ = '', booted: string, next: string, allowed: boolean) =>
    `compat-check - VERSION_ID ${booted} -> ${next} is ${allowed ? 'allowed' : 'a downgrade'}`,
});

test(versions, '41', '42', true);
test(versions, '42', '42', true);
test(versions, '9.4', '10', true);
test(versions, '10', '9.6', false);
test(versions, '1.9', '1.10', true);
test(versions, '1.10', '1.9', false);
test(versions, '40.1', '40', false);
test(versions, '2024.05', '2024.11', true);

test('compat-check - no VERSION_ID on a side means no version check; no ID means "linux"', async (t) => {
  const m = await machine(t, { NAME: 'rolling' });
  const r = await check(m, await deployment(m, { NAME: 'rolling', VERSION_ID: '1' }));
  passes(t, r);
  t.regex(r.stdout.join('\n'), /ID: linux, as running/);
  t.regex(r.stdout.join('\n'), /VERSION_ID: not set on both sides .*: no version check/);
});

test('compat-check - refuses when /var has less free space than the floor, and says how much', async (t) => {
  const m = await machine(t, { ID: 'os', VERSION_ID: '1' });
  const d = await deployment(m, { ID: 'os', VERSION_ID: '2' });
  const r = await check(m, d, { COMPAT_MIN_FREE_MB: String(1024 * 1024 * 1024) });
  fails(t, r, /only \d+ MiB free on \/\S* \(holding .*\); the upgrade needs at least 1073741824 MiB\. Free space there/);
  passes(t, await check(m, d, { COMPAT_MIN_FREE_MB: '0' }));
});

test('compat-check - reports every failed check at once', async (t) => {
  const m = await machine(t, { ID: 'fedora', VERSION_ID: '42' });
  const r = await check(m, await deployment(m, { ID: 'centos', VERSION_ID: '10' }), { COMPAT_MIN_FREE_MB: String(1024 * 1024 * 1024) });
  t.is(r.code, 1);
  const errors = r.stderr.filter((l) => l.startsWith('compat-check: error:'));
  t.is(errors.length, 3, r.stderr.join('\n'));
  t.is(r.statuses.at(-1), '3 compatibility check(s) failed');
});

test('compat-check - os-release links resolve inside the deployment, never on the host', async (t) => {
  const m = await machine(t, { ID: 'os', VERSION_ID: '1' });
  const d = await deployment(m, null);
  // The link's target exists on the test machine, not in the deployment.
  await fsp.symlink('/usr/lib/os-release', path.join(d, 'etc/os-release'));
  const r = await check(m, d);
  fails(t, r, /the new deployment has no os-release .*it is not a bootable OS image/);
});

test('compat-check - commit and abort have nothing to do (77)', async (t) => {
  const m = await machine(t, { ID: 'os', VERSION_ID: '1' });
  const d = await deployment(m, { ID: 'os', VERSION_ID: '2' });
  for (const phase of ['commit', 'abort'] as const) {
    // The packaged hook has no such steps; run the program itself as one would.
    const { execFile } = await import('node:child_process');
    const code = await new Promise<number | null>((resolve) => {
      execFile(path.join(m.hostRoot, 'usr/libexec/bootc-prestage/compat-check'), [phase],
        { env: { PATH: process.env['PATH'] ?? '', BOOTC_PRESTAGE_DEPLOYMENT: d } },
        (err) => resolve(err ? (err as { code?: number }).code ?? null : 0));
    });
    t.is(code, 77, phase);
  }
});

test('compat-check - a bad setting is an error that names it', async (t) => {
  const m = await machine(t, { ID: 'os', VERSION_ID: '1' });
  const r = await check(m, await deployment(m, { ID: 'os', VERSION_ID: '2' }), { COMPAT_MIN_FREE_MB: 'lots' });
  fails(t, r, /COMPAT_MIN_FREE_MB=lots is not a whole number of MiB/);
});
