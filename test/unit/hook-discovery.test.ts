import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as nodePath from 'node:path';
import { PreStageError } from '../../service/model/errors.js';
import {
  DEPLOYMENT_HOOK_DIR, ETC_HOOK_DIR, RUN_HOOK_DIR, discoverHooks, hookDirectories, resolveInRoot,
} from '../../service/engine/hook-discovery.js';
import type { Logger } from '../../service/model/logger.js';

const NOBODY = 65534;

interface Fixture {
  root: string;
  deployment: string;
  /** Absolute path of a hook file in one of the three directories. */
  at(where: 'etc' | 'run' | 'dep', name: string): string;
  put(where: 'etc' | 'run' | 'dep', name: string, text: string): Promise<string>;
  /** Any file name, as is. */
  putFile(where: 'etc' | 'run' | 'dep', file: string, text: string): Promise<string>;
  /** A trusted program (root, 0755) at an absolute host path; returns it. */
  program(path: string): Promise<string>;
  logs: { level: string; message: string }[];
  logger: Logger;
}

async function fixture(t: { teardown(f: () => Promise<void>): void }): Promise<Fixture> {
  const base = await fsp.mkdtemp(nodePath.join(os.tmpdir(), 'hook-discovery-'));
  t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
  const root = nodePath.join(base, 'root');
  const deployment = nodePath.join(base, 'deploy');
  const dirs = { etc: nodePath.join(root, ETC_HOOK_DIR), run: nodePath.join(root, RUN_HOOK_DIR), dep: nodePath.join(deployment, DEPLOYMENT_HOOK_DIR) };
  const mkdir = async (d: string) => {
    await fsp.mkdir(d, { recursive: true });
    await fsp.chmod(d, 0o755);
  };
  for (const d of Object.values(dirs)) await mkdir(d);
  const logs: { level: string; message: string }[] = [];
  const rec = (level: string) => (message: string) => { logs.push({ level, message }); };
  const at = (where: 'etc' | 'run' | 'dep', name: string) => nodePath.join(dirs[where], `${name}.hook`);
  const putFile = async (p: string, text: string) => {
    await fsp.writeFile(p, text);
    await fsp.chmod(p, 0o644);
    return p;
  };
  return {
    root, deployment, logs, at,
    logger: { error: rec('error'), warn: rec('warn'), info: rec('info'), debug: rec('debug') },
    // Deployment hooks here run on the host root (RootDirectory=/): these
    // tests are about precedence, order and trust of host programs; the
    // new-root default and its checks have tests of their own below.
    put: (where, name, text) => putFile(at(where, name), hostRooted(where, text)),
    putFile: (where, file, text) => putFile(nodePath.join(dirs[where], file), text),
    async program(path) {
      const p = path.startsWith(base) ? path : nodePath.join(base, path);
      await mkdir(nodePath.dirname(p));
      await fsp.writeFile(p, '#!/bin/sh\nexit 0\n');
      await fsp.chmod(p, 0o755);
      return p;
    },
  };
}

const hookText = (prog = '/bin/true', extra = '') => `[Hook]\nPrepare=${prog}\n${extra}`;

function hostRooted(where: 'etc' | 'run' | 'dep', text: string): string {
  if (where !== 'dep' || !text.startsWith('[Hook]') || text.includes('RootDirectory=')) return text;
  return `${text}${text.endsWith('\n') ? '' : '\n'}RootDirectory=/\n`;
}

async function discover(f: Fixture, deployment: string | null = f.deployment) {
  return discoverHooks({ root: f.root, deployment, logger: f.logger });
}

test('hookDirectories - /etc, /run under root, then the deployment, highest first', (t) => {
  t.deepEqual(hookDirectories('/r', '/sysroot/ostree/deploy/os/deploy/abc.0'), [
    { dir: '/r/etc/bootc/pre-stage.d', origin: 'etc' },
    { dir: '/r/run/bootc/pre-stage.d', origin: 'run' },
    { dir: '/sysroot/ostree/deploy/os/deploy/abc.0/usr/lib/bootc/pre-stage.d', origin: 'deployment' },
  ]);
  t.deepEqual(hookDirectories('/', null).map((d) => d.dir), ['/etc/bootc/pre-stage.d', '/run/bootc/pre-stage.d']);
});

test('discover - missing directories give an empty set', async (t) => {
  const base = await fsp.mkdtemp(nodePath.join(os.tmpdir(), 'hook-discovery-'));
  t.teardown(() => fsp.rm(base, { recursive: true, force: true }));
  const set = await discoverHooks({ root: base, deployment: nodePath.join(base, 'nope') });
  t.deepEqual(set.hooks, []);
  t.deepEqual(set.masked, []);
  t.regex(set.fingerprint, /^[0-9a-f]{64}$/);
});

test('discover - a higher directory replaces a same-named hook below', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'a', hookText('/bin/dep'));
  await f.put('run', 'a', hookText('/bin/run'));
  await f.put('dep', 'b', hookText('/bin/dep'));
  await f.put('run', 'b', hookText('/bin/run'));
  await f.put('etc', 'b', hookText('/bin/etc'));
  await f.put('dep', 'c', hookText('/bin/dep'));
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => [h.name, h.origin, h.source, h.definition.prepare![0]]), [
    ['a', 'run', f.at('run', 'a'), '/bin/run'],
    ['b', 'etc', f.at('etc', 'b'), '/bin/etc'],
    ['c', 'deployment', f.at('dep', 'c'), '/bin/dep'],
  ]);
});

test('discover - host hooks only when the deployment is null or empty', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'img', hookText());
  await f.put('etc', 'host', hookText());
  t.deepEqual((await discover(f, null)).hooks.map((h) => h.name), ['host']);
  t.deepEqual((await discover(f, '')).hooks.map((h) => h.name), ['host']);
});

test('discover - an empty file or a link to /dev/null masks a hook below', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'a', hookText());
  await f.put('dep', 'b', hookText());
  await f.put('dep', 'c', hookText());
  await f.put('etc', 'a', '');
  await fsp.symlink('/dev/null', f.at('run', 'b'));
  await f.put('etc', 'lonely', '');
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => h.name), ['c']);
  t.deepEqual(set.masked, [
    { name: 'a', source: f.at('etc', 'a') },
    { name: 'b', source: f.at('run', 'b') },
    { name: 'lonely', source: f.at('etc', 'lonely') },
  ]);
});

test('discover - a relative link that resolves to /dev/null masks too', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'a', hookText());
  // Resolved inside the root, as the admin of that root sees it.
  await fsp.mkdir(nodePath.join(f.root, 'dev'));
  execFileSync('mknod', [nodePath.join(f.root, 'dev/null'), 'c', '1', '3']);
  await fsp.symlink('../../../dev/null', f.at('etc', 'a'));
  const set = await discover(f);
  t.deepEqual(set.masked, [{ name: 'a', source: f.at('etc', 'a') }]);
  t.deepEqual(set.hooks, []);
});

test('discover - files with other names are ignored with a warning; hidden files silently', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'good', hookText());
  await f.putFile('etc', 'README', 'x');
  await f.putFile('etc', '-bad.hook', hookText());
  await f.putFile('etc', 'good.hook.rpmsave', hookText());
  await f.putFile('etc', '.good.hook.123.tmp', 'partial');
  await f.putFile('etc', '.hidden.hook', hookText());
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => h.name), ['good']);
  const warned = f.logs.filter((l) => l.level === 'warn').map((l) => l.message);
  t.is(warned.length, 3);
  for (const n of ['README', '-bad.hook', 'good.hook.rpmsave']) t.true(warned.some((w) => w.includes(`/${n}:`)), n);
});

test('discover - hooks come back in After=/Before= order with definition, digest and warnings', async (t) => {
  const f = await fixture(t);
  const textA = hookText('/bin/a', 'After=b\nColour=blue\nRootDirectory=/\n');
  await f.put('dep', 'a', textA);
  await f.put('etc', 'b', hookText('/bin/b', 'Before=c\n'));
  await f.put('run', 'c', hookText('/bin/c'));
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => h.name), ['b', 'a', 'c']);
  const a = set.hooks.find((h) => h.name === 'a')!;
  t.is(a.digest, createHash('sha256').update(textA).digest('hex'));
  t.deepEqual(a.definition.after, ['b']);
  t.is(a.refused, null);
  t.deepEqual(a.warnings, [`${f.at('dep', 'a')}:4: unknown key 'Colour' in [Hook], ignored`]);
  t.true(f.logs.some((l) => l.level === 'warn' && l.message.includes("unknown key 'Colour'")));
});

test('discover - a bad hook file is InvalidHook naming file and line', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'ok', hookText());
  await f.put('dep', 'broken', '[Hook]\nPrepare=/bin/x\nTimeoutSec=soon\n');
  const e = await t.throwsAsync(discover(f), { instanceOf: PreStageError });
  t.is(e!.code, 'InvalidHook');
  t.true(e!.message.startsWith(`${f.at('dep', 'broken')}:3: TimeoutSec=soon`), e!.message);
});

test('discover - with several bad files the first by name is reported, with a count', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'zz', 'junk\n');
  await f.put('dep', 'aa', 'junk\n');
  const e = await t.throwsAsync(discover(f), { instanceOf: PreStageError });
  t.true(e!.message.startsWith(`${f.at('dep', 'aa')}:1:`), e!.message);
  t.regex(e!.message, /and 1 more bad hook files/);
});

test('discover - an ordering cycle is InvalidHook naming the files', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'a', hookText('/bin/a', 'After=b\n'));
  await f.put('dep', 'b', hookText('/bin/b', 'After=a\n'));
  const e = await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /ordering cycle/ });
  t.true(e!.message.includes(f.at('etc', 'a')) && e!.message.includes(f.at('dep', 'b')));
});

test('discover - a program that is not absolute after expansion is InvalidHook', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'a', hookText('${TOOLS}/x', 'Environment=TOOLS=relative\n'));
  await t.throwsAsync(discover(f), {
    instanceOf: PreStageError,
    message: `${f.at('etc', 'a')}: Prepare= program '\${TOOLS}/x' expands to 'relative/x', which is not an absolute path`,
  });
});

test('discover - a symlink to a regular file is followed; the target is what is read', async (t) => {
  const f = await fixture(t);
  const target = nodePath.join(f.root, 'usr/share/t.hook');
  await fsp.mkdir(nodePath.dirname(target), { recursive: true });
  await fsp.chmod(nodePath.dirname(target), 0o755);
  await fsp.writeFile(target, hookText('/bin/linked'));
  await fsp.chmod(target, 0o644);
  await fsp.symlink('/usr/share/t.hook', f.at('etc', 'l'));
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => [h.name, h.source, h.definition.prepare![0], h.refused]), [['l', f.at('etc', 'l'), '/bin/linked', null]]);
});

test('discover - an absolute link in a deployment resolves inside that deployment', async (t) => {
  const f = await fixture(t);
  const inside = nodePath.join(f.deployment, 'usr/share/x.hook');
  await fsp.mkdir(nodePath.dirname(inside), { recursive: true });
  await fsp.writeFile(inside, hookText('/bin/inside'));
  await fsp.symlink('/usr/share/x.hook', f.at('dep', 'x'));
  await fsp.symlink('../../../../../../../../usr/share/x.hook', f.at('dep', 'y'));
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => h.definition.prepare![0]), ['/bin/inside', '/bin/inside']);
});

test('resolveInRoot - links and .. never leave the root', async (t) => {
  const f = await fixture(t);
  await fsp.mkdir(nodePath.join(f.root, 'a/b'), { recursive: true });
  await fsp.symlink('/a', nodePath.join(f.root, 'a/b/up'));
  await fsp.symlink('../../../../..', nodePath.join(f.root, 'a/b/far'));
  t.is(await resolveInRoot(f.root, '/a/b/up/b'), nodePath.join(f.root, 'a/b'));
  t.is(await resolveInRoot(f.root, '/a/b/far/a'), nodePath.join(f.root, 'a'));
  t.is(await resolveInRoot(f.root, '/../../a/./b/missing/x'), nodePath.join(f.root, 'a/b/missing/x'));
  await fsp.symlink('loop', nodePath.join(f.root, 'loop'));
  await t.throwsAsync(resolveInRoot(f.root, '/loop'), { code: 'ELOOP' });
});

test('discover - a dangling link is InvalidHook', async (t) => {
  const f = await fixture(t);
  await fsp.symlink('/nowhere/x.hook', f.at('etc', 'd'));
  await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /cannot read hook file .*d\.hook: it is a symbolic link to a missing file/ });
});

test('discover - a FIFO is refused as not a regular file without hanging', async (t) => {
  const f = await fixture(t);
  execFileSync('mkfifo', [f.at('etc', 'fifo')]);
  await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /fifo\.hook is not a regular file/ });
});

test('discover - a directory named like a hook is InvalidHook', async (t) => {
  const f = await fixture(t);
  await fsp.mkdir(f.at('etc', 'dir'));
  await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /dir\.hook is not a regular file/ });
});

test('discover - an oversized file is InvalidHook', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'big', hookText('/bin/x', `# ${'x'.repeat(70000)}\n`));
  await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /big\.hook: file is \d+ bytes; the limit is 65536/ });
});

test('discover - a hook directory that is a file is InvalidHook', async (t) => {
  const f = await fixture(t);
  await fsp.rm(nodePath.join(f.root, RUN_HOOK_DIR), { recursive: true });
  await fsp.writeFile(nodePath.join(f.root, RUN_HOOK_DIR), 'x');
  await t.throwsAsync(discover(f), { instanceOf: PreStageError, message: /run\/bootc\/pre-stage\.d is not a directory/ });
});

// ---------------------------------------------------------------------------
// Trust.

const refusedFor = test.macro({
  async exec(t, setup: (f: Fixture) => Promise<string>, why: RegExp) {
    const f = await fixture(t);
    const offending = await setup(f);
    const set = await discover(f);
    const h = set.hooks.find((x) => x.name === 'h');
    t.truthy(h, 'a refused hook stays in the set');
    t.truthy(h!.refused, 'it is refused');
    t.true(h!.refused!.includes(offending), `${h!.refused} names ${offending}`);
    t.regex(h!.refused!, why);
    t.true(f.logs.some((l) => l.level === 'warn' && l.message.includes("refusing hook 'h'")));
    t.is(set.hooks.find((x) => x.name === 'ok')?.refused, null, 'other hooks are unaffected');
  },
  title: (provided) => `trust - refuses ${provided}`,
});

/** A trusted hook next to the one under test. */
async function withOk(f: Fixture): Promise<void> {
  await f.put('dep', 'ok', hookText(await f.program('/bin-ok/ok')));
}

test('a hook file owned by another user', refusedFor, async (f) => {
  await withOk(f);
  const p = await f.put('etc', 'h', hookText());
  await fsp.chown(p, NOBODY, 0);
  return p;
}, /owned by uid 65534, not 0/);

test('a group-writable hook file', refusedFor, async (f) => {
  await withOk(f);
  const p = await f.put('run', 'h', hookText());
  await fsp.chmod(p, 0o664);
  return p;
}, /writable by group \(mode 0664\)/);

test('a world-writable hook file', refusedFor, async (f) => {
  await withOk(f);
  const p = await f.put('run', 'h', hookText());
  await fsp.chmod(p, 0o646);
  return p;
}, /writable by others/);

test('a hook in a group-writable directory', refusedFor, async (f) => {
  await withOk(f);
  await f.put('etc', 'h', hookText());
  const d = nodePath.dirname(f.at('etc', 'h'));
  await fsp.chmod(d, 0o775);
  return d;
}, /directory .* is writable by group/);

test('a program owned by another user', refusedFor, async (f) => {
  await withOk(f);
  const prog = await f.program('/bin-bad/tool');
  await fsp.chown(prog, NOBODY, NOBODY);
  await f.put('etc', 'h', hookText('/bin/true', `Abort=${prog} --undo\n`));
  return `Abort= program ${prog}`;
}, /owned by uid 65534/);

test('a world-writable program found through ${BOOTC_PRESTAGE_DEPLOYMENT}', refusedFor, async (f) => {
  await withOk(f);
  const prog = await f.program(nodePath.join(f.deployment, 'usr/libexec/tool'));
  await fsp.chmod(prog, 0o757);
  await f.put('dep', 'h', hookText('${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/tool'));
  return prog;
}, /Prepare= program .* writable by others/);

test('a program found through Environment=', refusedFor, async (f) => {
  await withOk(f);
  const prog = await f.program('/opt/tools/run');
  await fsp.chmod(prog, 0o775);
  await f.put('etc', 'h', hookText('${TOOLS}/run', `Environment=TOOLS=${nodePath.dirname(prog)}\n`));
  return prog;
}, /writable by group/);

test('a link whose target is owned by another user', refusedFor, async (f) => {
  await withOk(f);
  const target = nodePath.join(f.root, 'srv/h.hook');
  await fsp.mkdir(nodePath.dirname(target), { recursive: true });
  await fsp.chmod(nodePath.dirname(target), 0o755);
  await fsp.writeFile(target, hookText());
  await fsp.chown(target, NOBODY, 0);
  await fsp.symlink(target.slice(f.root.length), f.at('etc', 'h'));
  return target;
}, /hook file .* owned by uid 65534/);

test('a link whose target directory is writable by others', refusedFor, async (f) => {
  await withOk(f);
  const target = nodePath.join(f.root, 'srv/h.hook');
  await fsp.mkdir(nodePath.dirname(target), { recursive: true });
  await fsp.chmod(nodePath.dirname(target), 0o757);
  await fsp.writeFile(target, hookText());
  await fsp.chmod(target, 0o644);
  await fsp.symlink(target.slice(f.root.length), f.at('etc', 'h'));
  return nodePath.dirname(target);
}, /directory .* writable by others/);

test('trust - a program that does not exist is not refused (it fails when run)', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'h', hookText('/nonexistent/program'));
  t.is((await discover(f)).hooks[0]!.refused, null);
});

test('trust - a custom trusted uid accepts its own files and refuses root', async (t) => {
  const f = await fixture(t);
  for (const d of [ETC_HOOK_DIR, RUN_HOOK_DIR]) await fsp.chown(nodePath.join(f.root, d), NOBODY, NOBODY);
  const prog = await f.program('/mine/prog');
  await fsp.chown(prog, NOBODY, NOBODY);
  await fsp.chown(await f.put('etc', 'mine', hookText(prog)), NOBODY, NOBODY);
  await f.put('run', 'roots', hookText(prog));
  const set = await discoverHooks({ root: f.root, deployment: null, trustedUid: NOBODY });
  t.is(set.hooks.find((h) => h.name === 'mine')!.refused, null);
  t.regex(set.hooks.find((h) => h.name === 'roots')!.refused!, /owned by uid 0, not 65534/);
});

test('trust - an untrusted mask is ignored with a warning; the hook below stays', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'check', hookText());
  await fsp.chown(await f.put('etc', 'check', ''), NOBODY, 0);
  const set = await discover(f);
  t.deepEqual(set.masked, []);
  const h = set.hooks[0]!;
  t.is(h.origin, 'deployment');
  t.is(h.refused, null);
  t.regex(h.warnings[0]!, /ignoring mask .*check\.hook of hook 'check': file .* owned by uid 65534/);
  t.true(f.logs.some((l) => l.level === 'warn' && l.message.startsWith('ignoring mask')));
});

test('trust - a /dev/null mask in a writable directory is ignored', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'check', hookText());
  await fsp.symlink('/dev/null', f.at('run', 'check'));
  await fsp.chmod(nodePath.dirname(f.at('run', 'check')), 0o777);
  const set = await discover(f);
  t.deepEqual(set.masked, []);
  t.deepEqual(set.hooks.map((h) => h.origin), ['deployment']);
});

test('trust - a refused hook cannot reorder others or create a cycle', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'a', hookText('/bin/a', 'After=b\n'));
  await f.put('etc', 'b', hookText('/bin/b'));
  const evil = await f.put('run', 'evil', hookText('/bin/e', 'Before=b\nAfter=a\n'));
  await fsp.chmod(evil, 0o666);
  const set = await discover(f);
  t.deepEqual(set.hooks.map((h) => h.name), ['b', 'a', 'evil']);
  t.truthy(set.hooks[2]!.refused);
});

// ---------------------------------------------------------------------------
// Fingerprint.

test('fingerprint - equal sets give equal fingerprints; any change of file, content, mask or trust changes it', async (t) => {
  const f = await fixture(t);
  await f.put('dep', 'a', hookText('/bin/a'));
  await f.put('dep', 'b', hookText('/bin/b'));
  const seen = new Set<string>();
  const step = async (what: string) => {
    const fp = (await discover(f)).fingerprint;
    t.false(seen.has(fp), `${what} changes the fingerprint`);
    seen.add(fp);
  };
  await step('initial');
  t.is((await discover(f)).fingerprint, [...seen][0], 'stable when nothing changes');
  await f.put('dep', 'b', hookText('/bin/b', 'Description=x\n'));
  await step('content');
  await f.put('etc', 'b', hookText('/bin/b', 'Description=x\n'));
  await step('same content from another file');
  await f.put('etc', 'a', '');
  await step('masking');
  await fsp.rm(f.at('etc', 'a'));
  await fsp.chmod(f.at('etc', 'b'), 0o666);
  await step('trust');
  await fsp.chmod(f.at('etc', 'b'), 0o644);
  await f.put('dep', 'c', hookText('/bin/c'));
  await step('a new hook');
});

// ---------------------------------------------------------------------------

test('discover - 1000 hook files across the three directories', async (t) => {
  const f = await fixture(t);
  const where = ['etc', 'run', 'dep'] as const;
  const writes: Promise<string>[] = [];
  for (let i = 0; i < 1000; i++) {
    const name = `h${String(i).padStart(4, '0')}`;
    const after = i > 0 && i % 10 !== 0 ? `After=h${String(i - 1).padStart(4, '0')}\n` : '';
    const before = i % 10 === 0 && i < 990 ? `Before=h${String(i + 15).padStart(4, '0')}\n` : '';
    writes.push(f.put(where[i % 3]!, name, hookText('/bin/true', `${after}${before}Description=hook ${i}\n`)));
  }
  await Promise.all(writes);
  const set = await discover(f);
  t.is(set.hooks.length, 1000);
  t.true(set.hooks.every((h) => h.refused === null));
  const pos = new Map(set.hooks.map((h, i) => [h.name, i]));
  for (const h of set.hooks) {
    for (const a of h.definition.after) t.true(pos.get(a)! < pos.get(h.name)!);
    for (const b of h.definition.before) t.true(pos.get(h.name)! < pos.get(b)!);
  }
});

// ---- the new root (README "Hooks", docs/hooks.md) -------------------------------------------

test('new root - an image hook\'s prepare runs in the deployment by default; commit and abort, and /etc hooks, on the host', async (t) => {
  const f = await fixture(t);
  await fsp.chmod(nodePath.dirname(f.deployment), 0o755);
  await f.program(nodePath.join(f.deployment, 'usr/libexec/img'));
  await f.putFile('dep', 'img.hook', '[Hook]\nPrepare=/usr/libexec/img\nCommit=/bin/true\nAbort=/bin/true\n');
  await f.put('etc', 'host', hookText('/bin/true'));
  await f.put('etc', 'optin', hookText('${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/img', 'RootDirectory=${BOOTC_PRESTAGE_DEPLOYMENT}\n'));
  const set = await discover(f);
  const roots = Object.fromEntries(set.hooks.map((h) => [h.name, h.roots]));
  t.deepEqual(roots, {
    host: { prepare: '/' },
    img: { prepare: f.deployment, commit: '/', abort: '/' },
    optin: { prepare: f.deployment },
  });
  t.true(set.hooks.every((h) => h.refused === null), JSON.stringify(set.hooks.map((h) => h.refused)));
  // Without a deployment the opted-in root is not known yet: shown unexpanded, not checked.
  const host = await discover(f, null);
  t.deepEqual(host.hooks.find((h) => h.name === 'optin')!.roots, { prepare: '${BOOTC_PRESTAGE_DEPLOYMENT}' });
});

test('new root - the program is resolved inside the root: an absolute link names the root\'s file, and one missing there is refused', async (t) => {
  const f = await fixture(t);
  await fsp.chmod(nodePath.dirname(f.deployment), 0o755);
  // /usr/libexec/tool -> /opt/tool, which exists only on "the host" side of the fixture.
  await f.program(nodePath.join(f.deployment, 'opt/real-tool'));
  await fsp.mkdir(nodePath.join(f.deployment, 'usr/libexec'), { recursive: true });
  await fsp.symlink('/opt/real-tool', nodePath.join(f.deployment, 'usr/libexec/tool'));
  await fsp.symlink('/opt/nowhere', nodePath.join(f.deployment, 'usr/libexec/dangling'));
  await f.putFile('dep', 'linked.hook', '[Hook]\nPrepare=/usr/libexec/tool\n');
  await f.putFile('dep', 'dangling.hook', '[Hook]\nPrepare=/usr/libexec/dangling\nRequired=no\n');
  await f.putFile('dep', 'hostonly.hook', '[Hook]\nPrepare=/bin/true\nRequired=no\n');
  const set = await discover(f);
  const refused = Object.fromEntries(set.hooks.map((h) => [h.name, h.refused]));
  t.is(refused.linked, null, 'the link resolves to the root\'s /opt/real-tool');
  t.regex(refused.dangling!, /Prepare= program \/usr\/libexec\/dangling in \S+ does not exist/);
  t.regex(refused.hostonly!, /Prepare= program \/bin\/true in \S+ does not exist/, 'the host\'s /bin/true does not count');
  // An untrusted file inside the root is refused as on the host.
  await fsp.chmod(nodePath.join(f.deployment, 'opt/real-tool'), 0o777);
  const again = await discover(f);
  t.regex(again.hooks.find((h) => h.name === 'linked')!.refused!, /writable by group and others/);
});

test('new root - a bad RootDirectory= is InvalidHook naming file and line', async (t) => {
  const f = await fixture(t);
  const open = nodePath.join(nodePath.dirname(f.root), 'open');
  await fsp.mkdir(open);
  await fsp.chmod(open, 0o775);
  const file = nodePath.join(nodePath.dirname(f.root), 'file');
  await fsp.writeFile(file, '');
  for (const [root, why] of [[open, /writable by group/], [file, /is not a directory/], ['/no/such/root', /does not exist/]] as const) {
    await f.put('etc', 'bad', `[Hook]\nPrepare=/bin/true\n\nRootDirectory=${root}\n`);
    const e = await t.throwsAsync(discover(f), { instanceOf: PreStageError });
    t.is(e!.code, 'InvalidHook');
    t.true(e!.message.startsWith(`${f.at('etc', 'bad')}:4: RootDirectory=${root} (${root}) `), e!.message);
    t.regex(e!.message, why);
  }
});

test('parsed files are reused only for the same bytes: an edit that keeps size and mtime is seen; what is shared cannot be changed', async (t) => {
  const f = await fixture(t);
  const p = await f.put('etc', 'a', hookText('/bin/true', 'Description=one\n'));
  const { mtime } = await fsp.stat(p);
  const first = (await discover(f)).hooks.find((h) => h.name === 'a')!;
  t.is(first.definition.description, 'one');
  await fsp.writeFile(p, hookText('/bin/true', 'Description=two\n'));
  await fsp.utimes(p, mtime, mtime);
  const second = (await discover(f)).hooks.find((h) => h.name === 'a')!;
  t.is(second.definition.description, 'two');
  t.not(second.digest, first.digest);
  // Unchanged: the same parse is handed out again, frozen.
  const third = (await discover(f)).hooks.find((h) => h.name === 'a')!;
  t.is(third.definition, second.definition);
  t.throws(() => { (third.definition as { description: string }).description = 'x'; }, { instanceOf: TypeError });
  t.throws(() => { (third.definition.after as string[]).push('x'); }, { instanceOf: TypeError });
});

test('a warning of a shared parse is not repeated by later discoveries', async (t) => {
  const f = await fixture(t);
  await f.put('etc', 'w', hookText('/bin/true', 'NoSuchKey=1\n'));
  const w1 = (await discover(f)).hooks.find((h) => h.name === 'w')!.warnings;
  const w2 = (await discover(f)).hooks.find((h) => h.name === 'w')!.warnings;
  t.true(w1.length > 0, 'an unknown key warns');
  t.deepEqual(w2, w1);
});
