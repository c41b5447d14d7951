/**
 * A real systemd for tests: a Debian 12 root filesystem (built once by
 * test/systemd/build-rootfs.sh with mmdebstrap, cached by its package
 * list), booted with `systemd-nspawn --boot` on an overlay of its own so
 * the cache stays clean, with the project installed as the package
 * installs it (packaging/bootc-prestage.spec's %install: the bundles, this
 * machine's node binary, the wrappers, units, drop-in, preset, tmpfiles,
 * bus policy and activation file, the config file).
 *
 * What cannot run in a container, and stands in for it:
 * - ostree cannot stage or boot a deployment here (no booted ostree
 *   system, no boot loader): the sysroot at /sysroot is real (ostree admin
 *   init-fs / os-init / deploy), "staging" is the bootc stand-in
 *   (test/fixtures/bootc/bootc, installed as /usr/local/bin/bootc) writing
 *   /run/ostree/staged-deployment, and ostree-finalize-staged.service is a
 *   stand-in with ostree's own ordering whose ExecStop records, in
 *   /var/lib/test-finalize/log, whether it would have finalized (no lock
 *   file) or discarded the stage (lock file present), as
 *   `ostree admin finalize-staged` decides.
 * - /run/ostree-booted (the units' condition) is made by a tmpfiles line.
 *
 * Each machine has a unique name, and dispose() stops only the nspawn it
 * started and unmounts only its own overlay.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promises as fsp, readFileSync, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');

export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: unknown }).code as number | undefined) ?? 1 : 0, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

async function must(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

let rootfsPromise: Promise<string> | null = null;

/** The cached root filesystem (built on first use; about 70 s here). */
export function rootfs(): Promise<string> {
  rootfsPromise ??= must(path.join(REPO, 'test', 'systemd', 'build-rootfs.sh'), [], { timeoutMs: 900_000 }).then((s) => s.trim());
  return rootfsPromise;
}

/** Why the systemd tests cannot run here, or null. */
export function unavailable(): string | null {
  if (process.getuid?.() !== 0) return 'not root';
  for (const tool of ['/usr/bin/systemd-nspawn', '/usr/bin/mmdebstrap', '/usr/bin/nsenter']) {
    if (!existsSync(tool)) return `${tool} is missing`;
  }
  if (!readFileSync('/proc/filesystems', 'utf8').includes('overlay')) return 'no overlayfs';
  return null;
}

export interface ExecResult { code: number; stdout: string; stderr: string }

export class Machine {
  readonly name = `bpst-${randomBytes(4).toString('hex')}`;
  private nspawn: ChildProcess | null = null;
  private exited: Promise<number | null> | null = null;
  private leader = 0;
  boots = 0;

  private constructor(readonly dir: string, readonly root: string) {}

  /** A new overlay on the cached rootfs, the project installed into it. */
  static async create(): Promise<Machine> {
    const base = await rootfs();
    const dir = await fsp.mkdtemp(path.join('/var/tmp', 'bootc-prestage-nspawn-'));
    for (const d of ['upper', 'work', 'merged']) await fsp.mkdir(path.join(dir, d));
    const merged = path.join(dir, 'merged');
    await must('mount', ['-t', 'overlay', 'overlay', '-o',
      `lowerdir=${base},upperdir=${path.join(dir, 'upper')},workdir=${path.join(dir, 'work')}`, merged]);
    const m = new Machine(dir, merged);
    try {
      await m.install();
    } catch (e) {
      await m.dispose();
      throw e;
    }
    return m;
  }

  private async put(rel: string, content: string | Buffer, mode = 0o644): Promise<void> {
    const file = path.join(this.root, rel);
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o755 });
    await fsp.writeFile(file, content, { mode });
    await fsp.chmod(file, mode);
  }

  private async copy(from: string, rel: string, mode = 0o644): Promise<void> {
    await this.put(rel, await fsp.readFile(path.join(REPO, from)), mode);
  }

  /** As packaging/bootc-prestage.spec's %install does, plus the stand-ins. */
  private async install(): Promise<void> {
    await this.put('usr/bin/node', await fsp.readFile(process.execPath), 0o755);
    for (const b of ['bootc-prestaged.mjs', 'bootc-prestage.mjs', 'bootc-prestage-gate.mjs']) {
      await this.copy(`dist/${b}`, `usr/lib/bootc-prestage/dist/${b}`, 0o755);
    }
    await this.copy('package.json', 'usr/lib/bootc-prestage/package.json');
    if (existsSync(path.join(REPO, 'dist/libexec/bootc-prestage-spawner'))) {
      await this.copy('dist/libexec/bootc-prestage-spawner', 'usr/lib/bootc-prestage/dist/libexec/bootc-prestage-spawner', 0o755);
    }
    await this.copy('packaging/wrappers/bootc-prestage', 'usr/bin/bootc-prestage', 0o755);
    await this.copy('packaging/wrappers/bootc-prestaged', 'usr/libexec/bootc-prestaged', 0o755);
    await this.copy('packaging/wrappers/bootc-prestage-gate', 'usr/libexec/bootc-prestage-gate', 0o755);
    for (const u of ['bootc-prestaged.service', 'bootc-prestage-reconcile.service', 'bootc-prestage-gate.service',
      'bootc-prestage-staged.path', 'bootc-prestage-staged.service']) {
      await this.copy(`packaging/systemd/${u}`, `usr/lib/systemd/system/${u}`);
    }
    await this.copy('packaging/systemd/bootc-fetch-apply-updates.service.d/50-bootc-prestage.conf',
      'usr/lib/systemd/system/bootc-fetch-apply-updates.service.d/50-bootc-prestage.conf');
    await this.copy('packaging/systemd/80-bootc-prestage.preset', 'usr/lib/systemd/system-preset/80-bootc-prestage.preset');
    await this.copy('packaging/tmpfiles.d/bootc-prestage.conf', 'usr/lib/tmpfiles.d/bootc-prestage.conf');
    await this.copy('dbus/org.containers.bootc.PreStage.conf', 'usr/share/dbus-1/system.d/org.containers.bootc.PreStage.conf');
    await this.copy('dbus/org.containers.bootc.PreStage.service', 'usr/share/dbus-1/system-services/org.containers.bootc.PreStage.service');
    await this.copy('packaging/config/config', 'etc/bootc-prestage/config');
    // A persistent journal (read after shutdown), and the stand-ins' records.
    for (const d of ['etc/bootc/pre-stage.d', 'var/log/journal', 'var/lib/test-finalize']) await fsp.mkdir(path.join(this.root, d), { recursive: true, mode: 0o755 });

    // Stand-ins (see the module comment).
    await this.copy('test/fixtures/bootc/bootc', 'usr/local/bin/bootc', 0o755);
    await this.put('etc/tmpfiles.d/test-ostree-booted.conf', 'f /run/ostree-booted 0644 root root -\n');
    await this.put('usr/lib/systemd/system/ostree-finalize-staged.service', FINALIZE_STANDIN_UNIT);
    await this.put('usr/local/bin/finalize-staged-standin', FINALIZE_STANDIN, 0o755);
    // bootc's own units, as bootc ships them (systemd/ in bootc-dev/bootc), the
    // service running the stand-in.
    await this.put('usr/lib/systemd/system/bootc-fetch-apply-updates.service',
      '[Unit]\nDescription=Apply bootc updates\nConditionPathExists=/run/ostree-booted\n\n'
      + '[Service]\nType=oneshot\nExecStart=/usr/bin/bootc upgrade --apply --quiet\n');
    await fsp.symlink('/usr/local/bin/bootc', path.join(this.root, 'usr/bin/bootc')).catch(() => {});
    // The units as the package enables them: by its preset.
    await must('systemctl', [`--root=${this.root}`, 'preset', 'bootc-prestage-reconcile.service',
      'bootc-prestage-gate.service', 'bootc-prestage-staged.path']);
    await must('systemctl', [`--root=${this.root}`, 'enable', 'ostree-finalize-staged.service']);
    // No getty on the console, no network management to wait for; none of
    // the podman package's own units (its API service and the starting of
    // containers at boot: no container can run here, and they are not
    // under test).
    await must('systemctl', [`--root=${this.root}`, 'mask', 'console-getty.service', 'systemd-networkd-wait-online.service',
      'podman.service', 'podman.socket', 'podman-restart.service', 'podman-auto-update.service', 'podman-auto-update.timer']);
    // podman's storage: vfs, since this root is itself an overlay mount and
    // podman's default driver refuses it ("'overlay' is not supported over
    // overlayfs, a mount_program is required"). Paths are podman's defaults.
    await this.put('etc/containers/storage.conf',
      '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n');

    await this.makeSysroot();
  }

  /** A real ostree sysroot at /sysroot: stateroot testos, one deployment, and branch testos/next for updates. */
  private async makeSysroot(): Promise<void> {
    const s = path.join(this.root, 'sysroot');
    await fsp.mkdir(s, { recursive: true, mode: 0o755 });
    await must('ostree', ['admin', 'init-fs', s]);
    await must('ostree', ['admin', 'os-init', `--sysroot=${s}`, 'testos']);
    const tree = await fsp.mkdtemp(path.join(os.tmpdir(), 'nspawn-tree-'));
    try {
      for (const [rel, text] of Object.entries({
        'usr/lib/os-release': 'ID=testos\nVERSION_ID=1\nPRETTY_NAME="Test OS 1"\n',
        'usr/etc/os-release': 'ID=testos\nVERSION_ID=1\nPRETTY_NAME="Test OS 1"\n',
        'usr/lib/modules/6.1.0/vmlinuz': 'not a kernel\n',
      })) {
        await fsp.mkdir(path.dirname(path.join(tree, rel)), { recursive: true });
        await fsp.writeFile(path.join(tree, rel), text);
      }
      const repo = path.join(s, 'ostree', 'repo');
      await must('ostree', [`--repo=${repo}`, 'commit', '-b', 'testos/stable', `--tree=dir=${tree}`, '--owner-uid=0', '--owner-gid=0']);
      await must('ostree', ['admin', 'deploy', `--sysroot=${s}`, '--os=testos', 'testos/stable']);
    } finally {
      await fsp.rm(tree, { recursive: true, force: true });
    }
    await this.put('etc/bootc-standin.conf', [
      'BOOTC_STANDIN_SYSROOT=/sysroot',
      'BOOTC_STANDIN_RUN_DIR=/run/ostree',
      'BOOTC_STANDIN_DEPLOY_REF=testos/next',
      'BOOTC_STANDIN_LOG=/var/lib/test-finalize/bootc-calls',
      '',
    ].join('\n'));
  }

  /** "Publish an image": a new commit on testos/next (made inside the machine, with its ostree). */
  async publish(n: number): Promise<void> {
    await this.sh(`set -e; t=$(mktemp -d); ostree --repo=/sysroot/ostree/repo checkout testos/stable $t/tree;
      echo "generation ${n}" > $t/tree/usr/lib/generation;
      ostree --repo=/sysroot/ostree/repo commit -b testos/next --tree=dir=$t/tree --owner-uid=0 --owner-gid=0 >/dev/null;
      rm -rf $t`);
  }

  async boot(): Promise<void> {
    if (this.nspawn) throw new Error('already booted');
    this.boots++;
    const log = await fsp.open(path.join(this.dir, `console-${this.boots}.log`), 'w');
    // setpriv execs nspawn (the pid is nspawn's) with SIGTERM as its
    // parent-death signal, and --kill-signal=SIGKILL makes nspawn answer a
    // SIGTERM by killing the container's init: so a worker that dies
    // without teardown, and dispose(), leave no container behind. (A
    // SIGKILL of nspawn alone leaves the container's systemd running.)
    this.nspawn = spawn('setpriv', ['--pdeathsig', 'SIGTERM', '--', 'systemd-nspawn', '-q', '-D', this.root, '--boot',
      '--register=no', '--keep-unit', '--kill-signal=SIGKILL', `--machine=${this.name}`, '--console=pipe'],
    { stdio: ['ignore', log.fd, log.fd] });
    await log.close();
    this.exited = new Promise((resolve) => this.nspawn!.once('exit', (code) => resolve(code)));
    const pid = this.nspawn.pid!;
    for (let i = 0; i < 300 && this.leader === 0; i++) {
      try {
        const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
        if (kids.length > 0 && readFileSync(`/proc/${kids[0]}/comm`, 'utf8').trim() === 'systemd') this.leader = Number(kids[0]);
      } catch { /* not yet */ }
      if (this.leader === 0) await new Promise((r) => setTimeout(r, 100));
    }
    if (this.leader === 0) throw new Error(`the container did not start: ${await this.console()}`);
    // Until systemd answers on its bus (nsenter may come before that).
    let r: ExecResult = { code: 1, stdout: '', stderr: '' };
    // ("offline": PID 1 is not the manager yet.)
    const early = () => r.stdout.trim() === '' || r.stdout.trim() === 'offline';
    for (let i = 0; i < 300 && early(); i++) {
      r = await this.exec(['systemctl', 'is-system-running', '--wait'], { timeoutMs: 120_000 });
      if (early()) await new Promise((res) => setTimeout(res, 200));
    }
    if (r.stdout.trim() !== 'running') {
      const failed = await this.exec(['systemctl', '--failed', '--no-legend', '--plain']);
      // Each failed unit's last journal lines: the reason, not just the name.
      const units = failed.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]).filter((u): u is string => !!u);
      const logs = units.length > 0
        ? (await this.exec(['journalctl', '-b', '--no-pager', '-o', 'cat', '-n', '40', ...units.flatMap((u) => ['-u', u])])).stdout
        : '';
      throw new Error(`the machine booted ${r.stdout.trim()}: ${failed.stdout}${logs}`);
    }
  }

  async console(): Promise<string> {
    return fsp.readFile(path.join(this.dir, `console-${this.boots}.log`), 'utf8').catch(() => '');
  }

  /** Run a command in the machine (all its namespaces). */
  get running(): boolean {
    return this.leader !== 0;
  }

  async exec(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<ExecResult> {
    if (this.leader === 0) throw new Error('not booted');
    return run('nsenter', ['-t', String(this.leader), '-a', '--', ...argv], opts);
  }

  sh(script: string, opts: { timeoutMs?: number } = {}): Promise<ExecResult> {
    return this.exec(['/bin/sh', '-c', script], opts);
  }

  /** Start `systemctl poweroff` (or reboot) and wait until the container has exited. */
  async shutdown(verb: 'poweroff' | 'reboot' = 'poweroff', opts: { timeoutMs?: number; alreadyRequested?: boolean } = {}): Promise<void> {
    if (!this.nspawn) return;
    if (!opts.alreadyRequested) await this.exec(['systemctl', '--no-block', verb]);
    await this.waitExit(opts.timeoutMs ?? 300_000);
  }

  /** Wait until the container has exited by itself (a reboot asked from inside). */
  async waitExit(timeoutMs = 300_000): Promise<void> {
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutMs).unref());
    if (await Promise.race([this.exited!, timer]) === 'timeout') throw new Error('the machine did not shut down in time');
    this.nspawn = null;
    this.leader = 0;
  }

  /** Read a file of the (stopped or running) machine from the host. */
  read(rel: string): Promise<string> {
    return fsp.readFile(path.join(this.root, rel), 'utf8').catch(() => '');
  }

  /** The journal of every boot so far, read from the host with journalctl --directory. */
  async journal(unit?: string): Promise<string> {
    const dir = path.join(this.root, 'var/log/journal');
    const args = [`--directory=${dir}`, '--no-pager', '-o', 'short-monotonic', ...(unit ? ['-u', unit] : [])];
    const r = existsSync(dir) ? await run('journalctl', args) : await this.exec(['journalctl', '--no-pager', ...(unit ? ['-u', unit] : [])]);
    return r.stdout;
  }

  async dispose(): Promise<void> {
    if (this.nspawn && this.exited) {
      this.nspawn.kill('SIGTERM');
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000).unref());
      if (await Promise.race([this.exited, timer]) === 'timeout') {
        // The container's init first: killing nspawn alone would leave it running.
        if (this.leader > 0) {
          try { process.kill(this.leader, 'SIGKILL'); } catch { /* gone already */ }
        }
        this.nspawn.kill('SIGKILL');
        await this.exited;
      }
      this.nspawn = null;
      this.leader = 0;
    }
    await run('umount', [this.root]);
    await fsp.rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * ostree-finalize-staged.service with ostree's own [Unit] ordering
 * (ostreedev/ostree src/boot/ostree-finalize-staged.service) and a stand-in
 * ExecStop: `ostree admin finalize-staged` cannot finalize in a container.
 */
const FINALIZE_STANDIN_UNIT = `[Unit]
Description=OSTree Finalize Staged Deployment (test stand-in: records what ostree would do)
ConditionPathExists=/run/ostree-booted
DefaultDependencies=no
RequiresMountsFor=/sysroot
After=local-fs.target
Before=basic.target final.target
After=systemd-journal-flush.service
# Not in ostree's unit: on a real system the initrd makes /run/ostree-booted;
# here the tmpfiles line above does, which must have run for the condition.
After=systemd-tmpfiles-setup.service
Conflicts=final.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStop=/usr/local/bin/finalize-staged-standin
TimeoutStopSec=5m

[Install]
WantedBy=multi-user.target
`;

/** What `ostree admin finalize-staged` decides (ostree-sysroot-deploy.c), recorded instead of done. */
const FINALIZE_STANDIN = `#!/bin/sh
mkdir -p /var/lib/test-finalize
if [ ! -e /run/ostree/staged-deployment ]; then
    echo "nothing-staged" >> /var/lib/test-finalize/log
elif [ -e /run/ostree/staged-deployment-locked ]; then
    echo "Not finalizing; found /run/ostree/staged-deployment-locked"
    echo "discarded" >> /var/lib/test-finalize/log
else
    echo "finalized" >> /var/lib/test-finalize/log
fi
sync
`;
