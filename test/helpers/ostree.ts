/**
 * Real ostree sysroots for tests, made with the same commands an
 * installation uses (`ostree admin init-fs`, `os-init`, `commit`, `deploy`,
 * `undeploy`) in a temporary directory: no boot, no bootloader, root only.
 *
 * Facts tests rely on (checked against ostree 2022.7):
 * - deployments live at <sysroot>/ostree/deploy/<osname>/deploy/<checksum>.<serial>;
 *   `ostree admin status` lists them newest first, and that order is the
 *   index `ostree admin undeploy` takes;
 * - ostree sets the immutable flag (chattr +i) on each deployment's root
 *   directory: nothing can be created directly in it, and removing a
 *   sysroot needs `chattr -i` first (Sysroot.remove does that);
 * - deployed files are hard links to the repository's objects: a test
 *   must replace a deployed file (write elsewhere, rename over), never
 *   write into it, or it corrupts the repository (tmp.ts's writeFiles
 *   replaces);
 * - /etc of a deployment is made by ostree from the tree's usr/etc.
 *
 * Speed: each call copies (`cp -a`, which keeps the hard links) a template
 * built once per test worker for the same options, instead of running
 * ostree again: see TEMPLATE_NOTE below for the measurement.
 */
import { execFile, execFileSync } from 'node:child_process';
import { promises as fsp, readdirSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { makeTmpDir, removeDir, writeFiles, type FileSpec } from './tmp.js';

/**
 * Measured on the project machine (2 cores, other work running), 20
 * sysroots each: built with ostree every time 520 / 440 / 660 ms for 1 / 2 /
 * 3 deployments; copied from a template 86 / 60 / 85 ms (plus one build per
 * worker and option set). So makeSysroot copies; buildSysroot stays
 * exported for a test that needs a sysroot built from nothing.
 */
export const TEMPLATE_NOTE = 'template + cp -a';

/** What goes into a deployment's tree besides the minimal OS files. */
export interface TreeSpec {
  /** Files under usr/lib/bootc/pre-stage.d (name -> content or {content, mode}). */
  hooks?: Record<string, FileSpec>;
  /** Any other files, by path relative to the tree root (e.g. 'usr/libexec/x': {content, mode: 0o755}). */
  files?: Record<string, FileSpec>;
  /** Keys of usr/lib/os-release (ID and PRETTY_NAME have defaults). */
  osRelease?: Record<string, string>;
  /**
   * Give the tree a userspace of its own (addBusyboxUserspace): busybox as
   * /usr/bin/busybox with sh, cat and friends as links, /bin -> usr/bin, and
   * the mount points a new-root step needs.
   */
  userspace?: boolean;
}

/** Where busybox-static installs its one static binary (Debian). */
export const BUSYBOX = '/usr/bin/busybox';
/** The applets linked to it in a userspace tree. */
export const BUSYBOX_APPLETS = [
  'sh', 'cat', 'echo', 'printf', 'ls', 'touch', 'mkdir', 'rm', 'sleep', 'test', '[', 'true', 'false',
  'id', 'env', 'grep', 'readlink', 'stat', 'ps', 'kill', 'tr', 'head', 'wc', 'mv', 'cp', 'ln', 'pwd',
  'sed', 'cut', 'sync', 'setsid', 'tail', 'awk', 'chmod', 'date',
];

/**
 * Make `dir` a tree with a working userspace: busybox-static's binary copied
 * in (it needs no libraries), one link per applet, /bin and /sbin as links
 * to usr/bin as on a merged-/usr system, and empty /proc, /sys, /dev, /run,
 * /tmp and /var for bubblewrap's mounts (the tree is bound read-only, so
 * they cannot be made later). Every file is root's, as ostree commits it.
 */
export async function addBusyboxUserspace(dir: string): Promise<void> {
  const bin = path.join(dir, 'usr', 'bin');
  await fsp.mkdir(bin, { recursive: true, mode: 0o755 });
  await fsp.copyFile(BUSYBOX, path.join(bin, 'busybox'));
  await fsp.chmod(path.join(bin, 'busybox'), 0o755);
  for (const a of BUSYBOX_APPLETS) await fsp.symlink('busybox', path.join(bin, a));
  await fsp.symlink('usr/bin', path.join(dir, 'bin'));
  await fsp.symlink('usr/bin', path.join(dir, 'sbin'));
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'var']) await fsp.mkdir(path.join(dir, d), { recursive: true, mode: 0o755 });
}

export interface MakeSysrootOptions extends TreeSpec {
  /** ostree stateroot name (default 'testos'). */
  osname?: string;
  /** Deployments to create (default 1), each from its own commit of the tree. */
  deployments?: number;
}

export interface DeployOptions {
  /** Keep every existing deployment (default true; ostree otherwise keeps only one older). */
  retain?: boolean;
}

export interface Sysroot {
  /** Canonical absolute path of the sysroot. */
  path: string;
  osname: string;
  /** <path>/ostree/repo */
  repo: string;
  /** Absolute deployment directories, newest first (ostree's order and undeploy index). */
  deployments: string[];
  /**
   * A directory whose device and inode are the booted deployment's: the
   * oldest deployment made by makeSysroot (the one "running" when later
   * ones are staged). Pass another deployment to startDaemon's bootedRoot
   * to simulate a reboot into it.
   */
  bootedRoot: string;
  /**
   * Commit `tree` (default: the tree makeSysroot was given) on branch
   * <osname>/stable and deploy it; returns the new deployment directory,
   * which becomes deployments[0].
   */
  deploy(tree?: TreeSpec, opts?: DeployOptions): Promise<string>;
  /** `ostree admin undeploy INDEX`; refreshes `deployments`. */
  undeploy(index: number): Promise<void>;
  /** Re-read deployments from `ostree admin status`. */
  refresh(): Promise<string[]>;
  /** Remove the whole sysroot (clearing ostree's immutable flags). Idempotent. */
  remove(): Promise<void>;
}

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 * 1024 * 1024, env: { ...process.env, LANG: 'C.UTF-8' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
        else resolve(stdout);
      });
  });
}

const STATUS_RE = /^\s*(?:[*]\s+)?(\S+)\s+([0-9a-f]{64})\.(\d+)(?:\s|$)/;

/** Deployment directories of `sysrootPath`, newest first, from `ostree admin status`. */
export async function listDeployments(sysrootPath: string): Promise<string[]> {
  const out = await run('ostree', ['admin', 'status', `--sysroot=${sysrootPath}`]);
  const dirs: string[] = [];
  for (const line of out.split('\n')) {
    const m = STATUS_RE.exec(line);
    if (m) dirs.push(path.join(sysrootPath, 'ostree', 'deploy', m[1]!, 'deploy', `${m[2]}.${m[3]}`));
  }
  return dirs;
}

/** Every deployment root under a sysroot (listed on disk, not by ostree). */
async function deploymentRoots(sysrootPath: string): Promise<string[]> {
  const base = path.join(sysrootPath, 'ostree', 'deploy');
  const out: string[] = [];
  for (const os of await fsp.readdir(base).catch(() => [] as string[])) {
    const dir = path.join(base, os, 'deploy');
    for (const n of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (/^[0-9a-f]{64}\.\d+$/.test(n)) out.push(path.join(dir, n));
    }
  }
  return out;
}

async function setImmutable(dirs: string[], on: boolean): Promise<void> {
  if (dirs.length === 0) return;
  // Filesystems without the flag (tmpfs on older kernels) refuse; ostree
  // itself ignores that too.
  await run('chattr', [on ? '+i' : '-i', ...dirs]).catch(() => undefined);
}

/** Remove a sysroot directory tree, clearing deployment immutable flags first. */
export async function removeSysrootDir(sysrootPath: string): Promise<void> {
  await setImmutable(await deploymentRoots(sysrootPath), false);
  await removeDir(sysrootPath);
}

function osReleaseText(osname: string, keys: Record<string, string> = {}): string {
  const all: Record<string, string> = {
    ID: osname, NAME: 'bootc-prestage test OS', PRETTY_NAME: `bootc-prestage test OS (${osname})`,
    VERSION_ID: '1', ...keys,
  };
  return Object.entries(all).map(([k, v]) => `${k}="${v.replace(/(["\\$`])/g, '\\$1')}"`).join('\n') + '\n';
}

async function commitTree(repo: string, osname: string, tree: TreeSpec, generation: number): Promise<void> {
  const dir = await makeTmpDir({ prefix: 'ostree-tree-' });
  try {
    const osRelease = osReleaseText(osname, tree.osRelease);
    const files: Record<string, FileSpec> = {
      'usr/lib/os-release': osRelease,
      'usr/etc/os-release': osRelease,
      // ostree admin deploy needs a kernel in the tree; any file will do.
      'usr/lib/modules/6.0.0-test/vmlinuz': 'not a kernel\n',
      // Distinct content per commit, so every deployment is a distinct tree.
      'usr/lib/bootc-prestage-test/generation': `${generation}\n`,
      ...(tree.files ?? {}),
    };
    for (const [name, spec] of Object.entries(tree.hooks ?? {})) {
      files[path.join('usr/lib/bootc/pre-stage.d', name)] = spec;
    }
    await writeFiles(dir, files);
    if (tree.userspace) await addBusyboxUserspace(dir);
    // Hooks are refused unless root-owned and not group/other-writable;
    // commit every file as root whatever the tree's owner.
    await run('ostree', [`--repo=${repo}`, 'commit', `--branch=${osname}/stable`,
      `--tree=dir=${dir}`, '--owner-uid=0', '--owner-gid=0', `--subject=test generation ${generation}`]);
  } finally {
    await removeDir(dir);
  }
}

class SysrootImpl implements Sysroot {
  path: string;
  osname: string;
  repo: string;
  deployments: string[] = [];
  bootedRoot = '';
  private readonly defaultTree: TreeSpec;
  private generation: number;
  private removed = false;

  constructor(p: string, osname: string, defaultTree: TreeSpec, generation: number) {
    this.path = p;
    this.osname = osname;
    this.repo = path.join(p, 'ostree', 'repo');
    this.defaultTree = defaultTree;
    this.generation = generation;
  }

  async refresh(): Promise<string[]> {
    this.deployments = await listDeployments(this.path);
    return this.deployments;
  }

  async deploy(tree?: TreeSpec, opts: DeployOptions = {}): Promise<string> {
    this.generation += 1;
    await commitTree(this.repo, this.osname, tree ?? this.defaultTree, this.generation);
    const args = ['admin', 'deploy', `--sysroot=${this.path}`, `--os=${this.osname}`];
    if (opts.retain ?? true) args.push('--retain');
    await run('ostree', [...args, `${this.osname}/stable`]);
    await this.refresh();
    return this.deployments[0]!;
  }

  async undeploy(index: number): Promise<void> {
    await run('ostree', ['admin', 'undeploy', `--sysroot=${this.path}`, String(index)]);
    await this.refresh();
  }

  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    await removeSysrootDir(this.path);
  }

  /** For templates: how many commits this sysroot has made. */
  get generations(): number {
    return this.generation;
  }
}

/** Build a sysroot from nothing with ostree (no template). */
export async function buildSysroot(opts: MakeSysrootOptions = {}, into?: string): Promise<Sysroot> {
  const osname = opts.osname ?? 'testos';
  const count = opts.deployments ?? 1;
  const dir = into ?? await fsp.realpath(await makeTmpDir({ prefix: 'sysroot-' }));
  const tree: TreeSpec = {
    ...(opts.hooks ? { hooks: opts.hooks } : {}),
    ...(opts.files ? { files: opts.files } : {}),
    ...(opts.osRelease ? { osRelease: opts.osRelease } : {}),
    ...(opts.userspace ? { userspace: true } : {}),
  };
  const s = new SysrootImpl(dir, osname, tree, 0);
  try {
    await run('ostree', ['admin', 'init-fs', dir]);
    await run('ostree', ['admin', 'os-init', `--sysroot=${dir}`, osname]);
    for (let i = 0; i < count; i++) await s.deploy();
    s.bootedRoot = s.deployments[s.deployments.length - 1] ?? '';
    return s;
  } catch (e) {
    await s.remove();
    throw e;
  }
}

/** Key order does not matter; Buffers become {type, data} (distinct content, distinct key). */
function stableStringify(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableStringify).join(',')}]`;
  if (v !== null && typeof v === 'object' && !Buffer.isBuffer(v)) {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${stableStringify(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'undefined';
}

/** Templates by options, built at most once per worker. */
const templates = new Map<string, Promise<SysrootImpl>>();
const templateDirs: string[] = [];
let exitHookInstalled = false;

function removeTemplatesSync(): void {
  // 'exit' handlers cannot wait: clear the flags and remove synchronously.
  for (const dir of templateDirs) {
    try {
      const roots = deploymentRootsSync(dir);
      if (roots.length > 0) execFileSync('chattr', ['-i', ...roots], { stdio: 'ignore' });
    } catch { /* best effort */ }
    try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
  }
}

function deploymentRootsSync(sysrootPath: string): string[] {
  const base = path.join(sysrootPath, 'ostree', 'deploy');
  const out: string[] = [];
  for (const os of safeReaddirSync(base)) {
    for (const n of safeReaddirSync(path.join(base, os, 'deploy'))) {
      if (/^[0-9a-f]{64}\.\d+$/.test(n)) out.push(path.join(base, os, 'deploy', n));
    }
  }
  return out;
}

function safeReaddirSync(dir: string): string[] {
  try { return readdirSync(dir); } catch { return []; }
}

function templateFor(opts: MakeSysrootOptions): Promise<SysrootImpl> {
  const key = stableStringify(opts);
  let t = templates.get(key);
  if (!t) {
    // A template lives as long as the worker (ava runs each test file in
    // its own worker, whose 'exit' event fires when the file is done).
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', removeTemplatesSync);
    }
    t = buildSysroot(opts).then((s) => {
      templateDirs.push(s.path);
      return s as SysrootImpl;
    });
    templates.set(key, t);
    t.catch(() => templates.delete(key));
  }
  return t;
}

/**
 * A fresh sysroot for one test: a copy of a per-worker template built with
 * the same options. The caller must `remove()` it; `withSysroot` does that
 * in teardown.
 */
export async function makeSysroot(opts: MakeSysrootOptions = {}): Promise<Sysroot> {
  const tpl = await templateFor(opts);
  const dir = await fsp.realpath(await makeTmpDir({ prefix: 'sysroot-' }));
  // cp -a keeps the hard links between deployments and the repository
  // (within one invocation), so the copy is shaped like the original.
  await run('cp', ['-a', '--', `${tpl.path}/.`, dir]);
  const s = new SysrootImpl(dir, tpl.osname, {
    ...(opts.hooks ? { hooks: opts.hooks } : {}),
    ...(opts.files ? { files: opts.files } : {}),
    ...(opts.osRelease ? { osRelease: opts.osRelease } : {}),
    ...(opts.userspace ? { userspace: true } : {}),
  }, tpl.generations);
  const rel = (p: string) => path.join(dir, path.relative(tpl.path, p));
  s.deployments = tpl.deployments.map(rel);
  s.bootedRoot = tpl.bootedRoot ? rel(tpl.bootedRoot) : '';
  // cp does not copy inode flags; put back the immutable deployment roots.
  await setImmutable(s.deployments, true);
  return s;
}

/** makeSysroot, removed in the test's teardown. */
export async function withSysroot(t: ExecutionContext, opts: MakeSysrootOptions = {}): Promise<Sysroot> {
  const s = await makeSysroot(opts);
  t.teardown(() => s.remove());
  return s;
}
