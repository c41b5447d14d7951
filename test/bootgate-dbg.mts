import { Machine } from './helpers/nspawn.ts';
const x = await Machine.create();
try {
  await x.boot();
  for (const c of [
    ['systemctl', 'status', '--no-pager', 'ostree-finalize-staged.service', 'bootc-prestage-gate.service', 'bootc-prestage-staged.path'],
    ['ls', '-la', '/run/ostree-booted', '/run/ostree'],
  ]) { const r = await x.exec(c); console.log(r.stdout, r.stderr); }
  await x.publish(1);
  await x.exec(['sh', '-c', 'echo "[Hook]\nPrepare=/bin/true" > /etc/bootc/pre-stage.d/t.hook']);
  const u = await x.exec(['bootc', 'upgrade']); console.log('upgrade', u.code, u.stdout, u.stderr);
  await new Promise((r) => setTimeout(r, 5000));
  for (const c of [
    ['ls', '-la', '/run/ostree'],
    ['journalctl', '--no-pager', '-u', 'bootc-prestage-staged.service', '-u', 'bootc-prestaged.service'],
    ['bootc', 'status', '--format=json'],
  ]) { const r = await x.exec(c); console.log(r.stdout, r.stderr); }
  await x.shutdown('poweroff');
  console.log('finalize log:', await x.read('var/lib/test-finalize/log'));
  console.log(await x.journal());
} finally {
  await x.dispose();
}
