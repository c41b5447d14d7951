import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BindSyntaxError, parseBindEntry, parseBindValue } from '../../service/model/bind-paths.js';
import { expandVariables } from '../../service/model/command-line.js';
import { bwrapArgv, bwrapMissingMessage, locateBwrap, programInRoot, stepRoot } from '../../service/engine/new-root.js';

const MOUNTS = {
  root: '/sysroot/ostree/deploy/os/deploy/abc.0', etc: '/booted/etc', var: '/sysroot/ostree/deploy/os/var',
  stateDirectory: '/var/lib/bootc-prestage/hooks/os-abc.0/h', binds: [],
};

test('bwrapArgv - the mount table in order, the program after --, nothing else', (t) => {
  t.deepEqual(bwrapArgv('/usr/bin/bwrap', MOUNTS, ['/usr/libexec/x', 'prepare']), [
    '/usr/bin/bwrap',
    '--ro-bind', MOUNTS.root, '/',
    '--bind', '/booted/etc', '/etc',
    '--bind', MOUNTS.var, '/var',
    '--proc', '/proc',
    '--dev-bind', '/dev', '/dev',
    '--bind', '/sys', '/sys',
    '--bind', '/run', '/run',
    '--tmpfs', '/tmp',
    '--bind', MOUNTS.stateDirectory, MOUNTS.stateDirectory,
    '--chdir', '/', '--unshare-pid', '--die-with-parent', '--', '/usr/libexec/x', 'prepare',
  ]);
});

test('bwrapArgv - BindPaths= and BindReadOnlyPaths= after the fixed mounts, optional ones with -try', (t) => {
  const binds = [parseBindEntry('/srv/data', false), parseBindEntry('-/opt/a:/a', true), parseBindEntry('/x:/y:rbind', false)];
  const argv = bwrapArgv('bwrap', { ...MOUNTS, stateDirectory: null, binds }, ['/p']);
  const tail = argv.slice(argv.indexOf('/tmp') + 1, argv.indexOf('--chdir'));
  t.deepEqual(tail, ['--bind', '/srv/data', '/srv/data', '--ro-bind-try', '/opt/a', '/a', '--bind', '/x', '/y']);
});

test('parseBindEntry - systemd syntax; every bad value says why', (t) => {
  t.deepEqual(parseBindEntry('-${BOOTC_PRESTAGE_DEPLOYMENT}/usr/share:/new', true),
    { source: '${BOOTC_PRESTAGE_DEPLOYMENT}/usr/share', destination: '/new', readOnly: true, optional: true });
  const bad: [string, RegExp][] = [
    ['', /no source/], ['-', /no source/], ['relative', /absolute path/], ['/a/../b', /absolute path/],
    ['/a:', /empty destination/], ['/a:rel', /destination 'rel' must be an absolute path/], ['/a:/', /replace the root/],
    ['/a:/b:norbind', /norbind.*always recursive/], ['/a:/b:ro', /option 'ro' is unknown/], ['/a:/b:rbind:x', /more than/],
  ];
  for (const [v, why] of bad) t.throws(() => parseBindEntry(v, false), { instanceOf: BindSyntaxError, message: why }, v);
  t.deepEqual(parseBindValue('/a "/b c:/d"', false).entries, ['/a', '/b c:/d']);
});

test('programInRoot - a host path under the root is the same file inside it', (t) => {
  t.is(programInRoot('/d/usr/libexec/x', '/d'), '/usr/libexec/x');
  t.is(programInRoot('/usr/libexec/x', '/d'), '/usr/libexec/x');
  t.is(programInRoot('/dx/usr/bin/x', '/d'), '/dx/usr/bin/x', 'a sibling with the same prefix is not under it');
  t.is(programInRoot('/usr/bin/x', '/'), '/usr/bin/x');
});

test('stepRoot - RootDirectory= for every step; else the deployment for an image hook\'s prepare only', (t) => {
  const env = { BOOTC_PRESTAGE_DEPLOYMENT: '/s/deploy/abc.0' };
  t.is(stepRoot(undefined, true, 'prepare', env, expandVariables), '/s/deploy/abc.0');
  t.is(stepRoot(undefined, true, 'commit', env, expandVariables), '/');
  t.is(stepRoot(undefined, true, 'abort', env, expandVariables), '/');
  t.is(stepRoot(undefined, false, 'prepare', env, expandVariables), '/');
  t.is(stepRoot('/', true, 'prepare', env, expandVariables), '/');
  t.is(stepRoot('${BOOTC_PRESTAGE_DEPLOYMENT}/', false, 'abort', env, expandVariables), '/s/deploy/abc.0');
  t.is(stepRoot('${NOPE}', false, 'prepare', env, expandVariables), null, 'expands to a relative path');
});

test('locateBwrap - $BOOTC_PRESTAGE_BWRAP, else PATH, else next to the daemon; none is null', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'bwrap-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const fake = path.join(dir, 'bwrap');
  await fsp.writeFile(fake, '#!/bin/sh\n');
  await fsp.chmod(fake, 0o755);
  t.is(locateBwrap({ BOOTC_PRESTAGE_BWRAP: '/x/bwrap', PATH: dir }), '/x/bwrap');
  t.is(locateBwrap({ BOOTC_PRESTAGE_BWRAP: '' , PATH: dir }), null);
  t.is(locateBwrap({ PATH: `/nonexistent:${dir}` }, []), fake);
  t.is(locateBwrap({ PATH: '/nonexistent' }, [dir]), fake, 'next to the daemon');
  t.is(locateBwrap({ PATH: '/nonexistent' }, []), null);
  await fsp.chmod(fake, 0o644);
  t.is(locateBwrap({ PATH: dir }, []), null, 'not executable');
  t.regex(bwrapMissingMessage('/r'), /'bubblewrap' package \(Debian, Fedora\)/);
});
