/**
 * Hook trust end to end, through the daemon on the bus: a hook whose file,
 * directory or program could be changed by someone other than root is
 * refused, as sudo and sshd refuse such files. For each way of being
 * untrusted, with the hook required and optional:
 *
 * - it never runs (a record every hook program appends to stays without it);
 * - ListHooks shows it, with a Refused text naming the offending path,
 *   instead of leaving it out;
 * - required: StartPreStage fails InvalidHook before anything runs, and no
 *   transaction is created;
 * - optional: the prepare runs the trusted hooks and shows the refused one
 *   as skipped (Hooks property, HookFinished), and so does the commit.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Variant } from 'dbus-next';
import { NOBODY } from '../helpers/busctl.js';
import { deploymentsOf, withDaemon, type DaemonContext } from '../helpers/daemon.js';
import {
  DBusError, MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, unwrapVariants,
} from '../helpers/dbus-client.js';
import { makeRecorder, writeRecordProgram, type Recorder } from '../helpers/record-hook.js';
import { captureState, diffStates, waitForQuietState, type CaptureOptions } from '../helpers/state-snapshot.js';
import { tmpDir } from '../helpers/tmp.js';

const INVALID_HOOK = 'org.containers.bootc.PreStage.Error.InvalidHook';
const ETC_DIR = 'etc/bootc/pre-stage.d';
const RUN_DIR = 'run/bootc/pre-stage.d';

interface Scene {
  ctx: DaemonContext;
  aux: string;
  recorder: Recorder;
  staged: string;
  /** The untrusted hook's program (its own copy of the record program). */
  untrustedProgram: string;
  capture: CaptureOptions;
}

interface TrustCase {
  label: string;
  /** Where the untrusted hook's file is; the trusted hook 'good' goes in the other host directory. */
  where: 'etc' | 'run' | 'deployment';
  /**
   * Make the untrusted hook untrusted (after the daemon started: discovery
   * runs on every call). Returns the path the refusal must name and a
   * pattern for why.
   */
  spoil(s: Scene): Promise<{ names: string; why: RegExp }>;
  /**
   * The hook file in `where` is an absolute link to this path under --root
   * (links in the host directories resolve inside --root, as with
   * `systemctl --root`).
   */
  linkTo?: string;
}

function hookText(program: string, recordFile: string, required: boolean): string {
  return ['[Hook]', `Description=trust test`, `Prepare=${program}`, `Commit=${program}`, `Abort=${program}`,
    `Environment=RECORD=${recordFile}`, `Required=${required ? 'yes' : 'no'}`, ''].join('\n');
}

const CASES: TrustCase[] = [
  {
    label: 'a hook file owned by uid 65534',
    where: 'etc',
    async spoil(s) {
      const f = path.join(s.ctx.root, ETC_DIR, 'untrusted.hook');
      await fsp.chown(f, NOBODY, NOBODY);
      return { names: f, why: /owned by uid 65534/ };
    },
  },
  {
    label: 'a group-writable hook file',
    where: 'etc',
    async spoil(s) {
      const f = path.join(s.ctx.root, ETC_DIR, 'untrusted.hook');
      await fsp.chmod(f, 0o664);
      return { names: f, why: /writable by group \(mode 0664\)/ };
    },
  },
  {
    label: 'a world-writable hook directory',
    where: 'etc',
    async spoil(s) {
      const d = path.join(s.ctx.root, ETC_DIR);
      await fsp.chmod(d, 0o777);
      return { names: `directory ${d}`, why: /writable by group and others/ };
    },
  },
  {
    label: 'a group-writable program',
    where: 'etc',
    async spoil(s) {
      await fsp.chmod(s.untrustedProgram, 0o775);
      return { names: s.untrustedProgram, why: /Prepare= program .* writable by group/ };
    },
  },
  {
    label: 'a program in a directory writable by others',
    where: 'etc',
    async spoil(s) {
      // Whoever can write the directory can swap the program after the check.
      const d = path.dirname(s.untrustedProgram);
      await fsp.chmod(d, 0o777);
      return { names: `directory ${d}`, why: /Prepare= program .*: directory .* is writable by group and others/ };
    },
  },
  {
    label: 'a missing program in a sticky world-writable directory',
    where: 'run',
    async spoil(s) {
      // Like /tmp: the sticky bit protects what root put there, not a name
      // nobody has taken yet. (The trusted hook's program is under /tmp too.)
      const d = path.dirname(s.untrustedProgram);
      await fsp.rm(s.untrustedProgram);
      await fsp.chmod(d, 0o1777);
      return { names: `directory ${d}`, why: /Prepare= program .*: directory .* is writable by group and others/ };
    },
  },
  {
    label: 'a program owned by uid 65534',
    where: 'run',
    async spoil(s) {
      await fsp.chown(s.untrustedProgram, NOBODY, NOBODY);
      return { names: s.untrustedProgram, why: /program .* owned by uid 65534/ };
    },
  },
  {
    label: 'a link to a hook file in a world-writable directory',
    where: 'run',
    linkTo: 'srv/drop/untrusted.hook',
    async spoil(s) {
      const d = path.join(s.ctx.root, 'srv/drop');
      await fsp.chmod(d, 0o777);
      return { names: `directory ${d}`, why: /writable by group and others/ };
    },
  },
  {
    label: 'a group-writable hook file shipped in the deployment',
    where: 'deployment',
    async spoil(s) {
      // Committed to ostree with mode 0664 (see the sysroot options below).
      return { names: path.join(s.staged, 'usr/lib/bootc/pre-stage.d/untrusted.hook'), why: /writable by group/ };
    },
  },
];

async function setUp(t: ExecutionContext, c: TrustCase, required: boolean): Promise<Scene> {
  const aux = await tmpDir(t, { prefix: 'security-trust-', mode: 0o755 });
  const recorder = await makeRecorder(aux);
  const untrustedProgram = path.join(aux, 'untrusted-bin', 'record');
  await fsp.mkdir(path.dirname(untrustedProgram), { mode: 0o755 });
  await writeRecordProgram(untrustedProgram);
  const good = hookText(recorder.program, recorder.recordFile, true);
  const untrusted = hookText(untrustedProgram, recorder.recordFile, required);
  const goodDir = c.where === 'etc' ? RUN_DIR : ETC_DIR;
  const rootFiles: Record<string, string> = { [`${goodDir}/good.hook`]: good };
  if (c.where !== 'deployment' && !c.linkTo) {
    rootFiles[`${c.where === 'etc' ? ETC_DIR : RUN_DIR}/untrusted.hook`] = untrusted;
  }
  if (c.linkTo) rootFiles[c.linkTo] = untrusted;
  const ctx = await withDaemon(t, {
    sysroot: c.where === 'deployment'
      ? { deployments: 1, hooks: { 'untrusted.hook': { content: untrusted, mode: 0o664 } } }
      : { deployments: 1 },
    rootFiles,
  });
  if (c.linkTo) {
    const dir = path.join(ctx.root, c.where === 'etc' ? ETC_DIR : RUN_DIR);
    await fsp.mkdir(dir, { recursive: true, mode: 0o755 });
    await fsp.symlink(`/${c.linkTo}`, path.join(dir, 'untrusted.hook'));
  }
  const staged = deploymentsOf(ctx)[0]!;
  return {
    ctx, aux, recorder, staged, untrustedProgram,
    capture: { root: ctx.root, stateDir: ctx.stateDir, client: ctx.client, watch: [recorder.recordDir] },
  };
}

async function listHooks(s: Scene, deployment: string): Promise<Map<string, Record<string, unknown>>> {
  const [hooks] = await s.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'ListHooks', 's', [deployment]) as
    [[string, Record<string, Variant>][]];
  return new Map(hooks.map(([name, def]) => [name, unwrapVariants(def) as Record<string, unknown>]));
}

function recorded(s: Scene): Promise<string[]> {
  return s.recorder.recorded();
}

const trust = test.macro({
  async exec(t, c: TrustCase, required: boolean) {
    const s = await setUp(t, c, required);
    const { names, why } = await c.spoil(s);

    // ListHooks shows the hook as refused, naming the path; the trusted one is not.
    const listed = await listHooks(s, c.where === 'deployment' ? s.staged : '');
    const entry = listed.get('untrusted');
    t.truthy(entry, `ListHooks lists the refused hook: ${[...listed.keys()].join(', ')}`);
    const refused = String(entry?.['Refused'] ?? '');
    t.not(refused, '', 'Refused is set');
    t.true(refused.includes(names), `'${refused}' names ${names}`);
    t.regex(refused, why);
    t.is(listed.get('good')?.['Refused'], '', 'the trusted hook is not refused');
    await s.ctx.daemon.waitForLog((l) => l['level'] === 'warn' && String(l['message']).includes("refusing hook 'untrusted'")
      && String(l['message']).includes(names));

    const before = await waitForQuietState(s.capture);
    if (required) {
      const e = await t.throwsAsync(s.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
        [s.staged, {}])) as unknown as DBusError;
      t.true(e instanceof DBusError, String(e));
      t.is(e.type, INVALID_HOOK, e.text);
      t.true(e.text.includes('required hook untrusted') && e.text.includes(names), e.text);
      t.deepEqual(diffStates(before, await captureState(s.capture)), [], 'no transaction, no file, nothing ran');
      t.deepEqual(await recorded(s), [], 'not even the trusted hook ran');
      return;
    }

    // Optional: the prepare runs without it, and shows it skipped.
    const rec = await s.ctx.client.collectSignals({ pathNamespace: MANAGER_PATH, interface: TRANSACTION_IFACE });
    const [txPath] = await s.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}',
      [s.staged, {}]) as [string];
    await rec.waitFor((sig) => sig.path === txPath && sig.member === 'Finished', 30_000);
    t.is(await s.ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'State'), 'prepared');
    const hooks = await s.ctx.client.getProperty(SERVICE, txPath, TRANSACTION_IFACE, 'Hooks') as [string, string, number, string][];
    const row = hooks.find((h) => h[0] === 'untrusted');
    t.is(row?.[1], 'skipped');
    t.true(row?.[3].startsWith('refused: ') && row[3].includes(names), row?.[3]);
    t.is(hooks.find((h) => h[0] === 'good')?.[1], 'success');
    const finished = rec.signals.find((sig) => sig.member === 'HookFinished' && sig.body[0] === 'untrusted');
    t.is(finished?.body[1], 'skipped', 'HookFinished reports it skipped');
    t.deepEqual(await recorded(s), ['good prepare']);

    await s.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'CommitPreStage', 'sa{sv}', [s.staged, {}]);
    await rec.waitFor((sig) => sig.path === txPath && sig.member === 'Finished' && sig.body[0] === 'committed', 30_000);
    t.deepEqual(await recorded(s), ['good prepare', 'good commit'], 'the refused hook never ran, in any phase');
    await rec.stop();
  },
  title: (_p, c: TrustCase, required: boolean) =>
    `trust - ${c.label}, ${required ? 'required' : 'optional'}: never runs, ListHooks shows it refused, `
    + (required ? 'StartPreStage fails InvalidHook' : 'the phases skip it'),
});

for (const c of CASES) {
  test.serial(trust, c, true);
  test.serial(trust, c, false);
}

test.serial('trust - a program made group-writable after the prepare does not run at commit; the commit fails and can be retried', async (t) => {
  const aux = await tmpDir(t, { prefix: 'security-trust-', mode: 0o755 });
  const recorder = await makeRecorder(aux);
  const program = recorder.program;
  const ctx = await withDaemon(t, { sysroot: { deployments: 1 }, etcHooks: { 'good.hook': hookText(program, recorder.recordFile, true) } });
  const staged = deploymentsOf(ctx)[0]!;
  const rec = await ctx.client.collectSignals({ pathNamespace: MANAGER_PATH, interface: TRANSACTION_IFACE, member: 'Finished' });
  const [txPath] = await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', [staged, {}]) as [string];
  await rec.waitFor((s) => s.path === txPath && s.body[0] === 'prepared', 30_000);
  const s: Scene = {
    ctx, aux, recorder, staged, untrustedProgram: program,
    capture: { root: ctx.root, stateDir: ctx.stateDir, client: ctx.client, watch: [recorder.recordDir] },
  };
  t.deepEqual(await recorded(s), ['good prepare']);

  // The commit comes later (at the next boot); by then the program is writable by its group.
  await fsp.chmod(program, 0o775);
  await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'CommitPreStage', 'sa{sv}', [staged, {}]);
  const failed = await rec.waitFor((sig) => sig.path === txPath && sig.body[0] !== 'prepared', 30_000);
  t.is(failed.body[0], 'failed', 'a required commit step that may not run fails the commit');
  t.regex(String(failed.body[2]), new RegExp(`${program.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is writable by group`));
  t.deepEqual(await recorded(s), ['good prepare'], 'the untrusted program did not run');

  // Fixed, the commit is retried and runs.
  await fsp.chmod(program, 0o755);
  await ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'CommitPreStage', 'sa{sv}', [staged, {}]);
  await rec.waitFor((sig) => sig.path === txPath && sig.body[0] === 'committed', 30_000);
  t.deepEqual(await recorded(s), ['good prepare', 'good commit']);
  await rec.stop();
});
