/** mkdirp: `mkdir -p` that fails where Node's recursive mkdir loops forever. */
import test from 'ava';
import { mkdtempSync, promises as fsp, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mkdirp } from '../../service/engine/fs-atomic.js';

function scratch(t: { teardown(f: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'mkdirp-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Rejects if `p` takes longer than `ms` (a hang is the bug). */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`still running after ${ms} ms`)), ms).unref())]);
}

test('mkdirp - makes every missing directory with the mode, returns the first made', async (t) => {
  const d = scratch(t);
  const first = await mkdirp(join(d, 'a', 'b', 'c'), 0o700);
  t.is(first, join(d, 'a'));
  t.true(statSync(join(d, 'a', 'b', 'c')).isDirectory());
  t.is(statSync(join(d, 'a', 'b')).mode & 0o777, 0o700 & ~process.umask());
});

test('mkdirp - all existing: undefined, nothing changes', async (t) => {
  const d = scratch(t);
  await fsp.mkdir(join(d, 'x'));
  t.is(await mkdirp(join(d, 'x'), 0o700), undefined);
  t.is(await mkdirp(d, 0o700), undefined);
});

test('mkdirp - a file in the way is ENOTDIR naming it', async (t) => {
  const d = scratch(t);
  writeFileSync(join(d, 'f'), '');
  const e = await t.throwsAsync(mkdirp(join(d, 'f', 'g'), 0o700));
  t.is((e as NodeJS.ErrnoException).code, 'ENOTDIR');
  t.true(e!.message.includes(join(d, 'f')), e!.message);
});

test('mkdirp - under /proc it fails at once (fs.mkdir with recursive: true never returns there)', async (t) => {
  const e = await t.throwsAsync(within(mkdirp('/proc/bootc-prestage-test/state', 0o700), 5000));
  t.not(e!.message, 'still running after 5000 ms');
  t.regex((e as NodeJS.ErrnoException).code ?? '', /^(ENOENT|EACCES|EPERM|EROFS)$/, e!.message);
});
