import test from 'ava';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { PreStageError, type ErrorCode } from '../../service/model/errors.js';
import { fsyncDir, mkdirDurable, unlinkDurable, writeFileAtomic } from '../../service/engine/fs-atomic.js';
import { discoverHooks } from '../../service/engine/hook-discovery.js';
import { DEFAULT_TIMEOUT_SEC, parseHookFile } from '../../service/model/hook-file.js';
import { hookWriteDir, registerHookFile, unregisterHookFile } from '../../service/engine/hook-store.js';
import type { HookDefinition } from '../../service/model/types.js';

async function tempRoot(t: { teardown(f: () => Promise<void>): void }): Promise<string> {
  const dir = await fsp.mkdtemp(nodePath.join(os.tmpdir(), 'hook-store-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

const exists = (p: string) => fsp.lstat(p).then(() => true, () => false);
const modeOf = async (p: string) => (await fsp.stat(p)).mode & 0o7777;

function def(over: Partial<HookDefinition> = {}): HookDefinition {
  return {
    description: 'Pull images', prepare: ['/usr/libexec/x', 'prepare', 'a b'], commit: null, abort: ['/usr/libexec/x', 'abort'],
    after: ['compat'], before: [], environment: ['STORE=/var/lib/x'], required: true, timeoutSec: DEFAULT_TIMEOUT_SEC,
    ...over,
  };
}

test('hookWriteDir - /etc by default, /run for runtime hooks, under the root', (t) => {
  t.is(hookWriteDir('/r', false), '/r/etc/bootc/pre-stage.d');
  t.is(hookWriteDir('/r', true), '/r/run/bootc/pre-stage.d');
  t.is(hookWriteDir('/', false), '/etc/bootc/pre-stage.d');
});

test('register - writes NAME.hook 0644 in a new 0755 directory; it reads back equal', async (t) => {
  const root = await tempRoot(t);
  const d = def();
  const path = await registerHookFile(root, 'bound-images', d, false);
  t.is(path, nodePath.join(root, 'etc/bootc/pre-stage.d/bound-images.hook'));
  t.is(await modeOf(path), 0o644);
  t.is(await modeOf(nodePath.dirname(path)), 0o755);
  t.is(await modeOf(nodePath.join(root, 'etc/bootc')), 0o755);
  t.deepEqual(parseHookFile(await fsp.readFile(path), path).definition, d);
  t.deepEqual(await fsp.readdir(nodePath.dirname(path)), ['bound-images.hook'], 'no temporary file left');
});

test('register - runtime hooks go to /run', async (t) => {
  const root = await tempRoot(t);
  const path = await registerHookFile(root, 'r', def(), true);
  t.is(path, nodePath.join(root, 'run/bootc/pre-stage.d/r.hook'));
  t.false(await exists(nodePath.join(root, 'etc')));
});

test('register - a registered hook is discovered with its definition', async (t) => {
  const root = await tempRoot(t);
  const d = def({ prepare: ['/bin/true'] });
  await registerHookFile(root, 'mine', d, false);
  const set = await discoverHooks({ root, deployment: null });
  t.is(set.hooks.length, 1);
  t.is(set.hooks[0]!.refused, null);
  t.deepEqual(set.hooks[0]!.definition, d);
  t.is(set.hooks[0]!.origin, 'etc');
});

test.serial('register - modes are exact whatever the umask', async (t) => {
  const root = await tempRoot(t);
  const old = process.umask(0o077);
  try {
    const path = await registerHookFile(root, 'u', def(), false);
    t.is(await modeOf(path), 0o644);
    t.is(await modeOf(nodePath.dirname(path)), 0o755);
  } finally {
    process.umask(old);
  }
});

test('register - replaces an existing hook and a mask, including a /dev/null link', async (t) => {
  const root = await tempRoot(t);
  const dir = hookWriteDir(root, false);
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(nodePath.join(dir, 'a.hook'), '');
  await fsp.symlink('/dev/null', nodePath.join(dir, 'b.hook'));
  await registerHookFile(root, 'a', def({ description: 'new a' }), false);
  await registerHookFile(root, 'b', def({ description: 'new b' }), false);
  t.true((await fsp.lstat(nodePath.join(dir, 'b.hook'))).isFile(), 'the link itself is replaced');
  const set = await discoverHooks({ root, deployment: null });
  t.deepEqual(set.hooks.map((h) => h.definition.description), ['new a', 'new b']);
  t.deepEqual(set.masked, []);
});

const refusesRegister = test.macro({
  async exec(t, name: string, d: HookDefinition, code: ErrorCode, message: RegExp) {
    const root = await tempRoot(t);
    const e = await t.throwsAsync(registerHookFile(root, name, d, false), { instanceOf: PreStageError });
    t.is(e!.code, code);
    t.regex(e!.message, message);
    t.deepEqual(await fsp.readdir(root), [], 'nothing written, not even the directory');
  },
  title: (provided) => `register - refuses ${provided}, writing nothing`,
});

test('a name with a slash', refusesRegister, '../x', def(), 'InvalidArgs', /invalid hook name '\.\.\/x'/);
test('an empty name', refusesRegister, '', def(), 'InvalidArgs', /invalid hook name/);
test('a name over 64 characters', refusesRegister, 'a'.repeat(65), def(), 'InvalidArgs', /invalid hook name/);
test('a definition without steps', refusesRegister, 'x', def({ prepare: null, abort: null }), 'InvalidHook', /definition of hook 'x': .*no step/);
test('a relative program', refusesRegister, 'x', def({ prepare: ['true'] }), 'InvalidHook', /definition of hook 'x': Prepare: .*absolute/);
test('a reserved environment name', refusesRegister, 'x', def({ environment: ['BOOTC_PRESTAGE_HOOK=y'] }), 'InvalidHook', /Environment: .*reserved/);

test('register - a failed rename leaves what was there and no temporary file', async (t) => {
  const root = await tempRoot(t);
  const path = await registerHookFile(root, 'keep', def({ description: 'old' }), false);
  const dir = nodePath.dirname(path);
  // A directory where the file should go makes the final rename fail.
  await fsp.rm(path);
  await fsp.mkdir(path);
  await fsp.writeFile(nodePath.join(path, 'inside'), 'x');
  const e = await t.throwsAsync(registerHookFile(root, 'keep', def({ description: 'new' }), false), { instanceOf: PreStageError });
  t.is(e!.code, 'Internal');
  t.regex(e!.message, /cannot write .*keep\.hook/);
  t.deepEqual(await fsp.readdir(dir), ['keep.hook']);
  t.deepEqual(await fsp.readdir(path), ['inside']);
});

test('unregister - removes NAME.hook from /etc and /run and returns both paths', async (t) => {
  const root = await tempRoot(t);
  const a = await registerHookFile(root, 'h', def(), false);
  const b = await registerHookFile(root, 'h', def(), true);
  const other = await registerHookFile(root, 'other', def(), false);
  t.deepEqual(await unregisterHookFile(root, 'h'), [a, b]);
  t.false(await exists(a));
  t.false(await exists(b));
  t.true(await exists(other));
});

test('unregister - removes a mask (an empty file) too', async (t) => {
  const root = await tempRoot(t);
  const dir = hookWriteDir(root, false);
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(nodePath.join(dir, 'm.hook'), '');
  t.deepEqual(await unregisterHookFile(root, 'm'), [nodePath.join(dir, 'm.hook')]);
});

test('unregister - NotFound when neither directory has it, explaining masking', async (t) => {
  const root = await tempRoot(t);
  await registerHookFile(root, 'other', def(), false);
  const e = await t.throwsAsync(unregisterHookFile(root, 'shipped'), { instanceOf: PreStageError });
  t.is(e!.code, 'NotFound');
  t.regex(e!.message, /no hook 'shipped' in .*etc\/bootc\/pre-stage\.d or .*run\/bootc\/pre-stage\.d/);
  t.regex(e!.message, /cannot be unregistered, but an empty file .*etc\/bootc\/pre-stage\.d\/shipped\.hook masks one/);
});

test('unregister - an invalid name is InvalidArgs and touches nothing', async (t) => {
  const root = await tempRoot(t);
  await t.throwsAsync(unregisterHookFile(root, '../../x'), { instanceOf: PreStageError, message: /invalid hook name/ });
  const e = await t.throwsAsync(unregisterHookFile(root, '.hidden'));
  t.is((e as PreStageError).code, 'InvalidArgs');
});

// ---------------------------------------------------------------------------
// fs-atomic.

test('writeFileAtomic - writes the data with exactly the mode and leaves no temporary file', async (t) => {
  const dir = await tempRoot(t);
  const p = nodePath.join(dir, 'f');
  await writeFileAtomic(p, 'one', 0o600);
  t.is(await fsp.readFile(p, 'utf8'), 'one');
  t.is(await modeOf(p), 0o600);
  await writeFileAtomic(p, Buffer.from('two'), 0o640);
  t.is(await fsp.readFile(p, 'utf8'), 'two');
  t.is(await modeOf(p), 0o640);
  t.deepEqual(await fsp.readdir(dir), ['f']);
});

test('writeFileAtomic - replaces a symlink instead of writing through it', async (t) => {
  const dir = await tempRoot(t);
  const target = nodePath.join(dir, 'target');
  await fsp.writeFile(target, 'untouched');
  await fsp.symlink(target, nodePath.join(dir, 'link'));
  await writeFileAtomic(nodePath.join(dir, 'link'), 'new', 0o644);
  t.is(await fsp.readFile(target, 'utf8'), 'untouched');
  t.false((await fsp.lstat(nodePath.join(dir, 'link'))).isSymbolicLink());
});

test('writeFileAtomic - a missing directory is an error and creates nothing', async (t) => {
  const dir = await tempRoot(t);
  await t.throwsAsync(writeFileAtomic(nodePath.join(dir, 'no/f'), 'x', 0o644), { code: 'ENOENT' });
  t.deepEqual(await fsp.readdir(dir), []);
});

test('writeFileAtomic - concurrent writers never leave a torn file', async (t) => {
  const dir = await tempRoot(t);
  const p = nodePath.join(dir, 'f');
  const bodies = Array.from({ length: 20 }, (_, i) => String(i).repeat(10000));
  await Promise.all(bodies.map((b) => writeFileAtomic(p, b, 0o644)));
  t.true(bodies.includes(await fsp.readFile(p, 'utf8')));
  t.deepEqual(await fsp.readdir(dir), ['f']);
});

test('unlinkDurable - true when removed, false when absent', async (t) => {
  const dir = await tempRoot(t);
  const p = nodePath.join(dir, 'f');
  await fsp.writeFile(p, 'x');
  t.true(await unlinkDurable(p));
  t.false(await exists(p));
  t.false(await unlinkDurable(p));
  t.false(await unlinkDurable(nodePath.join(dir, 'no/such')));
});

test('fsyncDir - succeeds on a directory and fails on a missing one', async (t) => {
  const dir = await tempRoot(t);
  await t.notThrowsAsync(fsyncDir(dir));
  await t.throwsAsync(fsyncDir(nodePath.join(dir, 'missing')), { code: 'ENOENT' });
});

test('mkdirDurable - creates missing parents with the mode and leaves existing ones alone', async (t) => {
  const dir = await tempRoot(t);
  await fsp.chmod(dir, 0o700);
  await mkdirDurable(nodePath.join(dir, 'a/b/c'), 0o751);
  for (const d of ['a', 'a/b', 'a/b/c']) t.is(await modeOf(nodePath.join(dir, d)), 0o751, d);
  t.is(await modeOf(dir), 0o700);
  await t.notThrowsAsync(mkdirDurable(nodePath.join(dir, 'a/b/c'), 0o755));
  t.is(await modeOf(nodePath.join(dir, 'a/b/c')), 0o751);
});
