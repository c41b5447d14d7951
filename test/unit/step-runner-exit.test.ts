/**
 * The spawn helper's pooled FIFOs live under $TMPDIR until a step uses them:
 * a process that ran steps and exits must take the rest with it.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { locateSpawner } from '../../service/engine/spawner.js';

const here = dirname(fileURLToPath(import.meta.url));
const runner = resolve(here, '../../service/engine/step-runner.ts');

test('runStep - the spawn helper makes its pipes without the file system: nothing of a step appears in TMPDIR', (t) => {
  if (locateSpawner() === null) {
    t.fail('no spawn helper: run `npm run build` (it needs a C compiler)');
    return;
  }
  const tmp = mkdtempSync(join(tmpdir(), 'step-exit-'));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const script = `
    import { runStep } from ${JSON.stringify(runner)};
    const step = runStep({ argv: ['/bin/sh', '-c', 'echo hi'], env: { PATH: '/usr/bin:/bin' }, timeoutMs: 10000 }, {
      progress() {}, status() {}, warning(w) { console.log('warning: ' + w); }, output(_s, l) { console.log('out: ' + l); },
    });
    const o = await step.done;
    console.log('result: ' + o.result);
    const { readdirSync } = await import('node:fs');
    console.log('while running: ' + readdirSync(process.env.TMPDIR).filter((n) => n.startsWith('bootc-prestage-step-')).length);
  `;
  const r = spawnSync(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, TMPDIR: tmp }, encoding: 'utf8', timeout: 60_000,
  });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /^out: hi$/m);
  t.regex(r.stdout, /^result: success$/m);
  t.regex(r.stdout, /^while running: 0$/m, r.stdout);
  // (tsx keeps its cache there too: only our names count.)
  t.deepEqual(readdirSync(tmp).filter((n) => n.startsWith('bootc-prestage-')), []);
});
