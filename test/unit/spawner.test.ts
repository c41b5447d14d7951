/**
 * bootc-prestage-spawner, the C helper that forks the steps, through its
 * client (service/engine/spawner.ts): the real binary that `npm run build`
 * compiles, real processes. The step runner's own tests cover what a step
 * sees; these cover the helper's protocol and its failures.
 */
import test from 'ava';
import { chmodSync, closeSync, constants as fsc, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { readProcStat } from '../../service/engine/process-tree.js';
import {
  Spawner, SpawnerUnavailable, decodeWaitStatus, locateSpawner, type ExitStatus,
} from '../../service/engine/spawner.js';
import { runStep } from '../../service/engine/step-runner.js';

const HELPER = locateSpawner();

test('the helper is built (npm run build compiles it; a C compiler is a build dependency)', (t) => {
  t.truthy(HELPER, 'dist/libexec/bootc-prestage-spawner is missing: install gcc and run npm run build');
});

function tmp(t: { teardown(f: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'spawner-test-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A helper of its own for one test, closed at its end. */
function helper(t: { teardown(f: () => void): void }): Spawner {
  const s = new Spawner(HELPER!);
  t.teardown(() => s.close());
  return s;
}

/** FIFOs for fds 1-3 with our read ends open, as the step runner makes them. */
async function fifos(s: Spawner, dir: string, tag: string): Promise<{ paths: string[]; reads: number[] }> {
  const paths = [1, 2, 3].map((i) => join(dir, `${tag}-${i}`));
  await s.mkfifos(paths);
  const reads = paths.map((p) => openSync(p, fsc.O_RDONLY | fsc.O_NONBLOCK));
  return { paths, reads };
}

function exitOf(): { cb: (st: ExitStatus | null) => void; exited: Promise<ExitStatus | null> } {
  let cb!: (st: ExitStatus | null) => void;
  const exited = new Promise<ExitStatus | null>((r) => { cb = r; });
  return { cb, exited };
}

const alive = (pid: number) => {
  const st = readProcStat(pid);
  return st !== null && st.state !== 'Z' && st.state !== 'X';
};

test('decodeWaitStatus: exit codes and signals as Node names them', (t) => {
  t.deepEqual(decodeWaitStatus(0), { code: 0, signal: null });
  t.deepEqual(decodeWaitStatus(77 << 8), { code: 77, signal: null });
  t.deepEqual(decodeWaitStatus(15), { code: null, signal: 'SIGTERM' });
  t.deepEqual(decodeWaitStatus(9 | 0x80), { code: null, signal: 'SIGKILL' }); // core dumped flag
});

test('spawn: pid, start time, exit code and signal, FIFOs unlinked once opened', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  const f = await fifos(s, dir, 'a');
  t.teardown(() => f.reads.forEach((fd) => closeSync(fd)));
  const e = exitOf();
  const started = await s.spawn(['/bin/sh', '-c', 'sleep 0.3; exit 3'], { PATH: '/usr/bin:/bin' }, f.paths, e.cb);
  t.true(started.pid > 0);
  t.is(started.startTime, readProcStat(started.pid)?.startTime ?? null);
  for (const p of f.paths) t.throws(() => statSync(p), { code: 'ENOENT' });
  t.deepEqual(await e.exited, { code: 3, signal: null });

  const k = exitOf();
  const f2 = await fifos(s, dir, 'b');
  t.teardown(() => f2.reads.forEach((fd) => closeSync(fd)));
  await s.spawn(['/bin/sh', '-c', 'kill -TERM $$'], {}, f2.paths, k.cb);
  t.deepEqual(await k.exited, { code: null, signal: 'SIGTERM' });
});

test('spawn: a program that cannot be executed is an ErrnoException, not an exit status', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  const never = () => t.fail('no exit callback for a process that never started');
  await t.throwsAsync(s.spawn([join(dir, 'missing')], {}, [], never), { code: 'ENOENT' });
  const plain = join(dir, 'not-executable');
  writeFileSync(plain, '#!/bin/sh\n');
  chmodSync(plain, 0o644);
  await t.throwsAsync(s.spawn([plain], {}, [], never), { code: 'EACCES' });
  // The helper is still usable afterwards.
  const e = exitOf();
  await s.spawn(['/bin/true'], {}, [], e.cb);
  t.deepEqual(await e.exited, { code: 0, signal: null });
});

test('spawn: a FIFO nobody reads is refused (ENXIO) instead of blocking the helper', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  const p = join(dir, 'unread');
  await s.mkfifos([p]);
  await t.throwsAsync(s.spawn(['/bin/true'], {}, [p], () => t.fail()), { code: 'ENXIO' });
});

test('mkfifos: FIFOs of mode 0600; an existing path fails the request with its errno', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  const p = join(dir, 'f');
  await s.mkfifos([p]);
  const st = statSync(p);
  t.true(st.isFIFO());
  t.is(st.mode & 0o777, 0o600);
  await t.throwsAsync(s.mkfifos([p]), { code: 'EEXIST' });
});

test('spawn: a request larger than the helper\'s buffer (an 800 KB environment) arrives whole', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  // The kernel takes at most 128 KiB per string: eight of 100 KB.
  const env: Record<string, string> = {};
  for (let i = 0; i < 8; i++) env[`BIG${i}`] = String(i).repeat(100_000);
  const out = join(dir, 'len');
  const e = exitOf();
  await s.spawn(['/bin/sh', '-c', `printf %s "\${#BIG0}-\${BIG7%%7*}-\${#BIG7}" > ${out}`], env, [], e.cb);
  t.deepEqual(await e.exited, { code: 0, signal: null });
  t.is(readFileSync(out, 'utf8'), '100000--100000');
});

test('the helper dies: running processes are reported lost (null) and keep running; requests fail SpawnerUnavailable', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const e = exitOf();
  const { pid } = await s.spawn(['/bin/sleep', '30'], {}, [], e.cb);
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  process.kill(s.pid, 'SIGKILL');
  t.is(await e.exited, null);
  t.false(s.alive);
  t.true(alive(pid), 'a step must outlive the helper, as it outlives the daemon');
  await t.throwsAsync(s.spawn(['/bin/true'], {}, [], () => {}), { instanceOf: SpawnerUnavailable });
});

test('closing the pipe ends the helper and leaves running steps alone', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = new Spawner(HELPER);
  const e = exitOf();
  const { pid } = await s.spawn(['/bin/sleep', '30'], {}, [], e.cb);
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  const helperPid = s.pid;
  s.close();
  t.is(await e.exited, null);
  for (let i = 0; i < 50 && alive(helperPid); i++) await new Promise((r) => setTimeout(r, 20));
  t.false(alive(helperPid), 'the helper exits at EOF');
  t.true(alive(pid));
});

test('runStep: the helper dying mid-step fails the step with a clear message once its process is gone, and the next step gets a new helper', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const warnings: string[] = [];
  const sink = { output() {}, progress() {}, status() {}, warning: (w: string) => warnings.push(w) };
  const step = runStep({ argv: ['/bin/sh', '-c', 'sleep 0.5'], env: {}, timeoutMs: 30_000 }, sink);
  await step.started;
  const parent = readProcStat(step.pid)!.ppid;
  t.is(readProcStat(parent)?.comm, basename(HELPER).slice(0, 15));
  process.kill(parent, 'SIGKILL');
  const out = await step.done;
  t.is(out.result, 'failed');
  t.is(out.message, 'exit status unknown: the spawn helper died while the step ran');
  t.true(out.durationMs >= 400, `it waited for the process: ${out.durationMs} ms`);

  const next = runStep({ argv: ['/bin/true'], env: {}, timeoutMs: 30_000 }, sink);
  await next.started;
  t.is((await next.done).result, 'success');
});
