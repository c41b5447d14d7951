/**
 * The boot gate's run time at shutdown with nothing to wait for: the
 * staged deployment (named by the bootc stand-in, test/fixtures/bootc) is
 * prepared with the current hooks, so `bootc-prestage-gate shutdown` reads
 * bootc's status, the state directory's journals and the hooks, decides
 * "finalize" and exits. Also the case of nothing staged (one stat). The
 * baseline, measured alternately in the same run, is a bare `node -e 0`
 * (the start-up any Node.js program pays); the stand-in's `bootc status`
 * alone is shown too (a real bootc answers in its own time).
 */
import { mkdir, writeFile as fsWriteFile } from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, hookDir, hookFile, writeFile } from './env.js';
import { runPrepare, timeProgram, withDaemon, type Ctx } from './context.js';
import { ratioText, type Row } from './result.js';
import { describe, median, pairedRatios } from './stats.js';

export async function benchGate(ctx: Ctx): Promise<Row[]> {
  const reps = ctx.sizes.smoke ? 3 : 41;
  return withDaemon(ctx, 'gate', async (_dir, root) => {
    await writeFile(path.join(hookDir(root), 'trivial.hook'), hookFile('/bin/true'));
  }, async (r) => {
    const fin = await runPrepare(ctx, r);
    if (fin.state !== 'prepared') throw new Error(`the prepare phase ended ${fin.state}`);
    const runDir = path.join(r.dir, 'run-ostree');
    await mkdir(runDir, { recursive: true });
    await fsWriteFile(path.join(runDir, 'staged-deployment'), 'stand-in\n');
    const env = {
      ...process.env,
      PATH: `${path.join(REPO_ROOT, 'test', 'fixtures', 'bootc')}:${process.env['PATH'] ?? '/usr/bin:/bin'}`,
      BOOTC_STANDIN_SYSROOT: ctx.sysroot.path,
      BOOTC_STANDIN_BOOTED: ctx.sysroot.bootedRoot,
      BOOTC_STANDIN_CONFIG: path.join(r.dir, 'no-config'),
      BOOTC_STANDIN_RUN_DIR: runDir,
      BOOTC_PRESTAGE_OSTREE_RUN_DIR: runDir,
      BOOTC_PRESTAGE_RUNTIME_DIR: path.join(r.dir, 'run-bootc-prestage'),
      BOOTC_PRESTAGE_GATE_RECORDS: path.join(r.dir, 'discarded.jsonl'),
      BOOTC_PRESTAGE_CONFIG: path.join(r.dir, 'no-config'),
    };
    const gate = [process.execPath, path.join(REPO_ROOT, 'dist', 'bootc-prestage-gate.mjs'), 'shutdown',
      '--state-dir', r.stateDir, '--root', r.root, '--sysroot', ctx.sysroot.path];
    const base: number[] = [];
    const subj: number[] = [];
    const none: number[] = [];
    const status: number[] = [];
    for (let i = 0; i < reps; i++) {
      base.push(await timeProgram([process.execPath, '-e', '0']));
      subj.push(await timeProgram(gate, env));
      none.push(await timeProgram(gate, { ...env, BOOTC_PRESTAGE_OSTREE_RUN_DIR: path.join(r.dir, 'nothing') }));
      status.push(await timeProgram(['bootc', 'status', '--format=json'], env));
    }
    // The gate must have said "finalize": a lock would mean it measured the wrong path.
    const { existsSync } = await import('node:fs');
    if (existsSync(path.join(runDir, 'staged-deployment-locked'))) throw new Error('the gate locked a prepared stage');
    const ratios = pairedRatios(subj, base);
    return [{
      benchmark: 'boot gate at shutdown, nothing to wait for (staged deployment prepared)',
      baseline: `node -e 0: ${describe(base, 'ms')}`,
      measured: `${describe(subj, 'ms')}; nothing staged: ${describe(none, 'ms')}; of it, the bootc stand-in's status: ${describe(status, 'ms')}`,
      result: ratioText(ratios),
      target: 'fast (no daemon start)',
      met: null,
      numbers: { baselineMs: median(base), measuredMs: median(subj), nothingStagedMs: median(none), bootcStatusMs: median(status), ratio: median(ratios) },
    }];
  });
}
