/**
 * Benchmarks of the service itself: start-up and idle memory against a bare
 * dbus-next name owner, and how ListHooks, planning and start-up grow with
 * the number of hook files and of transactions in history.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  Client, MANAGER_PATH, REPO_ROOT, SERVICE, hookDir, hookFile, makeDir, removeTree, sleep, spawnOwner,
  startDaemon, stopChild, vmField, writeFile,
} from './env.js';
import { runPrepare, target, withDaemon, type Ctx } from './context.js';
import { ratioText, type Row } from './result.js';
import { describe, median, pairedRatios } from './stats.js';

/** How long an idle process settles before its RSS is read. */
const SETTLE_MS = 1000;

export async function benchStartup(ctx: Ctx): Promise<Row[]> {
  const bareEntry = path.join(REPO_ROOT, 'dist', 'test', 'bench', 'bare-owner.js');
  const baseMs: number[] = [];
  const baseRss: number[] = [];
  const subjMs: number[] = [];
  const subjRss: number[] = [];
  for (let k = 0; k < ctx.sizes.startupReps + 1; k++) {
    const bare = await spawnOwner(ctx.bus.address, 'org.containers.bootc.BenchBaseline', [bareEntry, ctx.bus.address, 'org.containers.bootc.BenchBaseline']);
    await sleep(SETTLE_MS);
    const bRss = vmField(bare.child.pid!) / 1024;
    await stopChild(bare.child, 5000);
    const dir = await makeDir('startup');
    try {
      const d = await startDaemon({
        bus: ctx.bus, sysroot: ctx.sysroot, stateDir: path.join(dir, 'state'), root: path.join(dir, 'root'), entry: ctx.daemonEntry,
      });
      await sleep(SETTLE_MS);
      const dRss = vmField(d.pid) / 1024;
      await d.stop();
      if (k === 0) continue; // warm-up: page cache
      baseMs.push(bare.startMs); baseRss.push(bRss); subjMs.push(d.startMs); subjRss.push(dRss);
      ctx.note(`start-up: bare ${bare.startMs.toFixed(0)} ms ${bRss.toFixed(1)} MB, daemon ${d.startMs.toFixed(0)} ms ${dRss.toFixed(1)} MB`);
    } finally {
      await removeTree(dir);
    }
  }
  const memRatios = pairedRatios(subjRss, baseRss);
  const timeRatios = pairedRatios(subjMs, baseMs);
  return [{
    benchmark: 'idle daemon memory (RSS, 1 s after owning the name)',
    baseline: `bare Node.js + dbus-next owning a name: ${describe(baseRss, 'MB', 1)}`,
    measured: describe(subjRss, 'MB', 1),
    result: ratioText(memRatios),
    target: '≤ 1.5×',
    met: median(memRatios) <= 1.5,
    numbers: { baselineMb: median(baseRss), measuredMb: median(subjRss), ratio: median(memRatios) },
  }, {
    benchmark: 'start-up to owning the name',
    baseline: `bare Node.js + dbus-next owning a name: ${describe(baseMs, 'ms')}`,
    measured: describe(subjMs, 'ms'),
    result: ratioText(timeRatios),
    target: '≤ 2×',
    met: median(timeRatios) <= 2,
    numbers: { baselineMs: median(baseMs), measuredMs: median(subjMs), ratio: median(timeRatios) },
  }];
}

async function timed(f: () => Promise<unknown>, reps: number): Promise<number[]> {
  await f(); // warm-up
  const out: number[] = [];
  for (let k = 0; k < reps; k++) {
    const t0 = performance.now();
    await f();
    out.push(performance.now() - t0);
  }
  return out;
}

/** "1.23× per 10× N": how a time grows between the smallest and largest N, against linear. */
function growthText(ns: number[], values: number[]): string {
  const parts: string[] = [];
  for (let i = 1; i < ns.length; i++) {
    const nr = ns[i]! / ns[i - 1]!;
    const vr = values[i]! / values[i - 1]!;
    parts.push(`×${vr.toFixed(1)} for ×${nr.toFixed(0)} N`);
  }
  return parts.join(', ');
}

/** Exponent k of time ∝ N^k between the smallest and largest N (1 = linear). */
function exponent(ns: number[], values: number[]): number {
  return Math.log(values[values.length - 1]! / values[0]!) / Math.log(ns[ns.length - 1]! / ns[0]!);
}

export async function benchHookScaling(ctx: Ctx): Promise<Row[]> {
  const ns = ctx.sizes.hookCounts;
  const list: number[] = [];
  const plan: number[] = [];
  for (const n of ns) {
    await withDaemon(ctx, `hooks-${n}`, async (_dir, root) => {
      for (let i = 0; i < n; i++) {
        const name = `hook-${String(i).padStart(5, '0')}`;
        // A chain of After= so ordering has real work to do.
        const after = i > 0 ? `After=hook-${String(i - 1).padStart(5, '0')}\n` : '';
        await writeFile(path.join(hookDir(root), `${name}.hook`), hookFile('/bin/true', `${after}Description=bench hook ${i}\n`));
      }
    }, async (r) => {
      const reps = ctx.sizes.smoke ? 1 : 5;
      const l = await timed(async () => {
        const [hooks] = await r.client.call(SERVICE, MANAGER_PATH, SERVICE, 'ListHooks', 's', [target(ctx)]);
        if ((hooks as unknown[]).length !== n) throw new Error(`ListHooks returned ${(hooks as unknown[]).length} hooks, not ${n}`);
      }, reps);
      const p = await timed(() => runPrepare(ctx, r, { 'dry-run': true }), reps);
      list.push(median(l));
      plan.push(median(p));
      ctx.note(`hooks ${n}: ListHooks ${describe(l, 'ms')}, dry-run plan ${describe(p, 'ms')}`);
    });
  }
  const ke = exponent(ns, list);
  const kp = exponent(ns, plan);
  return [{
    benchmark: `ListHooks with N hook files (N = ${ns.join(', ')})`,
    baseline: '—',
    measured: ns.map((n, i) => `${n}: ${list[i]!.toFixed(0)} ms`).join('; '),
    result: `${growthText(ns, list)} (N^${ke.toFixed(2)})`,
    target: 'near linear or better',
    met: ke <= 1.2,
    numbers: Object.fromEntries([...ns.map((n, i) => [`listMs_${n}`, list[i]!]), ['exponent', ke]]),
  }, {
    benchmark: `planning (dry-run StartPreStage → Finished) with N hook files`,
    baseline: '—',
    measured: ns.map((n, i) => `${n}: ${plan[i]!.toFixed(0)} ms`).join('; '),
    result: `${growthText(ns, plan)} (N^${kp.toFixed(2)})`,
    target: 'near linear or better',
    met: kp <= 1.2,
    numbers: Object.fromEntries([...ns.map((n, i) => [`planMs_${n}`, plan[i]!]), ['exponent', kp]]),
  }];
}

/** Journals of `n` committed transactions, written as the engine writes them. */
async function writeHistory(stateDir: string, deployment: string, n: number): Promise<void> {
  const dir = path.join(stateDir, 'journal');
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const key = `benchos-${path.basename(deployment)}`;
  const t0 = Date.UTC(2024, 0, 1);
  const hooks = [{
    name: 'example', source: '/etc/bootc/pre-stage.d/example.hook', digest: '0'.repeat(64), refused: null,
    definition: {
      description: 'bench', prepare: ['/bin/true'], commit: ['/bin/true'], abort: ['/bin/true'],
      after: [], before: [], required: true, timeoutSec: 300, environment: [],
    },
  }];
  const p = (x: number, w = 2) => String(x).padStart(w, '0');
  for (let i = 0; i < n; i++) {
    const d = new Date(t0 + i * 1000);
    const id = `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}T${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}_${randomBytes(4).toString('hex')}`;
    const usec = d.getTime() * 1000;
    const recs = [
      { t: 'begin', v: 1, id, deployment, deploymentKey: key, createdUsec: usec, fingerprint: 'bench', dryRun: false, hooks },
      { t: 'phase', phase: 'prepare', usec, timeoutSec: 0 },
      { t: 'state', state: 'preparing', error: '', message: '', usec },
      { t: 'step', phase: 'prepare', hook: 'example', rollback: false, usec },
      { t: 'done', phase: 'prepare', hook: 'example', rollback: false, result: 'success', message: 'exited with status 0', usec },
      { t: 'state', state: 'prepared', error: '', message: '1 hook(s) prepared', usec },
      { t: 'phase', phase: 'commit', usec, timeoutSec: 0 },
      { t: 'state', state: 'committing', error: '', message: '', usec },
      { t: 'step', phase: 'commit', hook: 'example', rollback: false, usec },
      { t: 'done', phase: 'commit', hook: 'example', rollback: false, result: 'success', message: 'exited with status 0', usec },
      { t: 'state', state: 'committed', error: '', message: '', usec },
    ];
    await fsp.writeFile(path.join(dir, `${id}.jnl`), recs.map((r) => JSON.stringify(r)).join('\n') + '\n', { mode: 0o600 });
  }
}

export async function benchHistoryScaling(ctx: Ctx): Promise<Row[]> {
  const ns = ctx.sizes.historyCounts;
  const start: number[] = [];
  const rss: number[] = [];
  const listMs: number[] = [];
  for (const n of ns) {
    const dir = await makeDir(`history-${n}`);
    try {
      const stateDir = path.join(dir, 'state');
      await writeHistory(stateDir, ctx.sysroot.deployments[1]!, n);
      const d = await startDaemon({
        bus: ctx.bus, sysroot: ctx.sysroot, stateDir, root: path.join(dir, 'root'), args: ['--history', String(n)],
        entry: ctx.daemonEntry,
      });
      try {
        const client = await Client.connect(ctx.bus.address);
        try {
          const t0 = performance.now();
          const [txs] = await client.call(SERVICE, MANAGER_PATH, SERVICE, 'ListTransactions');
          listMs.push(performance.now() - t0);
          if ((txs as unknown[]).length !== n) throw new Error(`ListTransactions returned ${(txs as unknown[]).length}, not ${n}`);
        } finally {
          client.close();
        }
        start.push(d.startMs);
        rss.push(vmField(d.pid) / 1024);
        ctx.note(`history ${n}: start-up ${d.startMs.toFixed(0)} ms, RSS ${rss[rss.length - 1]!.toFixed(1)} MB, ListTransactions ${listMs[listMs.length - 1]!.toFixed(0)} ms`);
      } finally {
        await d.stop();
      }
    } finally {
      await removeTree(dir);
    }
  }
  const k = exponent(ns, start);
  return [{
    benchmark: `start-up with N finished transactions in history (N = ${ns.join(', ')})`,
    baseline: '—',
    measured: ns.map((n, i) => `${n}: ${start[i]!.toFixed(0)} ms, ${rss[i]!.toFixed(0)} MB`).join('; '),
    result: `${growthText(ns, start)} (N^${k.toFixed(2)})`,
    target: 'near linear or better',
    met: k <= 1.2,
    numbers: Object.fromEntries([
      ...ns.map((n, i) => [`startMs_${n}`, start[i]!]), ...ns.map((n, i) => [`rssMb_${n}`, rss[i]!]),
      ...ns.map((n, i) => [`listTransactionsMs_${n}`, listMs[i]!]), ['exponent', k],
    ]),
  }];
}

