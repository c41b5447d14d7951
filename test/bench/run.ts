/**
 * `npm run bench`: measure bootc-prestaged against its baselines and print
 * one table (markdown), with the command that made it.
 *
 *   node dist/test/bench/run.js [--help] [--smoke] [--only NAME,...] [--reps N]
 *                               [--json FILE] [--markdown FILE] [--daemon FILE]
 *
 * The daemon measured is the shipped bundle, dist/bootc-prestaged.mjs
 * (with the spawn helper beside it in dist/libexec/). --daemon runs another
 * build instead (a worktree of an older commit, say: its
 * dist/bootc-prestaged.mjs, or dist/service/bin/bootc-prestaged.js before
 * the bundles), to measure a change before and after against the same
 * baselines. --reps N repeats each measurement N times (defaults: 3, and 7
 * for the short progress and output runs).
 *
 * --smoke runs every benchmark at a tiny size once (CI: the benchmarks
 * cannot rot); it judges nothing. Every ratio is of runs paired in the
 * same invocation, since absolute times on a shared machine mean little.
 */
import { writeFileSync } from 'node:fs';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import * as path from 'node:path';
import { DAEMON_ENTRY, cleanUpOnSignal, makeSysroot, startBus, type Bus, type Sysroot } from './env.js';
import type { Ctx } from './context.js';
import { benchNewRoot } from './new-root-bench.js';
import { benchOutput, benchPrepare, benchProgress, benchProperties } from './phase-benches.js';
import { FULL, SMOKE, type Row } from './result.js';
import { benchHistoryScaling, benchHookScaling, benchStartup } from './service-benches.js';
import { benchGate } from './gate-bench.js';

const BENCHES: Record<string, (ctx: Ctx) => Promise<Row[]>> = {
  prepare: benchPrepare,
  progress: benchProgress,
  output: benchOutput,
  properties: benchProperties,
  startup: benchStartup,
  hooks: benchHookScaling,
  history: benchHistoryScaling,
  newroot: benchNewRoot,
  gate: benchGate,
};

function table(rows: Row[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    '| benchmark | baseline | bootc-prestaged | result | target | met |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${[r.benchmark, r.baseline, r.measured, r.result, r.target,
      r.met === null ? '—' : r.met ? 'yes' : '**no**'].map(esc).join(' | ')} |`),
  ];
  return lines.join('\n');
}

const USAGE = `usage: npm run bench -- [--help] [--smoke] [--only NAME,...] [--reps N] [--json FILE] [--markdown FILE] [--daemon FILE]
  --smoke          every benchmark once at a tiny size (what CI runs); judges nothing
  --only NAMES     some of: ${Object.keys(BENCHES).join(', ')}
  --reps N         repeat each measurement N times
  --json FILE, --markdown FILE
                   also write the rows as JSON, the table as markdown
  --daemon FILE    measure another build's daemon entry against the same baselines
`;

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        help: { type: 'boolean', short: 'h' },
        smoke: { type: 'boolean' },
        only: { type: 'string' },
        reps: { type: 'string' },
        json: { type: 'string' },
        markdown: { type: 'string' },
        daemon: { type: 'string' },
      },
      strict: true,
    });
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.reps !== undefined && !/^[1-9][0-9]*$/.test(values.reps)) {
    process.stderr.write(`bench: --reps wants a positive whole number, not '${values.reps}'\n${USAGE}`);
    return 2;
  }
  const sizes = { ...(values.smoke ? SMOKE : FULL) };
  if (values.reps) sizes.reps = sizes.ioReps = sizes.startupReps = Math.max(1, Number(values.reps));
  const names = values.only ? values.only.split(',') : Object.keys(BENCHES);
  for (const n of names) {
    if (BENCHES[n]) continue;
    process.stderr.write(`bench: unknown benchmark '${n}'; known: ${Object.keys(BENCHES).join(', ')}\n`);
    return 2;
  }

  cleanUpOnSignal();
  const command = ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' ');
  const note = (t: string) => process.stderr.write(`  ${t}\n`);
  let bus: Bus | null = null;
  let sysroot: Sysroot | null = null;
  const rows: Row[] = [];
  const failures: string[] = [];
  try {
    bus = await startBus();
    sysroot = await makeSysroot();
    const ctx: Ctx = { bus, sysroot, sizes, note, daemonEntry: path.resolve(values.daemon ?? DAEMON_ENTRY) };
    for (const n of names) {
      process.stderr.write(`${n}...\n`);
      const t0 = performance.now();
      try {
        rows.push(...await BENCHES[n]!(ctx));
      } catch (e) {
        failures.push(`${n}: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
        process.stderr.write(`${n} FAILED: ${e instanceof Error ? e.stack : String(e)}\n`);
      }
      process.stderr.write(`${n} done in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
  } finally {
    await sysroot?.remove();
    await bus?.stop();
  }

  const machine = `${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), Node.js ${process.version}, `
    + `load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at the end`;
  const md = [
    `Made by \`${command}\` on ${new Date().toISOString().slice(0, 10)}: ${machine}.`,
    'Ratios are medians of paired runs (each baseline run next to a daemon run); ranges are min–max.',
    '',
    table(rows),
    '',
  ].join('\n');
  process.stdout.write(`\n${md}\n`);
  if (values.markdown) writeFileSync(values.markdown, md);
  if (values.json) writeFileSync(values.json, JSON.stringify({ command, smoke: sizes.smoke, rows, failures }, null, 2) + '\n');
  if (failures.length > 0) {
    process.stderr.write(`\n${failures.length} benchmark(s) failed to run:\n${failures.join('\n')}\n`);
    return 1;
  }
  return 0;
}

main().then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exitCode = 1;
});
