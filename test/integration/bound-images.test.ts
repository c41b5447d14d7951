/**
 * The bound-images hook (packaging/hooks/bound-images) with real podman and
 * skopeo: images built in the test without network (podman import, podman
 * save --format oci-archive), deployment trees with bound-images.d links as
 * bootc reads them, steps run as the daemon runs them
 * (test/fixtures/images/hook-step.ts), and every store, runroot and
 * storage.conf in a temporary directory named by the hook's Environment=.
 *
 * The tests run one at a time: each pulls real images, and two cores are
 * better spent on one than shared by several.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import {
  describeStep, hookFileWithEnv, HOOKS_DIR, installPrograms, LIBEXEC, PROGRAMS, runHookStep, startHookStep,
  type HookStepResult,
} from '../fixtures/images/hook-step.js';
import { withDaemon, type DaemonContext } from '../helpers/daemon.js';
import {
  MANAGER_IFACE, MANAGER_PATH, SERVICE, TRANSACTION_IFACE, type SignalRecorder,
} from '../helpers/dbus-client.js';
import { makeSysroot, type Sysroot } from '../helpers/ostree.js';
import { makeHookMachine, podmanDriver, removeTree, sh, type HookMachine } from '../helpers/containers.js';
import { FIXTURES_DIR, makeTmpDir } from '../helpers/tmp.js';
import type { Phase } from '../../service/model/types.js';

const exec = promisify(execFile);
const IMAGE_FIXTURES = path.join(FIXTURES_DIR, 'images');

/** The images the tests bind, by key. */
const IMAGES = {
  a: 'quay.io/example/app-a:1.0',
  b: 'registry.example.com/team/app-b:2',
  c: 'quay.io/example/app-c:3',
  big: 'quay.io/example/big:1',
} as const;
type ImageKey = keyof typeof IMAGES;
/** Size of the big image's only file: large enough that a copy of it can be interrupted. */
const BIG_KIB = 65536;

interface BuiltImage {
  archive: string;
  /** sha256 of the archive's manifest, as a registry would serve it. */
  digest: string;
}

const fixtures: { dir: string; images: Record<ImageKey, BuiltImage>; driver: string } = {
  dir: '', images: {} as Record<ImageKey, BuiltImage>, driver: '',
};



test.before(async () => {
  fixtures.dir = await makeTmpDir({ prefix: 'bound-images-archives-' });
  const build = path.join(IMAGE_FIXTURES, 'build-images.sh');
  await sh(build, [fixtures.dir, '0', IMAGES.a, IMAGES.b, IMAGES.c]);
  await sh(build, [fixtures.dir, String(BIG_KIB), IMAGES.big]);
  for (const [k, name] of Object.entries(IMAGES) as [ImageKey, string][]) {
    const archive = path.join(fixtures.dir, `${name.replace(/[/:@]/g, '_')}.tar`);
    const manifest = await exec('skopeo', ['inspect', '--raw', `oci-archive:${archive}`], { encoding: 'buffer' });
    fixtures.images[k] = { archive, digest: `sha256:${createHash('sha256').update(manifest.stdout).digest('hex')}` };
  }
  fixtures.driver = await podmanDriver();
});

test.after.always(async () => {
  if (fixtures.dir) await removeTree(fixtures.dir);
});

/** One machine (see makeHookMachine), with a sources file that names every fixture image. */
interface World extends HookMachine {
  sourcesFile: string;
}

async function makeWorld(t: ExecutionContext, opts: { env?: Record<string, string> } = {}): Promise<World> {
  const m = await makeHookMachine(t, 'bound-images-', fixtures.driver);
  const w: World = { ...m, sourcesFile: path.join(m.dir, 'etc', 'bound-image-sources') };
  await writeSources(w, {});
  w.env = {
    ...m.env,
    BOUND_IMAGES_SOURCES: w.sourcesFile,
    // No test may reach for a registry: an image without a source fails.
    BOUND_IMAGES_SOURCES_ONLY: '1',
    ...(opts.env ?? {}),
  };
  return w;
}

/** The sources file: every fixture image by its name, plus `extra` (Image= value -> source). */
async function writeSources(w: World, extra: Record<string, string>): Promise<void> {
  const entries: Record<string, string> = {};
  for (const k of Object.keys(IMAGES) as ImageKey[]) entries[IMAGES[k]] = `oci-archive:${fixtures.images[k]?.archive ?? '/missing'}`;
  Object.assign(entries, extra);
  await fsp.writeFile(w.sourcesFile,
    `# Image= value, then where to copy it from\n${Object.entries(entries).map(([i, s]) => `${i} ${s}`).join('\n')}\n`);
}

/** A quadlet unit file. */
function unit(kind: 'image' | 'container', image: string, extra = ''): string {
  return kind === 'image'
    ? `[Image]\nImage=${image}\n${extra}`
    : `[Unit]\nDescription=An app\n\n[Container]\nImage=${image}\nExec=/bin/true\n${extra}\n[Install]\nWantedBy=default.target\n`;
}

interface TreeOptions {
  /** bound-images.d entry name -> quadlet unit text; each unit goes to usr/share/containers/systemd and is linked absolutely. */
  bound?: Record<string, string>;
  /** Extra work on the tree (odd links, plain files). */
  custom?: (root: string) => Promise<void>;
}

let deploymentCounter = 0;

/** A deployment directory <checksum>.0 under the world's deploy directory. */
async function makeDeployment(w: World, opts: TreeOptions = {}): Promise<string> {
  deploymentCounter += 1;
  const checksum = createHash('sha256').update(`${w.dir}/${deploymentCounter}`).digest('hex');
  const root = path.join(w.deployDir, `${checksum}.0`);
  await fsp.mkdir(root, { recursive: true });
  await installPrograms(root);
  await writeBound(root, opts.bound ?? {});
  if (opts.custom) await opts.custom(root);
  return root;
}

async function writeBound(root: string, bound: Record<string, string>): Promise<void> {
  if (Object.keys(bound).length === 0) return;
  const units = path.join(root, 'usr/share/containers/systemd');
  const links = path.join(root, 'usr/lib/bootc/bound-images.d');
  await fsp.mkdir(units, { recursive: true });
  await fsp.mkdir(links, { recursive: true });
  for (const [name, text] of Object.entries(bound)) {
    await fsp.writeFile(path.join(units, name), text);
    await fsp.symlink(`/usr/share/containers/systemd/${name}`, path.join(links, name));
  }
}

function step(w: World, deployment: string, phase: Phase, env: Record<string, string> = {}): Promise<HookStepResult> {
  return runHookStep({
    hook: 'bound-images', phase, deployment, env: { ...w.env, ...env }, hostRoot: w.hostRoot,
    stateDir: path.join(w.stateDir, path.basename(deployment)),
  });
}

function storeOf(w: World, deployment: string): string {
  return path.join(w.storeRoot, path.basename(deployment));
}

/** Image names in a store, from containers-storage's own record of it. */
async function storeNames(store: string): Promise<string[]> {
  const file = path.join(store, `${fixtures.driver}-images`, 'images.json');
  if (!existsSync(file)) return [];
  const images = JSON.parse(await fsp.readFile(file, 'utf8')) as { names?: string[] }[];
  return images.flatMap((i) => i.names ?? []).sort();
}

interface PodmanImage { Names?: string[]; ReadOnly: boolean; Id: string }

/** `podman images` as an administrator on this machine sees them. */
async function podmanImages(w: World): Promise<PodmanImage[]> {
  const out = await sh('podman', ['images', '--format', 'json'], { CONTAINERS_STORAGE_CONF: w.storageConf });
  return JSON.parse(out) as PodmanImage[];
}

async function readOnlyNames(w: World): Promise<string[]> {
  return (await podmanImages(w)).filter((i) => i.ReadOnly).flatMap((i) => i.Names ?? []).sort();
}

async function entries(dir: string): Promise<string[]> {
  return (await fsp.readdir(dir).catch(() => [] as string[])).sort();
}

function ok(t: ExecutionContext, r: HookStepResult, code = 0): void {
  t.is(r.code, code, describeStep(r));
  t.deepEqual(r.ignoredNotify, [], 'every fd-3 line is one the daemon understands');
}

function twoImages(): Record<string, string> {
  return { 'app-a.image': unit('image', IMAGES.a), 'app-b.container': unit('container', IMAGES.b) };
}

// ---------------------------------------------------------------------------

test.serial('prepare - pulls every bound image into the deployment\'s own store, with progress per image', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, { bound: twoImages() });
  const r = await step(w, d, 'prepare');
  ok(t, r);
  t.deepEqual(await storeNames(storeOf(w, d)), [IMAGES.a, IMAGES.b].sort());
  // One PROGRESS per finished image; bytes progress of a running pull may
  // add values in between (once a second), never going back.
  // (a bytes value may stand in for the first image's 50: PROGRESS never
  // goes back, and reaches 100 only when the last image is stored).
  t.true(r.progress.some((p) => p >= 50 && p < 100) && r.progress.at(-1) === 100, r.progress.join(' '));
  t.deepEqual(r.progress, [...r.progress].sort((x, y) => x - y), 'never decreasing');
  t.true(r.statuses.includes(`Pulling bound image 1/2: ${IMAGES.a}`), r.statuses.join('\n'));
  t.true(r.statuses.includes(`Pulling bound image 2/2: ${IMAGES.b}`), r.statuses.join('\n'));
  t.regex(r.stdout.join('\n'), /2 bound images ready .* \(2 pulled, 0 already present\)/);
  t.deepEqual(await podmanImages(w), [], 'the primary store is untouched');
  t.deepEqual(await entries(w.storeRoot), [path.basename(d)], 'one store, named after the deployment');
});

test.serial('prepare - a second run finds every image present and pulls nothing', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, { bound: twoImages() });
  ok(t, await step(w, d, 'prepare'));
  const r = await step(w, d, 'prepare');
  ok(t, r);
  t.true(r.stdout.includes(`bound-images: ${IMAGES.a}: already present`), r.stdout.join('\n'));
  t.regex(r.stdout.join('\n'), /\(0 pulled, 2 already present\)/);
  t.false(r.statuses.some((s) => s.startsWith('Pulling')), 'nothing pulled');
  t.deepEqual(await storeNames(storeOf(w, d)), [IMAGES.a, IMAGES.b].sort());
});

test.serial('prepare - a deployment that binds nothing is skipped (77) and gets no store', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w);
  const r = await step(w, d, 'prepare');
  ok(t, r, 77);
  t.regex(r.stdout.join('\n'), /binds no images/);
  t.false(existsSync(storeOf(w, d)));
});

test.serial('commit - podman lists the bound images read-only through the switched configuration', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, { bound: twoImages() });
  ok(t, await step(w, d, 'prepare'));
  const before = await fsp.readFile(w.storageConf, 'utf8');
  const r = await step(w, d, 'commit');
  ok(t, r);
  t.deepEqual(await readOnlyNames(w), [IMAGES.a, IMAGES.b].sort());
  t.true((await podmanImages(w)).every((i) => i.ReadOnly), 'nothing was pulled into the primary store');
  const after = await fsp.readFile(w.storageConf, 'utf8');
  t.true(after.startsWith(before), 'the administrator\'s lines are kept as they were');
  t.regex(after, new RegExp(`\\[storage\\.options\\]\\n# bootc-prestage: .*\\nadditionalimagestores = \\["${storeOf(w, d)}"\\]\\n$`));
  // Idempotent: the file is not rewritten.
  const st = await fsp.stat(w.storageConf);
  const again = await step(w, d, 'commit');
  ok(t, again);
  t.regex(again.stdout.join('\n'), /already lists the right additional image stores/);
  t.is((await fsp.stat(w.storageConf)).ino, st.ino, 'not replaced');
  t.is(await fsp.readFile(w.storageConf, 'utf8'), after);
  t.is(r.progress.at(-1), 100);
});

test.serial('prepare - a missing image fails, and abort leaves no store behind', async (t) => {
  const w = await makeWorld(t);
  await writeSources(w, { 'quay.io/example/missing:1': `oci-archive:${path.join(w.dir, 'no-such-archive.tar')}` });
  const d = await makeDeployment(w, {
    bound: { '1-app-a.image': unit('image', IMAGES.a), '2-missing.image': unit('image', 'quay.io/example/missing:1') },
  });
  const conf = await fsp.readFile(w.storageConf, 'utf8');
  // One at a time, so that app-a is complete before the failure (in
  // parallel, the failure stops app-a's pull: bound-images-registry.test.ts).
  const r = await step(w, d, 'prepare', { BOUND_IMAGES_PARALLEL: '1' });
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), /error: pulling quay\.io\/example\/missing:1 from oci-archive:.*no-such-archive\.tar failed/);
  t.regex(r.stderr.join('\n'), /bound by \/usr\/lib\/bootc\/bound-images\.d\/2-missing\.image/);
  t.deepEqual(await storeNames(storeOf(w, d)), [IMAGES.a], 'what was pulled before the failure is in the store');
  const a = await step(w, d, 'abort');
  ok(t, a);
  t.false(existsSync(storeOf(w, d)));
  t.deepEqual(await entries(w.storeRoot), [], 'no store, no trash');
  t.deepEqual(await entries(w.runRoot), [], 'no runroot');
  t.is(await fsp.readFile(w.storageConf, 'utf8'), conf, 'storage.conf untouched');
  const again = await step(w, d, 'abort');
  ok(t, again, 77);
});

/**
 * Start a prepare whose second image is the big one, and SIGKILL its whole
 * process group while skopeo copies it (a crash, not a cancel). A wrapper
 * around skopeo (SKOPEO= is a setting) marks the moment the copy starts.
 */
async function crashDuringBigPull(t: ExecutionContext, w: World): Promise<string> {
  const mark = path.join(w.dir, 'big-copy-started');
  const wrapper = path.join(w.dir, 'skopeo-wrapper');
  await fsp.writeFile(wrapper, [
    '#!/bin/sh',
    `case " $* " in *" copy "*big*) : > '${mark}' ;; esac`,
    'exec skopeo "$@"',
    '',
  ].join('\n'), { mode: 0o755 });
  const d = await makeDeployment(w, {
    bound: { '1-app-a.image': unit('image', IMAGES.a), '2-big.image': unit('image', IMAGES.big) },
  });
  // One image at a time: the crash comes after app-a is complete.
  const running = await startHookStep({
    hook: 'bound-images', phase: 'prepare', deployment: d, env: { ...w.env, SKOPEO: wrapper, BOUND_IMAGES_PARALLEL: '1' },
    hostRoot: w.hostRoot, stateDir: path.join(w.stateDir, 'crash'),
  });
  const deadline = Date.now() + 60_000;
  while (!existsSync(mark)) {
    if (Date.now() > deadline) throw new Error(`the big copy never started\n${running.stdout.join('\n')}`);
    if (running.child.exitCode !== null) throw new Error(`prepare ended before the big copy: ${describeStep(await running.done)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 150));
  running.crash();
  const r = await running.done;
  t.is(r.signal, 'SIGKILL', describeStep(r));
  t.log(`big image in the store after the crash: ${(await storeNames(storeOf(w, d))).includes(IMAGES.big)}`);
  return d;
}

test.serial('prepare - killed in the middle of a pull, a re-run completes what is missing', async (t) => {
  const w = await makeWorld(t);
  const d = await crashDuringBigPull(t, w);
  const r = await step(w, d, 'prepare', { BOUND_IMAGES_PARALLEL: '1' });
  ok(t, r);
  t.regex(r.stdout.join('\n'), /app-a:1\.0: already present/, 'the image pulled before the crash is kept');
  t.deepEqual(await storeNames(storeOf(w, d)), [IMAGES.a, IMAGES.big].sort());
  // The copy that was killed left nothing the store still counts.
  const check = await sh('skopeo', ['inspect', '--raw',
    `containers-storage:[${fixtures.driver}@${storeOf(w, d)}+${path.join(w.runRoot, path.basename(d))}${fixtures.driver === 'overlay' ? ':overlay.skip_mount_home=true' : ''}]${IMAGES.big}`]);
  t.is(`sha256:${createHash('sha256').update(check).digest('hex')}`, fixtures.images.big.digest, 'the big image is whole');
});

test.serial('prepare - killed in the middle of a pull, then abort leaves nothing behind', async (t) => {
  const w = await makeWorld(t);
  const d = await crashDuringBigPull(t, w);
  const a = await step(w, d, 'abort');
  ok(t, a);
  t.deepEqual(await entries(w.storeRoot), []);
  t.deepEqual(await entries(w.runRoot), []);
  const mounts = (await sh('findmnt', ['-rn', '-o', 'TARGET'])).split('\n').filter((m) => m.startsWith(`${w.dir}/`));
  t.deepEqual(mounts, [], 'no mount left below the test directory');
});

test.serial('abort - after ostree admin undeploy, removes the deployment\'s store', async (t) => {
  const w = await makeWorld(t);
  // A real sysroot: the deployment is made, and later removed, by ostree.
  const sysroot = await makeSysroot({});
  t.teardown(() => sysroot.remove());
  const files: Record<string, { content: Buffer; mode: number }> = {};
  for (const [name, mode] of Object.entries(PROGRAMS)) {
    files[`usr/libexec/bootc-prestage/${name}`] = { content: await fsp.readFile(path.join(HOOKS_DIR, name)), mode };
  }
  files['usr/share/containers/systemd/app-a.image'] = { content: Buffer.from(unit('image', IMAGES.a)), mode: 0o644 };
  const staged = await sysroot.deploy({
    files,
    hooks: { 'bound-images.hook': await fsp.readFile(path.join(HOOKS_DIR, 'bound-images.hook'), 'utf8') },
  });
  // ostree cannot commit a tree holding these links through the helper;
  // deployment directories (unlike their root) are writable.
  await fsp.mkdir(path.join(staged, 'usr/lib/bootc/bound-images.d'));
  await fsp.symlink('/usr/share/containers/systemd/app-a.image', path.join(staged, 'usr/lib/bootc/bound-images.d/app-a.image'));
  ok(t, await step(w, staged, 'prepare'));
  t.deepEqual(await storeNames(storeOf(w, staged)), [IMAGES.a]);
  await sysroot.undeploy(0);
  t.false(existsSync(staged), 'ostree removed the deployment');
  const a = await step(w, staged, 'abort');
  ok(t, a);
  t.regex(a.stdout.join('\n'), /removed .*images\/[0-9a-f]{64}\.\d+/);
  t.deepEqual(await entries(w.storeRoot), []);
});

test.serial('commit - removes the stores of deployments that no longer exist and keeps the others', async (t) => {
  const w = await makeWorld(t);
  const d1 = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  const d2 = await makeDeployment(w, { bound: { 'app-b.image': unit('image', IMAGES.b) } });
  const d3 = await makeDeployment(w, { bound: { 'app-c.image': unit('image', IMAGES.c) } });
  for (const d of [d1, d2, d3]) ok(t, await step(w, d, 'prepare'));
  ok(t, await step(w, d2, 'commit'));
  t.deepEqual(await entries(w.storeRoot), [d1, d2, d3].map((d) => path.basename(d)).sort(), 'every deployment still exists');
  t.deepEqual(await readOnlyNames(w), [IMAGES.b]);
  await fsp.rm(d1, { recursive: true });
  const r = await step(w, d3, 'commit');
  ok(t, r);
  t.regex(r.stdout.join('\n'), new RegExp(`removing .*${path.basename(d1).replace('.', '\\.')}: deployment .* no longer exists`));
  t.deepEqual(await entries(w.storeRoot), [d2, d3].map((d) => path.basename(d)).sort());
  t.deepEqual(await readOnlyNames(w), [IMAGES.c], 'podman now sees the committed deployment\'s images only');
});

test.serial('commit - keeps an older store while the primary store uses its layers, drops it once free', async (t) => {
  const w = await makeWorld(t);
  const d1 = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  const d2 = await makeDeployment(w, { bound: { 'app-b.image': unit('image', IMAGES.b) } });
  ok(t, await step(w, d1, 'prepare'));
  ok(t, await step(w, d1, 'commit'));
  // A "floating" image pulled while d1's store is configured: containers-storage
  // reuses d1's layer instead of copying it.
  await sh('podman', ['pull', '-q', `oci-archive:${fixtures.images.a.archive}`], { CONTAINERS_STORAGE_CONF: w.storageConf });
  await sh('podman', ['tag', IMAGES.a, 'localhost/floating:1'], { CONTAINERS_STORAGE_CONF: w.storageConf });
  await sh('podman', ['rmi', IMAGES.a], { CONTAINERS_STORAGE_CONF: w.storageConf }).catch(() => '');
  ok(t, await step(w, d2, 'prepare'));
  await fsp.rm(d1, { recursive: true });
  const r = await step(w, d2, 'commit');
  ok(t, r);
  t.regex(r.stderr.join('\n'), /keeping .* configured: images or containers of the primary store use its layers/);
  const conf = await fsp.readFile(w.storageConf, 'utf8');
  t.true(conf.includes(`additionalimagestores = ["${storeOf(w, d2)}", "${storeOf(w, d1)}"]`), conf);
  t.true(existsSync(storeOf(w, d1)), 'the store the floating image needs stays');
  await sh('podman', ['image', 'exists', 'localhost/floating:1'], { CONTAINERS_STORAGE_CONF: w.storageConf });
  // Once the floating image is gone, the next commit lets the store go.
  await sh('podman', ['rmi', 'localhost/floating:1'], { CONTAINERS_STORAGE_CONF: w.storageConf });
  const r2 = await step(w, d2, 'commit');
  ok(t, r2);
  t.false(existsSync(storeOf(w, d1)));
  t.true((await fsp.readFile(w.storageConf, 'utf8')).includes(`additionalimagestores = ["${storeOf(w, d2)}"]`));
  t.deepEqual(await readOnlyNames(w), [IMAGES.b]);
});

test.serial('abort - refuses to remove the store podman is configured to use', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  ok(t, await step(w, d, 'prepare'));
  ok(t, await step(w, d, 'commit'));
  const r = await step(w, d, 'abort');
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), /is configured in .*storage\.conf as an additional image store; removing it would make every podman command fail/);
  t.true(existsSync(storeOf(w, d)));
  t.deepEqual(await readOnlyNames(w), [IMAGES.a], 'podman still works');
});

test.serial('commit - a deployment that binds nothing takes the managed entries out', async (t) => {
  const w = await makeWorld(t);
  const d1 = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  const d2 = await makeDeployment(w);
  ok(t, await step(w, d1, 'prepare'));
  ok(t, await step(w, d1, 'commit'));
  ok(t, await step(w, d2, 'prepare'), 77);
  ok(t, await step(w, d2, 'commit'));
  t.true((await fsp.readFile(w.storageConf, 'utf8')).includes('additionalimagestores = []'));
  t.deepEqual(await readOnlyNames(w), []);
  t.true(existsSync(storeOf(w, d1)), 'd1 still exists (a rollback target), so its store stays');
});

test.serial('prepare - a reference pinned by digest is verified against the stored manifest', async (t) => {
  const w = await makeWorld(t);
  const pinned = `quay.io/example/app-c@${fixtures.images.c.digest}`;
  const wrong = `quay.io/example/app-c:3@${fixtures.images.a.digest}`;
  await writeSources(w, {
    [pinned]: `oci-archive:${fixtures.images.c.archive}`,
    [wrong]: `oci-archive:${fixtures.images.c.archive}`,
  });
  const good = await makeDeployment(w, { bound: { 'app-c.image': unit('image', pinned) } });
  ok(t, await step(w, good, 'prepare'));
  t.deepEqual(await storeNames(storeOf(w, good)), [pinned]);
  ok(t, await step(w, good, 'commit'));
  // podman finds it by the name a unit would use, tag and all.
  await sh('podman', ['image', 'exists', `quay.io/example/app-c:3@${fixtures.images.c.digest}`], { CONTAINERS_STORAGE_CONF: w.storageConf });

  const bad = await makeDeployment(w, { bound: { 'app-c.image': unit('image', wrong) } });
  const r = await step(w, bad, 'prepare');
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), /digest/i);
  t.false((await storeNames(storeOf(w, bad))).some((n) => n.includes(fixtures.images.a.digest)), 'no image stored under the wrong digest');
});

test.serial('prepare - a reference pinned to a manifest list (image index) digest is verified whole', async (t) => {
  const w = await makeWorld(t);
  // An OCI archive whose top level is an image index, as multi-arch
  // registry images are, made offline with podman manifest.
  const build = path.join(w.dir, 'build');
  const podman = (...args: string[]) => sh('podman', ['--root', `${build}/root`, '--runroot', `${build}/run`, '--storage-driver', 'vfs', ...args]);
  await podman('pull', '-q', `oci-archive:${fixtures.images.a.archive}`);
  await podman('manifest', 'create', 'localhost/multi:1');
  await podman('manifest', 'add', 'localhost/multi:1', `containers-storage:${IMAGES.a}`);
  const archive = path.join(w.dir, 'multi.tar');
  await podman('manifest', 'push', '-q', '--all', 'localhost/multi:1', `oci-archive:${archive}`);
  const index = (await exec('skopeo', ['inspect', '--raw', `oci-archive:${archive}`], { encoding: 'buffer' })).stdout;
  t.regex(index.toString(), /application\/vnd\.oci\.image\.index\.v1\+json/);
  const pinned = `quay.io/example/multi@sha256:${createHash('sha256').update(index).digest('hex')}`;
  await writeSources(w, { [pinned]: `oci-archive:${archive}` });
  const d = await makeDeployment(w, { bound: { 'multi.image': unit('image', pinned) } });
  const r = await step(w, d, 'prepare');
  ok(t, r);
  t.true(r.stdout.some((l) => l.endsWith(`pulled (${pinned.split('@')[1]})`)), r.stdout.join('\n'));
  ok(t, await step(w, d, 'commit'));
  await sh('podman', ['image', 'exists', pinned], { CONTAINERS_STORAGE_CONF: w.storageConf });
});

test.serial('prepare - reads the forms quadlet files come in', async (t) => {
  const w = await makeWorld(t);
  const d = await makeDeployment(w, {
    bound: {
      // Comments, a continued line, quotes, docker://, a later Image= winning.
      'app-a.container': [
        '[Unit]', 'Description=A', '', '# a comment', '; another', '[Container]',
        'Image=quay.io/example/old:0', '  Image = "docker://quay.io/example/app-a:1.0"  ',
        'Exec=/bin/sh -c \\', '  true', '', '[Service]', 'Image=not/this:section', '',
      ].join('\n'),
      'app-b.image': '[Image]\nImage=registry.example.com/team/app-b:2\nTLSVerify=true\nAllTags=false\n',
      // A second link to an image already bound counts once.
      'again.image': unit('image', IMAGES.b),
    },
  });
  const r = await step(w, d, 'prepare');
  ok(t, r);
  t.regex(r.stdout.join('\n'), /app-b\.image: registry\.example\.com\/team\/app-b:2 is already bound by another entry/);
  t.deepEqual(await storeNames(storeOf(w, d)), [IMAGES.a, IMAGES.b].sort());
});

/** A bound-images.d that bootc (or this hook) refuses: prepare fails before pulling anything. */
const refused = test.macro({
  async exec(t, custom: (root: string) => Promise<void>, message: RegExp) {
    const w = await makeWorld(t);
    const d = await makeDeployment(w, { custom });
    const r = await step(w, d, 'prepare');
    t.is(r.code, 1, describeStep(r));
    t.regex(r.stderr.join('\n'), message);
    t.deepEqual(await entries(w.storeRoot), [], 'nothing pulled, no store made');
  },
  title: (what = '') => `prepare - refuses ${what}`,
});

const boundDir = (root: string) => path.join(root, 'usr/lib/bootc/bound-images.d');
const unitsDir = (root: string) => path.join(root, 'usr/share/containers/systemd');
/** Write a unit and link it (absolutely) into bound-images.d as `link`. */
function linked(link: string, text: string, file = link) {
  return async (root: string) => {
    await fsp.mkdir(boundDir(root), { recursive: true });
    await fsp.mkdir(unitsDir(root), { recursive: true });
    await fsp.writeFile(path.join(unitsDir(root), file), text);
    await fsp.symlink(`/usr/share/containers/systemd/${file}`, path.join(boundDir(root), link));
  };
}

test.serial('an entry that is not a symlink', refused, async (root: string) => {
  await fsp.mkdir(boundDir(root), { recursive: true });
  await fsp.writeFile(path.join(boundDir(root), 'app.image'), unit('image', IMAGES.a));
}, /app\.image is not a symlink: bootc requires each entry to be a symlink/);
test.serial('an entry with another extension', refused, linked('app.conf', unit('image', IMAGES.a)), /app\.conf: invalid file extension/);
test.serial('a link to nothing', refused, async (root: string) => {
  await fsp.mkdir(boundDir(root), { recursive: true });
  await fsp.symlink('/usr/share/containers/systemd/gone.image', path.join(boundDir(root), 'gone.image'));
}, /gone\.image points to \/usr\/share\/containers\/systemd\/gone\.image, which is not a file in the deployment/);
test.serial('an absolute link that exists only on the host (links resolve inside the deployment)', refused, async (root: string) => {
  await fsp.mkdir(boundDir(root), { recursive: true });
  await fsp.symlink('/etc/hostname', path.join(boundDir(root), 'host.image'));
}, /host\.image points to \/etc\/hostname, which is not a file in the deployment/);
test.serial('a unit without Image=', refused, linked('app.image', '[Image]\nTLSVerify=true\n'), /app\.image: no Image= in its \[Image\] section/);
test.serial('Image= in the wrong section', refused, linked('app.container', unit('image', IMAGES.a)), /app\.container: no Image= in its \[Container\] section/);
test.serial('AuthFile= (as bootc does)', refused, linked('app.image', unit('image', IMAGES.a, 'AuthFile=/etc/auth.json\n')), /AuthFile= is not supported/);
test.serial('Arch= (it would pull another image than the unit runs)', refused, linked('app.image', unit('image', IMAGES.a, 'Arch=arm64\n')), /Arch= changes what is pulled/);
test.serial('a systemd specifier', refused, linked('app.image', unit('image', 'quay.io/example/%u:1')), /specifier %u is not supported/);
test.serial('a transport in Image=', refused, linked('app.image', unit('image', `oci-archive:${path.sep}tmp/x.tar`)), /names a transport, not an image name/);
test.serial('a .container naming a quadlet .image unit', refused, linked('app.container', unit('container', 'app.image')), /refers to another quadlet unit; link that \.image file/);
test.serial('a digest other than sha256', refused, linked('app.image', unit('image', `quay.io/example/app-a@sha512:${'a'.repeat(128)}`)), /only sha256 digests/);
test.serial('an image with no source when only listed sources may be used', refused, linked('app.image', unit('image', 'quay.io/example/unlisted:1')), /no source for quay\.io\/example\/unlisted:1 in BOUND_IMAGES_SOURCES/);

// ---------------------------------------------------------------------------
// storage.conf editing.

test.serial('commit - edits a distribution storage.conf in place: only additionalimagestores changes', async (t) => {
  const w = await makeWorld(t);
  // The site's own read-only store, holding image c.
  const admin = path.join(w.dir, 'site-store');
  await sh('skopeo', ['copy', '-q', `oci-archive:${fixtures.images.c.archive}`,
    `containers-storage:[${fixtures.driver}@${admin}+${path.join(w.dir, 'site-run')}${fixtures.driver === 'overlay' ? ':overlay.skip_mount_home=true' : ''}]${IMAGES.c}`]);
  const template = await fsp.readFile(path.join(IMAGE_FIXTURES, 'storage.conf.distro'), 'utf8');
  const original = template
    .replace('@DRIVER@', fixtures.driver).replace('@GRAPHROOT@', w.graphroot)
    .replace('@RUNROOT@', path.join(w.dir, 'run', 'containers', 'storage')).replace('@ADMIN_STORE@', admin);
  await fsp.writeFile(w.storageConf, original);
  await fsp.chmod(w.storageConf, 0o640);
  const d = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  ok(t, await step(w, d, 'prepare'));
  ok(t, await step(w, d, 'commit'));
  const edited = await fsp.readFile(w.storageConf, 'utf8');
  const expected = original
    .replace(/additionalimagestores = \[\n[^\]]*\]\n/, '')
    .replace('[storage.options]\n',
      `[storage.options]\n# bootc-prestage: entries under ${w.storeRoot} are managed by the bound-images hook; other entries are kept\n` +
      `additionalimagestores = ["${admin}", "${storeOf(w, d)}"]\n`);
  t.is(edited, expected);
  t.is((await fsp.stat(w.storageConf)).mode & 0o777, 0o640, 'the file keeps its mode');
  t.deepEqual(await readOnlyNames(w), [IMAGES.a, IMAGES.c].sort(), 'the site store still works');
});

test.serial('commit - a storage.conf in a form it cannot edit safely is left unchanged', async (t) => {
  const w = await makeWorld(t);
  const text = `[storage]\ndriver = "${fixtures.driver}"\ngraphroot = "${w.graphroot}"\nrunroot = "${w.dir}/run/containers/storage"\noptions.additionalimagestores = []\n`;
  await fsp.writeFile(w.storageConf, text);
  const d = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  ok(t, await step(w, d, 'prepare'));
  const r = await step(w, d, 'commit');
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), /storage\.conf:5: additionalimagestores is set in a form this hook does not edit/);
  t.is(await fsp.readFile(w.storageConf, 'utf8'), text);
});

test.serial('commit - without any storage.conf, writes one from the distribution default, and checks podman reads it', async (t) => {
  const w = await makeWorld(t);
  const base = path.join(w.dir, 'usr-share-storage.conf');
  await fsp.writeFile(base, `# distribution default\n[storage]\ndriver = "${fixtures.driver}"\ngraphroot = "${w.graphroot}"\n` +
    `runroot = "${w.dir}/run/containers/storage"\n\n[storage.options.overlay]\nmountopt = "nodev"\n`);
  await fsp.rm(w.storageConf);
  // Until a file exists at BOUND_IMAGES_STORAGE_CONF, podman reads the
  // distribution default; with it, podman keeps reading the default, as it
  // would with a storage.conf.d drop-in or CONTAINERS_STORAGE_CONF overriding
  // the file written: the commit must say its change is not in effect.
  const env = { BOUND_IMAGES_STORAGE_CONF_BASE: base, CONTAINERS_STORAGE_CONF: base };
  const d = await makeDeployment(w, { bound: { 'app-a.image': unit('image', IMAGES.a) } });
  ok(t, await step(w, d, 'prepare', env));
  const r = await step(w, d, 'commit', env);
  t.is(r.code, 1, describeStep(r));
  t.regex(r.stderr.join('\n'), /lists .*, but podman does not list quay\.io\/example\/app-a:1\.0 as a read-only image: its effective configuration comes from elsewhere/);
  const written = await fsp.readFile(w.storageConf, 'utf8');
  t.true(written.startsWith(await fsp.readFile(base, 'utf8')), written);
  t.is((await fsp.stat(w.storageConf)).mode & 0o777, 0o644);
  t.deepEqual(await readOnlyNames(w), [IMAGES.a], 'podman reading the written file sees the image');
});

// ---------------------------------------------------------------------------
// Through the daemon: the same hooks, driven over D-Bus by bootc-prestaged
// on a private bus, with a real ostree sysroot.

interface ThroughDaemon {
  ctx: DaemonContext;
  sysroot: Sysroot;
  staged: string;
  finished: SignalRecorder;
}

/**
 * A sysroot whose booted deployment has the package installed (programs
 * and hook files), the administrator's overrides in /etc/bootc/pre-stage.d
 * carrying the test's settings, a running daemon, and a staged deployment
 * that binds images a and b.
 */
async function throughDaemon(t: ExecutionContext, w: World): Promise<ThroughDaemon> {
  const programs: Record<string, { content: Buffer; mode: number }> = {};
  for (const [name, mode] of Object.entries(PROGRAMS)) {
    programs[`${LIBEXEC.slice(1)}/${name}`] = { content: await fsp.readFile(path.join(HOOKS_DIR, name)), mode };
  }
  const hooks: Record<string, string> = {};
  for (const h of ['bound-images', 'compat-check']) hooks[`${h}.hook`] = await fsp.readFile(path.join(HOOKS_DIR, `${h}.hook`), 'utf8');
  const sysroot = await makeSysroot({ files: programs, hooks });
  const booted = sysroot.bootedRoot;
  // /usr/libexec on the booted system is the booted deployment's: commit runs
  // after the reboot (the deployment committed is then the booted one), and
  // abort runs on the system that is still booted.
  const boundImages = (await hookFileWithEnv('bound-images', w.env))
    .replace(`Commit=${LIBEXEC}/bound-images commit`, `Commit=\${BOOTC_PRESTAGE_DEPLOYMENT}${LIBEXEC}/bound-images commit`)
    .replace(`Abort=${LIBEXEC}/bound-images abort`, `Abort=${booted}${LIBEXEC}/bound-images abort`);
  const compatCheck = await hookFileWithEnv('compat-check', { COMPAT_BOOTED_ROOT: booted, COMPAT_MIN_FREE_MB: '1' });
  const ctx = await withDaemon(t, {
    sysroot, etcHooks: { 'bound-images.hook': boundImages, 'compat-check.hook': compatCheck },
  });
  const units: Record<string, { content: Buffer; mode: number }> = {};
  for (const [name, text] of Object.entries(twoImages())) {
    units[`usr/share/containers/systemd/${name}`] = { content: Buffer.from(text), mode: 0o644 };
  }
  const staged = await sysroot.deploy({ files: { ...programs, ...units }, hooks, osRelease: { VERSION_ID: '2' } });
  // The links go in after the deploy (the helper commits regular files only);
  // directories inside a deployment are writable.
  await fsp.mkdir(path.join(staged, 'usr/lib/bootc/bound-images.d'));
  for (const name of Object.keys(twoImages())) {
    await fsp.symlink(`/usr/share/containers/systemd/${name}`, path.join(staged, 'usr/lib/bootc/bound-images.d', name));
  }
  const finished = await ctx.client.collectSignals({ interface: MANAGER_IFACE, member: 'TransactionFinished' });
  t.teardown(() => finished.stop());
  return { ctx, sysroot, staged, finished };
}

async function transactionLog(d: ThroughDaemon, tx: string): Promise<string[]> {
  const [lines] = await d.ctx.client.call(SERVICE, tx, TRANSACTION_IFACE, 'GetLog', 'a{sv}', [{}]).catch(() => [[]]);
  return [...(lines as string[]), '--- daemon ---', ...d.ctx.daemon.logs().slice(-30)];
}

async function startPrepare(t: ExecutionContext, d: ThroughDaemon): Promise<string> {
  const [tx] = await d.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'StartPreStage', 'sa{sv}', [d.staged, {}]);
  const done = await d.finished.waitFor((s) => s.body[0] === tx, 180_000);
  t.deepEqual(done.body.slice(1), ['prepared', ''], `prepare ended ${JSON.stringify(done.body)}`);
  const hooks = await d.ctx.client.getProperty(SERVICE, String(tx), TRANSACTION_IFACE, 'Hooks') as [string, string, number, string][];
  t.deepEqual(hooks.map(([name, result, percent]) => [name, result, percent]),
    [['compat-check', 'success', 100], ['bound-images', 'success', 100]], 'compat-check first (After=), both complete');
  return String(tx);
}

test.serial('daemon - StartPreStage pulls the bound images; after the reboot, commit switches podman to them', async (t) => {
  const w = await makeWorld(t);
  const d = await throughDaemon(t, w);
  const tx = await startPrepare(t, d);
  t.deepEqual(await storeNames(storeOf(w, d.staged)), [IMAGES.a, IMAGES.b].sort());
  t.deepEqual(await podmanImages(w), [], 'nothing is visible before the commit');
  // "Reboot" into the staged deployment: the daemon's start-up reconcile commits.
  await d.ctx.restart({ bootedRoot: d.staged });
  const committed = await d.finished.waitFor((s) => s.body[0] === tx && s.body[1] !== 'prepared', 180_000);
  t.deepEqual(committed.body.slice(1), ['committed', ''], (await transactionLog(d, tx)).join('\n'));
  t.deepEqual(await readOnlyNames(w), [IMAGES.a, IMAGES.b].sort());
});

test.serial('daemon - Reconcile after ostree admin undeploy aborts the transaction and removes the store', async (t) => {
  const w = await makeWorld(t);
  const d = await throughDaemon(t, w);
  const tx = await startPrepare(t, d);
  t.true(existsSync(storeOf(w, d.staged)));
  await d.sysroot.undeploy(0);
  t.false(existsSync(d.staged));
  await d.ctx.client.call(SERVICE, MANAGER_PATH, MANAGER_IFACE, 'Reconcile', 'a{sv}', [{}]);
  const aborted = await d.finished.waitFor((s) => s.body[0] === tx && s.body[1] !== 'prepared', 180_000);
  t.deepEqual(aborted.body.slice(1), ['aborted', '']);
  t.deepEqual(await entries(w.storeRoot), [], 'the store is gone, and no trash is left');
});
