/**
 * Running a step in another root (docs/hooks.md "What a step sees", README
 * "Hooks"): the bubblewrap command line, built as data by one pure
 * function so that dry-run output, ListHooks and tests show exactly what
 * runs, and the bind syntax of BindPaths=/BindReadOnlyPaths= (systemd's).
 *
 * The mounts, in the order bwrap applies them (later ones go on top):
 *
 *   --ro-bind ROOT /          the tree, read-only: an ostree deployment is
 *                             hard links into the repository's objects, so
 *                             a write through it would corrupt the repo
 *   --bind ETC /etc           the booted deployment's /etc, read-write
 *   --bind VAR /var           the stateroot's var (the global /var)
 *   --proc /proc              a procfs of the step's own PID namespace
 *   --dev-bind /dev /dev      the host's devices
 *   --bind /sys /sys          the host's /sys
 *   --bind /run /run          the host's /run (podman, the system bus)
 *   --tmpfs /tmp              a private /tmp
 *   --bind STATE STATE        BOOTC_PRESTAGE_STATE_DIRECTORY at its own path
 *   the hook's BindPaths= and BindReadOnlyPaths=, in file order
 *   --chdir / --unshare-pid --die-with-parent -- PROGRAM ARGS...
 *
 * Not unshared: the network (image pulls need it), users, IPC, UTS. File
 * descriptors (fd 3, stdout, stderr) and the environment pass through
 * bwrap unchanged; bwrap is the step's process-group leader, and every
 * process inside the namespace stays in that group and session (the
 * runner's group kill, recovery's kill by group and by environment marker
 * reach them), and dies with the namespace's init when bwrap goes.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BindSpec } from '../model/bind-paths.js';

/** Environment variable naming the bwrap binary; empty: none (tests of the missing case). */
export const BWRAP_ENV = 'BOOTC_PRESTAGE_BWRAP';
export const BWRAP_NAME = 'bwrap';
/** The package that provides bwrap, named in the error when it is missing. */
export const BWRAP_PACKAGE = 'bubblewrap';

/** What a new-root step gets mounted; every path absolute on the host. */
export interface NewRootMounts {
  /** The tree that becomes `/`. */
  root: string;
  /** Mounted read-write at /etc. */
  etc: string;
  /** Mounted read-write at /var. */
  var: string;
  /** Mounted read-write at its own path (the hook's state directory); null for none. */
  stateDirectory: string | null;
  binds: readonly BindSpec[];
}

/**
 * The full bwrap command line that runs `argv` (program path inside the
 * root) with the mounts above. Pure: the same input gives the same argv.
 */
export function bwrapArgv(bwrap: string, m: NewRootMounts, argv: readonly string[]): string[] {
  const out = [
    bwrap,
    '--ro-bind', m.root, '/',
    '--bind', m.etc, '/etc',
    '--bind', m.var, '/var',
    '--proc', '/proc',
    '--dev-bind', '/dev', '/dev',
    '--bind', '/sys', '/sys',
    '--bind', '/run', '/run',
    '--tmpfs', '/tmp',
  ];
  if (m.stateDirectory !== null) out.push('--bind', m.stateDirectory, m.stateDirectory);
  for (const b of m.binds) {
    const opt = b.readOnly ? (b.optional ? '--ro-bind-try' : '--ro-bind') : (b.optional ? '--bind-try' : '--bind');
    out.push(opt, b.source, b.destination);
  }
  out.push('--chdir', '/', '--unshare-pid', '--die-with-parent', '--', ...argv);
  return out;
}

/**
 * The program path to exec inside `root`. A path under `root` on the host
 * (`${BOOTC_PRESTAGE_DEPLOYMENT}/usr/libexec/x` with the deployment as
 * root) names the same file as its path inside the root: it is translated,
 * so hook files written for the host keep working in the new root.
 */
export function programInRoot(program: string, root: string): string {
  const p = path.posix.normalize(program);
  const r = path.posix.normalize(root).replace(/\/+$/, '');
  if (r === '' || r === '/') return p;
  if (p === r) return '/';
  if (p.startsWith(`${r}/`)) return p.slice(r.length);
  return p;
}

/** The directories where bwrap is looked for next to the daemon (its bundle or build). */
function besideDaemon(): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return [path.join(here, 'libexec'), path.join(here, '..', '..', 'libexec'), here];
}

function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Where bwrap is: $BOOTC_PRESTAGE_BWRAP when set (empty: none), else the
 * first `bwrap` on the daemon's PATH, else one next to the daemon; null
 * when there is none. Never falls back to running without it.
 */
export function locateBwrap(env: NodeJS.ProcessEnv = process.env, extraDirs: readonly string[] = besideDaemon()): string | null {
  const configured = env[BWRAP_ENV];
  if (configured !== undefined) return configured === '' ? null : configured;
  const dirs = (env.PATH ?? '').split(':').filter((d) => d.startsWith('/'));
  for (const dir of [...dirs, ...extraDirs]) {
    const p = path.join(dir, BWRAP_NAME);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

/** The message of a step that needs a root when bwrap is missing. */
export function bwrapMissingMessage(root: string): string {
  return `cannot run the step in ${root}: bubblewrap (${BWRAP_NAME}) was not found on PATH or next to the daemon; ` +
    `install the '${BWRAP_PACKAGE}' package (Debian, Fedora) — the step is not run on the host root instead`;
}

/** `<sysroot>/ostree/deploy/<stateroot>/var`: the /var every deployment of the stateroot shares. */
export function staterootVar(sysroot: string, stateroot: string): string {
  return path.join(sysroot, 'ostree', 'deploy', stateroot, 'var');
}

/**
 * The root a step runs in, as an absolute host path (`/`: the host root),
 * after `${VAR}` expansion with `env` (docs/hooks.md "Which root"):
 * RootDirectory= when the hook sets it, for every step; otherwise the
 * deployment for the prepare step of a hook the deployment ships, and the
 * host root for everything else (a commit runs after the reboot, when the
 * host root is the new deployment; an abort must work after the deployment
 * is gone). null when RootDirectory= does not expand to an absolute path
 * (a `${BOOTC_PRESTAGE_DEPLOYMENT}` root listed without a deployment).
 */
export function stepRoot(
  rootDirectory: string | undefined, fromDeployment: boolean, phase: 'prepare' | 'commit' | 'abort',
  env: Readonly<Record<string, string | undefined>>,
  expand: (s: string, env: Readonly<Record<string, string | undefined>>) => string,
): string | null {
  let r: string;
  if (rootDirectory !== undefined) r = expand(rootDirectory, env);
  else if (fromDeployment && phase === 'prepare') r = env.BOOTC_PRESTAGE_DEPLOYMENT ?? '';
  else return '/';
  if (!r.startsWith('/')) return null;
  return path.posix.normalize(r).replace(/(.)\/+$/, '$1');
}
