/**
 * The benchmarks at their smoke size (`npm run bench -- --smoke`), so they
 * cannot rot: every benchmark runs against the real daemon and reports
 * numbers. No timing is judged here; a shared CI machine cannot.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT, tmpDir } from '../helpers/tmp.js';

const RUNNER = path.join(REPO_ROOT, 'dist', 'test', 'bench', 'run.js');
const BENCHES = ['prepare', 'progress', 'output', 'properties', 'startup', 'hooks', 'history', 'newroot'];

interface Report {
  command: string;
  smoke: boolean;
  rows: { benchmark: string; met: boolean | null; numbers: Record<string, number> }[];
  failures: string[];
}

test('bench --smoke - every benchmark runs and reports finite numbers in one table', async (t) => {
  t.timeout(300_000);
  t.true(existsSync(RUNNER), `${RUNNER} is missing: npm test builds it (tsconfig.json includes test/bench)`);
  const dir = await tmpDir(t);
  const json = path.join(dir, 'report.json');
  const md = path.join(dir, 'table.md');
  const child = spawn(process.execPath, [RUNNER, '--smoke', '--json', json, '--markdown', md],
    { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.is(code, 0, `bench --smoke failed:\n${stderr.slice(-4000)}`);

  const report = JSON.parse(await fsp.readFile(json, 'utf8')) as Report;
  t.true(report.smoke);
  t.deepEqual(report.failures, []);
  // Every benchmark contributed at least one row, each with numbers.
  const expectRows: Record<string, RegExp> = {
    prepare: /^prepare phase, \d+ trivial hooks/,
    progress: /PROGRESS= lines on fd 3: wall time$/,
    output: /on stdout .*: wall time$/,
    properties: /clients calling GetAll/,
    startup: /^start-up to owning the name$/,
    hooks: /^ListHooks with N hook files/,
    history: /^start-up with N finished transactions/,
    newroot: /^start cost of a step in a new root/,
  };
  t.is(Object.keys(expectRows).length, BENCHES.length);
  for (const [bench, re] of Object.entries(expectRows)) {
    t.true(report.rows.some((r) => re.test(r.benchmark)), `no row for ${bench}`);
  }
  for (const row of report.rows) {
    const values = Object.values(row.numbers);
    t.true(values.length > 0, `${row.benchmark}: no numbers`);
    for (const [k, v] of Object.entries(row.numbers)) {
      t.true(Number.isFinite(v), `${row.benchmark}: ${k} = ${v}`);
    }
  }
  // Behaviour the benchmarks check along the way (not timings).
  const num = (re: RegExp, key: string) => report.rows.find((r) => re.test(r.benchmark))?.numbers[key];
  t.is(num(/HookProgress signals/, 'finalDelivered'), 1, 'the last PROGRESS value reached the bus');
  t.is(num(/Message signals, log/, 'logComplete'), 1, 'every output line is in the log');
  t.is(num(/clients calling GetAll/, 'errors'), 0, 'no property read failed');

  // One markdown table, printed and written, with the command that made it.
  const table = await fsp.readFile(md, 'utf8');
  t.regex(table, /^Made by `npm run bench -- --smoke /m);
  t.is(table.split('\n').filter((l) => l.startsWith('| benchmark |')).length, 1);
  // Header, separator, one line per row.
  t.is(table.split('\n').filter((l) => l.startsWith('| ')).length, report.rows.length + 2);
  t.true(stdout.includes(table.trim()));
});
