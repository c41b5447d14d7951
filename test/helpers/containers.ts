/**
 * Shell-level helpers of the bound-images tests: commands with their
 * stderr in the error, trees that may hold a containers store's mounts,
 * the storage driver this machine's podman picks, and the machine a test
 * runs the hook on.
 */
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { installPrograms } from '../fixtures/images/hook-step.js';
import { makeTmpDir, removeDir } from './tmp.js';

const exec = promisify(execFile);

/** Run `cmd`; its stdout, or an error carrying its stderr. */
export async function sh(cmd: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  try {
    return (await exec(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${err.stderr ?? ''}`);
  }
}

/** Unmount whatever is mounted below `dir` (a store's overlay home, say), then remove it. */
export async function removeTree(dir: string): Promise<void> {
  const out = await sh('findmnt', ['-rn', '-o', 'TARGET']).catch(() => '');
  const below = out.split('\n').filter((m) => m === dir || m.startsWith(`${dir}/`)).sort().reverse();
  for (const m of below) await sh('umount', ['-l', m]).catch(() => undefined);
  await removeDir(dir);
}

/**
 * The driver this machine's podman picks on its own (overlay where it
 * works, vfs otherwise), asked of a throw-away store: the primary store of
 * every test uses it.
 */
export async function podmanDriver(): Promise<string> {
  const probe = await makeTmpDir({ prefix: 'bound-images-probe-' });
  try {
    return (await sh('podman', ['--root', `${probe}/root`, '--runroot', `${probe}/run`,
      'info', '--format', '{{.Store.GraphDriverName}}'])).trim();
  } finally {
    await removeTree(probe);
  }
}

/** One machine for the bound-images hook: a sysroot's deployment directory, a primary store, the hook's settings. */
export interface HookMachine {
  dir: string;
  /** <dir>/sysroot/ostree/deploy/testos/deploy */
  deployDir: string;
  /** Stands in for the booted system's root: holds usr/libexec/bootc-prestage. */
  hostRoot: string;
  storeRoot: string;
  runRoot: string;
  /** The storage.conf the hook edits and podman reads (CONTAINERS_STORAGE_CONF). */
  storageConf: string;
  graphroot: string;
  stateDir: string;
  /** The hook's Environment=. */
  env: Record<string, string>;
}

/**
 * A machine in a temporary directory (removed with its mounts at the
 * test's end): the hook's programs installed in its host root, a primary
 * store on `driver`, and the settings that point the hook at all of it.
 */
export async function makeHookMachine(t: ExecutionContext, prefix: string, driver: string): Promise<HookMachine> {
  const dir = await makeTmpDir({ prefix });
  t.teardown(() => removeTree(dir));
  const m: HookMachine = {
    dir,
    deployDir: path.join(dir, 'sysroot', 'ostree', 'deploy', 'testos', 'deploy'),
    hostRoot: path.join(dir, 'host'),
    storeRoot: path.join(dir, 'var', 'lib', 'bootc-prestage', 'images'),
    runRoot: path.join(dir, 'run', 'bootc-prestage', 'bound-images'),
    storageConf: path.join(dir, 'etc', 'containers', 'storage.conf'),
    graphroot: path.join(dir, 'var', 'lib', 'containers', 'storage'),
    stateDir: path.join(dir, 'state'),
    env: {},
  };
  await fsp.mkdir(m.deployDir, { recursive: true });
  await fsp.mkdir(path.dirname(m.storageConf), { recursive: true });
  await installPrograms(m.hostRoot);
  await fsp.writeFile(m.storageConf, [
    '[storage]',
    `driver = "${driver}"`,
    `graphroot = "${m.graphroot}"`,
    `runroot = "${path.join(dir, 'run', 'containers', 'storage')}"`,
    '',
  ].join('\n'));
  m.env = {
    BOUND_IMAGES_STORE_ROOT: m.storeRoot,
    BOUND_IMAGES_RUNROOT: m.runRoot,
    BOUND_IMAGES_STORAGE_CONF: m.storageConf,
    BOUND_IMAGES_STORAGE_CONF_BASE: '',
    BOUND_IMAGES_AUTHFILE: '',
    // What podman reads on this "machine" (and in the hook's podman calls).
    CONTAINERS_STORAGE_CONF: m.storageConf,
  };
  return m;
}
