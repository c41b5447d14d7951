/**
 * Shell-level helpers of the bound-images tests: commands with their
 * stderr in the error, trees that may hold a containers store's mounts,
 * and the storage driver this machine's podman picks.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
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
