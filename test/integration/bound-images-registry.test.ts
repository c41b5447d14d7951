/**
 * The bound-images hook (packaging/hooks/bound-images) against a real
 * registry: Debian's docker-registry on 127.0.0.1 (test/helpers/registry.ts),
 * images built offline with podman build FROM scratch and pushed with
 * skopeo, units binding them by their registry names (TLSVerify=false: the
 * registry speaks plain HTTP). The registry's access log says what was
 * downloaded, so reuse is asserted in bytes.
 *
 * Steps run as the daemon runs them (test/fixtures/images/hook-step.ts),
 * with every store, runroot and storage.conf in a temporary directory.
 * Serial: each test moves real images, and two cores are better spent on
 * one at a time.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import {
  describeStep, installPrograms, runHookStep, startHookStep, type HookStepResult, type RunningHookStep,
} from '../fixtures/images/hook-step.js';
import { processesMentioning } from '../helpers/processes.js';
import { startRegistry, type PushedImage, type Registry, type RegistryRequest } from '../helpers/registry.js';
import { makeHookMachine, podmanDriver, sh, type HookMachine } from '../helpers/containers.js';
import type { Phase } from '../../service/model/types.js';

/** The images in the registry, by key: four of release 1, a changed app-d, two big ones. */
type Key = 'a' | 'b' | 'c' | 'd1' | 'd2' | 'big1' | 'big2';
const fx: { registry?: Registry; images: Record<Key, PushedImage>; driver: string } = {
  images: {} as Record<Key, PushedImage>, driver: '',
};

test.before(async () => {
  fx.registry = await startRegistry();
  const r = fx.registry;
  fx.images.a = await r.build('example/app-a:1', { sizeKiB: 256 });
  fx.images.b = await r.build('example/app-b:1', { sizeKiB: 256 });
  fx.images.c = await r.build('example/app-c:1', { sizeKiB: 256 });
  fx.images.d1 = await r.build('example/app-d:1', { sizeKiB: 256 });
  fx.images.d2 = await r.build('example/app-d:2', { sizeKiB: 512 });
  fx.images.big1 = await r.build('example/big-1:1', { sizeKiB: 24 * 1024 });
  fx.images.big2 = await r.build('example/big-2:1', { sizeKiB: 24 * 1024 });
  fx.driver = await podmanDriver();
});

test.after.always(async () => {
  await fx.registry?.stop();
});

type World = HookMachine;

function makeWorld(t: ExecutionContext): Promise<World> {
  return makeHookMachine(t, 'bound-images-registry-', fx.driver);
}

let counter = 0;

/** A deployment <checksum>.0 binding `keys` by their registry names. */
async function makeDeployment(w: World, keys: Key[]): Promise<string> {
  counter += 1;
  const root = path.join(w.deployDir, `${createHash('sha256').update(`${w.dir}/${counter}`).digest('hex')}.0`);
  await installPrograms(root);
  const units = path.join(root, 'usr/share/containers/systemd');
  const links = path.join(root, 'usr/lib/bootc/bound-images.d');
  await fsp.mkdir(units, { recursive: true });
  await fsp.mkdir(links, { recursive: true });
  for (const k of keys) {
    await fsp.writeFile(path.join(units, `${k}.image`), `[Image]\nImage=${fx.images[k].ref}\nTLSVerify=false\n`);
    await fsp.symlink(`/usr/share/containers/systemd/${k}.image`, path.join(links, `${k}.image`));
  }
  return root;
}

function options(w: World, d: string, phase: Phase, env: Record<string, string>) {
  return {
    hook: 'bound-images', phase, deployment: d, env: { ...w.env, ...env }, hostRoot: w.hostRoot,
    stateDir: path.join(w.stateDir, path.basename(d)),
  };
}

function step(w: World, d: string, phase: Phase, env: Record<string, string> = {}): Promise<HookStepResult> {
  return runHookStep(options(w, d, phase, env));
}

function ok(t: ExecutionContext, r: HookStepResult, code = 0): void {
  t.is(r.code, code, describeStep(r));
  t.deepEqual(r.ignoredNotify, [], 'every fd-3 line is one the daemon understands');
}

const storeOf = (w: World, d: string) => path.join(w.storeRoot, path.basename(d));

async function storeNames(store: string): Promise<string[]> {
  const file = path.join(store, `${fx.driver}-images`, 'images.json');
  if (!existsSync(file)) return [];
  const images = JSON.parse(await fsp.readFile(file, 'utf8')) as { names?: string[] }[];
  return images.flatMap((i) => i.names ?? []).sort();
}

const refs = (keys: Key[]) => keys.map((k) => fx.images[k].ref).sort();

/** Blob downloads in `reqs`, by digest. */
function blobGets(reqs: RegistryRequest[]): { digest: string; bytes: number }[] {
  return reqs.filter((r) => r.method === 'GET' && /\/blobs\/sha256:/.test(r.path))
    .map((r) => ({ digest: r.path.slice(r.path.indexOf('/blobs/') + 7), bytes: r.bytes }));
}

/** Deployment A with a, b, c, d1 pulled and committed: the booted system before the upgrade. */
async function committedA(t: ExecutionContext, w: World): Promise<string> {
  const a = await makeDeployment(w, ['a', 'b', 'c', 'd1']);
  ok(t, await step(w, a, 'prepare'));
  ok(t, await step(w, a, 'commit'));
  return a;
}

/** Layers containers-storage has not finished (a killed copy's), in a store. */
async function incompleteLayers(store: string): Promise<string[]> {
  const file = path.join(store, `${fx.driver}-layers`, 'layers.json');
  if (!existsSync(file)) return [];
  const layers = JSON.parse(await fsp.readFile(file, 'utf8')) as { id: string; flags?: Record<string, unknown> }[];
  return layers.filter((l) => l.flags?.['incomplete']).map((l) => l.id);
}

async function readOnlyImages(w: World): Promise<{ names: string[]; all: boolean }> {
  const out = JSON.parse(await sh('podman', ['images', '--format', 'json'], { CONTAINERS_STORAGE_CONF: w.storageConf })) as
    { Names?: string[]; ReadOnly: boolean }[];
  return { names: out.filter((i) => i.ReadOnly).flatMap((i) => i.Names ?? []).sort(), all: out.every((i) => i.ReadOnly) };
}

// ---------------------------------------------------------------------------

test.serial('registry - an upgrade downloads only the changed image; the others are copied from the old store, which can then go', async (t) => {
  const w = await makeWorld(t);
  const reg = fx.registry!;
  const a = await committedA(t, w);
  t.deepEqual((await readOnlyImages(w)).names, refs(['a', 'b', 'c', 'd1']));

  const b = await makeDeployment(w, ['a', 'b', 'c', 'd2']);
  const since = reg.mark();
  const r = await step(w, b, 'prepare');
  ok(t, r);
  const reqs = reg.requests(since);
  const out = r.stdout.join('\n');
  t.regex(out, /4 bound images ready in .*, 3 reused from other deployments' stores \(1 pulled, 0 already present\)/);
  // B's store starts as a clone of A's (layer files hard-linked), pruned to
  // what B binds with the digests the registry serves.
  t.true(out.includes(`bound-images: cloned ${storeOf(w, a)} (layer files hard-linked); each image is checked against its source`), out);
  for (const k of ['a', 'b', 'c'] as const) {
    t.true(out.includes(`bound-images: ${fx.images[k].ref}: in the clone with the digest the source serves (${fx.images[k].digest})`), out);
  }
  t.true(out.includes('bound-images: removed 1 images this deployment does not bind from the clone'), out);

  // What the registry served: manifests, and the changed image's blobs once each.
  const blobs = blobGets(reqs);
  t.deepEqual(blobs.map((x) => x.digest).sort(), [...fx.images.d2.blobs].sort(), reg.log());
  const blobBytes = blobs.reduce((s, x) => s + x.bytes, 0);
  t.is(blobBytes, fx.images.d2.blobBytes, 'exactly the changed image\'s config and layers');
  const others = reqs.filter((x) => !/\/blobs\//.test(x.path));
  t.true(others.every((x) => x.path === '/v2/' || /\/manifests\//.test(x.path)), JSON.stringify(others));
  for (const k of ['a', 'b', 'c'] as const) {
    const repo = fx.images[k].ref.slice(reg.host.length + 1).split(':')[0]!;
    t.false(reqs.some((x) => x.path.startsWith(`/v2/${repo}/blobs/`)), `no blob of ${repo} was downloaded`);
  }
  const manifestBytes = others.reduce((s, x) => s + x.bytes, 0);
  t.log(`served during the upgrade: ${blobBytes} bytes of blobs (the changed image: ${fx.images.d2.blobBytes}), ${manifestBytes} bytes of manifests in ${others.length} requests`);
  t.true(blobBytes + manifestBytes <= 1.05 * (fx.images.d2.blobBytes + manifestBytes));

  t.deepEqual(await storeNames(storeOf(w, b)), refs(['a', 'b', 'c', 'd2']));
  // The copies keep the registry's manifest digests: podman finds each by it.
  for (const k of ['a', 'b', 'c', 'd2'] as const) {
    const repo = fx.images[k].ref.replace(/:[^:/]+$/, '');
    await sh('skopeo', ['inspect', '--raw',
      `containers-storage:[${fx.driver}@${storeOf(w, b)}+${w.runRoot}/x${fx.driver === 'overlay' ? ':overlay.skip_mount_home=true' : ''}]${repo}@${fx.images[k].digest}`]);
  }

  // "Reboot" into B and commit: podman lists the four read-only.
  ok(t, await step(w, b, 'commit'));
  t.deepEqual(await readOnlyImages(w), { names: refs(['a', 'b', 'c', 'd2']), all: true });
  // A goes (ostree removes the deployment; the next commit removes its store).
  await fsp.rm(a, { recursive: true });
  const again = await step(w, b, 'commit');
  ok(t, again);
  t.false(existsSync(storeOf(w, a)), 'A\'s store is gone');
  t.deepEqual(await readOnlyImages(w), { names: refs(['a', 'b', 'c', 'd2']), all: true });
  // Every layer of every image is readable without A's store.
  for (const k of ['a', 'b', 'c', 'd2'] as const) {
    const dest = path.join(w.dir, `export-${k}`);
    await sh('podman', ['save', '-q', '--format', 'oci-dir', '-o', dest, fx.images[k].ref], { CONTAINERS_STORAGE_CONF: w.storageConf });
    t.true(existsSync(path.join(dest, 'index.json')));
  }
});

test.serial('registry - a cold prepare pulls in parallel and reports bytes per image', async (t) => {
  const w = await makeWorld(t);
  // A skopeo wrapper that freezes the first big pull once some bytes are in
  // (SIGSTOP), until the test has seen a bytes STATUS for it: the progress
  // is observed deterministically, however fast the machine is.
  const marks = path.join(w.dir, 'marks');
  await fsp.mkdir(marks);
  const wrapper = path.join(w.dir, 'skopeo-wrapper');
  await fsp.writeFile(wrapper, [
    '#!/bin/sh',
    'case " $* " in',
    `*" copy "*big-1*) skopeo "$@" & pid=$!; : > '${marks}/big-1.started'`,
    '  while [ "$(du -sb "$TMPDIR" | cut -f1)" -lt 1000000 ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done',
    `  kill -STOP $pid; : > '${marks}/big-1.stopped'`,
    `  while [ ! -e '${marks}/go' ]; do sleep 0.05; done; kill -CONT $pid; wait $pid; exit $? ;;`,
    `*" copy "*big-2*) : > '${marks}/big-2.started' ;;`,
    'esac',
    'exec skopeo "$@"',
    '',
  ].join('\n'), { mode: 0o755 });
  const d = await makeDeployment(w, ['big1', 'big2', 'a']);
  const running = await startHookStep(options(w, d, 'prepare', { SKOPEO: wrapper, BOUND_IMAGES_PARALLEL: '3' }));
  const deadline = Date.now() + 120_000;
  const bytesStatus = new RegExp(`^STATUS=.*pulling ${fx.images.big1.ref.replace(/[.]/g, '\\.')} ([0-9]+)/([0-9]+) MB`);
  const fail = async (why: string) => {
    running.crash();
    throw new Error(`${why}:\n${running.notify.join('\n')}\n${describeStep(await running.done)}`);
  };
  // Frozen with at least 1 MB in: the next ticks report it.
  while (!existsSync(path.join(marks, 'big-1.stopped'))) {
    if (Date.now() > deadline || running.child.exitCode !== null) await fail('big-1 was never frozen');
    await new Promise((r) => setTimeout(r, 50));
  }
  const from = running.notify.length;
  let line: string | undefined;
  while (!(line = running.notify.slice(from).find((l) => bytesStatus.test(l)))) {
    if (Date.now() > deadline || running.child.exitCode !== null) await fail('no bytes STATUS for the frozen pull');
    await new Promise((r) => setTimeout(r, 50));
  }
  t.true(existsSync(path.join(marks, 'big-2.started')), 'big-2 was pulled while big-1 was (parallel)');
  await fsp.writeFile(path.join(marks, 'go'), '');
  const r = await running.done;
  ok(t, r);
  const [, done, total] = bytesStatus.exec(line)!;
  t.is(Number(total), Math.floor(fx.images.big1.blobBytes / 1e6), line);
  t.true(Number(done) >= 1 && Number(done) <= Number(total), line);
  t.deepEqual(await storeNames(storeOf(w, d)), refs(['big1', 'big2', 'a']));
  t.deepEqual(r.progress, [...r.progress].sort((x, y) => x - y), 'PROGRESS never goes back');
  t.is(r.progress.at(-1), 100);
});

test.serial('registry - one failed pull stops the others, and the step fails naming that image', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, ['big1', 'big2']);
  // A third unit binds an image the registry does not have.
  const missing = `${fx.registry!.host}/example/missing:1`;
  await fsp.writeFile(path.join(d, 'usr/share/containers/systemd/missing.image'), `[Image]\nImage=${missing}\nTLSVerify=false\n`);
  await fsp.symlink('/usr/share/containers/systemd/missing.image', path.join(d, 'usr/lib/bootc/bound-images.d/0-missing.image'));
  const r = await step(w, d, 'prepare');
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), new RegExp(`error: pulling ${missing.replace(/[.]/g, '\\.')} from docker://.* failed .*bound by /usr/lib/bootc/bound-images\\.d/0-missing\\.image`));
  t.deepEqual(await processesMentioning(w.dir), [], 'no pull is left running');
  // A re-run without the broken entry completes from what is there.
  await fsp.rm(path.join(d, 'usr/lib/bootc/bound-images.d/0-missing.image'));
  ok(t, await step(w, d, 'prepare'));
  t.deepEqual(await storeNames(storeOf(w, d)), refs(['big1', 'big2']));
  t.deepEqual(await incompleteLayers(storeOf(w, d)), []);
});

/**
 * A skopeo wrapper that records each command as a numbered mark file
 * (`N.copy-storage` for a copy from another store, `N.copy-docker` for a
 * pull, `N.inspect`), so a test can kill at a chosen moment.
 */
async function markingWrapper(w: World): Promise<{ wrapper: string; marks: string }> {
  const marks = path.join(w.dir, `marks-${Date.now()}`);
  await fsp.mkdir(marks);
  const wrapper = path.join(marks, 'skopeo');
  await fsp.writeFile(wrapper, [
    '#!/bin/sh',
    'kind=other',
    'case " $* " in *" copy "*" containers-storage:"*" containers-storage:"*) kind=copy-storage ;; *" copy "*" docker://"*) kind=copy-docker ;; *" inspect "*) kind=inspect ;; *" delete "*) kind=delete ;; esac',
    `mktemp -p '${marks}' --suffix=.$kind >/dev/null`,
    'exec skopeo "$@"',
    '',
  ].join('\n'), { mode: 0o755 });
  return { wrapper, marks };
}

async function crashWhen(t: ExecutionContext, running: RunningHookStep, marks: string, kind: string, count: number, delayMs: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const n = (await fsp.readdir(marks)).filter((f) => f.endsWith(`.${kind}`)).length;
    if (n >= count) break;
    if (Date.now() > deadline || running.child.exitCode !== null) {
      running.crash();
      throw new Error(`never saw ${count} ${kind}: ${describeStep(await running.done)}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, delayMs));
  running.crash();
  const r = await running.done;
  t.is(r.signal, 'SIGKILL', describeStep(r));
}

test.serial('registry - SIGKILL during a reuse or a parallel pull: the re-run completes the store, abort removes only B\'s', async (t) => {
  const w = await makeWorld(t);
  const a = await committedA(t, w);
  const aNames = await storeNames(storeOf(w, a));
  // B's store starts as a clone of A's (before the first inspect), its tags
  // are checked (inspect), the two big ones pulled in parallel
  // (copy-docker), the clone pruned (delete) and renamed into place.
  const points: { kind: string; count: number; delayMs: number; then: 'rerun' | 'abort' }[] = [
    { kind: 'inspect', count: 1, delayMs: 0, then: 'rerun' },
    { kind: 'inspect', count: 3, delayMs: 20, then: 'rerun' },
    { kind: 'copy-docker', count: 2, delayMs: 300, then: 'rerun' },
    { kind: 'delete', count: 1, delayMs: 0, then: 'rerun' },
    { kind: 'copy-docker', count: 1, delayMs: 200, then: 'abort' },
  ];
  for (const p of points) {
    const label = `${p.kind} #${p.count} +${p.delayMs} ms, then ${p.then}`;
    const b = await makeDeployment(w, ['a', 'b', 'c', 'big1', 'big2']);
    const { wrapper, marks } = await markingWrapper(w);
    const running = await startHookStep(options(w, b, 'prepare', { SKOPEO: wrapper }));
    await crashWhen(t, running, marks, p.kind, p.count, p.delayMs);
    t.log(`${label}: after the kill, B's store has ${(await storeNames(storeOf(w, b))).length} images`);
    if (p.then === 'rerun') {
      const r = await step(w, b, 'prepare');
      ok(t, r);
      t.deepEqual(await storeNames(storeOf(w, b)), refs(['a', 'b', 'c', 'big1', 'big2']), label);
      t.deepEqual(await incompleteLayers(storeOf(w, b)), [], `${label}: no half-copied layer is left`);
      t.false(existsSync(path.join(w.stateDir, path.basename(b), 'bound-images.work')), `${label}: no scratch files`);
      t.false(existsSync(path.join(w.storeRoot, `.clone-${path.basename(b)}`)), `${label}: no clone left`);
    } else {
      ok(t, await step(w, b, 'abort'));
      t.false(existsSync(storeOf(w, b)), label);
    }
    t.deepEqual(await processesMentioning(w.dir), [], `${label}: nothing left running`);
    // A is untouched whatever happened to B.
    t.deepEqual(await storeNames(storeOf(w, a)), aNames, label);
    if (p.then === 'abort') t.deepEqual((await fsp.readdir(w.storeRoot)).filter((n) => n.startsWith('.')), [], `${label}: no trash, no clone`);
    if (p.then === 'rerun') {
      ok(t, await step(w, b, 'abort'));
      t.false(existsSync(storeOf(w, b)));
    }
    await fsp.rm(b, { recursive: true });
  }
  t.deepEqual(await fsp.readdir(w.storeRoot), [path.basename(a)], 'only A\'s store is left');
  t.deepEqual((await readOnlyImages(w)).names, refs(['a', 'b', 'c', 'd1']), 'podman still sees A\'s images');
});

test.serial('registry - BOUND_IMAGES_REUSE=0 downloads every image again; a bad BOUND_IMAGES_PARALLEL is refused', async (t) => {
  const w = await makeWorld(t);
  await committedA(t, w);
  const b = await makeDeployment(w, ['a', 'b']);
  const since = fx.registry!.mark();
  ok(t, await step(w, b, 'prepare', { BOUND_IMAGES_REUSE: '0' }));
  t.deepEqual(blobGets(fx.registry!.requests(since)).map((x) => x.digest).sort(), [...fx.images.a.blobs, ...fx.images.b.blobs].sort());
  for (const bad of ['0', 'x', '']) {
    const r = await step(w, b, 'prepare', { BOUND_IMAGES_PARALLEL: bad });
    if (bad === '') { ok(t, r); continue; } // empty means the default
    t.is(r.code, 1, describeStep(r));
    t.regex(r.stderr.join('\n'), /BOUND_IMAGES_PARALLEL=.* is not a whole number of at least 1/);
  }
});

test.serial('registry - a tag that moved in the registry is downloaded again, not taken from the old store', async (t) => {
  const w = await makeWorld(t);
  const reg = fx.registry!;
  const before = await reg.build('example/moving:1', { sizeKiB: 64 });
  const a = await makeDeployment(w, ['a']);
  await fsp.writeFile(path.join(a, 'usr/share/containers/systemd/moving.image'), `[Image]\nImage=${before.ref}\nTLSVerify=false\n`);
  await fsp.symlink('/usr/share/containers/systemd/moving.image', path.join(a, 'usr/lib/bootc/bound-images.d/moving.image'));
  ok(t, await step(w, a, 'prepare'));
  ok(t, await step(w, a, 'commit'));
  // The same tag now names another image.
  const after = await reg.build('example/moving:1', { sizeKiB: 64 });
  t.not(after.digest, before.digest);
  const b = await makeDeployment(w, ['a']);
  await fsp.writeFile(path.join(b, 'usr/share/containers/systemd/moving.image'), `[Image]\nImage=${after.ref}\nTLSVerify=false\n`);
  await fsp.symlink('/usr/share/containers/systemd/moving.image', path.join(b, 'usr/lib/bootc/bound-images.d/moving.image'));
  const since = reg.mark();
  const r = await step(w, b, 'prepare');
  ok(t, r);
  t.true(r.stdout.includes(`bound-images: ${after.ref}: pulled (${after.digest})`), r.stdout.join('\n'));
  t.deepEqual(blobGets(reg.requests(since)).map((x) => x.digest).sort(), [...after.blobs].sort(), 'only the moved image is downloaded');
  const stored = await sh('skopeo', ['inspect', '--raw',
    `containers-storage:[${fx.driver}@${storeOf(w, b)}+${w.runRoot}/x${fx.driver === 'overlay' ? ':overlay.skip_mount_home=true' : ''}]${after.ref.replace(/:1$/, '')}@${after.digest}`]);
  t.is(`sha256:${createHash('sha256').update(stored).digest('hex')}`, after.digest);
  // A's store still holds the old image, untouched.
  t.deepEqual(await storeNames(storeOf(w, a)), [fx.images.a.ref, before.ref].sort());
});

test.serial('registry - images found in two other deployments\' stores: one is cloned, the other copied, nothing downloaded', async (t) => {
  const w = await makeWorld(t);
  const reg = fx.registry!;
  const a = await committedA(t, w);
  const c = await makeDeployment(w, ['d2']);
  ok(t, await step(w, c, 'prepare'));
  const b = await makeDeployment(w, ['a', 'b', 'c', 'd2']);
  const since = reg.mark();
  const r = await step(w, b, 'prepare');
  ok(t, r);
  const out = r.stdout.join('\n');
  t.deepEqual(blobGets(reg.requests(since)), [], reg.log());
  t.regex(out, /bound-images: cloned \S+ \(layer files hard-linked\)/);
  t.regex(out, /: copying \S+ from \S+ \(the manifest digest matches; nothing is downloaded\)/);
  t.regex(out, /4 bound images ready in .*, 4 reused from other deployments' stores \(0 pulled, 0 already present\)/);
  t.deepEqual(await storeNames(storeOf(w, b)), refs(['a', 'b', 'c', 'd2']));
  // Neither source is needed afterwards.
  await fsp.rm(a, { recursive: true });
  await fsp.rm(c, { recursive: true });
  ok(t, await step(w, b, 'commit'));
  t.deepEqual(await fsp.readdir(w.storeRoot), [path.basename(b)]);
  t.deepEqual(await readOnlyImages(w), { names: refs(['a', 'b', 'c', 'd2']), all: true });
  for (const k of ['a', 'b', 'c', 'd2'] as const) {
    await sh('podman', ['save', '-q', '--format', 'oci-dir', '-o', path.join(w.dir, `export-${k}`), fx.images[k].ref], { CONTAINERS_STORAGE_CONF: w.storageConf });
  }
});
