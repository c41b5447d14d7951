/**
 * The start cost of a step in a new root (bubblewrap, docs/hooks.md)
 * against the same step on the host root: one daemon, one hook set
 * switched between the two by rewriting its files, runs paired and
 * alternated in the same invocation. The root is a tree with busybox-static
 * (/usr/bin/busybox, `true` linked to it) and the mount points bwrap needs.
 */
import { chmod, copyFile, mkdir, symlink } from 'node:fs/promises';
import * as path from 'node:path';
import { hookDir, hookFile, writeFile } from './env.js';
import { runPrepare, withDaemon, type Ctx } from './context.js';
import { ratioText, type Row } from './result.js';
import { describe, median, pairedRatios } from './stats.js';

const BUSYBOX = '/usr/bin/busybox';

async function makeRoot(dir: string): Promise<string> {
  const root = path.join(dir, 'newroot');
  await mkdir(path.join(root, 'usr', 'bin'), { recursive: true, mode: 0o755 });
  await copyFile(BUSYBOX, path.join(root, 'usr', 'bin', 'busybox'));
  await chmod(path.join(root, 'usr', 'bin', 'busybox'), 0o755);
  await symlink('busybox', path.join(root, 'usr', 'bin', 'true'));
  for (const d of ['etc', 'var', 'proc', 'dev', 'sys', 'run', 'tmp']) await mkdir(path.join(root, d), { mode: 0o755 });
  return root;
}

/** N trivial hooks, each `true`: on the host, or in `root`. */
async function writeHooks(etcRoot: string, n: number, root: string | null): Promise<void> {
  for (let i = 0; i < n; i++) {
    const name = `hook-${String(i).padStart(3, '0')}`;
    const extra = root === null ? '' : `RootDirectory=${root}\n`;
    await writeFile(path.join(hookDir(etcRoot), `${name}.hook`), hookFile(root === null ? '/bin/true' : '/usr/bin/true', extra));
  }
}

export async function benchNewRoot(ctx: Ctx): Promise<Row[]> {
  const n = ctx.sizes.smoke ? 3 : 20;
  const reps = ctx.sizes.smoke ? 1 : Math.max(9, ctx.sizes.reps * 3);
  let newRoot = '';
  return withDaemon(ctx, 'newroot', async (dir, root) => {
    newRoot = await makeRoot(dir);
    await writeHooks(root, n, null);
  }, async (r) => {
    const phase = async (inRoot: boolean) => {
      await writeHooks(r.root, n, inRoot ? newRoot : null);
      const run = await runPrepare(ctx, r);
      if (run.state !== 'prepared') throw new Error(`prepare ${inRoot ? 'in the new root' : 'on the host'} ended ${run.state}`);
      return run.ms;
    };
    // Warm-up of both, not counted.
    await phase(false);
    await phase(true);
    const host: number[] = [];
    const inRoot: number[] = [];
    for (let k = 0; k < reps; k++) {
      // Alternate which goes first, so a drift of the machine hits both alike.
      if (k % 2 === 0) { host.push(await phase(false)); inRoot.push(await phase(true)); } else { inRoot.push(await phase(true)); host.push(await phase(false)); }
      ctx.note(`new root ${n} steps: host ${host[k]!.toFixed(0)} ms, new root ${inRoot[k]!.toFixed(0)} ms`);
    }
    const perStepHost = host.map((x) => x / n);
    const perStepRoot = inRoot.map((x) => x / n);
    const extra = perStepRoot.map((x, i) => x - perStepHost[i]!);
    const ratios = pairedRatios(inRoot, host);
    return [{
      benchmark: `start cost of a step in a new root (bwrap), ${n} trivial steps per phase, ${reps} paired runs`,
      baseline: `host root: ${describe(perStepHost, 'ms', 1)} per step`,
      measured: `new root: ${describe(perStepRoot, 'ms', 1)} per step; bwrap adds ${describe(extra, 'ms', 1)}`,
      result: ratioText(ratios),
      target: 'report (no target)',
      met: null,
      numbers: {
        steps: n, reps, hostStepMs: median(perStepHost), newRootStepMs: median(perStepRoot),
        addedMs: median(extra), ratio: median(ratios),
      },
    }];
  });
}
