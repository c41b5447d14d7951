/**
 * bootc-prestage-spawner, the C helper that forks the steps, through its
 * client (service/engine/spawner.ts): the real binary that `npm run build`
 * compiles, real processes. The step runner's own tests cover what a step
 * sees; these cover the helper's protocol and its failures.
 */
import test from 'ava';
import { chmodSync, closeSync, mkdtempSync, readFileSync, readSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
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

/** Everything the read end `fd` holds, up to EOF (it is non-blocking: poll). */
async function readAll(fd: number): Promise<string> {
  const buf = Buffer.alloc(65536);
  let out = '';
  for (let i = 0; i < 500; i++) {
    try {
      const n = readSync(fd, buf);
      if (n === 0) return out;
      out += buf.toString('utf8', 0, n);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  throw new Error('no EOF');
}

/** The pipe fds the helper process holds (its own control pipes included). */
function helperPipes(s: Spawner): string[] {
  const dir = `/proc/${s.pid}/fd`;
  return readdirSync(dir).map((n) => { try { return readlinkSync(`${dir}/${n}`); } catch { return ''; } })
    .filter((l) => l.startsWith('pipe:'));
}

function readFileSafe(p: string): string | null {
  try { return readFileSync(p, 'latin1'); } catch { return null; }
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

test('spawn: pid, start time, exit code and signal; fds 1-3 are pipes whose read ends we get', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const e = exitOf();
  const started = await s.spawn(['/bin/sh', '-c', 'echo out; echo err >&2; echo 3 >&3; ls -l /proc/self/fd/1 >/dev/stderr; sleep 0.3; exit 3'],
    { PATH: '/usr/bin:/bin' }, 3, e.cb);
  t.teardown(() => started.fds.forEach((fd) => closeSync(fd)));
  t.true(started.pid > 0);
  t.is(started.startTime, readProcStat(started.pid)?.startTime ?? null);
  t.is(started.fds.length, 3);
  const [out, err, three] = await Promise.all(started.fds.map(readAll));
  t.is(out, 'out\n');
  t.regex(err!, /^err\n.*-> pipe:\[\d+\]\n$/s, 'stdout is a pipe the step can reopen (as /dev/stderr here)');
  t.is(three, '3\n');
  t.deepEqual(await e.exited, { code: 3, signal: null });

  const k = exitOf();
  const s2 = await s.spawn(['/bin/sh', '-c', 'kill -TERM $$'], {}, 3, k.cb);
  t.teardown(() => s2.fds.forEach((fd) => closeSync(fd)));
  t.deepEqual(await k.exited, { code: null, signal: 'SIGTERM' });
});

test('spawn: output written before we read it is kept, and EOF comes once the step is gone', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const e = exitOf();
  const started = await s.spawn(['/bin/sh', '-c', 'printf "%s\\n" one two three'], {}, 1, e.cb);
  t.teardown(() => started.fds.forEach((fd) => closeSync(fd)));
  t.deepEqual(await e.exited, { code: 0, signal: null });
  t.is(await readAll(started.fds[0]!), 'one\ntwo\nthree\n');
});

test('spawn: the helper keeps no pipe end of a step once we have ours (no fd leak over many steps)', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  // Our 'C' is one-way: a spawn without pipes after it shows it was read.
  const settled = async () => {
    const e = exitOf();
    await s.spawn(['/bin/true'], {}, 0, e.cb);
    await e.exited;
    return helperPipes(s);
  };
  const before = await settled();
  for (let i = 0; i < 50; i++) {
    const e = exitOf();
    const st = await s.spawn(['/bin/true'], {}, 3, e.cb);
    st.fds.forEach((fd) => closeSync(fd));
    await e.exited;
  }
  t.deepEqual(await settled(), before);
});

test('spawn: a program that cannot be executed is an ErrnoException, not an exit status', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const dir = tmp(t);
  const never = () => t.fail('no exit callback for a process that never started');
  await t.throwsAsync(s.spawn([join(dir, 'missing')], {}, 3, never), { code: 'ENOENT' });
  const plain = join(dir, 'not-executable');
  writeFileSync(plain, '#!/bin/sh\n');
  chmodSync(plain, 0o644);
  await t.throwsAsync(s.spawn([plain], {}, 0, never), { code: 'EACCES' });
  // The helper is still usable afterwards.
  const e = exitOf();
  await s.spawn(['/bin/true'], {}, 0, e.cb);
  t.deepEqual(await e.exited, { code: 0, signal: null });
});

test('a helper whose pipes cannot be opened through /proc is unavailable before it starts anything', async (t) => {
  const dir = tmp(t);
  // A stand-in for the helper: its hello names an fd it does not have (9999);
  // it records any request it is sent.
  const fake = join(dir, 'fake-helper');
  writeFileSync(fake, `#!/bin/sh\nprintf '\\005\\000\\000\\000H\\017\\047\\000\\000'\nexec cat > ${join(dir, 'requests')}\n`);
  chmodSync(fake, 0o755);
  const s = new Spawner(fake);
  t.teardown(() => s.close());
  await t.throwsAsync(s.spawn(['/bin/true'], {}, 0, () => t.fail()), {
    instanceOf: SpawnerUnavailable, message: /cannot open its pipes through \/proc\/\d+\/fd: ENOENT/,
  });
  t.false(s.alive);
  for (let i = 0; i < 50 && readFileSafe(join(dir, 'requests')) === null; i++) await new Promise((r) => setTimeout(r, 20));
  t.is(readFileSafe(join(dir, 'requests')), '', 'no request reached it');
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
  await s.spawn(['/bin/sh', '-c', `printf %s "\${#BIG0}-\${BIG7%%7*}-\${#BIG7}" > ${out}`], env, 0, e.cb);
  t.deepEqual(await e.exited, { code: 0, signal: null });
  t.is(readFileSync(out, 'utf8'), '100000--100000');
});

test('the helper dies: running processes are reported lost (null) and keep running; requests fail SpawnerUnavailable', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = helper(t);
  const e = exitOf();
  const { pid } = await s.spawn(['/bin/sleep', '30'], {}, 0, e.cb);
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  process.kill(s.pid, 'SIGKILL');
  t.is(await e.exited, null);
  t.false(s.alive);
  t.true(alive(pid), 'a step must outlive the helper, as it outlives the daemon');
  await t.throwsAsync(s.spawn(['/bin/true'], {}, 0, () => {}), { instanceOf: SpawnerUnavailable });
});

test('closing the pipe ends the helper and leaves running steps alone', async (t) => {
  if (!HELPER) return t.fail('no helper');
  const s = new Spawner(HELPER);
  const e = exitOf();
  const { pid } = await s.spawn(['/bin/sleep', '30'], {}, 0, e.cb);
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
