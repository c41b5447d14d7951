/**
 * The demo sysroot of `npm start` (--bus auto): a real ostree sysroot with
 * one deployment that ships the example hook, made under the checkout, and
 * removable with a plain `rm -rf` (ostree's immutable flag is lifted).
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDemoSysroot } from '../../service/daemon/demo-sysroot.js';

test('demo sysroot - one deployment with the example hook; made once; rm -rf removes it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'demo-sysroot-'));
  t.teardown(() => {
    spawnSync('chattr', ['-R', '-i', dir], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });
  const sysroot = join(dir, 'sysroot');
  const deployments = await ensureDemoSysroot(sysroot);
  t.is(deployments.length, 1);
  const d = deployments[0]!;
  t.true(existsSync(join(d, 'usr/lib/bootc/pre-stage.d/demo.hook')));
  t.true(existsSync(join(d, 'usr/libexec/demo-hook')));
  t.deepEqual(await ensureDemoSysroot(sysroot), deployments, 'a second start reuses it');

  const attrs = spawnSync('lsattr', ['-d', d], { encoding: 'utf8' });
  if (attrs.status === 0) t.false(/^\S*i/.test(attrs.stdout), `not immutable: ${attrs.stdout}`);
  const rm = spawnSync('rm', ['-rf', sysroot], { encoding: 'utf8' });
  t.is(rm.status, 0, rm.stderr);
  t.false(existsSync(sysroot));
});
