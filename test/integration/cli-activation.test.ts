/**
 * Real D-Bus activation, as on an installed system: a private bus with a
 * <servicedir> holding the shipped activation file (only Exec= replaced, to
 * run the built daemon on test directories) starts bootc-prestaged on the
 * CLI's first call; the daemon exits after --idle-exit-sec with nothing to
 * do, and the next call starts it again.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { withBus, writeActivationFile } from '../helpers/bus.js';
import { DAEMON_ENTRY } from '../helpers/daemon.js';
import { SERVICE, withClient } from '../helpers/dbus-client.js';
import { withSysroot } from '../helpers/ostree.js';
import { tmpDir, writeFiles } from '../helpers/tmp.js';
import { hookFile, runCli } from './cli-harness.js';

test.serial('activation - the first call starts the daemon, which exits when idle and is started again', async (t) => {
  const dir = await tmpDir(t, { mode: 0o755 });
  const sysroot = await withSysroot(t, { deployments: 2 });
  const root = path.join(dir, 'root');
  await writeFiles(root, { 'etc/bootc/pre-stage.d/touch.hook': hookFile({ prepare: `touch ${dir}/hook-ran` }) });
  const servicedir = path.join(dir, 'services');
  await writeActivationFile(servicedir, {
    exec: [process.execPath, DAEMON_ENTRY, '--bus', 'system', '--state-dir', path.join(dir, 'state'), '--root', root,
      '--sysroot', sysroot.path, '--booted-root', sysroot.bootedRoot, '--idle-exit-sec', '5'],
  });
  const bus = await withBus(t, { servicedir });
  const client = await withClient(t, bus.address);
  t.is(await client.nameOwner(SERVICE), null, 'nothing runs before the first call');

  const s = await runCli(['status'], { address: bus.address });
  t.is(s.code, 0, `${s.stderr}\n${bus.logs().join('\n')}`);
  t.regex(s.stdout, /^State: idle/);
  const first = await client.nameOwner(SERVICE);
  t.truthy(first, 'the call activated the daemon');

  const r = await runCli(['start', sysroot.deployments[0]!], { address: bus.address });
  t.is(r.code, 0, r.stderr);
  t.true(existsSync(path.join(dir, 'hook-ran')));

  // Idle for 5 s: the daemon exits and gives up its name.
  const deadline = Date.now() + 30_000;
  while ((await client.nameOwner(SERVICE)) !== null) {
    if (Date.now() > deadline) t.fail('the daemon did not exit after --idle-exit-sec 5');
    await new Promise((res) => setTimeout(res, 200));
  }

  // The next call starts a new daemon, which finds the transaction in its journal.
  const again = await runCli(['--json', 'status'], { address: bus.address });
  t.is(again.code, 0, again.stderr);
  const second = await client.nameOwner(SERVICE);
  t.truthy(second);
  t.not(second, first);
  const doc = JSON.parse(again.stdout) as { transactions: { state: string; deployment: string }[] };
  t.like(doc.transactions.find((x) => x.deployment === sysroot.deployments[0]), { state: 'prepared' });
});
