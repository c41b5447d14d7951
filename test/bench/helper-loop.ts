/**
 * helper-loop JOURNAL STATEDIR DIR: the floor of the daemon's design for
 * the prepare benchmark, the third baseline beside run-parts and
 * fsync-run-parts.c.
 *
 * Runs every file of DIR in name order the way the daemon starts a step,
 * with none of the engine around it: a bare Node.js loop appends a `step`
 * line to JOURNAL, asks the daemon's own spawn helper (service/engine/
 * spawner.ts, service/spawner/spawner.c) to fdatasync it, make the step's
 * directory under STATEDIR, make its two pipes (stdout with stderr on it,
 * and fd 3) and exec the program, opens the read ends as the daemon does
 * (one net.Socket each), waits for the exit frame and the EOFs, and
 * appends a `done` line. What the
 * daemon spends beyond this is its engine's work per step (planning, trust
 * checks, the snapshot, the events, the bus, the logs); what this spends
 * beyond fsync-run-parts is the price of a Node.js event loop and a helper
 * process between the runner and its steps.
 *
 * One untimed pass first (page cache, JIT, the helper's start), then one
 * timed pass; prints its milliseconds on stdout. Exits 1 if a program did
 * not exit 0, 2 on a usage or system error.
 */
import { closeSync, mkdirSync, openSync, readdirSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import * as path from 'node:path';
import { sharedSpawner, type Spawner } from '../../service/engine/spawner.js';

/** stdout (with stderr on it, as the daemon does) and fd 3. */
const STREAMS = 2;

function step(helper: Spawner, program: string, journal: string, stateDir: string): Promise<boolean> {
  return new Promise<boolean>((resolve, reject) => {
    let status: boolean | null = null;
    let open = STREAMS;
    const settle = () => {
      if (status !== null && open === 0) resolve(status);
    };
    helper.spawn([program], { PATH: '/usr/bin:/bin' }, STREAMS, (s) => {
      status = s !== null && s.code === 0;
      settle();
    }, { syncFile: journal, makeDirectory: stateDir }, true).then((started) => {
      for (const fd of started.fds) {
        const r = new Socket({ fd, readable: true, writable: false });
        r.on('data', () => {});
        r.on('error', () => {});
        r.once('close', () => {
          open -= 1;
          settle();
        });
      }
    }, reject);
  });
}

async function pass(helper: Spawner, programs: string[], journal: string, stateDir: string): Promise<{ ms: number; ok: boolean }> {
  const fd = openSync(journal, 'a', 0o600);
  let ok = true;
  const t0 = performance.now();
  try {
    for (const p of programs) {
      const name = path.basename(p);
      writeSync(fd, `{"t":"step","phase":"prepare","hook":"${name}","rollback":false,"usec":${Date.now() * 1000}}\n`);
      if (!(await step(helper, p, journal, path.join(stateDir, name)))) ok = false;
      writeSync(fd, `{"t":"done","phase":"prepare","hook":"${name}","result":"success","usec":${Date.now() * 1000}}\n`);
    }
  } finally {
    closeSync(fd);
  }
  return { ms: performance.now() - t0, ok };
}

async function main(argv: string[]): Promise<number> {
  if (argv.length !== 3) {
    process.stderr.write('usage: helper-loop JOURNAL STATEDIR DIR\n');
    return 2;
  }
  const [journal, stateDir, dir] = argv as [string, string, string];
  const helper = sharedSpawner();
  if (helper === null) {
    process.stderr.write('helper-loop: the spawn helper is not built (npm run build)\n');
    return 2;
  }
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const programs = readdirSync(dir).filter((n) => !n.startsWith('.')).sort().map((n) => path.join(dir, n));
  await pass(helper, programs, journal, stateDir);
  const timed = await pass(helper, programs, journal, stateDir);
  helper.close();
  process.stdout.write(`${timed.ms.toFixed(1)}\n`);
  return timed.ok ? 0 : 1;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: unknown) => {
  process.stderr.write(`helper-loop: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 2;
});
