/**
 * The packaging: systemd units (checked by `systemd-analyze verify` on an
 * installed layout), the agreement between units, the D-Bus activation
 * file, the wrappers and the spec file, tmpfiles.d (applied with
 * `systemd-tmpfiles --root`), the RPM build itself when rpmbuild is
 * installed, and the example image's hook run by the real daemon.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp, statSync } from 'node:fs';
import * as path from 'node:path';
import { parseDaemonArgs } from '../../service/daemon/args.js';
import { parseCommandLine } from '../../service/cli/args.js';
import { splitCommandLine } from '../../service/model/command-line.js';
import { parseHookFile } from '../../service/model/hook-file.js';
import { withDaemon } from '../helpers/daemon.js';
import { REPO_ROOT, tmpDir, writeFiles } from '../helpers/tmp.js';
import { runCli } from './cli-harness.js';

const PKG = path.join(REPO_ROOT, 'packaging');
const UNITS = ['bootc-prestaged.service', 'bootc-prestage-reconcile.service'];

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

/** key -> values of one section of a unit or activation file (comments dropped). */
async function iniSection(file: string, section: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  let current = '';
  for (const raw of (await fsp.readFile(file, 'utf8')).split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^\[(.+)\]$/.exec(line);
    if (m) { current = m[1]!; continue; }
    if (current !== section) continue;
    const eq = line.indexOf('=');
    const k = line.slice(0, eq);
    out.set(k, [...(out.get(k) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

function one(map: Map<string, string[]>, key: string): string {
  const v = map.get(key);
  if (!v || v.length !== 1) throw new Error(`expected exactly one ${key}=, got ${JSON.stringify(v)}`);
  return v[0]!;
}

/** The host's own unit directory, for the targets and sockets our units name. */
function hostUnitDir(): string {
  for (const d of ['/usr/lib/systemd/system', '/lib/systemd/system']) {
    if (existsSync(path.join(d, 'sysinit.target'))) return d;
  }
  throw new Error('no systemd unit directory on this host (install systemd)');
}

/** An installed layout for systemd-analyze: host units, ours, and our entry points. */
async function installedRoot(dir: string, mutate?: (unit: string, text: string) => string): Promise<string> {
  const root = path.join(dir, 'root');
  await fsp.mkdir(path.join(root, 'usr/lib/systemd'), { recursive: true });
  await fsp.cp(hostUnitDir(), path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  await writeFiles(root, {
    'usr/libexec/bootc-prestaged': { content: await fsp.readFile(path.join(PKG, 'wrappers/bootc-prestaged')), mode: 0o755 },
    'usr/bin/bootc-prestage': { content: await fsp.readFile(path.join(PKG, 'wrappers/bootc-prestage')), mode: 0o755 },
  });
  for (const u of UNITS) {
    const text = await fsp.readFile(path.join(PKG, 'systemd', u), 'utf8');
    await fsp.writeFile(path.join(root, 'usr/lib/systemd/system', u), mutate ? mutate(u, text) : text);
  }
  return root;
}

test.serial('packaging - systemd-analyze verify accepts both units on an installed layout, without a warning', async (t) => {
  const root = await installedRoot(await tmpDir(t));
  const r = await run('systemd-analyze', ['verify', `--root=${root}`, ...UNITS]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr.trim(), '');
  // The same check fails on a broken unit: it is not a check that always passes.
  const broken = await installedRoot(await tmpDir(t), (u, text) => (u === UNITS[0]
    ? text.replace('ProtectSystem=yes', 'ProtectSystem=sometimes').replace('/usr/libexec/bootc-prestaged', '/usr/libexec/nowhere')
    : text));
  const b = await run('systemd-analyze', ['verify', `--root=${broken}`, UNITS[0]!]);
  t.not(b.code, 0);
  t.regex(b.stderr, /ProtectSystem|nowhere/);
});

test.serial('packaging - units, activation file, wrappers and spec name the same programs and bus name', async (t) => {
  const daemonUnit = await iniSection(path.join(PKG, 'systemd/bootc-prestaged.service'), 'Service');
  const activation = await iniSection(path.join(REPO_ROOT, 'dbus/org.containers.bootc.PreStage.service'), 'D-BUS Service');
  t.is(one(daemonUnit, 'Type'), 'dbus');
  t.is(one(daemonUnit, 'BusName'), one(activation, 'Name'));
  t.is(one(daemonUnit, 'BusName'), 'org.containers.bootc.PreStage');
  t.is(one(activation, 'SystemdService'), 'bootc-prestaged.service');
  t.is(one(daemonUnit, 'KillMode'), 'control-group');
  t.is(one(daemonUnit, 'StateDirectory'), 'bootc-prestage');

  const exec = splitCommandLine(one(daemonUnit, 'ExecStart'));
  const activationExec = one(activation, 'Exec').split(/\s+/);
  t.is(exec[0], activationExec[0], 'systemd and the bus start the same program');
  const args = parseDaemonArgs(exec.slice(1));
  t.is(args.bus, 'system');
  t.true(args.idleExitSec > 0, 'the daemon exits when idle');
  t.is(parseDaemonArgs(activationExec.slice(1)).bus, 'system');

  const reconcile = await iniSection(path.join(PKG, 'systemd/bootc-prestage-reconcile.service'), 'Service');
  const rExec = splitCommandLine(one(reconcile, 'ExecStart'));
  t.is(rExec[0], '/usr/bin/bootc-prestage');
  t.is(parseCommandLine(rExec.slice(1)).command.name, 'reconcile');
  t.is(one(reconcile, 'Type'), 'oneshot');
  const preset = await fsp.readFile(path.join(PKG, 'systemd/80-bootc-prestage.preset'), 'utf8');
  t.regex(preset, /^enable bootc-prestage-reconcile\.service$/m);

  // Each wrapper runs the built entry point of the same name from the application directory.
  const spec = await fsp.readFile(path.join(PKG, 'bootc-prestage.spec'), 'utf8');
  for (const [installed, wrapper, entry] of [
    ['%{_bindir}/bootc-prestage', 'bootc-prestage', 'bootc-prestage.mjs'],
    ['%{_libexecdir}/bootc-prestaged', 'bootc-prestaged', 'bootc-prestaged.mjs'],
  ] as const) {
    t.regex(spec, new RegExp(`install -D -m 0755 packaging/wrappers/${wrapper} %\\{buildroot\\}${installed.replace(/[{}]/g, '\\$&')}\\n`));
    const text = await fsp.readFile(path.join(PKG, 'wrappers', wrapper), 'utf8');
    const m = /^exec \/usr\/bin\/node \/usr\/lib\/bootc-prestage\/(\S+) "\$@"$/m.exec(text);
    t.truthy(m, `${wrapper} execs node on the application`);
    t.is(path.basename(m![1]!), entry);
    t.true(existsSync(path.join(REPO_ROOT, m![1]!)), `${m![1]} is what npm run build makes`);
    t.is(statSync(path.join(PKG, 'wrappers', wrapper)).mode & 0o777, 0o755);
  }
  t.is(exec[0], '/usr/libexec/bootc-prestaged');
});

/** Fedora's values of the macros the spec uses (systemd-rpm-macros, rpm). */
const MACROS: Record<string, string> = {
  '%{_bindir}': '/usr/bin', '%{_libexecdir}': '/usr/libexec', '%{_unitdir}': '/usr/lib/systemd/system',
  '%{_presetdir}': '/usr/lib/systemd/system-preset', '%{_tmpfilesdir}': '/usr/lib/tmpfiles.d',
  '%{_datadir}': '/usr/share', '%{_prefix}': '/usr', '%{_sysconfdir}': '/etc', '%{_sharedstatedir}': '/var/lib',
  '%{appdir}': '/usr/lib/bootc-prestage', '%{name}': 'bootc-prestage',
};

function expand(s: string): string {
  let out = s;
  for (let i = 0; i < 3; i++) for (const [k, v] of Object.entries(MACROS)) out = out.split(k).join(v);
  return out;
}

test.serial('packaging - the spec installs only files the repository has, and lists everything it installs', async (t) => {
  const spec = await fsp.readFile(path.join(PKG, 'bootc-prestage.spec'), 'utf8');
  const section = (name: string) => {
    const start = spec.indexOf(`\n%${name}\n`);
    const rest = spec.slice(start + name.length + 3);
    const end = rest.search(/\n%(check|post|preun|postun|files|changelog|build|install|prep)\b/);
    return rest.slice(0, end < 0 ? undefined : end);
  };
  const installed: string[] = [];
  for (const line of section('install').split('\n')) {
    const m = /^install -D -m (\d{4}) (\S+) %\{buildroot\}(\S+)$/.exec(line.trim());
    if (!m) continue;
    t.true(existsSync(path.join(REPO_ROOT, m[2]!)), `${m[2]} exists in the repository`);
    installed.push(expand(m[3]!));
  }
  t.true(installed.length >= 15, `found the install lines (${installed.length})`);
  const files = section('files').split('\n').map((l) => l.trim()).filter((l) => l.startsWith('%') || l.startsWith('/'))
    .filter((l) => !l.startsWith('%doc') && !l.startsWith('%license'))
    .map((l) => expand(l.replace(/^(%ghost\s+)?(%dir\s+)?(%attr\([^)]*\)\s+)?/, '')));
  for (const p of installed) {
    t.true(files.some((f) => f === p || (f.endsWith('/') && p.startsWith(f))), `${p} is listed in %files`);
  }
  // The dbus files installed are the ones the tests run the bus with.
  t.regex(spec, /install -D -m 0644 dbus\/org\.containers\.bootc\.PreStage\.conf %\{buildroot\}%\{_datadir\}\/dbus-1\/system\.d\//);
  t.regex(spec, /install -D -m 0644 dbus\/org\.containers\.bootc\.PreStage\.service %\{buildroot\}%\{_datadir\}\/dbus-1\/system-services\//);
});

test.serial('packaging - tmpfiles.d makes the state directory root-only and the hook directories 0755', async (t) => {
  const root = await tmpDir(t);
  const r = await run('systemd-tmpfiles', [`--root=${root}`, '--create', path.join(PKG, 'tmpfiles.d/bootc-prestage.conf')]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr.trim(), '');
  const mode = (p: string) => statSync(path.join(root, p)).mode & 0o7777;
  t.is(mode('var/lib/bootc-prestage'), 0o700);
  for (const d of ['etc/bootc/pre-stage.d', 'run/bootc/pre-stage.d']) t.is(mode(d), 0o755, d);
  t.is(statSync(path.join(root, 'var/lib/bootc-prestage')).uid, 0);
});

const rpmbuild = existsSync('/usr/bin/rpmbuild') ? test.serial : test.skip;

rpmbuild('packaging - the RPM builds from a source tarball and contains the installed layout, without dev dependencies', async (t) => {
  t.timeout(300_000);
  const top = await tmpDir(t);
  const sources = path.join(top, 'SOURCES');
  await fsp.mkdir(sources, { recursive: true });
  const version = (JSON.parse(await fsp.readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const tar1 = await run('tar', ['--transform', `s,^\\.,bootc-prestage-${version},`, '-czf',
    path.join(sources, `bootc-prestage-${version}.tar.gz`), '--exclude=./node_modules', '--exclude=./dist',
    '--exclude=./.git', '--exclude=./.state', '.'], { cwd: REPO_ROOT });
  t.is(tar1.code, 0, tar1.stderr);
  const tar2 = await run('tar', ['-czf', path.join(sources, `bootc-prestage-${version}-node_modules.tar.gz`), 'node_modules'],
    { cwd: REPO_ROOT });
  t.is(tar2.code, 0, tar2.stderr);
  // Debian's rpm lacks the systemd macros, has an old %_sharedstatedir and puts %license files in
  // NAME-VERSION directories: give Fedora's values.
  const defs = ['_topdir', top, '_docdir_fmt', '%%{NAME}', '_unitdir', '/usr/lib/systemd/system', '_presetdir', '/usr/lib/systemd/system-preset',
    '_tmpfilesdir', '/usr/lib/tmpfiles.d', '_sharedstatedir', '/var/lib', 'systemd_requires', '%{nil}',
    'systemd_post()', '%{nil}', 'systemd_preun()', '%{nil}', 'systemd_postun()', '%{nil}', 'tmpfiles_create()', '%{nil}',
    // Debian's rpm has no find-debuginfo for the spawn helper's debug package.
    'debug_package', '%{nil}'];
  const args = ['-bb', '--nodeps'];
  for (let i = 0; i < defs.length; i += 2) args.push('--define', `${defs[i]} ${defs[i + 1]}`);
  const b = await run('rpmbuild', [...args, path.join(PKG, 'bootc-prestage.spec')], { timeoutMs: 280_000 });
  t.is(b.code, 0, b.stderr.slice(-4000));
  const arch = (await run('rpm', ['--eval', '%{_arch}'])).stdout.trim();
  const rpm = path.join(top, 'RPMS', arch, `bootc-prestage-${version}-1.${arch}.rpm`);
  const list = (await run('rpm', ['-qlp', rpm])).stdout.split('\n');
  for (const f of ['/usr/bin/bootc-prestage', '/usr/libexec/bootc-prestaged',
    '/usr/lib/bootc-prestage/dist/bootc-prestaged.mjs', '/usr/lib/bootc-prestage/dist/bootc-prestage.mjs',
    '/usr/lib/bootc-prestage/package.json', '/usr/share/licenses/bootc-prestage/bundled-licenses.txt',
    '/usr/lib/bootc-prestage/dist/libexec/bootc-prestage-spawner',
    '/usr/lib/systemd/system/bootc-prestaged.service', '/usr/lib/tmpfiles.d/bootc-prestage.conf',
    '/usr/share/dbus-1/system.d/org.containers.bootc.PreStage.conf',
    '/usr/share/dbus-1/system-services/org.containers.bootc.PreStage.service',
    '/usr/lib/bootc/pre-stage.d/bound-images.hook', '/usr/libexec/bootc-prestage/hook-lib.sh']) {
    t.true(list.includes(f), `${f} is in the package`);
  }
  // The bundles hold all the code that runs (the spec's %check ran them from the build root).
  t.false(list.some((f) => f.startsWith('/usr/lib/bootc-prestage/node_modules')), 'no node_modules');
  t.false(list.some((f) => f.startsWith('/usr/lib/bootc-prestage/dist/service')), 'not the unbundled code');
  t.false(list.some((f) => f.startsWith('/usr/lib/bootc-prestage/dist/') && f.endsWith('.map')), 'no source maps of ours');
  // The RPM says what it bundles (the list itself is checked by test/unit/packaging-bundled.test.ts).
  const provides = (await run('rpm', ['-qp', '--provides', rpm])).stdout.split('\n');
  for (const p of ['bundled(npm(dbus-next)) = ', 'bundled(npm(rxjs)) = ', 'bundled(npm(winston)) = ']) {
    t.true(provides.some((l) => l.startsWith(p)), `${p} is provided: ${provides.join(', ')}`);
  }
});

test.serial('packaging - the example image\'s hook parses, its program migrates through the real daemon', async (t) => {
  const ex = path.join(PKG, 'examples');
  const containerfile = await fsp.readFile(path.join(ex, 'Containerfile'), 'utf8');
  for (const m of containerfile.matchAll(/^COPY (?:--chmod=\d+ )?(\S+) (\S+)$/gm)) {
    if (m[1]!.includes('*')) continue; // the RPM, built separately
    t.true(existsSync(path.join(ex, m[1]!)), `${m[1]} is in packaging/examples`);
  }
  const hookText = await fsp.readFile(path.join(ex, 'example-app-migrate.hook'), 'utf8');
  const parsed = parseHookFile(hookText, 'example-app-migrate.hook');
  t.deepEqual(parsed.warnings, []);
  t.deepEqual(parsed.definition.prepare, ['${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/example-app/migrate', 'prepare']);
  t.is((await run('sh', ['-n', path.join(ex, 'example-app-migrate')])).code, 0);

  // The hook as the image ships it, plus where to find the test's state.
  const state = await tmpDir(t, { mode: 0o755 });
  await fsp.writeFile(path.join(state, 'state'), 'version=1\nname=Web\nport=80\n');
  const ctx = await withDaemon(t, {
    sysroot: {
      deployments: 2,
      hooks: { 'example-app-migrate.hook': `${hookText}Environment=EXAMPLE_APP_STATE_DIR=${state}\n` },
      files: { 'usr/libexec/example-app/migrate': { content: await fsp.readFile(path.join(ex, 'example-app-migrate')), mode: 0o755 } },
    },
  });
  const [staged] = (ctx.sysroot as { deployments: string[] }).deployments;
  const r = await runCli(['start', staged!], { address: ctx.bus.address });
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /\[example-app-migrate\] prepared /);
  t.is(await fsp.readFile(path.join(state, 'state.v2'), 'utf8'), 'version=2\ndisplay_name=Web\nport=80\n');
  t.is(await fsp.readFile(path.join(state, 'state'), 'utf8'), 'version=1\nname=Web\nport=80\n', 'the live file is untouched');
});
